"""``pairq broker``: parse flags, build ``BrokerOptions``, run ``Broker`` until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from pairq.broker.broker import Broker
from pairq.broker.options import BrokerOptions
from pairq.options import add_flags, resolve


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "broker",
        help="run a broker (stores messages in LMDB and delivers them)",
        description="Run a pairq broker: durable topics and channels with NSQ's delivery semantics.",
    )
    add_flags(p, BrokerOptions)
    p.set_defaults(func=run)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(args: argparse.Namespace) -> int:
    try:
        opts = resolve(BrokerOptions, args).validate()
    except (ValueError, OSError) as exc:
        print(f"pairq broker: {exc}", file=sys.stderr)
        return 2
    setup_logging(opts.log_level)
    try:
        return asyncio.run(_main(opts))
    except OSError as exc:
        print(f"pairq broker: {exc}", file=sys.stderr)
        return 1


async def _main(opts: BrokerOptions) -> int:
    broker = Broker(opts)
    await broker.start()
    # Latency: keep what start-up allocated (modules, catalog, stubs) out of every
    # future cyclic-GC pass, and collect young objects less often; the hot paths
    # create few reference cycles.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    print(f"pairq broker {broker.node_id} listening on {broker.address}", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.stop()
    return 0
