"""A Consumer with no ``dedupe`` argument de-duplicates: across repeated kill -9 of a
pair's owner, every acked message is handled exactly once (real processes)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from test_pair import make_pair, wait_healthy

from pairq.client import Consumer, Producer
from pairq.errors import PairqError


async def test_default_consumer_handles_each_message_once_across_owner_kill9(tmp_path: Path) -> None:
    rng = random.Random(9)
    a, b = make_pair(tmp_path)
    acked: set[bytes] = set()
    handled: dict[bytes, int] = {}

    async def handler(msg) -> None:  # type: ignore[no-untyped-def]
        handled[msg.id] = handled.get(msg.id, 0) + 1

    try:
        a.start()
        b.start()
        await wait_healthy(a, b)
        stop = asyncio.Event()

        async def produce() -> None:
            async with Producer(brokers=[a.address, b.address], retry_timeout=30) as p:
                while not stop.is_set():
                    try:
                        acks = await p.publish_batch("orders", [b"m"] * rng.randint(1, 20))
                        assert all(x.copies == 2 for x in acks)
                        acked.update(x.id for x in acks)
                    except PairqError:
                        await asyncio.sleep(0.05)  # retry pacing

        # No dedupe argument: the default in-memory window.
        async with Consumer("orders", "work", brokers=[a.address, b.address], handler=handler,
                            max_in_flight=100, reconnect_backoff=0.05,
                            reconnect_backoff_max=0.3) as consumer:
            producers = [asyncio.create_task(produce()) for _ in range(2)]
            for _cycle in range(6):
                await asyncio.sleep(rng.uniform(0.2, 0.8))  # a random kill instant, not a wait
                a.kill()
                await asyncio.sleep(rng.uniform(0.0, 1.5))  # down for a random while
                a.start()
                await wait_healthy(a, b)
            stop.set()
            await asyncio.gather(*producers)
            deadline = asyncio.get_running_loop().time() + 60
            while not acked <= set(handled):
                assert asyncio.get_running_loop().time() < deadline, "acked messages never handled"
                await asyncio.sleep(0.05)
            await consumer.wait_idle(timeout=30)
            absorbed = consumer.stats.duplicates
    finally:
        a.stop()
        b.stop()
    twice = [i for i, n in handled.items() if n > 1]
    print(f"acked={len(acked)} handled={len(handled)} duplicates_absorbed={absorbed}")
    assert len(acked) > 300
    assert not twice, f"{len(twice)} ids handled more than once with the default consumer"
