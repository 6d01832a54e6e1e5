"""Test harness: a broker process that registers with lookups and runs gossip.

Stands in for ``pairq broker --lookup ... --gossip-address ...`` until the broker
wires :class:`~pairq.broker.registration.LookupRegistrar` and gossip itself;
the lookup tests start it as a child process so they can ``kill -9`` it::

    python -m pairq.lookup._harness --address 127.0.0.1:P --data-dir D \\
        --lookup 127.0.0.1:L1 --lookup 127.0.0.1:L2 [--gossip-address 127.0.0.1:G --join ...] \\
        [--pair p1 --partner 127.0.0.1:Q] [--topic t1 ...]

It prints ``ready <node_id> <gossip address>`` on stdout once serving.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time

from pairq.broker.broker import Broker
from pairq.broker.options import BrokerOptions
from pairq.broker.registration import LookupRegistrar
from pairq.gossip import Gossip, NodeMeta, local


async def _main(args: argparse.Namespace) -> int:
    opts = BrokerOptions(address=args.address, data_dir=args.data_dir, pair=args.pair,
                         partner=args.partner, min_copies=1 if args.partner else 2,
                         shutdown_grace_s=0.5)
    broker = Broker(opts)
    await broker.start()
    for t in args.topic or []:
        await broker.get_topic(t)
    gossip: Gossip | None = None
    gaddr = ""
    if args.gossip_address:
        host, _, port = args.gossip_address.rpartition(":")
        gossip = Gossip(
            local(bind_host=host, bind_port=int(port)),
            NodeMeta(role="broker", node_id=broker.node_id, pair=args.pair, grpc_address=broker.address,
                     start_epoch_ms=int(time.time() * 1000)),
        )
        await gossip.start()
        gaddr = f"{gossip.address[0]}:{gossip.address[1]}"
        if args.join:
            for _ in range(50):
                if await gossip.join(args.join):
                    break
                await asyncio.sleep(0.1)
    registrar = LookupRegistrar(broker, args.lookup or [], gossip_address=gaddr, poll_interval=0.2)
    registrar.start()
    print(f"ready {broker.node_id} {gaddr or '-'}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await registrar.stop()
    if gossip is not None:
        await gossip.stop(leave=True)
    await broker.stop(grace=0.5)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pairq.lookup._harness")
    p.add_argument("--address", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--lookup", action="append")
    p.add_argument("--gossip-address", default="")
    p.add_argument("--join", action="append")
    p.add_argument("--pair", default="")
    p.add_argument("--partner", default="")
    p.add_argument("--topic", action="append")
    return asyncio.run(_main(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
