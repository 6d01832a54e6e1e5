"""``pairq lookup``: build :class:`LookupOptions`, run :class:`Lookup` until SIGTERM."""

from __future__ import annotations

import argparse
import sys

from pairq.cli._daemon import add_daemon_flags, run_daemon
from pairq.lookup.lookup import Lookup
from pairq.lookup.options import LookupOptions

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "lookup",
        help="run a lookup (topology: which pairs hold which topics, which brokers are alive)",
        description="Run a pairq lookup (nsqlookupd's role). Brokers register with it "
        "(pairq broker --lookup); clients ask it where topics live.",
    )
    add_daemon_flags(p, LookupOptions)
    p.set_defaults(func=run_lookup)


def run_lookup(args: argparse.Namespace) -> int:
    return run_daemon("lookup", LookupOptions, args, _start)


async def _start(opts: LookupOptions) -> Lookup:
    lookup = Lookup(opts)
    await lookup.start()
    gossip = f", gossip {lookup.gossip_address}" if lookup.gossip_address else ""
    print(
        f"pairq lookup {lookup.lookup_id} listening on {lookup.address}{gossip}",
        file=sys.stderr,
        flush=True,
    )
    return lookup
