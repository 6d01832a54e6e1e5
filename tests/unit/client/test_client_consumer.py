"""Consumer scheduling details against the loopback fake broker."""

from __future__ import annotations

import asyncio

from fakebroker import run_fake_broker

from pairq.client import Consumer, Message, Producer
from pairq.testing import eventually


async def test_fast_sync_handlers_need_one_worker_and_fins_are_batched() -> None:
    async with run_fake_broker() as fake:
        async with Producer([fake.address]) as p:
            await p.publish_batch("t", [b"%d" % i for i in range(2000)])
        n = 0

        def handle(msg: Message) -> None:
            nonlocal n
            n += 1

        async with Consumer("t", "c", [fake.address], handler=handle, max_in_flight=200) as c:
            await eventually(lambda: c.stats.finished == 2000)
            assert len(c._workers) == 1  # never suspended: no hand-off needed
            await c.wait_idle(timeout=5)
        ch = fake.broker.channels[("t", "c")]
        assert len(ch.finished) == 2000 and n == 2000


async def test_suspending_handlers_get_more_workers_up_to_max_in_flight() -> None:
    async with run_fake_broker() as fake:
        async with Producer([fake.address]) as p:
            await p.publish_batch("t", [b"%d" % i for i in range(100)])
        gate = asyncio.Event()
        running = 0

        async def handle(msg: Message) -> None:
            nonlocal running
            running += 1
            await gate.wait()

        async with Consumer("t", "c", [fake.address], handler=handle, max_in_flight=30) as c:
            await eventually(lambda: running == 30)
            assert len(c._workers) == 30 and c.in_flight == 30
            gate.set()
            await c.wait_idle(timeout=5)
            assert c.stats.finished == 100 and len(c._workers) <= 30


async def test_heartbeat_answered_with_nop_and_requeue_delay_sent() -> None:
    async with run_fake_broker() as fake:
        async with Producer([fake.address]) as p:
            await p.publish("t", b"x")

        def fail(msg: Message) -> None:
            raise ValueError("no")

        async with Consumer(
            "t", "c", [fake.address], handler=fail, requeue_delay=0.5, max_requeue_delay=1.0
        ) as c:
            await eventually(lambda: c.stats.requeued >= 3)
        delays = [d for _, d in fake.broker.channels[("t", "c")].requeues]
        assert delays[:3] == [500, 1000, 1000]  # attempts 1, 2, 3; capped at 1 s


async def test_iterator_with_dedupe(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with run_fake_broker() as fake:
        mid = bytes([9]) * 16
        async with Producer([fake.address]) as p:
            await p.publish("t", b"x", id=mid)
        async with Consumer("t", "c", [fake.address], dedupe=str(tmp_path / "dd")) as c:
            async for msg in c:
                msg.finish()
                break
            await c.wait_idle(timeout=5)
            # the fake broker re-stores a re-published id for a new channel only; simulate a
            # redelivery by pushing the same message again
            ch = fake.broker.channels[("t", "c")]
            ch.ready.append(fake.broker.stored["t"][0])
            ch.wake.set()
            await eventually(lambda: c.stats.duplicates == 1)
            assert c.stats.finished == 1
