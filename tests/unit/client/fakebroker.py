"""An in-memory stand-in for the broker's gRPC API, for client unit tests.

It speaks the real proto over real loopback gRPC, keeps messages in memory,
counts RPCs, and can inject failures (``fail_next``) so retry and failover can
be tested deterministically. It is not the broker: integration tests run the
real one (``pairq.testing.run_broker``).
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from pairq.errors import PairqError
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc


@dataclass
class _Sub:
    queue: asyncio.Queue[pb.SubscribeResponse | None]
    rdy: int = 0
    inflight: dict[bytes, pb.Message] = field(default_factory=dict)
    closing: bool = False


@dataclass
class _Channel:
    ready: collections.deque[pb.Message] = field(default_factory=collections.deque)
    subs: list[_Sub] = field(default_factory=list)
    finished: list[bytes] = field(default_factory=list)
    requeues: list[tuple[bytes, int]] = field(default_factory=list)
    touches: list[bytes] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class FakeBroker(broker_pb2_grpc.BrokerServiceServicer):  # type: ignore[misc]
    def __init__(self, *, broker_id: str = "fake-1", max_batch: int = 100_000) -> None:
        self.broker_id = broker_id
        self.max_batch = max_batch
        self.calls: collections.Counter[str] = collections.Counter()
        self.batch_sizes: list[int] = []
        self.fail_next = 0
        self.fail_code = grpc.StatusCode.UNAVAILABLE
        self.attempted_ids: list[bytes] = []
        self.stored: dict[str, list[pb.Message]] = collections.defaultdict(list)
        self.channels: dict[tuple[str, str], _Channel] = {}
        self.seen: set[bytes] = set()
        self.heartbeat_interval_ms = 0
        self.reject_body = b"\x00reject"
        self.streams = True  # False: answer PublishStream UNIMPLEMENTED (an older broker)
        self.new_ids: list[bool] = []  # PublishStreamRequest.new_ids of each request
        # Set to an address: refuse every publish UNAVAILABLE naming it as the partner
        # that cannot hold the copy (metadata "partner"), like a pair broker under
        # --min-copies=2 whose partner is gone.
        self.partner_down = ""

    def _channel(self, topic: str, channel: str) -> _Channel:
        ch = self.channels.get((topic, channel))
        if ch is None:
            ch = self.channels[(topic, channel)] = _Channel()
            for m in self.stored[topic]:
                ch.ready.append(m)
        return ch

    def _store(self, topic: str, items: Any) -> tuple[list[bytes], int]:
        ids = []
        for it in items:
            mid = it.id or os.urandom(16)
            ids.append(mid)
            if mid in self.seen:
                continue
            self.seen.add(mid)
            m = pb.Message(
                id=mid,
                body=it.body,
                headers=it.headers,
                timestamp_ns=time.time_ns(),
                attempts=0,
                broker_id=self.broker_id,
            )
            self.stored[topic].append(m)
            for (t, _), ch in self.channels.items():
                if t == topic:
                    ch.ready.append(m)
                    ch.wake.set()
        return ids, 1

    async def _maybe_fail(self, context: Any, ids: list[bytes]) -> None:
        self.attempted_ids.extend(ids)
        if self.fail_next > 0:
            self.fail_next -= 1
            await context.abort(self.fail_code, "injected failure")

    async def Publish(self, request: Any, context: Any) -> Any:
        self.calls["Publish"] += 1
        await self._maybe_fail(context, [request.message.id])
        ids, copies = self._store(request.topic, [request.message])
        return pb.PublishResponse(id=ids[0], copies=copies)

    def _partner_refusal(self) -> PairqError:
        return PairqError(
            f"partner {self.partner_down} is unreachable (--min-copies=2)",
            code=pb.ERROR_CODE_UNAVAILABLE,
            partner=self.partner_down,
        )

    async def PublishBatch(self, request: Any, context: Any) -> Any:
        self.calls["PublishBatch"] += 1
        self.batch_sizes.append(len(request.messages))
        await self._maybe_fail(context, [m.id for m in request.messages])
        if self.partner_down:
            await self._partner_refusal().abort(context)
        for m in request.messages:
            if not m.body or m.body == self.reject_body:
                st = PairqError("bad body", code=pb.ERROR_CODE_BAD_MESSAGE).to_status()
                await context.abort(st.code, st.details, st.trailing_metadata)
        ids, copies = self._store(request.topic, request.messages)
        return pb.PublishBatchResponse(ids=ids, copies=copies)

    async def PublishStream(self, request_iterator: Any, context: Any) -> Any:
        """Each request is counted as a ``PublishBatch`` (a batch request is a batch
        request, unary or streamed). An injected failure ends the whole stream with
        ``fail_code``, like a broker that went away; a bad body fails only its request."""
        if not self.streams:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        self.calls["PublishStream"] += 1
        async for req in request_iterator:
            self.calls["PublishBatch"] += 1
            self.batch_sizes.append(len(req.messages))
            self.new_ids.append(req.new_ids)
            await self._maybe_fail(context, [m.id for m in req.messages])
            if self.partner_down:
                err = self._partner_refusal()
                yield pb.PublishStreamResponse(
                    request_id=req.request_id,
                    error=pb.PublishError(
                        code=err.code, message=err.message, metadata=err.metadata()
                    ),
                )
                continue
            if any(not m.body or m.body == self.reject_body for m in req.messages):
                yield pb.PublishStreamResponse(
                    request_id=req.request_id,
                    error=pb.PublishError(code=pb.ERROR_CODE_BAD_MESSAGE, message="bad body"),
                )
                continue
            ids, copies = self._store(req.topic, req.messages)
            yield pb.PublishStreamResponse(request_id=req.request_id, ids=ids, copies=copies)

    async def Subscribe(self, request_iterator: Any, context: Any) -> Any:
        self.calls["Subscribe"] += 1
        it = request_iterator.__aiter__()
        first = await it.__anext__()
        if first.WhichOneof("command") != "identify":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "identify first")
        ch = self._channel(first.identify.topic, first.identify.channel)
        sub = _Sub(queue=asyncio.Queue())
        ch.subs.append(sub)
        yield pb.SubscribeResponse(
            accepted=pb.SubscribeAccepted(
                broker_id=self.broker_id,
                max_rdy_count=2500,
                msg_timeout_ms=60_000,
                heartbeat_interval_ms=self.heartbeat_interval_ms or 30_000,
            )
        )

        async def reader() -> None:
            async for req in it:
                kind = req.WhichOneof("command")
                if kind == "ready":
                    sub.rdy = req.ready.count
                elif kind == "finish":
                    for i in req.finish.ids:
                        if sub.inflight.pop(i, None) is not None:
                            ch.finished.append(i)
                elif kind == "requeue":
                    for i in req.requeue.ids:
                        m = sub.inflight.pop(i, None)
                        if m is not None:
                            ch.requeues.append((i, req.requeue.delay_ms))
                            ch.ready.append(m)
                elif kind == "touch":
                    ch.touches.extend(req.touch.ids)
                elif kind == "close":
                    sub.closing = True
                ch.wake.set()
            sub.closing = True
            ch.wake.set()

        async def heartbeats() -> None:
            if self.heartbeat_interval_ms:
                while True:
                    await asyncio.sleep(self.heartbeat_interval_ms / 1000)
                    await sub.queue.put(pb.SubscribeResponse(heartbeat=True))

        rt = asyncio.ensure_future(reader())
        ht = asyncio.ensure_future(heartbeats())
        try:
            while True:
                if sub.closing and not sub.inflight:
                    return
                while not sub.queue.empty():
                    yield sub.queue.get_nowait()
                credit = sub.rdy - len(sub.inflight)
                if credit > 0 and ch.ready and not sub.closing:
                    batch = pb.SubscribeDeliveries()
                    while credit > 0 and ch.ready:
                        m = ch.ready.popleft()
                        m.attempts += 1
                        d = batch.messages.add()
                        d.CopyFrom(m)
                        sub.inflight[m.id] = m
                        credit -= 1
                    yield pb.SubscribeResponse(deliveries=batch)
                    continue
                ch.wake.clear()
                waiter = asyncio.ensure_future(ch.wake.wait())
                qwait = asyncio.ensure_future(sub.queue.get())
                done, _ = await asyncio.wait({waiter, qwait}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if qwait in done:
                    item = qwait.result()
                    if item is not None:
                        yield item
                else:
                    qwait.cancel()
        finally:
            rt.cancel()
            ht.cancel()
            ch.subs.remove(sub)
            for m in sub.inflight.values():
                ch.ready.appendleft(m)

    async def GetStats(self, request: Any, context: Any) -> Any:
        self.calls["GetStats"] += 1
        resp = pb.GetStatsResponse(broker_id=self.broker_id, version="fake", health="ok")
        for topic, msgs in self.stored.items():
            t = resp.topics.add(name=topic, depth=len(msgs), message_count=len(msgs))
            for (tn, cn), ch in self.channels.items():
                if tn == topic:
                    t.channels.add(name=cn, depth=len(ch.ready), finished=len(ch.finished))
        return resp


@dataclass
class RunningFake:
    broker: FakeBroker
    address: str
    server: Any


@asynccontextmanager
async def run_fake_broker(**kwargs: Any) -> AsyncIterator[RunningFake]:
    broker = FakeBroker(**kwargs)
    server = grpc.aio.server()
    broker_pb2_grpc.add_BrokerServiceServicer_to_server(broker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield RunningFake(broker, f"127.0.0.1:{port}", server)
    finally:
        await server.stop(grace=None)


if __name__ == "__main__":  # a standalone fake for client benchmarks
    import sys

    async def _main() -> None:
        port = int(sys.argv[1]) if len(sys.argv) > 1 else 4199
        broker = FakeBroker()
        server = grpc.aio.server()
        broker_pb2_grpc.add_BrokerServiceServicer_to_server(broker, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(_main())
