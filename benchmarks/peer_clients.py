"""One client per system for ``make bench-peers``, all with the same small interface.

Each ``System`` publishes to and consumes from one fresh destination per
measurement (``open(tag)``: a pairq topic, a JetStream R3 stream, a RabbitMQ
quorum queue with 3 replicas) and answers, from the server's own counters,
how many messages that destination holds (``stored()``) and whether every
delivered message has been acknowledged (``consume`` returns only when the
server says so). An ack counts only if it means what the table says:

- pairq: ``ack.copies >= need`` (2 for the pair: both brokers fsynced);
- JetStream: a ``PubAck`` for the right stream that is not a duplicate (R3 with
  ``sync_interval: always``: two of three servers fsynced it);
- RabbitMQ: a ``Basic.Ack`` publisher confirm (quorum queue: a majority of the
  replicas fsynced it); a Nack or Reject is a failed ack.

Failed acks are counted in ``bad`` and never credited as work done.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any, Protocol

import grpc
from aiormq import Connection as AmqpConnection
from aiormq.abc import AbstractChannel, DeliveredMessage
from nats.aio.client import Client as NatsClient
from nats.js import api as js_api
from nats.js import errors as nats_js_errors
from pamqp.commands import Basic

from pairq.client import Consumer, Producer
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc

CONSUME_CREDIT = 2500
"""Unacked deliveries a consumer may hold (pairq max_in_flight, RabbitMQ prefetch, NATS batches)."""


class System(Protocol):
    name: str
    durability: str
    bad: int

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def open(self, tag: str) -> None: ...
    async def publish(self, body: bytes) -> bool: ...
    async def publish_batch(self, bodies: Sequence[bytes]) -> int: ...
    async def stored(self) -> int: ...
    async def consume(self, n: int, deadline: float) -> int: ...


# -- pairq ------------------------------------------------------------------------


async def _stats(address: str, topic: str) -> pb.GetStatsResponse:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = broker_pb2_grpc.BrokerServiceStub(ch)
        resp: pb.GetStatsResponse = await stub.GetStats(
            pb.GetStatsRequest(topic=topic, no_clients=True), timeout=5
        )
        return resp


class PairqSystem:
    """A pairq pair (``need=2``) or single broker (``need=1``) through ``pairq.client``."""

    def __init__(self, name: str, durability: str, addresses: list[str], need: int) -> None:
        self.name, self.durability = name, durability
        self.addresses, self.need = addresses, need
        self.bad = 0
        self.topic = ""
        self._p: Producer | None = None

    async def connect(self) -> None:
        self._p = Producer(brokers=self.addresses)
        await self._p.__aenter__()

    async def close(self) -> None:
        if self._p is not None:
            await self._p.__aexit__(None, None, None)
            self._p = None

    async def open(self, tag: str) -> None:
        self.topic = tag
        for a in self.addresses:
            async with grpc.aio.insecure_channel(a) as ch:
                stub = broker_pb2_grpc.BrokerServiceStub(ch)
                await stub.CreateTopic(pb.CreateTopicRequest(topic=tag), timeout=5)
                await stub.CreateChannel(pb.CreateChannelRequest(topic=tag, channel="c"), timeout=5)

    async def publish(self, body: bytes) -> bool:
        assert self._p is not None
        ack = await self._p.publish(self.topic, body)
        if ack.copies < self.need:
            self.bad += 1
            return False
        return True

    async def publish_batch(self, bodies: Sequence[bytes]) -> int:
        assert self._p is not None
        acks = await self._p.publish_batch(self.topic, list(bodies))
        good = sum(1 for a in acks if a.copies >= self.need)
        self.bad += len(bodies) - good
        return good

    async def _topic_stats(self) -> list[pb.TopicStats]:
        found = []
        for resp in await asyncio.gather(*(_stats(a, self.topic) for a in self.addresses)):
            found += [t for t in resp.topics if t.name == self.topic]
        return found

    async def stored(self) -> int:
        """Messages published to the topic, summed over the brokers (each counts its own)."""
        return sum(t.message_count for t in await self._topic_stats())

    async def _finished(self) -> tuple[int, int]:
        done = in_flight = 0
        for t in await self._topic_stats():
            for c in t.channels:
                if c.name == "c":
                    done += c.finished
                    in_flight += c.in_flight + c.depth
        return done, in_flight

    async def consume(self, n: int, deadline: float) -> int:
        """Until the brokers' channel stats say ``n`` finished and none in flight or waiting."""
        got = 0

        def handle(msg: Any) -> None:
            nonlocal got
            got += 1

        consumer = Consumer(
            self.topic, "c", brokers=self.addresses, handler=handle, max_in_flight=CONSUME_CREDIT
        )
        await consumer.start()
        try:
            while time.perf_counter() < deadline:
                if got >= n:
                    done, left = await self._finished()
                    if done >= n and left == 0:
                        return done
                await asyncio.sleep(0.002 if got < n else 0.005)
            return (await self._finished())[0]
        finally:
            await consumer.stop()


# -- NATS JetStream ------------------------------------------------------------------


class NatsSystem:
    """JetStream, one R3 file stream per measurement, ``sync_interval: always`` on every server."""

    name = "NATS JetStream R3"
    durability = "fsync on 2 of 3 (`sync_interval: always`)"

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.bad = 0
        self.stream = ""
        self._nc: NatsClient | None = None

    @property
    def nc(self) -> NatsClient:
        assert self._nc is not None
        return self._nc

    async def connect(self) -> None:
        self._nc = NatsClient()
        # The first server only (no random pick), so every run talks to the same one.
        await self._nc.connect(servers=self.urls, dont_randomize=True, max_reconnect_attempts=3)

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()
            self._nc = None

    async def wait_ready(self, timeout: float) -> None:
        """Until the cluster can create an R3 stream (meta leader elected, 3 peers current)."""
        js = self.nc.jetstream()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                await js.add_stream(
                    js_api.StreamConfig(name="ready", subjects=["ready"], num_replicas=3)
                )
                await js.delete_stream("ready")
                return
            except Exception as exc:  # not ready yet: no meta leader, peers not current
                last = exc
                await asyncio.sleep(0.5)
        raise TimeoutError(f"JetStream cluster not ready after {timeout} s: {last!r}")

    async def open(self, tag: str) -> None:
        js = self.nc.jetstream()
        if self.stream:
            with contextlib.suppress(Exception):
                await js.delete_stream(self.stream)
        self.stream = tag
        info = await js.add_stream(
            js_api.StreamConfig(
                name=tag,
                subjects=[tag],
                num_replicas=3,
                storage=js_api.StorageType.FILE,
                retention=js_api.RetentionPolicy.LIMITS,
            )
        )
        if info.config.num_replicas != 3:
            raise RuntimeError(f"stream {tag} has {info.config.num_replicas} replicas")
        self._js = js

    def _ok(self, ack: js_api.PubAck) -> bool:
        if ack.stream != self.stream or ack.duplicate:
            self.bad += 1
            return False
        return True

    async def publish(self, body: bytes) -> bool:
        return self._ok(await self._js.publish(self.stream, body, timeout=10))

    async def publish_batch(self, bodies: Sequence[bytes]) -> int:
        """No batch in JetStream's API: the publishes pipelined, then every ack awaited."""
        futs = [await self._js.publish_async(self.stream, b) for b in bodies]
        acks = await asyncio.gather(*futs)
        return sum(1 for a in acks if self._ok(a))

    async def stored(self) -> int:
        info = await self._js.stream_info(self.stream)
        return int(info.state.messages)

    async def _acked(self, last_seq: int) -> tuple[bool, int]:
        """(all acked, the consumer's ack floor as a stream sequence) per the server."""
        ci = await self._js.consumer_info(self.stream, "c")
        floor = int(ci.ack_floor.stream_seq or 0) if ci.ack_floor else 0
        pending = (ci.num_ack_pending or 0) + (ci.num_pending or 0)
        return pending == 0 and floor >= last_seq, floor

    async def consume(self, n: int, deadline: float) -> int:
        """A durable pull consumer, explicit acks; until its ack floor is the stream's last seq."""
        last_seq = int((await self._js.stream_info(self.stream)).state.last_seq)
        await self._js.add_consumer(
            self.stream,
            js_api.ConsumerConfig(
                durable_name="c",
                ack_policy=js_api.AckPolicy.EXPLICIT,
                max_ack_pending=CONSUME_CREDIT * 2,
                max_waiting=64,
            ),
        )
        sub = await self._js.pull_subscribe(self.stream, durable="c", stream=self.stream)
        got = 0
        fetchers = 4
        batch = CONSUME_CREDIT // fetchers

        async def fetch() -> None:
            nonlocal got
            while got < n and time.perf_counter() < deadline:
                try:
                    msgs = await sub.fetch(batch, timeout=1.0)
                except TimeoutError:
                    continue
                except nats_js_errors.ServiceUnavailableError:
                    # A 503 status for a pull request (seen with many small fetchers on a
                    # loaded machine): ask again; the loop is bounded by the deadline.
                    await asyncio.sleep(0.01)
                    continue
                for m in msgs:
                    await m.ack()
                got += len(msgs)

        try:
            await asyncio.gather(*(fetch() for _ in range(fetchers)))
            await self.nc.flush()
            while time.perf_counter() < deadline:
                done, floor = await self._acked(last_seq)
                if done:
                    return n
                await asyncio.sleep(0.005)
            return min(n, floor)
        finally:
            await sub.unsubscribe()


# -- RabbitMQ ---------------------------------------------------------------------


class RabbitSystem:
    """One quorum queue with 3 replicas per measurement, publisher confirms, manual acks."""

    name = "RabbitMQ quorum queue, 3 replicas"
    durability = "fsync on 2 of 3 (publisher confirm)"

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.bad = 0
        self.queue = ""
        self._conn: AmqpConnection | None = None
        self._ch: AbstractChannel | None = None
        self._props = Basic.Properties(delivery_mode=2)

    @property
    def ch(self) -> AbstractChannel:
        assert self._ch is not None
        return self._ch

    async def connect(self) -> None:
        self._conn = AmqpConnection(self.urls[0])
        await self._conn.connect()
        self._ch = await self._conn.channel(publisher_confirms=True)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = self._ch = None

    async def open(self, tag: str) -> None:
        if self.queue:
            with contextlib.suppress(Exception):
                await self.ch.queue_delete(self.queue)
        self.queue = tag
        await self.ch.queue_declare(
            tag,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-quorum-initial-group-size": 3},
        )

    def _ok(self, confirm: Any) -> bool:
        if isinstance(confirm, Basic.Ack):
            return True
        self.bad += 1
        return False

    async def publish(self, body: bytes) -> bool:
        return self._ok(
            await self.ch.basic_publish(body, routing_key=self.queue, properties=self._props)
        )

    async def publish_batch(self, bodies: Sequence[bytes]) -> int:
        """No batch in AMQP 0-9-1: the publishes pipelined on one channel, every confirm awaited."""
        confirms = await asyncio.gather(
            *(
                self.ch.basic_publish(b, routing_key=self.queue, properties=self._props)
                for b in bodies
            )
        )
        return sum(1 for c in confirms if self._ok(c))

    async def stored(self) -> int:
        ok = await self.ch.queue_declare(self.queue, passive=True)
        assert ok is not None
        return int(ok.message_count or 0)

    async def consume(self, n: int, deadline: float) -> int:
        """Ack every delivery; done when, its channel closed, the queue holds nothing (all acked)."""
        assert self._conn is not None
        ch = await self._conn.channel(publisher_confirms=False)
        await ch.basic_qos(prefetch_count=CONSUME_CREDIT)
        got = 0
        all_in = asyncio.Event()

        async def on_message(msg: DeliveredMessage) -> None:
            nonlocal got
            assert msg.delivery_tag is not None
            await ch.basic_ack(msg.delivery_tag)
            got += 1
            if got >= n:
                all_in.set()

        await ch.basic_consume(self.queue, on_message)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), max(0.1, deadline - time.perf_counter()))
        # Acks precede the close on the channel: once closed, unacked messages would be
        # ready again, so an empty queue means the server applied every ack.
        await ch.close()
        return n - await self.stored()
