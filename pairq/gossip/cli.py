"""argparse hooks for the ``pairq`` command (wired in by ``pairq/cli.py``).

- :func:`add_gossip_flags` adds ``--gossip-address``, ``--join`` (repeatable),
  ``--gossip-profile``, ``--gossip-key`` (repeatable), ``--gossip-label`` to a
  daemon's parser; :func:`config_from_args` turns them into a
  :class:`GossipConfig`.
- :func:`add_members_command` registers ``pairq members --gossip ADDR [--json]``.

Every flag has a ``PAIRQ_*`` environment fallback, as the other daemons' flags do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence

from pairq.gossip.config import PROFILES, ConfigError, GossipConfig, local
from pairq.gossip.config import decode_key as _decode_key
from pairq.gossip.events import MemberView
from pairq.gossip.meta import NodeMeta
from pairq.gossip.node import Gossip, parse_addr

__all__ = [
    "add_gossip_flags",
    "add_members_command",
    "config_from_args",
    "fetch_members",
    "format_members",
    "run_members",
]


def _env_list(name: str) -> list[str]:
    raw = os.environ.get(name, "")
    return [p for p in (x.strip() for x in raw.split(",")) if p]


def decode_key(text: str) -> bytes:
    """``pairq.gossip.config.decode_key`` as an argparse type."""
    try:
        return _decode_key(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_gossip_flags(parser: argparse.ArgumentParser) -> None:
    """Gossip flags for ``pairq broker`` / ``pairq lookup``."""
    g = parser.add_argument_group("gossip (SWIM + Lifeguard membership)")
    g.add_argument(
        "--gossip-address",
        metavar="HOST:PORT",
        default=os.environ.get("PAIRQ_GOSSIP_ADDRESS", "127.0.0.1:7946"),
        help="UDP+TCP address for gossip (env PAIRQ_GOSSIP_ADDRESS; default %(default)s; port 0 picks one)",
    )
    g.add_argument(
        "--gossip-advertise",
        metavar="HOST:PORT",
        default=os.environ.get("PAIRQ_GOSSIP_ADVERTISE", ""),
        help="address other members use to reach this one, if not --gossip-address (env PAIRQ_GOSSIP_ADVERTISE)",
    )
    g.add_argument(
        "--join",
        metavar="HOST:PORT",
        action="append",
        default=_env_list("PAIRQ_JOIN"),
        help="a member to join through; repeatable (env PAIRQ_JOIN, comma-separated; default: none, start a new cluster)",
    )
    g.add_argument(
        "--gossip-profile",
        choices=sorted(PROFILES),
        default=os.environ.get("PAIRQ_GOSSIP_PROFILE", "lan"),
        help="timing profile: lan (one data centre), wan, local (one machine) (default %(default)s)",
    )
    g.add_argument(
        "--gossip-key",
        metavar="KEY",
        action="append",
        type=decode_key,
        default=[decode_key(k) for k in _env_list("PAIRQ_GOSSIP_KEYS")],
        help="AES-GCM key, base64 of 16/24/32 bytes; repeat for rotation, the first encrypts "
        "(env PAIRQ_GOSSIP_KEYS, comma-separated; default: no encryption)",
    )
    g.add_argument(
        "--gossip-label",
        metavar="LABEL",
        default=os.environ.get("PAIRQ_GOSSIP_LABEL", ""),
        help="cluster label bound into every packet; members with another label are ignored "
        "(env PAIRQ_GOSSIP_LABEL; default empty)",
    )


def config_from_args(args: argparse.Namespace, **overrides: object) -> GossipConfig:
    """Build a validated :class:`GossipConfig` from :func:`add_gossip_flags` flags."""
    host, port = parse_addr(args.gossip_address, allow_zero=True)
    changes: dict[str, object] = {
        "bind_host": host,
        "bind_port": port,
        "label": args.gossip_label,
        "keys": tuple(args.gossip_key or ()),
    }
    if args.gossip_advertise:
        ahost, aport = parse_addr(args.gossip_advertise)
        changes.update(advertise_host=ahost, advertise_port=aport)
    changes.update(overrides)
    try:
        return PROFILES[args.gossip_profile](**changes)
    except ConfigError as exc:
        raise SystemExit(f"pairq: bad gossip settings: {exc}") from exc


def join_addresses(args: argparse.Namespace) -> list[tuple[str, int]]:
    """The parsed ``--join`` addresses."""
    return [parse_addr(a) for a in (args.join or [])]


async def fetch_members(
    address: str, *, keys: Sequence[bytes] = (), label: str = "", within: float = 3.0
) -> list[MemberView]:
    """One push-pull with a member, as a short-lived observer, and return its view.

    The observer answers as a LEFT member, so the cluster never lists it as alive
    and never suspects it.
    """
    cfg = local(
        bind_host="127.0.0.1", bind_port=0, keys=tuple(keys), label=label, push_pull_interval=3600.0
    )
    name = f"pairq-members-{uuid.uuid4().hex[:8]}"
    g = Gossip(cfg, NodeMeta(role="cli", node_id=name))
    await g.start()
    try:
        g.core.leave(asyncio.get_running_loop().time())  # be seen as left, never as alive
        g.core.drain_actions()
        answered = await g.join([address], within=within)
        if not answered:
            raise ConnectionError(f"no gossip member answered at {address}")
        return [m for m in g.members() if m.name != name]
    finally:
        await g.stop(leave=False)


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


def run_members(args: argparse.Namespace) -> int:
    """Entry point of ``pairq members``."""
    try:
        members = asyncio.run(
            fetch_members(
                args.gossip,
                keys=args.gossip_key or (),
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


def add_members_command(
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
        default=[decode_key(k) for k in _env_list("PAIRQ_GOSSIP_KEYS")],
        help="AES-GCM key if the cluster encrypts (env PAIRQ_GOSSIP_KEYS)",
    )
    p.add_argument(
        "--gossip-label",
        default=os.environ.get("PAIRQ_GOSSIP_LABEL", ""),
        help="cluster label (env PAIRQ_GOSSIP_LABEL)",
    )
    p.set_defaults(func=run_members)
    return p
