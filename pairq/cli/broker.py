"""``pairq broker``: build :class:`BrokerOptions`, run :class:`Broker` until SIGTERM."""

from __future__ import annotations

import argparse
import gc
import sys

from pairq.broker import malloc
from pairq.broker.broker import Broker
from pairq.broker.options import BrokerOptions
from pairq.cli._daemon import add_daemon_flags, run_daemon

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "broker",
        help="run a broker (stores messages in LMDB and delivers them)",
        description="Run a pairq broker: durable topics and channels with NSQ's delivery semantics.",
    )
    add_daemon_flags(p, BrokerOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    malloc.tune()  # before the first big buffer (pairq/broker/malloc.py says why)
    return run_daemon("broker", BrokerOptions, args, _start)


async def _start(opts: BrokerOptions) -> Broker:
    broker = Broker(opts)
    await broker.start()
    broker.arm_crash_record()  # a SIGSEGV/SIGBUS marks the store corrupt for the next start
    # Latency: keep what start-up allocated (modules, catalog, stubs) out of every
    # future cyclic-GC pass, and collect young objects less often; the hot paths
    # create few reference cycles.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    print(
        f"pairq broker {broker.node_id} listening on {broker.address}", file=sys.stderr, flush=True
    )
    return broker
