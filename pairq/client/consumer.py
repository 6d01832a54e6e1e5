"""The async Consumer: one Subscribe stream per broker, RDY credit, handlers, FIN batching.

Connections. The consumer opens a ``Subscribe`` stream to every broker in
``brokers`` and keeps it open: a stream that fails or ends is reopened with
exponential backoff. Each stream starts with ``SubscribeIdentify``; once the
broker accepts it the consumer grants RDY credit.

Credit. ``max_in_flight`` is spread over the live streams with NSQ's rule:
each gets ``max(1, max_in_flight // live_streams)`` (capped by the broker's
max RDY count), recomputed whenever a stream comes or goes. The broker keeps
at most that many messages in flight per stream; every FIN/REQ frees credit,
so RDY is only re-sent when the distribution changes.

Handlers. Deliveries are queued and run by a small pool of worker tasks that
grows on demand up to ``max_in_flight`` (the concurrency bound). A worker runs
handlers back to back; only when a handler really suspends (awaits I/O) does
another worker take over the queue. A handler that completes without
suspending therefore costs no task, no queue hand-off and no loop wake-up.
Return (or ``None``) means FIN; an exception means REQ with a delay of
``requeue_delay * 2**(attempts-1)`` capped by ``max_requeue_delay``.

Answers. FIN/REQ/TOUCH are buffered per stream and written by one writer task
per stream: at once when ``fin_batch_size`` have accumulated, after
``fin_linger`` seconds otherwise, and always when the workers run out of work.
Heartbeats are answered with ``nop``.

De-duplication is on by default: the handler runs once per message id within
a window (in memory, ``dedupe_max_entries`` ids for ``dedupe_ttl`` seconds;
``dedupe=PATH`` or a ``Dedupe`` keeps it in an LMDB file across restarts;
``dedupe=False`` turns it off). A pair may deliver a message twice after a
failover (finished at the dead owner, the FIN not yet replicated), and every
such delivery carries the same id: a delivery whose id is recorded is
FIN'd without running the handler; a delivery whose id is being handled right
now waits for that run's outcome. An id is recorded (durably) only after its
handler succeeded, and FIN is sent after the record is committed. A crash
between the handler's success and the commit means the handler may run again
for that id (at-least-once); use ``Message.id`` as an idempotency key where
that matters.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import os
import random
import socket
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from pairq.client._channel import DEFAULT_BROKER, BrokerConn, normalize_address
from pairq.client._policy import (
    check_channel,
    check_topic,
    rdy_per_connection,
    requeue_delay_ms,
    retry_backoff,
)
from pairq.client._tracing import TRACEPARENT, ProcessSpan
from pairq.client.dedupe import Dedupe, DedupeWindow, MemoryDedupe
from pairq.client.discovery import Discovery
from pairq.client.message import _FINISHED, _PENDING, _REQUEUED, Message
from pairq.errors import PairqError
from pairq.security.client import ClientSecurity
from pairq.v1 import broker_pb2 as pb

__all__ = ["Consumer", "ConsumerStats", "Handler"]

log = logging.getLogger("pairq.client.consumer")

Handler = Callable[[Message], "Awaitable[Any] | None"]
"""A message handler: sync or async; return to FIN, raise to REQ."""

_USER_AGENT = "pairq-python/0.1.0"
_CoroutineType = types.CoroutineType


def _being_cancelled() -> bool:
    """Whether the running task was asked to stop (vs. a CancelledError from a handler)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class ConsumerStats:
    """Live counters of a Consumer (plain ints, read them any time)."""

    __slots__ = (
        "connections",
        "dedupe_errors",
        "duplicates",
        "errors",
        "finished",
        "handler_errors",
        "heartbeats",
        "received",
        "reconnects",
        "requeued",
        "touched",
    )

    def __init__(self) -> None:
        self.received = 0
        """Deliveries received (duplicates included)."""
        self.finished = 0
        """Messages FIN'd after the handler succeeded (duplicates not included)."""
        self.requeued = 0
        """Messages REQ'd (handler failures, requeue(), messages refused while stopping)."""
        self.duplicates = 0
        """Deliveries FIN'd without running the handler because their id was already handled."""
        self.handler_errors = 0
        """Handler runs that raised."""
        self.touched = 0
        """TOUCH requests sent."""
        self.errors = 0
        """Non-fatal SubscribeError events from brokers (e.g. FIN of a timed-out message)."""
        self.reconnects = 0
        """Streams reopened after a failure."""
        self.heartbeats = 0
        """Heartbeats received from brokers (each answered with a nop)."""
        self.connections = 0
        """Streams currently accepted by a broker."""
        self.dedupe_errors = 0
        """Failures to record ids in the dedupe window (the messages were FIN'd anyway)."""

    def as_dict(self) -> dict[str, int]:
        """The counters as a dict."""
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        return f"ConsumerStats({self.as_dict()})"


class _Resume:
    """Await the rest of a coroutine whose first step already ran and yielded ``first``.

    Lets a worker run a handler's first step inline (most handlers finish
    there) and, only if it suspends, keep driving it from the same task.
    """

    __slots__ = ("coro", "first")

    def __init__(self, coro: Any, first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        to_yield = self.first
        self.first = None
        while True:
            try:
                sent = yield to_yield
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    to_yield = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    to_yield = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class _Conn:
    """One broker's Subscribe stream: session loop, reader, writer and answer buffers."""

    def __init__(self, consumer: Consumer, address: str) -> None:
        self.consumer = consumer
        self.broker = BrokerConn(address, security=consumer._security)
        self.address = self.broker.address
        self.gen = 0
        self.live = False
        self.accepted_once = False
        self.broker_id = ""
        self.max_rdy = 0
        self.sent_rdy = 0
        self.rdy: int | None = None
        self.fins: list[bytes] = []
        self.reqs: dict[int, list[bytes]] = {}
        self.touches: list[bytes] = []
        self.nop = False
        self.fin_threshold = consumer._fin_batch_size
        self.close_requested = False
        self.close_sent = False
        self.writing = False
        self.last_error: str | None = None
        self.retired = False  # discovery no longer lists it: do not reconnect
        self._wake = asyncio.Event()
        self._flush_handle: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    # -- answer buffers (called by the consumer) --------------------------------

    def fin(self, mid: bytes, gen: int) -> None:
        if gen != self.gen or not self.live:
            return  # the stream that delivered it is gone; the broker requeued it
        fins = self.fins
        fins.append(mid)
        if len(fins) >= self.fin_threshold:
            self.wake()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                self.consumer._fin_linger, self.wake
            )

    def req(self, mid: bytes, gen: int, delay_ms: int) -> None:
        if gen != self.gen or not self.live:
            return
        self.reqs.setdefault(delay_ms, []).append(mid)
        self.wake()

    def touch(self, msg: Message) -> None:
        if msg._gen != self.gen or not self.live:
            return
        self.touches.append(msg.id)
        self.consumer.stats.touched += 1
        self.wake()

    def set_rdy(self, count: int) -> None:
        # Send FINs in quarters of the credit, so the broker refills this
        # stream while the rest of the batch is still being handled.
        self.fin_threshold = max(1, min(self.consumer._fin_batch_size, count // 4))
        if count != self.sent_rdy or self.rdy is not None:
            self.rdy = count
            self.wake()

    def wake(self) -> None:
        h = self._flush_handle
        if h is not None:
            h.cancel()
            self._flush_handle = None
        self._wake.set()

    def flush(self) -> None:
        if self.fins or self.reqs or self.touches:
            self.wake()

    def has_outgoing(self) -> bool:
        return bool(self.live and (self.fins or self.reqs or self.touches or self.writing))

    # -- session ----------------------------------------------------------------

    async def run(self) -> None:
        c = self.consumer
        attempt = 0
        while not c._stopping and not self.retired:
            try:
                await self._session()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                err = PairqError.from_rpc_error(exc)
                self.last_error = err.message or str(exc.code())
                if not c._stopping:
                    log.warning("subscription to %s failed: %s", self.address, self.last_error)
            except Exception as exc:
                self.last_error = repr(exc)
                if not c._stopping:
                    log.warning("subscription to %s failed: %r", self.address, exc)
            if c._stopping or self.retired:
                break
            if self._was_live:
                attempt = 0
            attempt += 1
            c.stats.reconnects += 1
            await asyncio.sleep(
                retry_backoff(
                    attempt,
                    base=c._reconnect_backoff,
                    cap=c._reconnect_backoff_max,
                    jitter=random.random(),
                )
            )

    _was_live = False

    async def _session(self) -> None:
        c = self.consumer
        self._was_live = False
        stub = self.broker.get_stub()
        call = stub.Subscribe()
        try:
            await call.write(pb.SubscribeRequest(identify=c._identify))
            resp = await call.read()
            if resp is grpc.aio.EOF:
                raise ConnectionError("broker closed the stream before accepting it")
            if resp.WhichOneof("event") != "accepted":
                raise ConnectionError(f"unexpected first event {resp.WhichOneof('event')!r}")
            acc = resp.accepted
            self.gen += 1
            self.broker_id = acc.broker_id
            self.max_rdy = acc.max_rdy_count
            self.fins = []
            self.reqs = {}
            self.touches = []
            self.nop = False
            self.sent_rdy = 0
            self.rdy = None
            self.close_sent = False
            self.live = True
            self._was_live = True
            self.accepted_once = True
            writer = asyncio.get_running_loop().create_task(self._writer(call))
            c._conn_changed()
            try:
                deliver = c._deliver
                read = call.read
                eof = grpc.aio.EOF
                while True:
                    resp = await read()
                    if resp is eof:
                        return
                    kind = resp.WhichOneof("event")
                    if kind == "deliveries":
                        deliver(self, resp.deliveries.messages)
                    elif kind == "heartbeat":
                        c.stats.heartbeats += 1
                        self.nop = True
                        self._wake.set()
                    elif kind == "error":
                        c.stats.errors += 1
                        e = resp.error
                        log.debug(
                            "broker %s: %s: %s", self.address, pb.ErrorCode.Name(e.code), e.message
                        )
            finally:
                writer.cancel()
                self.live = False
                self.writing = False
                c._conn_changed()
        finally:
            call.cancel()

    async def _writer(self, call: Any) -> None:
        Req = pb.SubscribeRequest
        wake = self._wake
        c = self.consumer
        while True:
            await wake.wait()
            wake.clear()
            self.writing = True
            try:
                while True:
                    if self.rdy is not None:
                        n, self.rdy = self.rdy, None
                        self.sent_rdy = n
                        await call.write(Req(ready=pb.SubscribeReady(count=n)))
                    elif self.fins:
                        ids, self.fins = self.fins, []
                        await call.write(Req(finish=pb.SubscribeFinish(ids=ids)))
                    elif self.reqs:
                        reqs, self.reqs = self.reqs, {}
                        for delay, ids in reqs.items():
                            await call.write(
                                Req(requeue=pb.SubscribeRequeue(ids=ids, delay_ms=delay))
                            )
                    elif self.touches:
                        ids, self.touches = self.touches, []
                        await call.write(Req(touch=pb.SubscribeTouch(ids=ids)))
                    elif self.nop:
                        self.nop = False
                        await call.write(Req(nop=True))
                    elif self.close_requested and not self.close_sent:
                        self.close_sent = True
                        await call.write(Req(close=True))
                    else:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A stream we cannot write to is useless: end it so the
                # session reconnects (the broker requeues what was in flight).
                log.warning("writing to %s failed: %r", self.address, exc)
                call.cancel()
                return
            finally:
                self.writing = False
            c._changed.set()


class Consumer:
    """Consumes one channel of one topic from every broker in ``brokers``.

    ``handler(msg)`` (sync or async) runs for every message: returning FINs it,
    raising REQs it with backoff. Without a handler, iterate ``messages()``
    (or ``async for msg in consumer``) and answer each message yourself.
    Use as an async context manager, or call ``start()`` and ``stop()``.
    All options are keyword-only:

    - ``max_in_flight``: total RDY credit over all brokers, and the handler concurrency bound.
    - ``dedupe``: on by default (an in-memory window of ``dedupe_max_entries`` ids kept
      ``dedupe_ttl`` seconds); a path (or a ``Dedupe``) for a persistent LMDB window, opened
      and closed by the consumer; any ``DedupeWindow``; ``False`` (or ``None``) turns it off.
    - ``requeue_delay`` / ``max_requeue_delay``: REQ backoff after a handler failure, seconds:
      ``requeue_delay * 2**(attempts-1)``, capped.
    - ``fin_batch_size`` / ``fin_linger``: send a stream's FINs when this many (at most a
      quarter of its RDY) are buffered, or after this many seconds, whichever comes first
      (and whenever the workers go idle).
    - ``idle_quiet``: quiet period for ``wait_idle``, seconds.
    - ``msg_timeout_ms`` / ``heartbeat_interval_ms``: asked of the broker (0: its default).
    - ``reconnect_backoff`` / ``reconnect_backoff_max``: wait between reconnects, seconds.
    - ``stop_timeout``: how long ``stop()`` waits for running handlers, seconds.
    - ``lookups`` / ``lookup_poll_interval``: find the brokers holding the topic through
      these lookups (asked every ``lookup_poll_interval`` seconds): connect to new ones,
      stop reconnecting to ones answered dead or tombstoned. ``brokers`` are always used.
    - ``client_id``, ``hostname``, ``user_agent``: shown in broker stats.
    - ``trace_context``: run the handler of a message that carries W3C trace context
      (``traceparent`` header) inside an OpenTelemetry CONSUMER span parented by it.
    - ``token``, ``tls_cert``, ``tls_key``, ``tls_ca``: bearer token and TLS files
      (``pairq.security.client.ClientSecurity``), for brokers and lookups alike.

    Sync handlers run on the event loop: hand blocking work to a thread
    (``await asyncio.to_thread(...)``) in an async handler instead.
    """

    def __init__(
        self,
        topic: str,
        channel: str,
        brokers: Sequence[str] | None = None,
        *,
        lookups: Sequence[str] | None = None,
        lookup_poll_interval: float = 15.0,
        handler: Handler | None = None,
        max_in_flight: int = 200,
        dedupe: DedupeWindow | str | os.PathLike[str] | bool | None = True,
        dedupe_max_entries: int = 100_000,
        dedupe_ttl: float = 600.0,
        requeue_delay: float = 1.0,
        max_requeue_delay: float = 60.0,
        fin_batch_size: int = 256,
        fin_linger: float = 0.002,
        idle_quiet: float = 0.2,
        msg_timeout_ms: int = 0,
        heartbeat_interval_ms: int = 0,
        reconnect_backoff: float = 0.1,
        reconnect_backoff_max: float = 5.0,
        stop_timeout: float = 30.0,
        client_id: str = "",
        hostname: str | None = None,
        user_agent: str = _USER_AGENT,
        trace_context: bool = True,
        token: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        tls_ca: str = "",
    ) -> None:
        self._security = ClientSecurity(token, tls_cert, tls_key, tls_ca)
        check_topic(topic)
        check_channel(channel)
        if isinstance(brokers, str):
            brokers = [brokers]
        if isinstance(lookups, str):
            lookups = [lookups]
        if brokers is None:
            brokers = [] if lookups else [DEFAULT_BROKER]
        if not brokers and not lookups:
            raise ValueError("Consumer needs at least one broker or lookup address")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.topic = topic
        self.channel = channel
        self._handler = handler
        self._trace = trace_context
        self._max_in_flight = max_in_flight
        self._requeue_base_ms = round(requeue_delay * 1000)
        self._requeue_max_ms = round(max_requeue_delay * 1000)
        self._fin_batch_size = max(1, fin_batch_size)
        self._fin_linger = fin_linger
        self._idle_quiet = idle_quiet
        self._reconnect_backoff = reconnect_backoff
        self._reconnect_backoff_max = reconnect_backoff_max
        self._stop_timeout = stop_timeout
        self._identify = pb.SubscribeIdentify(
            topic=topic,
            channel=channel,
            client_id=client_id or f"{socket.gethostname()}-{os.getpid()}",
            hostname=hostname if hostname is not None else socket.gethostname(),
            user_agent=user_agent,
            msg_timeout_ms=msg_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
        )
        self._owns_dedupe = False
        window: DedupeWindow | None
        if dedupe is True:
            window = MemoryDedupe(max_entries=dedupe_max_entries, ttl=dedupe_ttl)
        elif dedupe is None or dedupe is False:
            window = None
        elif isinstance(dedupe, (str, os.PathLike)):
            window = Dedupe(Path(dedupe))
            self._owns_dedupe = True
        else:
            window = dedupe
        self._dedupe: DedupeWindow | None = window
        self._conns = [_Conn(self, a) for a in dict.fromkeys(brokers)]
        self._static = {c.address for c in self._conns}
        self._lookups = list(lookups or [])
        self._lookup_poll_interval = lookup_poll_interval
        self._discovery: Discovery | None = None
        self._discovery_task: asyncio.Task[None] | None = None
        self._dropped: list[_Conn] = []
        self.stats = ConsumerStats()
        self._queue: collections.deque[Message] = collections.deque()
        self._busy = 0  # received and not yet answered (FIN/REQ buffered)
        self._last_activity = 0.0
        self._changed = asyncio.Event()
        self._items = asyncio.Event()
        self._idle_workers: list[asyncio.Future[None]] = []
        self._workers: set[asyncio.Task[None]] = set()
        self._draining = 0
        # id -> duplicates waiting for the run in progress (None: none yet; the common
        # case costs no list)
        self._inprogress: dict[bytes, list[Message] | None] = {}
        self._yielded: set[Message] = set()
        self._to_record: list[Message] = []
        self._record_wake = asyncio.Event()
        self._recorder: asyncio.Task[None] | None = None
        self._started = False
        self._stopping = False
        self._stopped = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self.messages()

    async def start(self) -> None:
        """Open the streams (returns at once; connection happens in the background)."""
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        if self._dedupe is not None and self._dedupe.executor is not None:
            self._recorder = loop.create_task(self._record_loop())
        for c in self._conns:
            c.task = loop.create_task(c.run())
        if self._lookups:
            self._discovery = Discovery(
                self._lookups, poll_interval=self._lookup_poll_interval, security=self._security
            )
            self._discovery_task = loop.create_task(self._discover())

    @property
    def connected(self) -> int:
        """Streams currently accepted by a broker."""
        return sum(1 for c in self._conns if c.live)

    @property
    def max_in_flight(self) -> int:
        """Total RDY credit over all streams."""
        return self._max_in_flight

    def set_max_in_flight(self, max_in_flight: int) -> None:
        """Change the total credit (0 pauses delivery); RDY is re-sent to every stream."""
        if max_in_flight < 0:
            raise ValueError("max_in_flight must be >= 0")
        self._max_in_flight = max_in_flight
        if self._started and not self._stopping:
            self._conn_changed()

    @property
    def in_flight(self) -> int:
        """Messages received and not yet answered."""
        return self._busy

    async def stop(self) -> None:
        """Stop gracefully: RDY 0, let running handlers finish, flush answers, close.

        Messages already received are still handled (with a handler) or
        requeued (iterator mode); ones arriving later are requeued at once.
        Handlers still running after ``stop_timeout`` are cancelled (their
        messages time out and are redelivered).
        """
        if not self._started:
            self._stopped.set()
            return
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        if self._discovery_task is not None:
            self._discovery_task.cancel()
            await asyncio.gather(self._discovery_task, return_exceptions=True)
        try:
            for c in self._conns:
                if c.live:
                    c.set_rdy(0)
            if self._handler is None:
                self._requeue_queued()
                for msg in list(self._yielded):  # iterated but never answered
                    msg.requeue(0)
            self._items.set()
            deadline = loop.time() + self._stop_timeout
            while self._busy > 0 and loop.time() < deadline:
                await self._wait_changed(deadline - loop.time())
            for c in self._conns:
                c.close_requested = True
                c.wake()
            # The broker ends each stream once nothing is in flight on it;
            # streams not connected now have nothing to wait for.
            tasks = [c.task for c in self._conns if c.task is not None]
            for c in self._conns:
                if c.task is not None and not c.live:
                    c.task.cancel()
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=2.0)
                for t in pending:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for w in list(self._workers):
                w.cancel()
            if self._workers:
                await asyncio.gather(*self._workers, return_exceptions=True)
            if self._recorder is not None:
                self._recorder.cancel()
                await asyncio.gather(self._recorder, return_exceptions=True)
            for c in self._conns + self._dropped:
                await c.broker.close()
            if self._discovery is not None:
                await self._discovery.close()
            if self._owns_dedupe and self._dedupe is not None:
                self._dedupe.close()
            self._stopped.set()
            self._changed.set()

    close = stop

    async def wait_idle(self, timeout: float = 5.0, *, quiet: float | None = None) -> None:
        """Wait until the consumer is idle; raise ``TimeoutError`` after ``timeout`` seconds.

        Idle means all of: at least one stream has been accepted by a broker;
        no message is queued, being handled, or waiting for its FIN/REQ to be
        written; and for the last ``quiet`` seconds (default ``idle_quiet``,
        0.2 s) no delivery arrived, no stream was (re)accepted and the last
        message was answered. Deferred messages not yet due and brokers that
        cannot be reached do not keep the consumer from being idle.
        """
        loop = asyncio.get_running_loop()
        quiet = self._idle_quiet if quiet is None else quiet
        deadline = loop.time() + timeout
        while True:
            now = loop.time()
            wait = deadline - now
            if self._is_quiet():
                left = self._last_activity + quiet - now
                if left <= 0:
                    return
                wait = min(wait, left)
            if deadline - now <= 0:
                raise TimeoutError(
                    f"consumer of {self.topic}/{self.channel} not idle after {timeout:g}s "
                    f"(connected={self.connected}, in_flight={self._busy})"
                )
            await self._wait_changed(wait)

    def _is_quiet(self) -> bool:
        if self._busy or self._queue:
            return False
        if not any(c.accepted_once for c in self._conns):
            return False
        return not any(c.has_outgoing() for c in self._conns)

    async def _wait_changed(self, timeout: float) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), max(0.0, timeout))
        except TimeoutError:
            pass

    # -- discovery ------------------------------------------------------------

    @property
    def brokers(self) -> list[str]:
        """Addresses of the brokers this consumer connects to now (given and discovered)."""
        return [c.address for c in self._conns if not c.retired]

    async def _discover(self) -> None:
        assert self._discovery is not None
        async for addresses in self._discovery.watch(self.topic):
            self._apply_discovered(addresses)

    def _apply_discovered(self, addresses: Sequence[str]) -> None:
        """Connect to newly listed brokers; stop reconnecting to ones no longer listed.

        A stream that is up to a broker that disappeared from the answer (dead
        or tombstoned) is left to end on its own (a tombstoned broker drains;
        a dead one has ended it already); it is then not reopened.
        """
        loop = asyncio.get_running_loop()
        wanted = set(self._static)
        for a in addresses:
            try:
                wanted.add(normalize_address(a))
            except ValueError:
                log.warning("lookup listed an invalid broker address %r", a)
        by_addr = {c.address: c for c in self._conns}
        for address in sorted(wanted):
            c = by_addr.get(address)
            if c is None or c.task is None or c.task.done():
                if c is not None:
                    self._conns.remove(c)
                c = _Conn(self, address)
                self._conns.append(c)
                c.task = loop.create_task(c.run())
                log.info("consuming %s/%s from %s (discovered)", self.topic, self.channel, address)
            else:
                c.retired = False
        for c in list(self._conns):
            if c.address not in wanted and not c.retired:
                c.retired = True
                log.info("%s no longer listed for %s: not reconnecting", c.address, self.topic)
                if not c.live and c.task is not None:
                    c.task.cancel()
                    self._conns.remove(c)
                    self._dropped.append(c)  # its channel is closed at stop()

    # -- delivery ------------------------------------------------------------

    def _conn_changed(self) -> None:
        """A stream came up or went down: redistribute RDY (NSQ's rule)."""
        live = [c for c in self._conns if c.live]
        self.stats.connections = len(live)
        for c in live:
            rdy = (
                0
                if self._stopping
                else rdy_per_connection(self._max_in_flight, len(live), c.max_rdy)
            )
            c.set_rdy(rdy)
        self._last_activity = asyncio.get_running_loop().time()
        self._changed.set()

    def _deliver(self, conn: _Conn, msgs: Any) -> None:
        n = len(msgs)
        if not n:
            return
        self.stats.received += n
        self._last_activity = asyncio.get_running_loop().time()
        gen = conn.gen
        if self._stopping:
            # Refused: give them straight back.
            self.stats.requeued += n
            conn.reqs.setdefault(0, []).extend(m.id for m in msgs)
            conn.wake()
            return
        self._busy += n
        q = self._queue
        if self._handler is None:
            # Iterator mode: de-duplicate on arrival, so duplicates are answered
            # even while nobody iterates.
            admit = self._admit
            for m in msgs:
                msg = Message(m, conn, gen)
                if admit(msg):
                    q.append(msg)
            self._items.set()
            return
        for m in msgs:
            q.append(Message(m, conn, gen))
        if self._draining == 0:
            self._wake_worker()

    def _requeue_queued(self) -> None:
        q = self._queue
        while q:
            msg = q.popleft()
            msg._state = _REQUEUED
            self._answer(msg, False, 0)

    # -- workers ----------------------------------------------------------------

    def _wake_worker(self) -> None:
        if self._idle_workers:
            self._idle_workers.pop().set_result(None)
            self._draining += 1
        elif len(self._workers) < max(1, self._max_in_flight):
            self._draining += 1
            task = asyncio.get_running_loop().create_task(self._worker())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    def _flush_all(self) -> None:
        for c in self._conns:
            c.flush()
        if self._to_record:
            self._record_wake.set()

    async def _worker(self) -> None:
        q = self._queue
        handler = self._handler
        assert handler is not None
        loop = asyncio.get_running_loop()
        admit = self._admit
        answer = self._answer
        trace_ctx = self._trace
        while True:
            if not q:
                self._flush_all()
                self._draining -= 1
                fut: asyncio.Future[None] = loop.create_future()
                self._idle_workers.append(fut)
                await fut  # the waker counted us as draining again
                continue
            msg = q.popleft()
            if not admit(msg):
                continue
            if trace_ctx and TRACEPARENT in msg._pb.headers:
                await self._run_traced(handler, msg)
                continue
            try:
                r = handler(msg)
                if r is not None:
                    if type(r) is _CoroutineType:
                        try:
                            y = r.send(None)
                        except StopIteration:
                            pass
                        else:
                            await self._suspended(_Resume(r, y))
                    elif inspect.isawaitable(r):
                        await self._suspended(r)
            except asyncio.CancelledError as exc:
                if _being_cancelled():
                    if msg._state == _PENDING:
                        msg._state = _REQUEUED
                        answer(msg, False, 0)
                    raise
                self._failed(msg, exc)  # the handler itself raised CancelledError
            except Exception as exc:
                self.stats.handler_errors += 1
                log.warning(
                    "handler failed for message %s (attempt %d): %r",
                    msg.id.hex(),
                    msg.attempts,
                    exc,
                )
                if msg._state == _PENDING:
                    msg._state = _REQUEUED
                    answer(msg, False, None)
            else:
                if msg._state == _PENDING:
                    msg._state = _FINISHED
                    answer(msg, True, None)

    async def _run_traced(self, handler: Handler, msg: Message) -> None:
        """Run the handler inside a CONSUMER span parented by the message's trace context."""
        span = ProcessSpan(dict(msg._pb.headers), self.topic, self.channel, msg.id, msg.attempts)
        error: BaseException | None = None
        try:
            r = handler(msg)
            if r is not None and inspect.isawaitable(r):
                await self._suspended(r)
        except asyncio.CancelledError as exc:
            error = exc
            if _being_cancelled():
                if msg._state == _PENDING:
                    msg._state = _REQUEUED
                    self._answer(msg, False, 0)
                raise
            self._failed(msg, exc)
        except Exception as exc:
            error = exc
            self.stats.handler_errors += 1
            log.warning(
                "handler failed for message %s (attempt %d): %r", msg.id.hex(), msg.attempts, exc
            )
            if msg._state == _PENDING:
                msg._state = _REQUEUED
                self._answer(msg, False, None)
        else:
            if msg._state == _PENDING:
                msg._state = _FINISHED
                self._answer(msg, True, None)
        finally:
            span.end(error)

    def _failed(self, msg: Message, exc: BaseException) -> None:
        self.stats.handler_errors += 1
        log.warning(
            "handler failed for message %s (attempt %d): %r", msg.id.hex(), msg.attempts, exc
        )
        if msg._state == _PENDING:
            msg._state = _REQUEUED
            self._answer(msg, False, None)

    async def _suspended(self, aw: Any) -> Any:
        # This worker is about to wait: let another one take the queue.
        self._draining -= 1
        if self._queue and self._draining <= 0:
            self._wake_worker()
        try:
            return await aw
        finally:
            self._draining += 1

    # -- answers and de-duplication ---------------------------------------------------

    def _admit(self, msg: Message) -> bool:
        """Whether to hand ``msg`` to the handler/iterator (False: dedupe took care of it)."""
        dd = self._dedupe
        if dd is None:
            return True
        inprogress = self._inprogress
        if msg.id in inprogress:
            waiting = inprogress[msg.id]
            if waiting is None:
                waiting = inprogress[msg.id] = []
            waiting.append(msg)  # resolved with the run in progress
            return False
        try:
            seen = dd.contains(msg.id)
        except Exception as exc:  # a broken window must not stop consumption
            self.stats.dedupe_errors += 1
            log.error("dedupe lookup failed for %s: %r", msg.id.hex(), exc)
            seen = False
        if seen:
            msg._state = _FINISHED
            self.stats.duplicates += 1
            self._done(msg)
            msg._conn.fin(msg.id, msg._gen)
            return False
        inprogress[msg.id] = None
        return True

    def _answer(self, msg: Message, ok: bool, delay_ms: int | None) -> None:
        """Record the outcome of a message (FIN if ``ok``, else REQ after ``delay_ms``)."""
        if self._handler is None:
            self._yielded.discard(msg)
        if ok:
            if self._dedupe is not None and msg.id in self._inprogress:
                if self._dedupe.executor is None:  # in memory: record now, FIN at once
                    try:
                        self._dedupe.add(msg.id)
                    except Exception as exc:
                        self.stats.dedupe_errors += 1
                        log.error("could not record %s in the dedupe window: %r", msg.id.hex(), exc)
                    self._finish_recorded(msg)
                    return
                rec = self._to_record
                rec.append(msg)
                if len(rec) >= self._fin_batch_size:
                    self._record_wake.set()
                elif len(rec) == 1:
                    asyncio.get_running_loop().call_later(self._fin_linger, self._record_wake.set)
                return
            self.stats.finished += 1
            msg._conn.fin(msg.id, msg._gen)
            self._done(msg)
        else:
            if delay_ms is None:
                delay_ms = requeue_delay_ms(
                    msg.attempts, base_ms=self._requeue_base_ms, max_ms=self._requeue_max_ms
                )
            self.stats.requeued += 1
            msg._conn.req(msg.id, msg._gen, delay_ms)
            self._done(msg)
            if self._dedupe is not None:
                for dup in self._inprogress.pop(msg.id, None) or ():
                    dup._state = _REQUEUED
                    self.stats.requeued += 1
                    dup._conn.req(dup.id, dup._gen, delay_ms)
                    self._done(dup)

    def _done(self, msg: Message) -> None:
        self._busy -= 1
        if self._busy == 0:
            self._last_activity = asyncio.get_running_loop().time()
            self._changed.set()

    async def _record_loop(self) -> None:
        dd = self._dedupe
        assert dd is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._record_wake.wait()
            self._record_wake.clear()
            if not self._to_record:
                continue
            batch, self._to_record = self._to_record, []
            try:
                await loop.run_in_executor(dd.executor, dd.add_many, [m.id for m in batch])
            except Exception as exc:
                self.stats.dedupe_errors += len(batch)
                log.error("could not record %d ids in the dedupe window: %r", len(batch), exc)
            for msg in batch:
                self._finish_recorded(msg)
            for c in self._conns:
                c.flush()

    def _finish_recorded(self, msg: Message) -> None:
        """``msg``'s id is recorded: FIN it, and the duplicates that waited for it."""
        self.stats.finished += 1
        msg._conn.fin(msg.id, msg._gen)
        self._done(msg)
        for dup in self._inprogress.pop(msg.id, None) or ():
            dup._state = _FINISHED
            self.stats.duplicates += 1
            dup._conn.fin(dup.id, dup._gen)
            self._done(dup)

    # -- iterator mode --------------------------------------------------------------

    async def messages(self) -> AsyncIterator[Message]:
        """Yield messages as they arrive (only without a handler); answer each one.

        Ends when the consumer stops; ``stop()`` requeues messages that were
        yielded but not answered yet. With ``dedupe``, duplicates are answered
        for you and not yielded; ``finish()`` records the id.
        """
        if self._handler is not None:
            raise RuntimeError("messages() is for consumers without a handler")
        if not self._started:
            await self.start()
        q = self._queue
        while True:
            while q:
                msg = q.popleft()
                self._yielded.add(msg)
                yield msg
            if self._stopping:
                return
            self._flush_all()
            self._items.clear()
            await self._items.wait()
