"""Publishing, in one place: validate -> idempotency -> append -> replicate -> copies.

``service.py`` turns a Publish, PublishBatch or PublishStream request into
``Publisher.publish_messages`` and the answer back into protobuf; everything
between is here:

1. **Validate** every message (size, id, delay, headers) and encode its record
   (``wire``); the fast path takes a producer's plain message without a
   protobuf round trip.
2. **Idempotency**: a message whose producer-supplied id was stored within the
   window (here, or as the partner's confirmed copy) is not stored again; one
   whose copy on the partner is still unconfirmed waits for the confirmation;
   one being stored right now by another request shares that request's fate.
3. **Append** to the topic's log (seqs reserved by ``Topic.reserve``) and, in
   parallel, **replicate** to the partner (``ports.Replicator``), so a pair's
   latency is the slower of the two fsyncs, not their sum.
4. **Copies**: once both are done the records are handed back to the topic
   (``Topic.settle``) to be fanned out, whatever became of the caller (a
   committed record skipped there would hold every later fan-out), and the
   caller hears how many durable copies exist; ``--min-copies=2`` turns one
   copy into UNAVAILABLE (the producer retries, idempotency absorbs it).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from pairq.broker import checksum, wire
from pairq.broker.limits import limit_exceeded
from pairq.broker.options import BrokerOptions
from pairq.broker.ports import Replicator, publish_traces
from pairq.broker.store import Store
from pairq.broker.topic import Topic
from pairq.errors import PairqError, UnavailableError
from pairq.names import check_topic
from pairq.security.auth import check_publish
from pairq.v1 import broker_pb2 as pb

MAX_HEADER_BYTES = 64 * 1024
# publish_messages yields to the loop after each this many body bytes
_YIELD_BYTES = 8 * 1024 * 1024
TRACEPARENT = "traceparent"

# (message id, record, whether the producer supplied the id)
Item = tuple[bytes, bytes, bool]


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


class Message(Protocol):
    """A message to publish, as the protobuf ``PublishItem`` carries it."""

    @property
    def id(self) -> bytes: ...

    @property
    def body(self) -> bytes: ...

    @property
    def defer_ms(self) -> int: ...

    @property
    def headers(self) -> Any: ...


class Publisher:
    """The broker's publishing path (see the module docstring)."""

    def __init__(
        self,
        *,
        options: BrokerOptions,
        store: Store,
        replicator: Replicator,
        get_topic: Callable[[str], Awaitable[Topic]],
        topics: dict[str, Topic],
        check_serving: Callable[[], None],
        node_id: Callable[[], str],
        tracer: Callable[[], Any],
    ) -> None:
        self.opts = options
        self._store = store
        self._replicator = replicator
        self._get_topic = get_topic
        self._topics = topics
        self._check_serving = check_serving
        self._node_id = node_id
        self._tracer = tracer
        self.new_id = IdMaker()
        # Ids being stored right now: a second request with one of them shares
        # the first one's outcome instead of storing it twice.
        self.pending_ids: dict[bytes, asyncio.Future[int]] = {}
        # Telemetry (pairq.telemetry): called with (seconds, copies, messages) after
        # each publish that stored its messages; None: nobody listens.
        self.on_published: Callable[[float, int, int], None] | None = None
        # ... and with the seconds from handing records to the partner to its ack.
        self.on_replicated: Callable[[float], None] | None = None

    # ------------------------------------------------------------ 1. validate
    def record(self, item: Message, now_ns: int, ts_field: bytes) -> tuple[bytes, bytes, str]:
        """(id, record, its ``traceparent`` header or "") of one message; raises
        INVALID_ARGUMENT-class errors."""
        body = item.body
        size = len(body)
        if size > self.opts.max_msg_size:
            raise limit_exceeded(
                "max_msg_size",
                self.opts.max_msg_size,
                f"message body is {size} bytes",
                pb.ERROR_CODE_BAD_MESSAGE,
            )
        if size == 0:
            raise _invalid(
                "message body is empty; it must be 1 byte or more", pb.ERROR_CODE_BAD_MESSAGE
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
        traceparent = ""
        hs = item.headers  # None from the NSQ protocol's messages
        if hs:
            # Read straight from the protobuf map, one pass: a dict() of it and
            # generator scans over that iterate in Python (about 2.5 us of the 7 a
            # header cost). The size refusal goes before the empty-name one.
            size = 0
            empty_name = False
            entries = []
            for k in hs:
                v = hs[k]
                size += len(k) + len(v)
                empty_name = empty_name or not k
                if k == TRACEPARENT:
                    traceparent = v
                entries.append(wire.encode_header(k, v))
            if size > MAX_HEADER_BYTES:
                raise _invalid(f"headers exceed {MAX_HEADER_BYTES} bytes")
            if empty_name:
                raise _invalid("header names must not be empty")
            headers = b"".join(entries)
        rec = wire.encode_record(msg_id, body, now_ns, due_ns, headers, ts_field=ts_field)
        return msg_id, rec, traceparent

    async def publish_one(self, topic: str, message: Message) -> tuple[bytes, int]:
        """Publish: (id, copies)."""
        self._check_serving()
        check_topic(topic)
        check_publish(topic)  # --auth-file: the caller's publish permission
        now_ns = time.time_ns()
        msg_id, rec, tp = self.record(message, now_ns, wire.timestamp_field(now_ns))
        traced = [(msg_id, tp)] if tp and self._tracer() is not None else None
        copies = await self.publish(topic, [(msg_id, rec, bool(message.id))], traced)
        return msg_id, copies

    async def publish_messages(
        self, topic: str, messages: Sequence[Message], *, new_ids: bool = False
    ) -> tuple[list[bytes], int, bool]:
        """PublishBatch or one PublishStream request: (ids in request order, copies,
        whether every message carried its id)."""
        self._check_serving()
        check_topic(topic)
        check_publish(topic)  # --auth-file: the caller's publish permission
        n = len(messages)
        if n == 0:
            raise _invalid(
                f"batch has no messages; it must have 1 to {self.opts.max_batch} (--max-batch)",
                pb.ERROR_CODE_BAD_BATCH,
            )
        if n > self.opts.max_batch:
            raise limit_exceeded(
                "max_batch", self.opts.max_batch, f"batch has {n} messages", pb.ERROR_CODE_BAD_BATCH
            )
        now_ns = time.time_ns()
        ts_field = wire.timestamp_field(now_ns)
        items: list[Item] = []
        make = self.record
        plain = wire.encode_plain_record
        max_size = self.opts.max_msg_size
        traced: list[tuple[bytes, str]] = []
        tracing = self._tracer() is not None
        all_supplied = True
        nbytes = 0  # body bytes, summed here: each protobuf field read costs a copy
        pause_at = _YIELD_BYTES
        for item in messages:
            body = item.body
            nbytes += len(body)
            if nbytes >= pause_at:
                # A batch of many MiB: let the loop breathe between slices (each
                # body is copied twice here), or the pair's heartbeats wait out
                # the whole batch and the partner may take a lease's silence for
                # a loss.
                pause_at = nbytes + _YIELD_BYTES
                await asyncio.sleep(0)
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
            i, r, tp = make(item, now_ns, ts_field)
            supplied = bool(item.id)
            all_supplied = all_supplied and supplied
            items.append((i, r, supplied))
            if tp and tracing:  # read once, by record(), from the headers it encodes
                traced.append((i, tp))
        if nbytes > self.opts.max_batch_bytes:
            raise limit_exceeded(
                "max_batch_bytes",
                self.opts.max_batch_bytes,
                f"batch has {nbytes} body bytes",
                pb.ERROR_CODE_BAD_BATCH,
            )
        copies = await self.publish(topic, items, traced or None, new_ids=new_ids)
        return [i for i, _, _ in items], copies, all_supplied

    # ------------------------------------------------------------ 2. idempotency
    async def publish(
        self,
        topic_name: str,
        items: list[Item],
        traced: list[tuple[bytes, str]] | None = None,
        *,
        new_ids: bool = False,
    ) -> int:
        """:meth:`_publish`, timed for the publish-latency histogram."""
        t0 = time.perf_counter()
        copies = await self._publish(topic_name, items, traced, new_ids=new_ids)
        if self.on_published is not None:
            self.on_published(time.perf_counter() - t0, copies, len(items))
        return copies

    async def _publish(
        self,
        topic_name: str,
        items: list[Item],
        traced: list[tuple[bytes, str]] | None = None,
        *,
        new_ids: bool = False,
    ) -> int:
        """Store (id, record, producer-supplied) items, skipping ids already stored
        within the idempotency window; returns the copies.

        ``traced``: (id, traceparent) of messages carrying W3C trace context; with
        tracing on, the request gets one ``pairq publish`` span in the first one's
        trace, linked to the others, covering the durable store (and the
        partner's copy).

        ``new_ids``: the client vouches that every id is new (PublishStreamRequest.new_ids),
        so the idempotency lookup is skipped; the ids are recorded all the same."""
        if traced and self._tracer() is not None:
            return await self._publish_traced(topic_name, items, traced, new_ids=new_ids)
        topic = self._topics.get(topic_name) or await self._get_topic(topic_name)
        supplied = [] if new_ids else [i for i, _, s in items if s]
        if not supplied or topic.ephemeral or not self.opts.idempotency_window_s:
            _, copies = await self.append(topic, [r for _, r, _ in items])
            return copies
        replicator = topic.replicator
        replicator.check_publishable()
        known = self._store.log.known_ids(supplied)
        # The partner's copy of some may still be unconfirmed (pair.StandbyStore):
        # stored only if the partner confirms its own commit.
        maybe = [i for i in replicator.unconfirmed(supplied) if i not in known]
        if maybe:
            known |= await replicator.wait_confirmed(maybe, timeout=3 * self.opts.lease_ms / 1000)
        pending = self.pending_ids
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
        copies = replicator.copies()
        if fresh:
            mine: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            for i in fresh_ids:
                pending[i] = mine
            try:
                _, copies = await self.append(topic, fresh)
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
        if known:
            # A retried id: its first copy may predate a reconnect, so answer only
            # once the partner has acknowledged everything up to now.
            barrier = replicator.barrier()
            try:
                if barrier is None:
                    raise UnavailableError("partner unreachable")
                await barrier
            except UnavailableError as exc:
                if replicator.min_copies >= 2:
                    raise UnavailableError(
                        f"message already stored here, but partner {replicator.partner_address} "
                        "is unreachable, so it may have only 1 copy (--min-copies=2); retry",
                        partner=replicator.partner_address,
                    ) from exc
                copies = 1
        return copies

    async def _publish_traced(
        self,
        topic_name: str,
        items: list[Item],
        traced: list[tuple[bytes, str]],
        *,
        new_ids: bool = False,
    ) -> int:
        """:meth:`_publish` inside ONE ``pairq publish`` span for the request (not one
        per message): child of the first traced message's context, linked to the
        others' (``pairq.telemetry.batch_span``: at most ``MAX_LINKS``, the rest
        counted). Its own context rides to the partner once per request
        (``ports.publish_traces``) for the replicate span there."""
        from opentelemetry.trace import SpanKind

        from pairq.telemetry import batch_span
        from pairq.traceparent import format_traceparent

        attributes: dict[str, Any] = {
            "messaging.system": "pairq",
            "messaging.operation": "publish",
            "messaging.destination.name": topic_name,
            "messaging.batch.message_count": len(items),
            "pairq.broker_id": self._node_id(),
        }
        if len(items) == 1:
            attributes["messaging.message.id"] = items[0][0].hex()
        span = batch_span(
            self._tracer(), "pairq publish", SpanKind.SERVER, [tp for _, tp in traced], attributes
        )
        # The partner's replicate span is a child of this one (ports.publish_traces);
        # nothing to carry while no partner copy is being made.
        carried: list[tuple[str, bytes, str]] = []
        sc = span.get_span_context()
        if self._replicator.copies() >= 2 and sc.is_valid:
            carried.append((topic_name, traced[0][0], format_traceparent(sc)))
        token = publish_traces.set(carried or None)
        try:
            copies = await self._publish(topic_name, items, new_ids=new_ids)
            span.set_attribute("pairq.copies", copies)
            return copies
        except Exception as exc:
            span.record_exception(exc)
            raise
        finally:
            publish_traces.reset(token)
            span.end()

    # ------------------------------------------------------------ 3. append + replicate, 4. copies
    async def append(self, topic: Topic, records: list[bytes]) -> tuple[int, int]:
        """Store ``records`` durably (here and, in a pair, on the partner), then fan
        them out. Returns (first seq, durable copies)."""
        replicator = topic.replicator
        topic.check_open()
        replicator.check_publishable()
        n = len(records)
        seq0 = topic.reserve(n)
        crcs = checksum.crcs(records)  # computed once, stored and replicated with them
        if topic.ephemeral:  # nothing to wait for, nothing replicated
            topic.log.append(seq0, records, crcs)
            topic.settle(seq0, n, records)
            return seq0, topic.log.copies
        # The partner gets the records at once, in parallel with our commit,
        # marked uncommitted: it keeps them but does not count their ids as
        # stored until we confirm our commit (pair.StandbyStore explains why:
        # a crash or a failed commit here would otherwise leave an orphan copy
        # that an idempotent retry to the partner took for a stored message).
        # Queued before our own write, so that on the next loop turn the frame
        # to the partner goes out before the writer thread wakes (Store._enqueue).
        #
        # The outcome (fan-out, or a gap for a failed append) follows the commits
        # through callbacks, not the caller: a cancelled RPC must not turn a
        # committed record into a gap. Callbacks also spare a task and a loop
        # turn per publish.
        name = topic.name
        remote = replicator.replicate(name, seq0, records, crcs, uncommitted=True)
        local = topic.log.append(seq0, records, crcs)
        assert local is not None  # a durable log always has a commit to wait for
        if remote is not None and self.on_replicated is not None:  # telemetry: round trip
            t0, observe = time.perf_counter(), self.on_replicated

            def on_acked(f: asyncio.Future[Any]) -> None:
                if not f.cancelled() and f.exception() is None:
                    observe(time.perf_counter() - t0)

            remote.add_done_callback(on_acked)
        result: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        local_ok = False  # set once the local commit is done
        settled = False  # fanned out (exactly once, whatever became of the caller)

        def settle() -> None:
            nonlocal settled
            if not local_ok or (remote is not None and not remote.done()) or settled:
                return
            settled = True
            if remote is None:
                copies = 1
            else:
                copies = 2 if not remote.cancelled() and remote.exception() is None else 1
            # Even when the caller is gone (a cancelled RPC cancels ``result``): a
            # committed record skipped here would hold committed_seq, and with it
            # every later fan-out and the partner's catch-up, forever.
            topic.settle(seq0, n, records)
            if not result.done():
                result.set_result(copies)

        def on_local(f: asyncio.Future[Any]) -> None:
            nonlocal local_ok
            exc = BaseException("cancelled") if f.cancelled() else f.exception()
            if exc is not None:
                topic.settle(seq0, n, None)
                if not result.done():
                    result.set_exception(exc)
                return
            if remote is not None:
                replicator.committed(name, seq0, n)
            local_ok = True
            settle()

        def on_remote(f: asyncio.Future[None]) -> None:
            if not f.cancelled():
                f.exception()  # retrieved (settle reads the outcome)
            settle()

        local.add_done_callback(on_local)
        if remote is not None:
            remote.add_done_callback(on_remote)
        copies = await result
        if replicator.min_copies >= 2 and copies < 2:
            # Stored here (and delivered), but not acknowledged: the producer
            # retries with the same id and idempotency/de-duplication absorb it.
            refusal = replicator.partner_refusal()
            if refusal is not None:
                raise refusal
            raise UnavailableError(
                f"partner {replicator.partner_address} did not acknowledge the copy "
                "(--min-copies=2 requires 2 durable copies); retry",
                partner=replicator.partner_address,  # the client skips this pair (broker.proto)
            )
        return seq0, copies
