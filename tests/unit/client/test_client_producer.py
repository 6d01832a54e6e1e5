"""Producer logic over real loopback gRPC against an in-memory fake broker.

The fake counts RPCs and injects failures, which the real broker cannot do on
demand; the same features are also tested against the real broker in
tests/integration/test_client.py.
"""

from __future__ import annotations

import asyncio

import pytest
from fakebroker import run_fake_broker

from pairq.client import InvalidError, Producer, SyncProducer, UnavailableError
from pairq.testing import free_port


async def test_lone_publish_goes_at_once_and_concurrent_ones_coalesce() -> None:
    async with run_fake_broker() as fake, Producer([fake.address], max_batches_in_flight=1) as p:
        ack = await p.publish("t", b"one")
        assert len(ack.id) == 16 and ack.copies == 1
        assert fake.broker.batch_sizes == [1]
        acks = await asyncio.gather(*(p.publish("t", b"m%d" % i) for i in range(2000)))
        assert len({a.id for a in acks}) == 2000
        # 2000 publishes in far fewer RPCs; none bigger than the max batch size.
        assert len(fake.broker.batch_sizes) <= 1 + 10
        assert sum(fake.broker.batch_sizes) == 2001
        assert max(fake.broker.batch_sizes) <= 1000
        stored = [m.body for m in fake.broker.stored["t"]]
        assert stored[1:] == [b"m%d" % i for i in range(2000)]  # order kept


async def test_batch_bounded_by_bytes() -> None:
    async with run_fake_broker() as fake:
        async with Producer(
            [fake.address], max_batch_bytes=10_000, max_message_bytes=2000, max_batches_in_flight=1
        ) as p:
            await asyncio.gather(*(p.publish("t", b"x" * 1000) for i in range(50)))
        assert all(n <= 10 for n in fake.broker.batch_sizes)


async def test_retry_reuses_ids() -> None:
    async with run_fake_broker() as fake, Producer([fake.address], retry_backoff=0.01) as p:
        fake.broker.fail_next = 3
        ack = await p.publish("t", b"x")
        assert fake.broker.attempted_ids == [ack.id] * 4
        assert [m.id for m in fake.broker.stored["t"]] == [ack.id]


async def test_fails_over_to_next_broker() -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with run_fake_broker() as fake, Producer([dead, fake.address], retry_backoff=0.01) as p:
        ack = await p.publish("t", b"x")
        assert fake.broker.attempted_ids == [ack.id]
        assert p.brokers[1] == fake.address
        await p.publish("t", b"y")  # sticks with the broker that works
        assert fake.broker.calls["PublishBatch"] == 2


async def test_gives_up_after_retry_timeout() -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with Producer([dead], retry_timeout=0.3, retry_backoff=0.01) as p:
        with pytest.raises(UnavailableError, match="no broker accepted"):
            await p.publish("t", b"x")


async def test_invalid_input_raised_without_rpc() -> None:
    async with run_fake_broker() as fake, Producer([fake.address], max_message_bytes=100) as p:
        with pytest.raises(InvalidError):
            await p.publish("t", b"")
        with pytest.raises(InvalidError):
            await p.publish("t", b"x" * 101)
        with pytest.raises(InvalidError):
            await p.publish("bad topic!", b"x")
        with pytest.raises(InvalidError):
            await p.publish("t", b"x", id=b"short")
        with pytest.raises(InvalidError):
            await p.publish("t", b"x", headers={"k": 1})  # type: ignore[dict-item]
        with pytest.raises(TypeError):
            await p.publish("t", "text")  # type: ignore[arg-type]
        assert fake.broker.calls["PublishBatch"] == 0


async def test_broker_rejection_fails_only_the_bad_publish() -> None:
    async with run_fake_broker() as fake, Producer([fake.address], max_batches_in_flight=1) as p:
        await p.publish("t", b"warm")
        results = await asyncio.gather(
            *(p.publish("t", fake.broker.reject_body if i == 5 else b"ok%d" % i) for i in range(20)),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(results[5], InvalidError)
        assert fake.broker.calls["PublishBatch"] > 2  # the batch was split to isolate it
        assert len(fake.broker.stored["t"]) == 20


async def test_publish_batch_explicit_and_split() -> None:
    async with run_fake_broker() as fake, Producer([fake.address], max_batch_size=10) as p:
        acks = await p.publish_batch("t", [b"a%d" % i for i in range(25)], headers={"k": "v"})
        assert len(acks) == 25 and len({a.id for a in acks}) == 25
        assert fake.broker.batch_sizes == [10, 10, 5]
        assert dict(fake.broker.stored["t"][0].headers) == {"k": "v"}
        with pytest.raises(InvalidError):
            await p.publish_batch("t", [])
        mine = [bytes([i]) * 16 for i in range(3)]
        acks = await p.publish_batch("t", [b"x", b"y", b"z"], ids=mine)
        assert [a.id for a in acks] == mine
        with pytest.raises(InvalidError):
            await p.publish_batch("t", [b"x"], ids=mine)


async def test_close_waits_for_outstanding() -> None:
    async with run_fake_broker() as fake:
        p = Producer([fake.address])
        tasks = [asyncio.ensure_future(p.publish("t", b"x")) for _ in range(100)]
        await asyncio.sleep(0)
        await p.close()
        assert all(t.done() for t in tasks)
        assert len(fake.broker.stored["t"]) == 100
        with pytest.raises(UnavailableError):
            await p.publish("t", b"late")


async def test_sync_producer() -> None:
    async with run_fake_broker() as fake:

        def work() -> tuple[int, int]:
            with SyncProducer([fake.address]) as p:
                ack = p.publish("t", b"x", headers={"a": "b"})
                acks = p.publish_batch("t", [b"1", b"2"])
                return len(ack.id), len(acks)

        assert await asyncio.to_thread(work) == (16, 2)
        assert len(fake.broker.stored["t"]) == 3
