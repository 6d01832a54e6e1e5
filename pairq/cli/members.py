"""``pairq members --gossip ADDR [--json]``: one member's view of the gossip cluster.

The view comes from :func:`pairq.gossip.observe.fetch_members` (a short-lived
observer that is seen as LEFT, never as alive). The key and label have
``PAIRQ_GOSSIP_KEY`` (or ``PAIRQ_GOSSIP_KEYS``) / ``PAIRQ_GOSSIP_LABEL``
environment fallbacks, the broker's variables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence

from pairq.gossip.config import ConfigError
from pairq.gossip.config import decode_key as _decode_key
from pairq.gossip.events import MemberView
from pairq.gossip.observe import fetch_members

__all__ = ["decode_key", "env_keys", "format_members", "register", "run_members"]


def decode_key(text: str) -> bytes:
    """``pairq.gossip.config.decode_key`` as an argparse type (a usage error, exit 2)."""
    try:
        return _decode_key(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def format_members(members: Sequence[MemberView]) -> str:
    rows = [("NAME", "ADDRESS", "STATE", "INC", "ROLE", "PAIR", "GRPC", "STARTED")]
    for m in sorted(members, key=lambda v: (v.meta.role, v.meta.pair, v.name)):
        started = (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(m.meta.start_epoch_ms / 1000))
            if m.meta.start_epoch_ms
            else "-"
        )
        rows.append(
            (
                m.name,
                f"{m.addr[0]}:{m.addr[1]}",
                m.state.name.lower(),
                str(m.incarnation),
                m.meta.role or "-",
                m.meta.pair or "-",
                m.meta.grpc_address or "-",
                started,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def env_keys(env: dict[str, str] | None = None) -> list[bytes]:
    """The keys in ``PAIRQ_GOSSIP_KEY`` (the broker's variable), else the older
    ``PAIRQ_GOSSIP_KEYS``, comma-separated; ValueError naming the variable if one
    is not a key. Read when the command runs, never while ``pairq`` builds its
    parser (a bad key must not break every other command)."""
    env = dict(os.environ) if env is None else env
    for name in ("PAIRQ_GOSSIP_KEY", "PAIRQ_GOSSIP_KEYS"):
        raw = env.get(name, "")
        if raw.strip():
            try:
                return [_decode_key(k) for k in raw.split(",") if k.strip()]
            except ConfigError as exc:
                raise ValueError(f"{name}={raw!r}: {exc}") from None
    return []


def run_members(args: argparse.Namespace) -> int:
    """Entry point of ``pairq members``."""
    try:
        keys = args.gossip_key or env_keys()
    except ValueError as exc:
        print(f"pairq members: {exc}", file=sys.stderr)
        return 2
    try:
        members = asyncio.run(
            fetch_members(
                args.gossip,
                keys=keys,
                label=args.gossip_label,
                within=args.timeout,
            )
        )
    except (ConnectionError, OSError, ValueError) as exc:
        print(f"pairq members: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([m.to_dict() for m in members], indent=2, sort_keys=True))
    else:
        print(format_members(members))
    return 0


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``pairq members``; the parser's ``func`` default is :func:`run_members`."""
    p = subparsers.add_parser(
        "members",
        help="list gossip members with state, incarnation and metadata",
        description="Ask one gossip member (a broker or lookup) for its view of the cluster.",
    )
    p.add_argument(
        "--gossip",
        metavar="HOST:PORT",
        required=True,
        help="gossip address of any broker or lookup (its --gossip-address)",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts (default: a table)")
    p.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        help="seconds to wait for an answer (default %(default)s)",
    )
    p.add_argument(
        "--gossip-key",
        metavar="KEY",
        action="append",
        type=decode_key,
        default=None,
        help="AES-GCM key if the cluster encrypts; repeatable (env PAIRQ_GOSSIP_KEY, as the "
        "broker's, or PAIRQ_GOSSIP_KEYS; comma-separated)",
    )
    p.add_argument(
        "--gossip-label",
        default=os.environ.get("PAIRQ_GOSSIP_LABEL", ""),
        help="cluster label (env PAIRQ_GOSSIP_LABEL)",
    )
    p.set_defaults(func=run_members)
    return p
