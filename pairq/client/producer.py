"""The async Producer: transparent batching, idempotent retries, failover.

Batching. Each topic has a list of pending publishes and at most
``max_batches_in_flight`` sender tasks. A ``publish()`` that finds a free
sender slot starts a sender at once, so a lone publish pays no linger: the
sender takes everything pending when it first runs (publishes made in the same
event-loop turn share the request) and sends it as one batch. Publishes
made while every slot is busy wait in the pending list and go out together as
the next batch when a sender finishes, bounded by ``max_batch_size`` items and
``max_batch_bytes``. Many concurrent ``publish()`` calls therefore become a few
large, pipelined batches.

Transport. Batches travel over one long-lived ``PublishStream`` per broker
(``_channel.PublishStreamClient``): a stream message costs about half the CPU
of a unary call on both sides and saves a round trip's worth of gRPC work,
which is most of a lone publish's latency. A broker that does not serve the
stream gets ``PublishBatch`` calls instead.

``publish_batch()`` calls join the same pending list as one unit each (a
call larger than ``max_batch_size`` / ``max_batch_bytes`` is cut into parts
that are queued one after another, each once the previous part is stored), so
concurrent batch calls share RPCs too. A unit is never split across RPCs: its
messages stay contiguous and in order, and the RPC carrying it stores or
fails all of them.

Idempotency. The client makes every message id itself (see ``_ids``), before
the first attempt, so a retry after a timeout or a failover re-sends the same
ids and the broker can store each message once.

Retries. UNAVAILABLE and DEADLINE_EXCEEDED are retried with exponential
backoff, moving to another broker of the route after each failure, until
``retry_timeout`` seconds have passed. Every other error (invalid input,
permission) is raised to the caller at once; a full store moves to another
broker and is raised once every broker of the route said so.

Failover order (``_policy.Penalties``, ``_policy.pick_broker``). A broker that
failed a publish (no answer within ``rpc_timeout``, a broken stream, a refusal)
is tried after every other broker for ``FAILOVER_PENALTY_S``; a refusal that
names the broker's partner (ErrorInfo / PublishError metadata ``partner``: the
pair cannot get its second copy) penalizes that whole pair, so the retry goes to
another pair at once instead of to the silent partner and its RPC timeout. The
failover moves the route in use when the attempt ends, also when a placement
refresh replaced it meanwhile (the refresh keeps the broker in use, which would
otherwise be tried again). A penalty never excludes a broker: with all of them
penalized, the one that failed longest ago goes first (not the next in route
order: that is usually the partner of the broker that just failed, penalized with
it). Each failover is logged (WARNING, once per failing broker per
``FAILOVER_LOG_S``; every one at DEBUG): the broker, the error, how long the
attempt took, the brokers penalized and where the route goes.

A transparent batch that the broker rejects as invalid is split and re-sent, so
one bad publish cannot fail the publishes that happened to share its RPC: the
batch is re-sent in halves down to single units (a ``publish_batch`` call or
part is one unit, so it fails only if its own messages are invalid).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context

from pairq.client._channel import DEFAULT_BROKER, BrokerConn, normalize_address
from pairq.client._ids import ID_BYTES, IdGenerator
from pairq.client._policy import (
    Penalties,
    RateLimit,
    check_topic,
    cut_batch,
    pick_broker,
    retry_backoff,
)
from pairq.client._tracing import inject, send_span
from pairq.client.discovery import Discovery
from pairq.errors import InvalidError, PairqError, UnavailableError
from pairq.grpcopts import DEFAULT_MAX_BATCH
from pairq.security.client import ClientSecurity
from pairq.v1 import broker_pb2

# Messages per batch request by default (see ``Producer``), at most the broker's.
DEFAULT_PRODUCER_BATCH = min(1000, DEFAULT_MAX_BATCH)

__all__ = ["Producer", "PublishAck"]

log = logging.getLogger("pairq.client.producer")

_MiB = 1024 * 1024
# Bytes of protobuf framing per batch item beyond id and body (tags, lengths).
_ITEM_OVERHEAD = 8
_MAX_DEFER_MS = 0xFFFFFFFF
# Failovers away from one broker logged at WARNING at most once per this many seconds
# (the penalty's length: one report per broker going bad; the rest at DEBUG).
FAILOVER_LOG_S = 10.0


@dataclass(frozen=True, slots=True)
class PublishAck:
    """The broker's answer to one publish."""

    id: bytes
    """The 16-byte message id (made by the client unless the caller passed one)."""
    copies: int
    """Durable copies now held: 2 for a healthy pair, 1 for a single broker, 0 if ephemeral."""


# A pending publish: (id, body, headers or None, defer_ms, future, size).
_Pending = tuple[bytes, bytes, "Mapping[str, str] | None", int, "asyncio.Future[PublishAck]", int]
# A pending publish_batch part, one unit in the pending list (same positions):
# (ids, bodies, headers or None, defer_ms, future of its acks, total size).
_Part = tuple[
    list[bytes],
    list[bytes],
    "Mapping[str, str] | None",
    int,
    "asyncio.Future[list[PublishAck]]",
    int,
]
_Unit = _Pending | _Part


class _Route:
    """Where a topic's publishes go: brokers in failover order and the one in use.

    ``groups[i]`` names the pair of ``conns[i]`` as the lookups placed it ("" when
    not known: brokers given, not discovered)."""

    __slots__ = ("conns", "current", "expires", "groups")

    def __init__(
        self,
        conns: list[BrokerConn],
        expires: float = float("inf"),
        groups: list[str] | None = None,
    ) -> None:
        self.conns = conns
        self.current = 0
        self.expires = expires
        self.groups = groups if groups is not None else [""] * len(conns)


class _Topic:
    __slots__ = ("inflight", "name", "pending", "pending_bytes", "pending_msgs")

    def __init__(self, name: str) -> None:
        self.name = name
        self.pending: list[_Unit] = []
        self.pending_msgs = 0  # messages in ``pending`` (a part counts its bodies)
        self.pending_bytes = 0  # their encoded size
        self.inflight = 0


class Producer:
    """Publishes messages to pairq brokers.

    Use as ``async with Producer(brokers=["127.0.0.1:4150"]) as producer:``;
    ``close()`` (called on exit) waits for publishes already made to finish.
    All options are keyword-only:

    - ``max_batch_size``: most messages in one batch request (transparent or explicit);
      keep it at most the brokers' ``--max-batch`` (default 5000). The default, 1000,
      lets a busy producer keep several batches in flight, so that encoding here, the
      broker's work and its fsync overlap: with 5000, a closed loop of batch callers
      sent one huge batch at a time and both processes idled half the time
      (``make bench``: 208k vs 303k msg/s).
    - ``max_batch_bytes``: most body bytes in one batch RPC.
    - ``max_message_bytes``: largest body accepted (should equal the broker's limit);
      bigger bodies raise ``InvalidError`` without a round trip.
    - ``max_batches_in_flight``: concurrent batch RPCs per topic. With 1, messages are
      stored in the order ``publish()`` was called; with more, batches may overtake each other.
    - ``rpc_timeout``: deadline of each RPC attempt, seconds.
    - ``retry_timeout``: give up retrying an unavailable publish after this many seconds.
    - ``retry_backoff`` / ``retry_backoff_max``: first and largest wait between retries.
    - ``lookups`` / ``lookup_poll_interval``: place each topic through these lookups
      (``pairq.client.discovery.place``: pairs already holding it first, healthy pairs
      first, rendezvous hashing within) and fail over down that order; the placement is
      refreshed every ``lookup_poll_interval`` seconds and whenever every broker of it
      failed. ``brokers`` given as well are tried after the discovered ones.
    - ``trace_context``: add the current OpenTelemetry span's W3C trace context
      (``traceparent``) to the headers of messages published inside a span.
    - ``token``, ``tls_cert``, ``tls_key``, ``tls_ca``: bearer token and TLS files
      (``pairq.security.client.ClientSecurity``), for brokers and lookups alike.
    """

    def __init__(
        self,
        brokers: Sequence[str] | None = None,
        *,
        lookups: Sequence[str] | None = None,
        lookup_poll_interval: float = 15.0,
        max_batch_size: int = DEFAULT_PRODUCER_BATCH,
        max_batch_bytes: int = 4 * _MiB,
        max_message_bytes: int = _MiB,
        max_batches_in_flight: int = 4,
        rpc_timeout: float = 10.0,
        retry_timeout: float = 30.0,
        retry_backoff: float = 0.05,
        retry_backoff_max: float = 1.0,
        trace_context: bool = True,
        token: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        tls_ca: str = "",
    ) -> None:
        security = ClientSecurity(token, tls_cert, tls_key, tls_ca)
        if isinstance(brokers, str):
            brokers = [brokers]
        if isinstance(lookups, str):
            lookups = [lookups]
        if brokers is None:
            brokers = [] if lookups else [DEFAULT_BROKER]
        if not brokers and not lookups:
            raise ValueError("Producer needs at least one broker or lookup address")
        if max_batch_size < 1 or max_batches_in_flight < 1:
            raise ValueError("max_batch_size and max_batches_in_flight must be >= 1")
        if max_message_bytes < 1 or max_batch_bytes < max_message_bytes:
            raise ValueError("need 1 <= max_message_bytes <= max_batch_bytes")
        self._conn_opts: dict[str, Any] = {
            "max_message_bytes": max_message_bytes,
            "max_rpc_bytes": max_batch_bytes + max_batch_size * 64,
            "security": security,
        }
        self._pool: dict[str, BrokerConn] = {}
        self._conns = [self._conn(a) for a in dict.fromkeys(brokers)]
        self._static_route = _Route(self._conns)
        self._discovery = (
            Discovery(list(lookups), poll_interval=lookup_poll_interval, security=security)
            if lookups
            else None
        )
        self._lookup_poll_interval = lookup_poll_interval
        self._routes: dict[str, _Route] = {}
        self._penalties = Penalties()
        self._failover_log = RateLimit(FAILOVER_LOG_S)
        self._refreshing: dict[str, asyncio.Task[_Route]] = {}
        self._max_batch_size = max_batch_size
        self._max_batch_bytes = max_batch_bytes
        self._max_message_bytes = max_message_bytes
        self._max_inflight = max_batches_in_flight
        self._rpc_timeout = rpc_timeout
        self._retry_timeout = retry_timeout
        self._retry_backoff = retry_backoff
        self._retry_backoff_max = retry_backoff_max
        self._trace = trace_context
        self._ids = IdGenerator()
        self._topics: dict[str, _Topic] = {}
        self._senders: set[asyncio.Task[None]] = set()
        # Futures of pending units whose ids the caller chose: a request carrying
        # one of them cannot claim new_ids (the broker must look them up).
        self._supplied: set[asyncio.Future[Any]] = set()
        self._closed = False
        self.rpc_count = 0
        """Batch and unary publish RPC attempts made (for tests and metrics)."""

    # -- context manager -------------------------------------------------

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def brokers(self) -> list[str]:
        """The broker addresses given, in failover order (see ``brokers_for``)."""
        return [c.address for c in self._conns]

    def brokers_for(self, topic: str) -> list[str]:
        """Where ``topic`` is published now, in failover order (discovered, then given)."""
        route = self._routes.get(topic, self._static_route)
        return [c.address for c in route.conns]

    def _conn(self, address: str) -> BrokerConn:
        conn = BrokerConn(address, **self._conn_opts)
        return self._pool.setdefault(conn.address, conn)

    async def _route(self, topic: str) -> _Route:
        if self._discovery is None:
            return self._static_route
        route = self._routes.get(topic)
        if route is not None and route.expires > asyncio.get_running_loop().time():
            return route
        task = self._refreshing.get(topic)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._refresh_route(topic, route))
            self._refreshing[topic] = task
            task.add_done_callback(self._refreshed(topic))
        if route is not None and route.conns:
            # Publish on the known route while the lookups are asked: a slow or silent
            # lookup must not stall every producer at each refresh.
            return route
        return await asyncio.shield(task)

    def _refreshed(self, topic: str) -> Callable[[asyncio.Task[_Route]], None]:
        def done(task: asyncio.Task[_Route]) -> None:
            self._refreshing.pop(topic, None)
            if not task.cancelled() and task.exception() is not None:
                log.warning("placement refresh for %r failed: %s", topic, task.exception())

        return done

    async def _refresh_route(self, topic: str, old: _Route | None) -> _Route:
        """Ask the lookups where ``topic`` goes (placement order), keeping the old route on failure."""
        assert self._discovery is not None
        loop = asyncio.get_running_loop()
        try:
            pairs = await self._discovery.placement(topic)
        except PairqError as exc:
            if old is not None or self._conns:
                log.warning(
                    "lookups unavailable for %r (%s); keeping the known brokers", topic, exc
                )
                route = old or _Route(self._conns)
                route.expires = loop.time() + min(1.0, self._lookup_poll_interval)
                self._routes[topic] = route
                return route
            raise UnavailableError(f"cannot place topic {topic!r}: {exc.message}") from None
        conns: list[BrokerConn] = []
        groups: list[str] = []  # the pair of each, for skipping a pair at once
        for p in pairs:
            for a in p.addresses():
                c = self._conn(a)
                if c not in conns:
                    conns.append(c)
                    groups.append(p.key)
        for c in self._conns:
            if c not in conns:
                conns.append(c)
                groups.append("")
        if not conns:
            raise UnavailableError(f"the lookups know no live broker to publish {topic!r} to")
        route = _Route(conns, loop.time() + self._lookup_poll_interval, groups)
        cur = old.conns[old.current] if old is not None and old.current < len(old.conns) else None
        if cur in conns:
            # Stay on the broker in use while it is still listed.
            route.current = conns.index(cur)
        else:
            ends = self._penalty_ends(conns)
            route.current = pick_broker(len(conns), 0, set(ends), ends)
        if log.isEnabledFor(logging.DEBUG) and (
            old is None or old.conns != conns or cur is not conns[route.current]
        ):
            log.debug(
                "placement of %r: %s; publishing to %s (was %s)",
                topic,
                ", ".join(f"{c.address} ({g or '-'})" for c, g in zip(conns, groups, strict=True)),
                conns[route.current].address,
                cur.address if cur is not None else "none",
            )
        self._routes[topic] = route
        return route

    # -- publishing -------------------------------------------------------

    def _topic(self, topic: str) -> _Topic:
        t = self._topics.get(topic)
        if t is None:
            if not isinstance(topic, str):
                raise TypeError(f"topic must be str, not {type(topic).__name__}")
            check_topic(topic)
            t = self._topics[topic] = _Topic(topic)
        return t

    def _check_body(self, body: Any) -> bytes:
        if type(body) is not bytes:
            if isinstance(body, str):
                raise TypeError("message body must be bytes, not str (encode it first)")
            body = bytes(body)
        assert isinstance(body, bytes)
        n = len(body)
        if n == 0 or n > self._max_message_bytes:
            raise InvalidError(
                f"message body is {n} bytes; it must be 1 to {self._max_message_bytes} bytes",
                code=broker_pb2.ERROR_CODE_BAD_MESSAGE,
            )
        return body

    def _check_extras(
        self, headers: Mapping[str, str] | None, defer_ms: int, id: bytes | None
    ) -> int:
        """Validate the optional fields; return the extra encoded size."""
        extra = 0
        if id is not None and (type(id) is not bytes or len(id) != ID_BYTES):
            raise InvalidError(f"message id must be {ID_BYTES} bytes")
        if defer_ms:
            if not isinstance(defer_ms, int) or not 0 <= defer_ms <= _MAX_DEFER_MS:
                raise InvalidError(f"defer_ms must be an int from 0 to {_MAX_DEFER_MS}")
            extra += 6
        if headers:
            for k, v in headers.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise InvalidError("headers must map str to str")
                extra += len(k) + len(v) + 8
        return extra

    async def publish(
        self,
        topic: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        defer_ms: int = 0,
        id: bytes | None = None,
    ) -> PublishAck:
        """Publish one message; return once it is durable (see ``PublishAck.copies``).

        ``defer_ms`` delays delivery; ``id`` (16 bytes) overrides the generated
        id, e.g. to make a publish idempotent across process restarts. Raises
        ``InvalidError`` for bad input, ``UnavailableError`` when no broker
        accepted the message within ``retry_timeout``, or another ``PairqError``.
        """
        if self._closed:
            raise UnavailableError("producer is closed")
        t = self._topics.get(topic) or self._topic(topic)
        if type(body) is not bytes or not 0 < len(body) <= self._max_message_bytes:
            body = self._check_body(body)
        size = len(body) + 24
        # An empty OpenTelemetry context has no span to propagate: skip inject()
        # (most of its cost) when nothing was ever attached, e.g. no tracing set up.
        span = None
        if self._trace and otel_context.get_current():
            span = send_span(topic)
            headers = inject(headers, span)
        if headers or defer_ms or id is not None:
            size += self._check_extras(headers, defer_ms, id)
        fut: asyncio.Future[PublishAck] = asyncio.get_running_loop().create_future()
        if id is None:
            id = self._ids.next()
        else:
            self._mark_supplied(fut)
        t.pending.append((id, body, headers, defer_ms, fut, size))
        t.pending_msgs += 1
        t.pending_bytes += size
        if t.inflight < self._max_inflight:
            self._start_sender(t)
        if span is None:
            return await fut
        try:  # the producer span: from the call to the durable ack
            ack = await fut
            span.set_attributes({"messaging.message.id": ack.id.hex(), "pairq.copies": ack.copies})
            return ack
        except BaseException as exc:
            span.record_exception(exc)
            raise
        finally:
            span.end()

    async def publish_batch(
        self,
        topic: str,
        bodies: Iterable[bytes],
        *,
        headers: Mapping[str, str] | None = None,
        defer_ms: int = 0,
        ids: Sequence[bytes] | None = None,
    ) -> list[PublishAck]:
        """Publish many messages together (NSQ's MPUB), stored all-or-none.

        The messages go out contiguous and in order in one batch RPC, which
        concurrent ``publish()`` and ``publish_batch()`` calls for the topic may
        share (each call stands or falls on its own). A batch larger than
        ``max_batch_size`` / ``max_batch_bytes`` is split into parts sent one
        after another; each part is atomic on its own, and a failed part stops
        the rest. ``headers`` and ``defer_ms`` apply to every message; ``ids``
        (16 bytes each, one per body) override the generated ids.
        """
        if self._closed:
            raise UnavailableError("producer is closed")
        t = self._topics.get(topic) or self._topic(topic)
        if self._trace and otel_context.get_current():
            headers = inject(headers)
        if headers or defer_ms:
            extra = 24 + self._check_extras(headers, defer_ms, None)
        else:
            headers, extra = None, 24
        body_list = [b if type(b) is bytes else self._check_body(b) for b in bodies]
        max_body = self._max_message_bytes
        for b in body_list:
            if not 0 < len(b) <= max_body:
                self._check_body(b)
        n = len(body_list)
        if not n:
            raise InvalidError(
                "publish_batch needs at least one body", code=broker_pb2.ERROR_CODE_BAD_BATCH
            )
        if ids is None:
            nxt = self._ids.next
            id_list = [nxt() for _ in range(n)]
        else:
            if len(ids) != n:
                raise InvalidError(f"got {len(ids)} ids for {n} bodies")
            for mid in ids:
                self._check_extras(None, 0, mid)
            id_list = list(ids)
        total = sum(map(len, body_list)) + extra * n
        loop = asyncio.get_running_loop()
        if n <= self._max_batch_size and total <= self._max_batch_bytes:
            fut: asyncio.Future[list[PublishAck]] = loop.create_future()
            if ids is not None:
                self._mark_supplied(fut)
            self._enqueue(t, (id_list, body_list, headers, defer_ms, fut, total), n)
            return await fut
        # Too big for one RPC: queue the parts in order, each after the last is stored.
        sizes = [len(b) + extra for b in body_list]
        acks: list[PublishAck] = []
        start = 0
        while start < n:
            k = cut_batch(
                sizes[start : start + self._max_batch_size],
                max_items=self._max_batch_size,
                max_bytes=self._max_batch_bytes,
            )
            end = start + k
            fut = loop.create_future()
            if ids is not None:
                self._mark_supplied(fut)
            part = (id_list[start:end], body_list[start:end], headers, defer_ms, fut)
            self._enqueue(t, (*part, sum(sizes[start:end])), k)
            acks += await fut
            start = end
        return acks

    def _mark_supplied(self, fut: asyncio.Future[Any]) -> None:
        self._supplied.add(fut)
        fut.add_done_callback(self._supplied.discard)

    def _enqueue(self, t: _Topic, part: _Part, n: int) -> None:
        t.pending.append(part)
        t.pending_msgs += n
        t.pending_bytes += part[5]
        if t.inflight < self._max_inflight:
            self._start_sender(t)

    # -- senders ------------------------------------------------------------

    def _start_sender(self, t: _Topic) -> None:
        t.inflight += 1
        task = asyncio.get_running_loop().create_task(self._sender(t))
        self._senders.add(task)
        task.add_done_callback(self._senders.discard)

    def _take(self, t: _Topic) -> list[_Unit]:
        """The leading pending units that fit in one RPC (at least one); whole units only."""
        pending = t.pending
        max_msgs = self._max_batch_size
        max_bytes = self._max_batch_bytes
        if t.pending_msgs <= max_msgs and t.pending_bytes <= max_bytes:
            t.pending = []
            t.pending_msgs = t.pending_bytes = 0
            return pending
        msgs = nbytes = i = 0
        for p in pending:
            k = 1 if type(p[0]) is bytes else len(p[0])
            if i and (msgs + k > max_msgs or nbytes + p[5] > max_bytes):
                break
            msgs += k
            nbytes += p[5]
            i += 1
        batch = pending[:i]
        del pending[:i]
        t.pending_msgs -= msgs
        t.pending_bytes -= nbytes
        return batch

    async def _sender(self, t: _Topic) -> None:
        try:
            while t.pending:
                batch = self._take(t)
                batch = [p for p in batch if not p[4].done()]  # drop cancelled callers
                if batch:
                    await self._send_batch(t.name, batch)
        finally:
            t.inflight -= 1

    async def _send_batch(self, topic: str, batch: list[_Unit], *, first: bool = True) -> None:
        # Ids this producer made and sends for the first time need no idempotency
        # lookup on the broker (PublishStreamRequest.new_ids); retries and
        # caller-chosen ids do.
        supplied = self._supplied
        new_ids = first and not (supplied and any(p[4] in supplied for p in batch))
        req = broker_pb2.PublishStreamRequest(topic=topic, new_ids=new_ids)
        add = req.messages.add
        n = 0
        for mid, body, headers, defer_ms, _, _ in batch:
            if type(mid) is bytes:
                n += 1
                if headers is None and not defer_ms:
                    add(id=mid, body=body)
                else:
                    add(id=mid, body=body, headers=headers, defer_ms=defer_ms)
            else:
                n += len(mid)
                if headers is None and not defer_ms:
                    for i, b in zip(mid, body, strict=True):
                        add(id=i, body=b)
                else:
                    for i, b in zip(mid, body, strict=True):
                        add(id=i, body=b, headers=headers, defer_ms=defer_ms)
        try:
            resp = await self._call(req, topic)
        except InvalidError as err:
            if len(batch) == 1:
                _fail(batch, err)
            else:
                # Isolate the offending unit(s) by halves: the rest must not fail with
                # them (also recovers when the broker's --max-batch is below ours).
                half = len(batch) // 2
                await asyncio.gather(
                    self._send_batch(topic, batch[:half], first=False),
                    self._send_batch(topic, batch[half:], first=False),
                )
            return
        except BaseException as err:
            _fail(batch, err)
            if not isinstance(err, Exception):
                raise
            return
        copies = resp.copies
        rids = resp.ids
        own = len(rids) != n
        if not own:
            rids = list(rids)
        pos = 0
        # mypy cannot tell from ``type(mid)`` which of the two unit shapes ``fut`` belongs to.
        for p in batch:
            mid, fut = p[0], p[4]
            if type(mid) is bytes:
                if not fut.done():
                    fut.set_result(PublishAck(mid if own else rids[pos], copies))  # type: ignore[arg-type]
                pos += 1
            else:
                k = len(mid)
                if not fut.done():
                    got = mid if own else rids[pos : pos + k]
                    fut.set_result([PublishAck(i, copies) for i in got])  # type: ignore[arg-type]
                pos += k

    # -- RPC with retry and failover -------------------------------------------

    async def _call(self, request: broker_pb2.PublishStreamRequest, topic: str) -> Any:
        loop = asyncio.get_running_loop()
        first = loop.time()
        deadline = first + self._retry_timeout
        attempt = 0
        tried: list[str] = []
        full: set[str] = set()  # brokers that refused because their store is full
        while True:
            try:
                route = await self._route(topic)
            except UnavailableError as exc:
                err: PairqError = exc
                n = 1
            else:
                n = len(route.conns)
                index = route.current % n
                conn = route.conns[index]
                self.rpc_count += 1
                if attempt:
                    request.new_ids = False  # an earlier attempt may have been stored
                started = loop.time()
                try:
                    resp = await conn.publish(request, self._rpc_timeout)
                except PairqError as exc:
                    err = exc
                else:
                    self._penalties.clear(conn.address)
                    if attempt:
                        log.debug(
                            "publish of %r acked by %s at attempt %d, %.3fs after the first",
                            topic,
                            conn.address,
                            attempt + 1,
                            loop.time() - first,
                        )
                    return resp
                if err.code == broker_pb2.ERROR_CODE_STORE_FULL:
                    # Nothing was stored there: another broker of the placement (another
                    # pair) may have room. Only when every one is full does the caller hear it.
                    full.add(conn.address)
                    if len(full) >= n:
                        raise err
                elif not isinstance(err, UnavailableError):
                    raise err
                if conn.address not in tried:
                    tried.append(conn.address)
                self._fail_over(topic, route, conn, err, loop.time() - started)
                if (attempt + 1) % n == 0:
                    route.expires = 0.0  # tried them all: ask the lookups again
            attempt += 1
            # Try every broker once without waiting, then back off per round.
            rounds = attempt // n
            delay = (
                retry_backoff(
                    rounds,
                    base=self._retry_backoff,
                    cap=self._retry_backoff_max,
                    jitter=random.random(),
                )
                if attempt % n == 0
                else 0.0
            )
            if loop.time() + delay >= deadline:
                raise UnavailableError(
                    f"no broker accepted the publish within {self._retry_timeout:g}s "
                    f"({attempt} attempts over {', '.join(tried) or 'no broker'}): {err.message}"
                )
            if delay:
                await asyncio.sleep(delay)

    def _penalized(self, conns: list[BrokerConn]) -> set[int]:
        """Indexes of ``conns`` whose brokers are penalized now (``_policy.Penalties``)."""
        return set(self._penalty_ends(conns))

    def _penalty_ends(self, conns: list[BrokerConn]) -> dict[int, float]:
        """Index of each of ``conns`` penalized now -> when its penalty ends."""
        ends = self._penalties.ends(asyncio.get_running_loop().time())
        if not ends:
            return {}
        return {i: ends[c.address] for i, c in enumerate(conns) if c.address in ends}

    def _fail_over(
        self, topic: str, used: _Route, conn: BrokerConn, err: PairqError, elapsed: float = 0.0
    ) -> None:
        """``conn`` failed a publish of ``topic`` (over route ``used``): penalize it and
        its whole pair (every publish needs both brokers of a pair: one that does not
        answer, or refuses, leaves its partner unable to make the second copy too),
        then move the topic's route off it, to the next broker that is not penalized.

        make chaos (mixed, isolate-broker): with only the silent broker penalized, a
        producer's next try went to its partner, which waited out its own ack timeout
        before refusing: 2 s + 1.6 s without an ack, instead of going to the other pair."""
        # A placement refresh may have replaced the route during the attempt (keeping
        # the broker in use, ``conn``): move the route in use now, not the old one.
        route = self._routes.get(topic, used)
        conns = route.conns
        bad = {conn.address}
        partner = err.fields.get("partner")
        if partner:  # the refusal names it (it may not be in the route)
            with contextlib.suppress(ValueError):
                bad.add(normalize_address(str(partner)))
        # This pair cannot make two copies now: neither broker is worth trying next.
        for r in (route, used):
            if conn in r.conns:
                pair = r.groups[r.conns.index(conn)]
                if pair:
                    bad.update(
                        c.address for c, g in zip(r.conns, r.groups, strict=True) if g == pair
                    )
        now = asyncio.get_running_loop().time()
        self._penalties.add(bad, now)
        n = len(conns)
        was = route.current
        # Off any broker just penalized, not only ``conn``: a refresh during the attempt
        # may have moved the route to ``conn``'s partner (make chaos, mixed, seed 1:
        # the refresh no longer listed the silent p0b and went to p0a, which then
        # waited out its own ack timeout: 2 s + 1.7 s without an ack).
        # With every broker penalized, the one that failed longest ago, not simply the
        # next: that is usually this pair's other broker (``pick_broker``).
        if n > 1 and conns[route.current % n].address in bad:
            ends = self._penalty_ends(conns)
            cur = route.current % n
            route.current = pick_broker(n, cur + 1, set(ends) | {cur}, ends)
        self._log_failover(topic, route, conn, err, elapsed, bad, now, moved=route.current != was)

    def _log_failover(
        self,
        topic: str,
        route: _Route,
        conn: BrokerConn,
        err: PairqError,
        elapsed: float,
        bad: set[str],
        now: float,
        *,
        moved: bool,
    ) -> None:
        """A failover is an event an operator wants to see: WARNING when the route
        moves to another broker, at most once per failing broker per
        ``FAILOVER_LOG_S`` (the rest, with every detail, at DEBUG)."""
        n = len(route.conns)
        to = route.conns[route.current % n] if n else None
        pair = route.groups[route.current % n] if n else ""
        where = f"{to.address}" + (f" (pair {pair})" if pair else "") if to else "no broker"
        # A retry on the same broker (the only one, or the route was elsewhere) is no
        # failover: the caller gets the error if every attempt fails (`pairq pub` prints
        # it as its one line), so only DEBUG.
        suppressed = self._failover_log.allow(conn.address, now) if moved else None
        level = logging.WARNING if suppressed is not None else logging.DEBUG
        if not log.isEnabledFor(level):
            return
        more = f"; {suppressed} more failover(s) from it not logged" if suppressed else ""
        log.log(
            level,
            "publish of %r to %s failed after %.2fs (%s: %s); penalized for %gs: %s; route %s %s%s",
            topic,
            conn.address,
            elapsed,
            type(err).__name__,
            err.message,
            self._penalties.period,
            ", ".join(sorted(bad)),
            "moves to" if moved else "stays on",
            where,
            more,
        )

    # -- lifecycle ----------------------------------------------------------------

    async def flush(self) -> None:
        """Wait until every publish made so far has been answered."""
        while self._senders:
            await asyncio.gather(*list(self._senders), return_exceptions=True)

    async def close(self) -> None:
        """Finish outstanding publishes, then close the broker connections."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.flush()
        finally:
            for c in self._pool.values():
                await c.close()
            if self._discovery is not None:
                await self._discovery.close()


def _fail(batch: list[_Unit], err: BaseException) -> None:
    for p in batch:
        fut = p[4]
        if not fut.done():
            fut.set_exception(err)
