"""Client CPU per consumed message, with the default consumer and with de-duplication off.

    PYTHONPATH=<tree> .venv/bin/python benchmarks/consumer_cpu.py [--n 100000] [--rounds 5]

Starts one ``pairq broker`` process (so its CPU is not counted), pre-loads
``--n`` messages per round and consumes them with a no-op handler, measuring
this process's CPU time (``time.process_time``: the event loop and gRPC's
threads) from ``start()`` until the client has finished every message. Runs
alternate between the default ``Consumer`` and ``dedupe=None`` (off in every
revision), and the medians are printed as microseconds per message, so two
revisions can be compared by running the script against each (``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from typing import Any

from pairq.client import Consumer, Producer
from pairq.testing import BrokerProcess


async def one_round(address: str, topic: str, n: int, dedupe: bool) -> tuple[float, float]:
    async with Producer(brokers=[address]) as p:
        bodies = [b"x" * 100] * 1000
        await asyncio.gather(*(p.publish_batch(topic, bodies) for _ in range(n // 1000)))
    kw: dict[str, Any] = {} if dedupe else {"dedupe": None}
    done = asyncio.Event()
    count = 0

    def handle(msg: Any) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    consumer = Consumer(topic, "sink", brokers=[address], handler=handle, max_in_flight=2500, **kw)
    c0, t0 = time.process_time(), time.perf_counter()
    await consumer.start()
    try:
        await asyncio.wait_for(done.wait(), 120)
    finally:
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        await consumer.stop()
    return cpu / n * 1e6, n / wall


async def main_async(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="pairq-cpu-") as tmp:
        broker = BrokerProcess(tmp + "/b")
        broker.start()
        try:
            res: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for r in range(rounds):
                for dd in (True, False):
                    res[dd].append(await one_round(broker.address, f"t{r}{int(dd)}", n, dd))
            for dd in (True, False):
                us = statistics.median(x for x, _ in res[dd])
                rate = statistics.median(y for _, y in res[dd])
                name = "default (dedupe on)" if dd else "dedupe off         "
                print(f"{name}: client {us:5.2f} us/msg  {rate:9,.0f} msg/s  (median of {rounds})")
        finally:
            broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    asyncio.run(main_async(args.n, args.rounds))


if __name__ == "__main__":
    main()
