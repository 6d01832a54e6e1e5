"""The broker's gRPC service (``pairq.v1.BrokerService``): protobuf in, domain calls, protobuf out.

Every RPC validates its input and answers a clear status with a stable
``ErrorInfo.reason``; nothing a client sends can crash the broker. Unary RPCs
are written as ``async def Name(self, request) -> response`` under ``@unary``,
the one wrapper that turns a ``PairqError`` into its status (and a bug into
INTERNAL). Publishing itself is ``publishing.Publisher``'s; Subscribe
responses are pre-encoded bytes (see ``wire``), so the handler for that one
method is registered with an identity serializer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

import grpc

from pairq.broker import wire
from pairq.broker.actions import Actions
from pairq.broker.channel import Channel
from pairq.broker.channel_core import DelayError, RdyError
from pairq.broker.integrity import Integrity
from pairq.broker.limits import RateLimiter, limit_exceeded
from pairq.broker.options import BrokerOptions
from pairq.broker.ports import DeliveryFence
from pairq.broker.publishing import MAX_HEADER_BYTES, Publisher
from pairq.broker.store import CorruptStoreError, Store
from pairq.broker.subscriber import Subscriber, Terminate
from pairq.broker.topic import Topic
from pairq.errors import PairqError, Undecodable, decoder, serve_rpc
from pairq.names import check_channel, check_topic
from pairq.streams import SerialWriter, identity
from pairq.v1 import broker_pb2 as pb

log = logging.getLogger("pairq.service")

SERVICE = "pairq.v1.BrokerService"
IDENTIFY_TIMEOUT = 30.0
# How long a disconnected subscriber's stream may take to end by itself (its writer
# may be stuck writing to a client that does not read) before it is cancelled.
STUCK_STREAM_GRACE = 1.0
# Requests of one PublishStream served at once (more wait in gRPC's flow control).
MAX_STREAM_REQUESTS = 64
# SubscribeIdentify.heartbeat_interval_ms a client may ask for.
MIN_HEARTBEAT_INTERVAL_MS = 100
MAX_HEARTBEAT_INTERVAL_MS = 600_000

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _invalid(message: str, code: int = pb.ERROR_CODE_INVALID) -> PairqError:
    return PairqError(message, code=code)


def broker_limits(opts: BrokerOptions) -> pb.BrokerLimits:
    """The limits ``opts`` make the broker enforce, as clients are told them
    (``SubscribeAccepted.limits``, ``GetStatsResponse.limits``). Each field
    carries the value of the option of the same name; the last four are the
    constants the broker checks against."""
    return pb.BrokerLimits(
        max_msg_size=opts.max_msg_size,
        max_batch=opts.max_batch,
        max_batch_bytes=opts.max_batch_bytes,
        max_defer_ms=opts.max_defer_ms,
        max_msg_timeout_ms=opts.max_msg_timeout_ms,
        msg_timeout_ms=opts.msg_timeout_ms,
        max_rdy_count=opts.max_rdy_count,
        max_rdy_total=opts.max_rdy_total,
        idempotency_window_s=opts.idempotency_window_s,
        max_publish_rate=opts.max_publish_rate,
        max_topics=opts.max_topics,
        max_channels=opts.max_channels,
        max_clients=opts.max_clients,
        max_attempts=opts.max_attempts,
        heartbeat_interval_ms=opts.heartbeat_interval_ms,
        min_heartbeat_interval_ms=MIN_HEARTBEAT_INTERVAL_MS,
        max_heartbeat_interval_ms=MAX_HEARTBEAT_INTERVAL_MS,
        max_header_bytes=MAX_HEADER_BYTES,
    )


class ServiceHost(Protocol):
    """What the service asks of the broker besides publishing."""

    options: BrokerOptions
    store: Store

    @property
    def node_id(self) -> str: ...

    @property
    def fence_port(self) -> DeliveryFence: ...

    def check_serving(self) -> None: ...

    async def get_topic(self, name: str, *, create: bool = True) -> Topic: ...

    async def delete_topic(self, name: str) -> None: ...

    async def set_paused(self, topic: Topic, channel: Channel | None, paused: bool) -> None: ...

    def stats(
        self, topic: str = "", channel: str = "", clients: bool = True
    ) -> pb.GetStatsResponse: ...

    @property
    def integrity(self) -> Integrity | None: ...


def unary(
    fn: Callable[[BrokerService, Req], Awaitable[Resp]],
) -> Callable[[BrokerService, Req, Any], Awaitable[Resp]]:
    """A unary RPC body ``fn(self, request)`` as a gRPC handler ``(self, request, context)``."""

    @functools.wraps(fn)
    async def handler(self: BrokerService, request: Req, context: Any) -> Resp:
        if isinstance(request, Undecodable):
            await request.error().abort(context)
        return cast(Resp, await serve_rpc(context, lambda: fn(self, request)))

    return handler


class BrokerService:
    def __init__(self, host: ServiceHost, publisher: Publisher) -> None:
        self.broker = host
        self.opts = host.options
        self.publisher = publisher
        self.actions = Actions(host)
        self.publish_streams: set[PublishStream] = set()
        self._aborts: set[asyncio.Task[None]] = set()
        self.rate = RateLimiter(self.opts.max_publish_rate)
        self.limits = broker_limits(self.opts)
        self.subscriptions = 0  # Subscribe streams identified and not yet ended
        self.rdy_total = 0  # RDY credit granted over all of them (--max-rdy-total)

    # ------------------------------------------------------------ publish
    def check_rate(self, peer: str, n: int) -> None:
        """Refuse ``n`` messages from connection ``peer`` above --max-publish-rate."""
        if not self.rate.allow(peer, n, time.monotonic()):
            raise limit_exceeded(
                "max_publish_rate",
                self.opts.max_publish_rate,
                f"this connection publishes more than {self.opts.max_publish_rate} messages/s",
            )

    async def Publish(self, request: Any, context: Any) -> pb.PublishResponse:
        async def run() -> pb.PublishResponse:
            self.check_rate(context.peer() or "", 1)
            msg_id, copies = await self.publisher.publish_one(request.topic, request.message)
            return pb.PublishResponse(id=msg_id, copies=copies)

        if isinstance(request, Undecodable):
            await request.error().abort(context)
        return cast(pb.PublishResponse, await serve_rpc(context, run))

    async def PublishBatch(self, request: Any, context: Any) -> pb.PublishBatchResponse:
        async def run() -> pb.PublishBatchResponse:
            self.check_rate(context.peer() or "", len(request.messages))
            ids, copies, _ = await self.publisher.publish_messages(request.topic, request.messages)
            return pb.PublishBatchResponse(ids=ids, copies=copies)

        if isinstance(request, Undecodable):
            await request.error().abort(context)
        return cast(pb.PublishBatchResponse, await serve_rpc(context, run))

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
        if isinstance(first, Undecodable):
            await first.error().abort(context)
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
            self.broker.check_serving()
            check_topic(ident.topic)
            check_channel(ident.channel)
            timeout_ms = ident.msg_timeout_ms or self.opts.msg_timeout_ms
            if timeout_ms > self.opts.max_msg_timeout_ms:
                # Refused, not capped: a consumer that needs this long per message
                # must not silently get less (see SubscribeIdentify in broker.proto).
                raise PairqError(
                    f"msg_timeout_ms {timeout_ms} exceeds the maximum "
                    f"{self.opts.max_msg_timeout_ms} (--max-msg-timeout-ms)",
                    code=pb.ERROR_CODE_INVALID,
                    limit="max_msg_timeout_ms",
                    max=self.opts.max_msg_timeout_ms,
                )
            hb_ms = ident.heartbeat_interval_ms or self.opts.heartbeat_interval_ms
            if not MIN_HEARTBEAT_INTERVAL_MS <= hb_ms <= MAX_HEARTBEAT_INTERVAL_MS:
                raise _invalid(
                    f"heartbeat_interval_ms {hb_ms} must be {MIN_HEARTBEAT_INTERVAL_MS} "
                    f"to {MAX_HEARTBEAT_INTERVAL_MS}"
                )
            self.admit()
            topic = await self.broker.get_topic(ident.topic)
            channel = await topic.get_channel(ident.channel)
        except PairqError as exc:
            await exc.abort(context)
            return
        sub = Subscriber(
            client_id=ident.client_id[:256],
            hostname=ident.hostname[:256],
            user_agent=ident.user_agent[:256],
            remote_address=context.peer() or "",
            msg_timeout=timeout_ms / 1000.0,
            heartbeat_interval=hb_ms / 1000.0,
            max_queued_bytes=self.opts.max_subscriber_buffer_bytes,
        )
        self.joined(sub, channel)
        reader = asyncio.create_task(self._read_commands(context, sub, channel))
        stream_task = asyncio.current_task()
        assert stream_task is not None
        heartbeat = asyncio.create_task(self._heartbeats(sub, context, channel, stream_task))
        try:
            yield pb.SubscribeResponse(
                accepted=pb.SubscribeAccepted(
                    broker_id=self.broker.node_id,
                    max_rdy_count=self.opts.max_rdy_count,
                    msg_timeout_ms=timeout_ms,
                    heartbeat_interval_ms=hb_ms,
                    max_attempts=self.opts.max_attempts,
                    limits=self.limits,
                )
            ).SerializeToString()
            q = sub.queue
            while True:
                item = await q.get()
                if item is None:
                    break
                if isinstance(item, Terminate):
                    if sub.aborting:
                        break  # the watchdog is ending the call (see _heartbeats)
                    sub.aborting = True
                    err = PairqError(item.message, code=item.code)
                    await err.abort(context)
                    break
                if isinstance(item, tuple):
                    sub.taken(len(item[0]))
                    # Deliveries: re-check the fence right before they leave. A
                    # paused process may resume after its lease lapsed: hold them
                    # until the lease is back; if the partner took them over
                    # meanwhile (the fence generation moved), drop them (the
                    # channel forgot them too).
                    if not await self.fence_allows(sub, item[1]):
                        continue
                    item = item[0]
                sub.writing = True
                yield item
                sub.writing = False
        finally:
            reader.cancel()
            heartbeat.cancel()
            self.left(sub, channel)

    # Shared with every protocol's subscribers (pairq.broker.nsq.tcp): --max-clients,
    # --max-rdy-total, the delivery fence.
    def admit(self) -> None:
        """Refuse one more subscription above --max-clients."""
        if self.subscriptions >= self.opts.max_clients:
            raise limit_exceeded(
                "max_clients",
                self.opts.max_clients,
                f"this broker already serves {self.subscriptions} subscriptions",
            )

    def joined(self, sub: Subscriber, channel: Channel) -> None:
        channel.add_subscriber(sub)
        self.subscriptions += 1

    def left(self, sub: Subscriber, channel: Channel) -> None:
        """The subscription ended: out of its channel (in-flight messages requeued),
        its share of --max-rdy-total given back."""
        sub.done = True
        channel.remove_subscriber(sub)
        self.subscriptions -= 1
        self.rdy_total -= sub.rdy_granted
        sub.rdy_granted = 0

    async def fence_allows(self, sub: Subscriber, fence: int) -> bool:
        port = self.broker.fence_port
        while not port.may_deliver() and fence == port.fence and not sub.done:
            # until an ack renews the lease, or a drop moves the fence
            await port.fence_moved(timeout=0.1)
        return fence == port.fence and port.may_deliver()

    async def _heartbeats(
        self, sub: Subscriber, context: Any, channel: Channel, stream: asyncio.Task[Any]
    ) -> None:
        """Heartbeat the stream; disconnect a client silent for two intervals.

        A silent client is often one that stopped reading its stream too, so the
        stream's writer may be stuck in a write that never completes and would
        never see a queued Terminate: the subscriber is removed from its channel
        here (its in-flight messages requeued at once), its queue dropped, and if
        the writer is stuck (or has not ended the call within one more second), the
        status is queued from here and the stream's task cancelled."""
        hb = pb.SubscribeResponse(heartbeat=True).SerializeToString()
        while not sub.done:
            await asyncio.sleep(sub.heartbeat_interval)
            if time.monotonic() - sub.last_seen > 2 * sub.heartbeat_interval:
                break
            if not sub.held:  # a backed-up stream gets no more, not even heartbeats
                sub.queue.put_nowait(hb)
        if sub.done:
            return
        reason = (
            f"no message from the client for {2 * sub.heartbeat_interval:.1f} s "
            "(heartbeats unanswered); in-flight messages were requeued"
        )
        sub.disconnect(reason, pb.ERROR_CODE_HEARTBEAT_TIMEOUT)
        channel.remove_subscriber(sub)
        if not sub.writing:
            # the writer is free: it takes the Terminate and ends the call itself
            await asyncio.wait({stream}, timeout=STUCK_STREAM_GRACE)
            if stream.done():
                return
        log.info(
            "subscriber %s (%s) is silent and does not read its stream: disconnected",
            sub.client_id[:64],
            sub.remote_address,
        )
        if not sub.aborting:
            # Queue the status from a task of its own (it completes only once the stuck
            # write does or the call is gone), then cancel the stream's task, which frees
            # the call without waiting for the client.
            sub.aborting = True
            status = PairqError(reason, code=pb.ERROR_CODE_HEARTBEAT_TIMEOUT).to_status()
            task = asyncio.get_running_loop().create_task(self._abort_stuck(context, status))
            self._aborts.add(task)
            task.add_done_callback(self._aborts.discard)
            await asyncio.sleep(0)
        stream.cancel()

    @staticmethod
    async def _abort_stuck(context: Any, status: grpc.Status) -> None:
        with contextlib.suppress(Exception):  # AbortError, or the timeout
            async with asyncio.timeout(30.0):
                await context.abort(status.code, status.details, status.trailing_metadata)

    async def _read_commands(self, context: Any, sub: Subscriber, channel: Channel) -> None:
        try:
            while True:
                req = await context.read()
                if req is grpc.aio.EOF:
                    sub.finish_stream()
                    return
                if sub.done:
                    return  # disconnected (the channel may have forgotten it already)
                if isinstance(req, Undecodable):
                    sub.terminate(req.message, pb.ERROR_CODE_INVALID)
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
                        channel.set_ready(sub.cid, self._grant(sub, req.ready.count))
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
                    channel.set_ready(sub.cid, self._grant(sub, 0))
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
            if isinstance(exc, grpc.aio.AioRpcError | grpc.RpcError):
                sub.finish_stream()
            else:
                log.exception("subscribe reader failed")
                sub.terminate(
                    f"internal error reading this stream ({exc}); reconnect",
                    pb.ERROR_CODE_UNAVAILABLE,
                )

    def _grant(self, sub: Subscriber, count: int) -> int:
        """The RDY to give ``sub`` for a grant of ``count``: 0 once closing, and never
        more than --max-rdy-total leaves over all subscriptions (the client is told
        when its grant is cut). A count above --max-rdy-count is passed on for the
        channel to refuse."""
        granted, cut = self.grant(sub, count)
        if cut:
            sub.send_error(pb.ERROR_CODE_TOO_MANY, cut)
        return granted

    def grant(self, sub: Subscriber, count: int) -> tuple[int, str]:
        """:meth:`_grant` without telling the client: (granted, the message saying
        why the grant was cut, or "")."""
        if sub.closing:
            count = 0
        if count > self.opts.max_rdy_count:
            return count, ""
        room = self.opts.max_rdy_total - (self.rdy_total - sub.rdy_granted)
        granted = min(count, max(0, room))
        cut = ""
        if granted < count:
            cut = limit_exceeded(
                "max_rdy_total",
                self.opts.max_rdy_total,
                f"RDY {count} cut to {granted}: consumers of this broker hold "
                f"{self.rdy_total - sub.rdy_granted} of the total",
            ).message
        self.rdy_total += granted - sub.rdy_granted
        sub.rdy_granted = granted
        return granted, cut

    # ------------------------------------------------------------ admin
    # The verbs themselves are ``actions.Actions``' (nsqd's HTTP API calls them too).
    async def _topic(self, name: str, create: bool = False) -> Any:
        return await self.actions.topic(name, create=create)

    @unary
    async def CreateTopic(self, request: pb.CreateTopicRequest) -> pb.CreateTopicResponse:
        await self.actions.create_topic(request.topic)
        return pb.CreateTopicResponse()

    @unary
    async def DeleteTopic(self, request: pb.DeleteTopicRequest) -> pb.DeleteTopicResponse:
        await self.actions.delete_topic(request.topic)
        return pb.DeleteTopicResponse()

    @unary
    async def EmptyTopic(self, request: pb.EmptyTopicRequest) -> pb.EmptyTopicResponse:
        await self.actions.empty_topic(request.topic)
        return pb.EmptyTopicResponse()

    @unary
    async def PauseTopic(self, request: pb.PauseTopicRequest) -> pb.PauseTopicResponse:
        await self.actions.pause_topic(request.topic, True)
        return pb.PauseTopicResponse()

    @unary
    async def UnpauseTopic(self, request: pb.UnpauseTopicRequest) -> pb.UnpauseTopicResponse:
        await self.actions.pause_topic(request.topic, False)
        return pb.UnpauseTopicResponse()

    async def _channel(
        self, topic: str, channel: str, create: bool = False
    ) -> tuple[Topic, Channel]:
        return await self.actions.channel(topic, channel, create=create)

    @unary
    async def CreateChannel(self, request: pb.CreateChannelRequest) -> pb.CreateChannelResponse:
        await self.actions.create_channel(request.topic, request.channel)
        return pb.CreateChannelResponse()

    @unary
    async def DeleteChannel(self, request: pb.DeleteChannelRequest) -> pb.DeleteChannelResponse:
        await self.actions.delete_channel(request.topic, request.channel)
        return pb.DeleteChannelResponse()

    @unary
    async def EmptyChannel(self, request: pb.EmptyChannelRequest) -> pb.EmptyChannelResponse:
        await self.actions.empty_channel(request.topic, request.channel)
        return pb.EmptyChannelResponse()

    @unary
    async def PauseChannel(self, request: pb.PauseChannelRequest) -> pb.PauseChannelResponse:
        await self.actions.pause_channel(request.topic, request.channel, True)
        return pb.PauseChannelResponse()

    @unary
    async def UnpauseChannel(self, request: pb.UnpauseChannelRequest) -> pb.UnpauseChannelResponse:
        await self.actions.pause_channel(request.topic, request.channel, False)
        return pb.UnpauseChannelResponse()

    @unary
    async def GetStats(self, request: pb.GetStatsRequest) -> pb.GetStatsResponse:
        if request.channel and not request.topic:
            raise _invalid("GetStats: channel needs topic")
        if request.topic:
            await self._topic(request.topic)
        return self.broker.stats(request.topic, request.channel, not request.no_clients)

    @unary
    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest
    ) -> pb.ListDeadLettersResponse:
        _, ch = await self._channel(request.topic, request.channel)
        limit = request.limit or 100
        if limit > 10000:
            raise _invalid("ListDeadLetters: limit must be <= 10000")
        ch.flush()
        await self.broker.store.barrier()
        resp = pb.ListDeadLettersResponse(total=ch.dlq_count)
        for _seq, attempts, rec in ch.list_dead(limit):
            m = resp.messages.add()
            m.MergeFromString(wire.record_message(rec))
            m.attempts = attempts
            m.broker_id = self.broker.node_id
        return resp

    @unary
    async def ReplayDeadLetters(
        self, request: pb.ReplayDeadLettersRequest
    ) -> pb.ReplayDeadLettersResponse:
        _, ch = await self._channel(request.topic, request.channel)
        for i in request.ids:
            if len(i) != 16:
                raise _invalid(f"message ids are 16 bytes; got {len(i)}")
        ids = set(request.ids) if request.ids else None
        await self.broker.store.barrier()
        n = await ch.replay_dead(ids)
        return pb.ReplayDeadLettersResponse(replayed=n)

    async def Scrub(
        self, request: pb.ScrubRequest, context: Any
    ) -> AsyncIterator[pb.ScrubProgress]:
        integrity = self.broker.integrity
        if integrity is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "broker is starting")
            return
        try:
            async for progress in integrity.scrub():
                yield progress
        except CorruptStoreError as exc:
            await context.abort(
                grpc.StatusCode.DATA_LOSS,
                f"the scrub found the store's LMDB structure corrupt ({exc}): the broker stops "
                "serving from it; with --on-corruption=resilver it moves the store aside and its "
                "partner re-fills it, with exit it exits (see the broker's log)",
            )

    # ------------------------------------------------------------ peek and purge (admin)
    @unary
    async def PeekMessages(self, request: pb.PeekMessagesRequest) -> pb.PeekMessagesResponse:
        _, ch = await self._channel(request.topic, request.channel)
        limit = request.limit or 20
        if limit > 1000:
            raise _invalid("PeekMessages: limit must be <= 1000")
        resp = pb.PeekMessagesResponse(depth=ch.depth)
        for _seq, attempts, rec in ch.peek(limit):
            m = resp.messages.add()
            m.MergeFromString(wire.record_message(rec))
            m.attempts = attempts
            m.broker_id = self.broker.node_id
        return resp

    @unary
    async def PurgeDeadLetters(
        self, request: pb.PurgeDeadLettersRequest
    ) -> pb.PurgeDeadLettersResponse:
        _, ch = await self._channel(request.topic, request.channel)
        for i in request.ids:
            if len(i) != 16:
                raise _invalid(f"message ids are 16 bytes; got {len(i)}")
        ch.flush()
        await self.broker.store.barrier()
        n = await ch.purge_dead(set(request.ids) if request.ids else None)
        await self.broker.store.barrier()
        return pb.PurgeDeadLettersResponse(purged=n)

    # ------------------------------------------------------------ registration
    def generic_handler(self) -> Any:
        def unary(fn: Any, req: Any, resp: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=decoder(req), response_serializer=resp.SerializeToString
            )

        handlers = {
            "Publish": unary(self.Publish, pb.PublishRequest, pb.PublishResponse),
            "PublishBatch": unary(
                self.PublishBatch, pb.PublishBatchRequest, pb.PublishBatchResponse
            ),
            "PublishStream": grpc.stream_stream_rpc_method_handler(
                self.PublishStream,
                request_deserializer=decoder(pb.PublishStreamRequest),
                response_serializer=pb.PublishStreamResponse.SerializeToString,
            ),
            "Scrub": grpc.unary_stream_rpc_method_handler(
                self.Scrub,
                request_deserializer=pb.ScrubRequest.FromString,
                response_serializer=pb.ScrubProgress.SerializeToString,
            ),
            "Subscribe": grpc.stream_stream_rpc_method_handler(
                self.Subscribe,
                request_deserializer=decoder(pb.SubscribeRequest),
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
            "PeekMessages",
            "PurgeDeadLetters",
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
        self._bad: Undecodable | None = None
        self._peer = context.peer() or ""

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
        if self._bad is not None:
            # no request_id to answer it under: the stream ends with the status
            await self._bad.error().abort(self.context)

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
            if isinstance(req, Undecodable):
                self._bad = req
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
            self.service.check_rate(self._peer, len(req.messages))
            ids, copies, all_supplied = await self.service.publisher.publish_messages(
                req.topic, req.messages, new_ids=req.new_ids
            )
            resp = (
                pb.PublishStreamResponse(request_id=rid, copies=copies)
                if all_supplied
                else pb.PublishStreamResponse(request_id=rid, ids=ids, copies=copies)
            )
        except PairqError as exc:
            resp = pb.PublishStreamResponse(
                request_id=rid,
                error=pb.PublishError(
                    code=cast(Any, exc.code), message=exc.message, metadata=exc.metadata()
                ),
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
