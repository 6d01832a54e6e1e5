"""``pairq nodes``: every broker registered with the lookups, merged.

Asks every lookup through :class:`~pairq.client.discovery.Discovery`; a broker is
as alive as the most optimistic lookup says, and SEEN BY counts the lookups that
list it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from pairq.cli import _tool as tool
from pairq.client.discovery import Discovery, NodeView
from pairq.errors import PairqError
from pairq.security.client import ClientSecurity

__all__ = ["DEFAULT_LOOKUP", "default_lookups", "format_nodes", "register"]

DEFAULT_LOOKUP = "127.0.0.1:4160"


def default_lookups() -> list[str]:
    """``PAIRQ_LOOKUP`` (comma-separated), else the default lookup address."""
    raw = os.environ.get("PAIRQ_LOOKUP", "")
    return [a.strip() for a in raw.split(",") if a.strip()] or [DEFAULT_LOOKUP]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    n = sub.add_parser(
        "nodes",
        help="list every broker registered with the lookups (pair, liveness, topics)",
        description="Ask every lookup for its registered brokers and print them merged: a broker "
        "is as alive as the most optimistic lookup says; SEEN BY counts the lookups that list it.",
    )
    n.add_argument(
        "--lookup",
        metavar="HOST:PORT",
        action="append",
        default=None,
        help=f"a lookup's gRPC address; repeatable (env PAIRQ_LOOKUP, comma-separated; "
        f"default: {DEFAULT_LOOKUP})",
    )
    n.add_argument("--json", action="store_true", help="print JSON for scripts (default: a table)")
    n.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        help="seconds to wait for each lookup (default %(default)s)",
    )
    tool.add_security_args(n)
    n.set_defaults(func=run_nodes)


def format_nodes(nodes: Sequence[NodeView], lookups: int) -> str:
    rows = [
        (
            "NODE",
            "PAIR",
            "ADDRESS",
            "VERSION",
            "LIVENESS",
            "GOSSIP",
            "LAST SEEN",
            "SEEN BY",
            "TOPICS",
            "TOMBSTONES",
        )
    ]
    for n in nodes:
        topics = ",".join(f"{t}({len(c)})" for t, c in sorted(n.topics.items())) or "-"
        rows.append(
            (
                n.node_id,
                n.pair or "-",
                n.address,
                n.version or "-",
                n.liveness,
                n.gossip_state or "-",
                f"{n.last_seen_ms_ago / 1000:.1f}s",
                f"{len(n.seen_by)}/{lookups}",
                topics,
                ",".join(sorted(n.tombstones)) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


async def _fetch(
    lookups: list[str], timeout: float, sec: ClientSecurity | None = None
) -> tuple[list[NodeView], dict[str, str]]:
    async with Discovery(lookups, timeout=timeout, security=sec) as d:
        nodes = await d.nodes()
        return nodes, dict(d.errors)


def run_nodes(args: argparse.Namespace) -> int:
    lookups = args.lookup or default_lookups()
    try:
        nodes, errors = asyncio.run(_fetch(lookups, args.timeout, tool.security(args)))
    except (PairqError, OSError, ValueError, tool.CliError) as exc:
        print(f"pairq nodes: {exc}", file=sys.stderr)
        return 1
    for address, err in sorted(errors.items()):
        print(f"pairq nodes: lookup {address} did not answer: {err}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "nodes": [n.to_dict() for n in nodes],
                    "lookups": lookups,
                    "unreachable": sorted(errors),
                },
                indent=2,
                sort_keys=True,
            )
        )
    else:
        print(format_nodes(nodes, len(lookups)))
    return 0
