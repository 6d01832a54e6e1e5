"""The broker's gRPC service (``pairq.v1.BrokerService``).

Every RPC validates its input and answers a clear status with a stable
``ErrorInfo.reason``; nothing a client sends can crash the broker. Subscribe
responses are pre-encoded bytes (see ``wire``), so the handler for that one
method is registered with an identity serializer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc

from pairq.broker import wire
from pairq.broker.channel import Channel
from pairq.broker.channel_core import DelayError, RdyError
from pairq.broker.subscriber import Subscriber, Terminate
from pairq.errors import PairqError, UnavailableError, serve_rpc
from pairq.names import check_channel, check_topic
from pairq.streams import SerialWriter, identity
from pairq.v1 import broker_pb2 as pb

if TYPE_CHECKING:
    from pairq.broker.broker import Broker

log = logging.getLogger("pairq.service")

SERVICE = "pairq.v1.BrokerService"
MAX_HEADER_BYTES = 64 * 1024
TRACEPARENT = "traceparent"
IDENTIFY_TIMEOUT = 30.0
# Requests of one PublishStream served at once (more wait in gRPC's flow control).
MAX_STREAM_REQUESTS = 64


def _invalid(message: str, code: int = pb.ERROR_CODE_INVALID) -> PairqError:
    return PairqError(message, code=code)


class IdMaker:
    """Broker-assigned ids: 8 random bytes per process + an 8-byte counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8)
        self._n = itertools.count(int.from_bytes(os.urandom(4), "big"))
        self._pack = struct.Struct(">Q").pack

    def __call__(self) -> bytes:
        return self._prefix + self._pack(next(self._n))


class BrokerService:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.opts = broker.options
        self.new_id = IdMaker()
        self.publish_streams: set[PublishStream] = set()

    # ------------------------------------------------------------ helpers
    async def _call(self, context: Any, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await serve_rpc(context, fn)

    def _record(self, item: pb.PublishItem, now_ns: int, ts_field: bytes) -> tuple[bytes, bytes]:
        body = item.body
        size = len(body)
        if size == 0 or size > self.opts.max_msg_size:
            raise _invalid(
                f"message body is {size} bytes; it must be 1 to {self.opts.max_msg_size} bytes "
                "(--max-msg-size)",
                pb.ERROR_CODE_BAD_MESSAGE,
            )
        msg_id = item.id
        if msg_id:
            if len(msg_id) != 16:
                raise _invalid(f"message id must be exactly 16 bytes, got {len(msg_id)}")
        else:
            msg_id = self.new_id()
        due_ns = 0
        defer_ms = item.defer_ms
        if defer_ms:
            if defer_ms > self.opts.max_defer_ms:
                raise _invalid(
                    f"defer_ms {defer_ms} exceeds the maximum {self.opts.max_defer_ms} "
                    "(--max-defer-ms)"
                )
            due_ns = now_ns + defer_ms * 1_000_000
        headers = b""
        if item.headers:
            h = dict(item.headers)
            if sum(len(k) + len(v) for k, v in h.items()) > MAX_HEADER_BYTES:
                raise _invalid(f"headers exceed {MAX_HEADER_BYTES} bytes")
            if any(not k for k in h):
                raise _invalid("header names must not be empty")
            headers = wire.encode_headers(h)
        return msg_id, wire.encode_record(msg_id, body, now_ns, due_ns, headers, ts_field=ts_field)

    # ------------------------------------------------------------ publish
    async def _publish(
        self,
        topic_name: str,
        items: list[tuple[bytes, bytes, bool]],
        traced: list[tuple[bytes, str]] | None = None,
        *,
        new_ids: bool = False,
    ) -> int:
        """Store (id, record, producer-supplied) items, skipping ids already stored
        within the idempotency window; returns the copies.

        ``traced``: (id, traceparent) of messages carrying W3C trace context; with
        tracing on, each gets a ``pairq publish`` span in its producer's trace,
        covering the durable store (and the partner's copy).

        ``new_ids``: the client vouches that every id is new (PublishStreamRequest.new_ids),
        so the idempotency lookup is skipped; the ids are recorded all the same."""
        if traced and self.broker.tracer is not None:
            return await self._publish_traced(topic_name, items, traced)
        broker = self.broker
        topic = broker.topics.get(topic_name) or await broker.get_topic(topic_name)
        supplied = [] if new_ids else [i for i, _, s in items if s]
        if not supplied or topic.ephemeral or not self.opts.idempotency_window_s:
            _, copies = await topic.publish([r for _, r, _ in items])
            return copies
        pair = broker.pair
        if pair is not None:
            pair.check_accepting()
        known = broker.store.known_ids(supplied)
        if pair is not None and pair.standby.unconfirmed_ids:
            # The partner's copy of these is still unconfirmed (pair.StandbyStore):
            # stored only if the partner confirms its own commit.
            maybe = [i for i in supplied if i not in known and i in pair.standby.unconfirmed_ids]
            if maybe:
                known |= await pair.standby.wait_confirmed(maybe, timeout=3 * pair.lease)
        pending = broker.pending_ids
        waits: list[asyncio.Future[int]] = []
        fresh: list[bytes] = []
        fresh_ids: list[bytes] = []
        seen: set[bytes] = set()
        for msg_id, rec, is_supplied in items:
            if is_supplied:
                if msg_id in known or msg_id in seen:
                    continue
                other = pending.get(msg_id)
                if other is not None:
                    waits.append(other)
                    continue
                seen.add(msg_id)
                fresh_ids.append(msg_id)
            fresh.append(rec)
        copies = broker.current_copies(topic)
        if fresh:
            mine: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            for i in fresh_ids:
                pending[i] = mine
            try:
                _, copies = await topic.publish(fresh)
                mine.set_result(copies)
            except BaseException as exc:
                mine.set_exception(exc)
                mine.exception()  # retrieved: waiters re-raise it
                raise
            finally:
                for i in fresh_ids:
                    if pending.get(i) is mine:
                        del pending[i]
        for w in waits:
            copies = min(copies, await asyncio.shield(w))
        if known and pair is not None:
            # A retried id: its first copy may predate a reconnect, so answer only
            # once the partner has acknowledged everything up to now.
            barrier = pair.barrier()
            try:
                if barrier is None:
                    raise UnavailableError("partner unreachable")
                await barrier
            except UnavailableError as exc:
                if pair.min_copies >= 2:
                    raise UnavailableError(
                        f"message already stored here, but partner {pair.partner_address} is "
                        "unreachable, so it may have only 1 copy (--min-copies=2); retry"
                    ) from exc
                copies = 1
        return copies

    async def _publish_traced(
        self,
        topic_name: str,
        items: list[tuple[bytes, bytes, bool]],
        traced: list[tuple[bytes, str]],
    ) -> int:
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        tracer = self.broker.tracer
        prop = TraceContextTextMapPropagator()
        spans = []
        for msg_id, parent in traced:
            ctx = prop.extract({"traceparent": parent})
            span = tracer.start_span(
                "pairq publish",
                context=ctx,
                kind=SpanKind.SERVER,
                attributes={
                    "messaging.system": "pairq",
                    "messaging.destination.name": topic_name,
                    "messaging.message.id": msg_id.hex(),
                    "pairq.broker_id": self.broker.node_id,
                },
            )
            spans.append(span)
        try:
            copies = await self._publish(topic_name, items)
            for span in spans:
                span.set_attribute("pairq.copies", copies)
            return copies
        except Exception as exc:
            for span in spans:
                span.record_exception(exc)
            raise
        finally:
            for span in spans:
                span.end()

    async def Publish(self, request: pb.PublishRequest, context: Any) -> pb.PublishResponse:
        async def run() -> pb.PublishResponse:
            self.broker.check_accepting()
            check_topic(request.topic)
            now_ns = time.time_ns()
            msg_id, rec = self._record(request.message, now_ns, wire.timestamp_field(now_ns))
            traced = None
            if self.broker.tracer is not None and request.message.headers:
                tp = request.message.headers.get(TRACEPARENT)
                traced = [(msg_id, tp)] if tp else None
            copies = await self._publish(
                request.topic, [(msg_id, rec, bool(request.message.id))], traced
            )
            return pb.PublishResponse(id=msg_id, copies=copies)

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def _publish_items(
        self, topic: str, messages: Any, *, new_ids: bool = False
    ) -> tuple[list[bytes], int, bool]:
        """Validate and store one batch (PublishBatch or one PublishStream request):
        returns (ids in request order, copies, whether every message carried its id)."""
        self.broker.check_accepting()
        check_topic(topic)
        n = len(messages)
        if n == 0 or n > self.opts.max_batch:
            raise _invalid(
                f"batch has {n} messages; it must have 1 to {self.opts.max_batch} (--max-batch)",
                pb.ERROR_CODE_BAD_BATCH,
            )
        now_ns = time.time_ns()
        ts_field = wire.timestamp_field(now_ns)
        items = []
        make = self._record
        plain = wire.encode_plain_record
        max_size = self.opts.max_msg_size
        traced: list[tuple[bytes, str]] = []
        tracing = self.broker.tracer is not None
        all_supplied = True
        for item in messages:
            body = item.body
            i = item.id
            # Fast path: a producer id, no headers, no delay (what Producer sends).
            if (
                len(i) == 16
                and 0 < len(body) <= max_size
                and not item.defer_ms
                and not item.headers
            ):
                items.append((i, plain(i, body, ts_field), True))
                continue
            i, r = make(item, now_ns, ts_field)
            supplied = bool(item.id)
            all_supplied = all_supplied and supplied
            items.append((i, r, supplied))
            if tracing and item.headers:
                tp = item.headers.get(TRACEPARENT)
                if tp:
                    traced.append((i, tp))
        copies = await self._publish(topic, items, traced or None, new_ids=new_ids)
        return [i for i, _, _ in items], copies, all_supplied

    async def PublishBatch(
        self, request: pb.PublishBatchRequest, context: Any
    ) -> pb.PublishBatchResponse:
        async def run() -> pb.PublishBatchResponse:
            ids, copies, _ = await self._publish_items(request.topic, request.messages)
            return pb.PublishBatchResponse(ids=ids, copies=copies)

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def PublishStream(self, request_iterator: Any, context: Any) -> None:
        stream = PublishStream(self, context)
        self.publish_streams.add(stream)
        try:
            await stream.run()
        finally:
            self.publish_streams.discard(stream)

    def close_publish_streams(self) -> None:
        """Shutdown: stop reading every PublishStream; each ends once its requests are answered."""
        for stream in list(self.publish_streams):
            stream.close()

    # ------------------------------------------------------------ subscribe
    async def Subscribe(self, request_iterator: Any, context: Any) -> AsyncIterator[bytes]:
        try:
            first = await asyncio.wait_for(context.read(), IDENTIFY_TIMEOUT)
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, "no SubscribeIdentify within 30 s"
            )
            return
        if first is grpc.aio.EOF:
            return
        if first.WhichOneof("command") != "identify":
            err = _invalid(
                "the first message on a Subscribe stream must be SubscribeIdentify",
                pb.ERROR_CODE_NOT_IDENTIFIED,
            )
            await err.abort(context)
            return
        ident = first.identify
        try:
            self.broker.check_accepting()
            check_topic(ident.topic)
            check_channel(ident.channel)
            timeout_ms = ident.msg_timeout_ms or self.opts.msg_timeout_ms
            if timeout_ms > self.opts.max_msg_timeout_ms:
                raise _invalid(
                    f"msg_timeout_ms {timeout_ms} exceeds the maximum {self.opts.max_msg_timeout_ms}"
                )
            hb_ms = ident.heartbeat_interval_ms or self.opts.heartbeat_interval_ms
            if hb_ms < 100 or hb_ms > 600_000:
                raise _invalid(f"heartbeat_interval_ms {hb_ms} must be 100 to 600000")
            topic = await self.broker.get_topic(ident.topic)
            channel = await topic.get_channel(ident.channel)
        except PairqError as exc:
            await exc.abort(context)
            return
        sub = Subscriber(
            channel,
            client_id=ident.client_id[:256],
            hostname=ident.hostname[:256],
            user_agent=ident.user_agent[:256],
            remote_address=context.peer() or "",
            msg_timeout=timeout_ms / 1000.0,
            heartbeat_interval=hb_ms / 1000.0,
        )
        channel.add_subscriber(sub)
        reader = asyncio.create_task(self._read_commands(context, sub, channel))
        heartbeat = asyncio.create_task(self._heartbeats(sub))
        try:
            yield pb.SubscribeResponse(
                accepted=pb.SubscribeAccepted(
                    broker_id=self.broker.node_id,
                    max_rdy_count=self.opts.max_rdy_count,
                    msg_timeout_ms=timeout_ms,
                    heartbeat_interval_ms=hb_ms,
                    max_attempts=self.opts.max_attempts,
                )
            ).SerializeToString()
            q = sub.queue
            while True:
                item = await q.get()
                if item is None:
                    break
                if isinstance(item, Terminate):
                    err = PairqError(item.message, code=item.code)
                    await err.abort(context)
                    break
                if isinstance(item, tuple):
                    # Deliveries: re-check the fence right before they leave. A
                    # paused process may resume after its lease lapsed: hold them
                    # until the lease is back; if the partner took them over
                    # meanwhile (the fence generation moved), drop them (the
                    # channel forgot them too).
                    if not await self._fence_allows(sub, item[1]):
                        continue
                    item = item[0]
                yield item
        finally:
            reader.cancel()
            heartbeat.cancel()
            sub.done = True
            channel.remove_subscriber(sub)

    async def _fence_allows(self, sub: Subscriber, fence: int) -> bool:
        broker = self.broker
        pair = broker.pair
        while (
            pair is not None and not broker.may_deliver() and fence == pair.fence and not sub.done
        ):
            await pair.fence_moved(
                timeout=0.1
            )  # an ack renewed the lease, or a drop moved the fence
        return fence == broker.fence() and broker.may_deliver()

    async def _heartbeats(self, sub: Subscriber) -> None:
        hb = pb.SubscribeResponse(heartbeat=True).SerializeToString()
        while not sub.done:
            await asyncio.sleep(sub.heartbeat_interval)
            if time.monotonic() - sub.last_seen > 2 * sub.heartbeat_interval:
                sub.terminate(
                    f"no message from the client for {2 * sub.heartbeat_interval:.1f} s "
                    "(heartbeats unanswered); in-flight messages were requeued",
                    pb.ERROR_CODE_HEARTBEAT_TIMEOUT,
                )
                return
            sub.queue.put_nowait(hb)

    async def _read_commands(self, context: Any, sub: Subscriber, channel: Channel) -> None:
        try:
            while True:
                req = await context.read()
                if req is grpc.aio.EOF:
                    sub.finish_stream()
                    return
                sub.last_seen = time.monotonic()
                kind = req.WhichOneof("command")
                if kind == "finish":
                    unknown = channel.finish(sub.cid, list(req.finish.ids))
                    if unknown:
                        sub.send_error(
                            pb.ERROR_CODE_FIN_FAILED,
                            f"FIN failed for {len(unknown)} message(s) not in flight on this "
                            "subscription (timed out and requeued, or unknown id)",
                            unknown,
                        )
                elif kind == "ready":
                    try:
                        channel.set_ready(sub.cid, 0 if sub.closing else req.ready.count)
                    except RdyError:
                        sub.terminate(
                            f"RDY {req.ready.count} is above the broker's maximum "
                            f"{self.opts.max_rdy_count} (--max-rdy-count)",
                            pb.ERROR_CODE_BAD_RDY,
                        )
                        return
                elif kind == "requeue":
                    delay_ms = req.requeue.delay_ms
                    if delay_ms > self.opts.max_defer_ms:
                        sub.send_error(
                            pb.ERROR_CODE_REQ_FAILED,
                            f"requeue delay {delay_ms} ms exceeds the maximum "
                            f"{self.opts.max_defer_ms} (--max-defer-ms)",
                            list(req.requeue.ids),
                        )
                        continue
                    try:
                        unknown = channel.requeue(sub.cid, list(req.requeue.ids), delay_ms / 1000.0)
                    except DelayError as exc:  # pragma: no cover - uint32 is never negative
                        sub.send_error(pb.ERROR_CODE_REQ_FAILED, str(exc))
                        continue
                    if unknown:
                        sub.send_error(
                            pb.ERROR_CODE_REQ_FAILED,
                            f"REQ failed for {len(unknown)} message(s) not in flight on this subscription",
                            unknown,
                        )
                elif kind == "touch":
                    unknown = channel.touch(sub.cid, list(req.touch.ids))
                    if unknown:
                        sub.send_error(
                            pb.ERROR_CODE_TOUCH_FAILED,
                            f"TOUCH failed for {len(unknown)} message(s) not in flight on this subscription",
                            unknown,
                        )
                elif kind == "close":
                    sub.closing = True
                    channel.set_ready(sub.cid, 0)
                elif kind == "identify":
                    sub.terminate("SubscribeIdentify may only be sent once", pb.ERROR_CODE_INVALID)
                    return
                # nop / unset: liveness only
                if sub.closing and channel.core.client(sub.cid).in_flight == 0:
                    sub.finish_stream()
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, grpc.aio.AioRpcError | grpc.RpcError):
                log.exception("subscribe reader failed")
            sub.finish_stream()

    # ------------------------------------------------------------ admin
    async def _topic(self, name: str, create: bool = False) -> Any:
        check_topic(name)
        return await self.broker.get_topic(name, create=create)

    async def CreateTopic(
        self, request: pb.CreateTopicRequest, context: Any
    ) -> pb.CreateTopicResponse:
        async def run() -> pb.CreateTopicResponse:
            await self._topic(request.topic, create=True)
            return pb.CreateTopicResponse()

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def DeleteTopic(
        self, request: pb.DeleteTopicRequest, context: Any
    ) -> pb.DeleteTopicResponse:
        async def run() -> pb.DeleteTopicResponse:
            await self._topic(request.topic)
            await self.broker.delete_topic(request.topic)
            return pb.DeleteTopicResponse()

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def EmptyTopic(
        self, request: pb.EmptyTopicRequest, context: Any
    ) -> pb.EmptyTopicResponse:
        async def run() -> pb.EmptyTopicResponse:
            (await self._topic(request.topic)).empty()
            return pb.EmptyTopicResponse()

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def PauseTopic(
        self, request: pb.PauseTopicRequest, context: Any
    ) -> pb.PauseTopicResponse:
        async def run() -> pb.PauseTopicResponse:
            await self.broker.set_paused(await self._topic(request.topic), None, True)
            return pb.PauseTopicResponse()

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def UnpauseTopic(
        self, request: pb.UnpauseTopicRequest, context: Any
    ) -> pb.UnpauseTopicResponse:
        async def run() -> pb.UnpauseTopicResponse:
            await self.broker.set_paused(await self._topic(request.topic), None, False)
            return pb.UnpauseTopicResponse()

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def _channel(self, topic: str, channel: str, create: bool = False) -> Channel:
        check_channel(channel)
        t = await self._topic(topic, create=create)
        return await t.get_channel(channel, create=create)  # type: ignore[no-any-return]

    async def CreateChannel(
        self, request: pb.CreateChannelRequest, context: Any
    ) -> pb.CreateChannelResponse:
        async def run() -> pb.CreateChannelResponse:
            await self._channel(request.topic, request.channel, create=True)
            return pb.CreateChannelResponse()

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def DeleteChannel(
        self, request: pb.DeleteChannelRequest, context: Any
    ) -> pb.DeleteChannelResponse:
        async def run() -> pb.DeleteChannelResponse:
            ch = await self._channel(request.topic, request.channel)
            ch.topic.delete_channel(ch.name)
            return pb.DeleteChannelResponse()

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def EmptyChannel(
        self, request: pb.EmptyChannelRequest, context: Any
    ) -> pb.EmptyChannelResponse:
        async def run() -> pb.EmptyChannelResponse:
            (await self._channel(request.topic, request.channel)).empty()
            return pb.EmptyChannelResponse()

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def PauseChannel(
        self, request: pb.PauseChannelRequest, context: Any
    ) -> pb.PauseChannelResponse:
        async def run() -> pb.PauseChannelResponse:
            ch = await self._channel(request.topic, request.channel)
            await self.broker.set_paused(ch.topic, ch, True)
            return pb.PauseChannelResponse()

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def UnpauseChannel(
        self, request: pb.UnpauseChannelRequest, context: Any
    ) -> pb.UnpauseChannelResponse:
        async def run() -> pb.UnpauseChannelResponse:
            ch = await self._channel(request.topic, request.channel)
            await self.broker.set_paused(ch.topic, ch, False)
            return pb.UnpauseChannelResponse()

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def GetStats(self, request: pb.GetStatsRequest, context: Any) -> pb.GetStatsResponse:
        async def run() -> pb.GetStatsResponse:
            if request.channel and not request.topic:
                raise _invalid("GetStats: channel needs topic")
            if request.topic:
                await self._topic(request.topic)
            return self.broker.stats(request.topic, request.channel, not request.no_clients)

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Any
    ) -> pb.ListDeadLettersResponse:
        async def run() -> pb.ListDeadLettersResponse:
            ch = await self._channel(request.topic, request.channel)
            limit = request.limit or 100
            if limit > 10000:
                raise _invalid("ListDeadLetters: limit must be <= 10000")
            if ch.durable:
                ch.flush()
                await self.broker.store.barrier()
            resp = pb.ListDeadLettersResponse(total=ch.dlq_count)
            for _seq, attempts, rec in ch.list_dead(limit):
                m = resp.messages.add()
                m.MergeFromString(wire.record_message(rec))
                m.attempts = attempts
                m.broker_id = self.broker.node_id
            return resp

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def ReplayDeadLetters(
        self, request: pb.ReplayDeadLettersRequest, context: Any
    ) -> pb.ReplayDeadLettersResponse:
        async def run() -> pb.ReplayDeadLettersResponse:
            ch = await self._channel(request.topic, request.channel)
            for i in request.ids:
                if len(i) != 16:
                    raise _invalid(f"message ids are 16 bytes; got {len(i)}")
            ids = set(request.ids) if request.ids else None
            if ch.durable:
                await self.broker.store.barrier()
            n = await ch.replay_dead(ids)
            return pb.ReplayDeadLettersResponse(replayed=n)

        return await self._call(context, run)  # type: ignore[no-any-return]

    # ------------------------------------------------------------ registration
    def generic_handler(self) -> Any:
        def unary(fn: Any, req: Any, resp: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )

        handlers = {
            "Publish": unary(self.Publish, pb.PublishRequest, pb.PublishResponse),
            "PublishBatch": unary(
                self.PublishBatch, pb.PublishBatchRequest, pb.PublishBatchResponse
            ),
            "PublishStream": grpc.stream_stream_rpc_method_handler(
                self.PublishStream,
                request_deserializer=pb.PublishStreamRequest.FromString,
                response_serializer=pb.PublishStreamResponse.SerializeToString,
            ),
            "Subscribe": grpc.stream_stream_rpc_method_handler(
                self.Subscribe,
                request_deserializer=pb.SubscribeRequest.FromString,
                response_serializer=identity,
            ),
        }
        for name in (
            "CreateTopic",
            "DeleteTopic",
            "EmptyTopic",
            "PauseTopic",
            "UnpauseTopic",
            "CreateChannel",
            "DeleteChannel",
            "EmptyChannel",
            "PauseChannel",
            "UnpauseChannel",
            "GetStats",
            "ListDeadLetters",
            "ReplayDeadLetters",
        ):
            handlers[name] = unary(
                getattr(self, name), getattr(pb, name + "Request"), getattr(pb, name + "Response")
            )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


class PublishStream:
    """One ``PublishStream`` call: requests are read in order and served
    concurrently (up to ``MAX_STREAM_REQUESTS`` at once; beyond that the broker
    stops reading and gRPC flow control holds the client back); each answer is
    written as soon as its batch is durable, one write at a time."""

    def __init__(self, service: BrokerService, context: Any) -> None:
        self.service = service
        self.context = context
        self.tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._writer = SerialWriter(context.write, self._write_failed)
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

    async def run(self) -> None:
        self._reader = asyncio.ensure_future(self._read())
        try:
            await self._reader
        except asyncio.CancelledError:
            if not self._closing:
                raise
        except Exception as exc:  # the stream broke (client gone): nothing to answer
            log.debug("publish stream ended: %s", exc)
        # Answer what was accepted before ending the stream.
        while self.tasks:
            await asyncio.wait(list(self.tasks))

    def close(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self) -> None:
        context = self.context
        loop = asyncio.get_running_loop()
        while True:
            if len(self.tasks) >= MAX_STREAM_REQUESTS:
                self._room.clear()
                await self._room.wait()
            req = await context.read()
            if req is grpc.aio.EOF:
                return
            task = loop.create_task(self._serve(req))
            self.tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if len(self.tasks) < MAX_STREAM_REQUESTS:
            self._room.set()

    async def _serve(self, req: pb.PublishStreamRequest) -> None:
        rid = req.request_id
        try:
            ids, copies, all_supplied = await self.service._publish_items(
                req.topic, req.messages, new_ids=req.new_ids
            )
            resp = (
                pb.PublishStreamResponse(request_id=rid, copies=copies)
                if all_supplied
                else pb.PublishStreamResponse(request_id=rid, ids=ids, copies=copies)
            )
        except PairqError as exc:
            resp = pb.PublishStreamResponse(
                request_id=rid, error=pb.PublishError(code=cast(Any, exc.code), message=exc.message)
            )
        except Exception as exc:
            log.exception("internal error serving a publish stream request")
            resp = pb.PublishStreamResponse(
                request_id=rid, error=pb.PublishError(message=f"internal error: {exc}")
            )
        await self._writer.put(resp)

    @staticmethod
    def _write_failed(exc: Exception) -> None:
        # The client went away; its retries go elsewhere.
        log.debug("cannot answer on a publish stream: %s", exc)
