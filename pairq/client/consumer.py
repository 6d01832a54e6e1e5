"""The async Consumer: one Subscribe session per broker, handlers, answers written in batches.

Rules without I/O (RDY credit, in-flight accounting, backoff, de-duplication,
answers of ended sessions) live in ``pairq.client.consumer_core``; this module
owns the streams, the handler workers and the timers, and carries out what the
core leaves in each session's outbox.

Connections. The consumer keeps one ``_Link`` per broker (given in ``brokers``
or listed by the lookups): it opens a ``Subscribe`` stream and reopens it with
exponential backoff when it fails or ends. Each accepted stream is one
``_Session`` (an outbox of the core plus its reader and writer); a reconnect
is a new session, so answers for messages of an ended stream are dropped by
the core (the broker requeued them). Each stream starts with
``SubscribeIdentify``; once the broker accepts it the consumer grants RDY.

Credit. ``max_in_flight`` is spread over the live sessions with NSQ's rule:
each gets ``max(1, max_in_flight // live_sessions)`` (capped by the broker's
max RDY count), recomputed whenever a session comes or goes. The broker keeps
at most that many messages in flight per stream; every FIN/REQ frees credit,
so RDY is only re-sent when the distribution changes.

Handlers. Deliveries are queued and run by a small pool of worker tasks that
grows on demand up to ``max_in_flight`` (the concurrency bound). A worker runs
handlers back to back; only when a handler really suspends (awaits I/O) does
another worker take over the queue. A handler that completes without
suspending therefore costs no task, no queue hand-off and no loop wake-up.
Return (or ``None``) means FIN; an exception means REQ with a delay of
``requeue_delay * 2**(attempts-1)`` capped by ``max_requeue_delay``. Every
handler outcome takes one path (``Consumer._settle``), traced or not.

Answers. ``Message.finish/requeue/touch`` go to the session that delivered the
message (it implements ``message.Answers``). FIN/REQ/TOUCH are buffered per
session and written by one writer task per session: at once when a quarter of
its credit (at most ``fin_batch_size``) have accumulated, after ``fin_linger``
seconds otherwise, and always when the workers run out of work. Heartbeats are
answered with ``nop``.

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
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from pairq.client._channel import DEFAULT_BROKER, BrokerConn, normalize_address
from pairq.client._policy import check_channel, check_topic, retry_backoff
from pairq.client._tracing import TRACEPARENT, ProcessSpan
from pairq.client.consumer_core import PENDING, ConsumerCore, ConsumerStats, Outbox
from pairq.client.dedupe import Dedupe, DedupeWindow, MemoryDedupe
from pairq.client.discovery import Discovery
from pairq.client.message import Message
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


class _Session(Outbox):
    """One accepted Subscribe stream: the core's outbox for it, its reader and its writer.

    Implements ``message.Answers`` for the messages it delivered. Ends when the
    stream does; the ``_Link`` that opened it opens the next one.
    """

    def __init__(self, consumer: Consumer, link: _Link, call: Any, max_rdy: int) -> None:
        super().__init__(max_rdy)
        self.consumer = consumer
        self.link = link
        self.call = call
        self.nop = False
        self.close_sent = False
        self.writing = False
        self._wake = asyncio.Event()
        self._flush_handle: asyncio.TimerHandle | None = None

    # -- message.Answers ------------------------------------------------------------

    def finish(self, msg: Message) -> None:
        c = self.consumer
        c._yielded.discard(msg)
        c._finish(msg)

    def requeue(self, msg: Message, delay_ms: int | None) -> None:
        c = self.consumer
        c._yielded.discard(msg)
        c._requeue(msg, delay_ms)

    def touch(self, msg: Message) -> None:
        if self.consumer._core.touch(msg):
            self.wake()

    # -- writer wake-ups ------------------------------------------------------------

    def answered(self) -> None:
        """Answers were added: write them now, or after ``fin_linger`` for a few FINs."""
        if len(self.fins) >= self.fin_threshold or self.reqs or self.touches:
            self.wake()
        elif self.fins and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                self.consumer._fin_linger, self.wake
            )

    def wake(self) -> None:
        h = self._flush_handle
        if h is not None:
            h.cancel()
            self._flush_handle = None
        self._wake.set()

    def flush(self) -> None:
        if self.has_answers():
            self.wake()

    def has_outgoing(self) -> bool:
        return bool(self.open and (self.has_answers() or self.writing))

    # -- the stream -----------------------------------------------------------------

    async def run(self) -> None:
        """Read the stream until it ends; the writer runs beside it."""
        c = self.consumer
        writer = asyncio.get_running_loop().create_task(self._writer())
        c._opened(self)
        try:
            deliver = c._deliver
            read = self.call.read
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
                        "broker %s: %s: %s", self.link.address, pb.ErrorCode.Name(e.code), e.message
                    )
        finally:
            writer.cancel()
            self.writing = False
            h = self._flush_handle
            if h is not None:
                h.cancel()
                self._flush_handle = None
            c._closed(self)

    async def _writer(self) -> None:
        Req = pb.SubscribeRequest
        wake = self._wake
        call = self.call
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
                    elif c._stopping and c._closing and not self.close_sent:
                        self.close_sent = True
                        await call.write(Req(close=True))
                    else:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A stream we cannot write to is useless: end it so the
                # link reconnects (the broker requeues what was in flight).
                log.warning("writing to %s failed: %r", self.link.address, exc)
                call.cancel()
                return
            finally:
                self.writing = False
            c._changed.set()


class _Link:
    """The consumer's tie to one broker: opens Subscribe sessions, reopens them with backoff."""

    def __init__(self, consumer: Consumer, address: str) -> None:
        self.consumer = consumer
        self.broker = BrokerConn(address, security=consumer._security)
        self.address = self.broker.address
        self.session: _Session | None = None
        self.accepted_once = False
        self.broker_id = ""
        self.last_error: str | None = None
        self.retired = False  # discovery no longer lists it: do not reconnect
        self.task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        """Whether a session is open on this link now."""
        return self.session is not None and self.session.open

    async def run(self) -> None:
        c = self.consumer
        attempt = 0
        while not c._stopping and not self.retired:
            was_live = False
            try:
                was_live = await self._connect()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except _SessionError as exc:
                was_live = exc.was_live
                self._failed(exc.cause)
            except Exception as exc:
                self._failed(exc)
            if c._stopping or self.retired:
                break
            if was_live:
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

    def _failed(self, exc: BaseException) -> None:
        c = self.consumer
        if isinstance(exc, grpc.aio.AioRpcError):
            err = PairqError.from_rpc_error(exc)
            self.last_error = err.message or str(exc.code())
            if not c._stopping:
                log.warning("subscription to %s failed: %s", self.address, self.last_error)
        else:
            self.last_error = repr(exc)
            if not c._stopping:
                log.warning("subscription to %s failed: %r", self.address, exc)

    async def _connect(self) -> bool:
        """One Subscribe stream: identify, wait for acceptance, run a session on it.

        Returns whether the broker accepted it (raises ``_SessionError`` saying
        so when the session fails after acceptance).
        """
        c = self.consumer
        call = self.broker.get_stub().Subscribe()
        try:
            await call.write(pb.SubscribeRequest(identify=c._identify))
            resp = await call.read()
            if resp is grpc.aio.EOF:
                raise ConnectionError("broker closed the stream before accepting it")
            if resp.WhichOneof("event") != "accepted":
                raise ConnectionError(f"unexpected first event {resp.WhichOneof('event')!r}")
            acc = resp.accepted
            self.broker_id = acc.broker_id
            self.accepted_once = True
            session = self.session = _Session(c, self, call, acc.max_rdy_count)
            try:
                await session.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise _SessionError(exc) from exc
            return True
        finally:
            call.cancel()


class _SessionError(Exception):
    """A session failed after the broker accepted it (resets the reconnect backoff)."""

    was_live = True

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


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
        # Window times: the in-memory window's own clock (time.monotonic by default).
        self._now: Callable[[], float] = (
            window.clock if isinstance(window, MemoryDedupe) else time.monotonic
        )
        self.stats = ConsumerStats()
        self._core = ConsumerCore(
            max_in_flight=max_in_flight,
            requeue_base_ms=round(requeue_delay * 1000),
            requeue_max_ms=round(max_requeue_delay * 1000),
            fin_batch_size=self._fin_batch_size,
            window=window,
            stats=self.stats,
        )
        self._conns = [_Link(self, a) for a in dict.fromkeys(brokers)]
        self._static = {c.address for c in self._conns}
        self._lookups = list(lookups or [])
        self._lookup_poll_interval = lookup_poll_interval
        self._discovery: Discovery | None = None
        self._discovery_task: asyncio.Task[None] | None = None
        self._dropped: list[_Link] = []
        self._queue: collections.deque[Message] = collections.deque()
        self._last_activity = 0.0
        self._changed = asyncio.Event()
        self._items = asyncio.Event()
        self._idle_workers: list[asyncio.Future[None]] = []
        self._workers: set[asyncio.Task[None]] = set()
        self._draining = 0
        self._yielded: set[Message] = set()
        self._record_wake = asyncio.Event()
        self._recorder: asyncio.Task[None] | None = None
        self._started = False
        self._stopping = False
        self._closing = False  # stop(): ask each broker to end its stream
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
        return len(self._core.sessions)

    @property
    def max_in_flight(self) -> int:
        """Total RDY credit over all streams."""
        return self._max_in_flight

    def set_max_in_flight(self, max_in_flight: int) -> None:
        """Change the total credit (0 pauses delivery); RDY is re-sent to every stream."""
        if max_in_flight < 0:
            raise ValueError("max_in_flight must be >= 0")
        self._max_in_flight = max_in_flight
        woke = self._core.set_max_in_flight(max_in_flight)
        if self._started and not self._stopping:
            for box in woke:
                self._session(box).wake()

    @property
    def in_flight(self) -> int:
        """Messages received and not yet answered."""
        return self._core.in_flight

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
            for box in self._core.stop():
                self._session(box).wake()
            if self._handler is None:
                self._requeue_queued()
                for msg in list(self._yielded):  # iterated but never answered
                    msg.requeue(0)
            self._items.set()
            deadline = loop.time() + self._stop_timeout
            while self._core.in_flight > 0 and loop.time() < deadline:
                await self._wait_changed(deadline - loop.time())
            self._closing = True
            for c in self._conns:
                if c.session is not None:
                    c.session.wake()
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
                    f"(connected={self.connected}, in_flight={self._core.in_flight})"
                )
            await self._wait_changed(wait)

    def _is_quiet(self) -> bool:
        if self._core.in_flight or self._queue:
            return False
        if not any(c.accepted_once for c in self._conns):
            return False
        return not any(b.has_outgoing() for b in self._sessions())

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
                c = _Link(self, address)
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

    # -- sessions -------------------------------------------------------------------

    @staticmethod
    def _session(box: Outbox) -> _Session:
        assert isinstance(box, _Session)
        return box

    def _sessions(self) -> list[_Session]:
        return [self._session(b) for b in self._core.sessions]

    def _opened(self, session: _Session) -> None:
        """A session was accepted: redistribute RDY (NSQ's rule)."""
        for box in self._core.open(session):
            self._session(box).wake()
        self._conns_changed()

    def _closed(self, session: _Session) -> None:
        """A session ended: its unsent answers are dropped; the others share its credit."""
        for box in self._core.close(session):
            self._session(box).wake()
        self._conns_changed()

    def _conns_changed(self) -> None:
        self.stats.connections = len(self._core.sessions)
        self._last_activity = asyncio.get_running_loop().time()
        self._changed.set()

    # -- delivery ---------------------------------------------------------------------

    def _deliver(self, session: _Session, pbs: Any) -> None:
        if not len(pbs):
            return
        now = self._now()
        self._last_activity = asyncio.get_running_loop().time()
        core = self._core
        run = core.admit(session, [Message(m, session, session) for m in pbs], now)
        if session.has_answers():  # duplicates FIN'd, or refused while stopping
            session.answered()
        if core.window_errors or not core.in_flight:
            self._after_answers()
        self._queue.extend(run)
        if self._handler is None:
            self._items.set()  # iterator mode
        elif run and self._draining == 0:
            self._wake_worker()

    def _requeue_queued(self) -> None:
        q = self._queue
        while q:
            self._requeue(q.popleft(), 0)

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
        for b in self._core.sessions:
            self._session(b).flush()
        if self._core.to_record:
            self._record_wake.set()

    async def _worker(self) -> None:
        q = self._queue
        handler = self._handler
        assert handler is not None
        loop = asyncio.get_running_loop()
        settle = self._settle
        finish_many = self._finish_many
        trace_ctx = self._trace
        # Handlers that returned, FIN'd together: before this worker waits for
        # anything, when the queue runs dry, and every 64 messages.
        done: list[Message] = []
        try:
            while True:
                if not q:
                    if done:
                        finish_many(done)
                        done.clear()
                    self._flush_all()
                    self._draining -= 1
                    fut: asyncio.Future[None] = loop.create_future()
                    self._idle_workers.append(fut)
                    await fut  # the waker counted us as draining again
                    continue
                msg = q.popleft()
                if trace_ctx and TRACEPARENT in msg._pb.headers:
                    if done:
                        finish_many(done)
                        done.clear()
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
                                if done:
                                    finish_many(done)
                                    done.clear()
                                await self._suspended(_Resume(r, y))
                        elif inspect.isawaitable(r):
                            if done:
                                finish_many(done)
                                done.clear()
                            await self._suspended(r)
                except BaseException as exc:
                    if settle(msg, exc):
                        raise
                else:
                    done.append(msg)
                    if len(done) >= 64:
                        finish_many(done)
                        done.clear()
        finally:
            if done:
                finish_many(done)

    async def _run_traced(self, handler: Handler, msg: Message) -> None:
        """Run the handler inside a CONSUMER span parented by the message's trace context."""
        span = ProcessSpan(dict(msg._pb.headers), self.topic, self.channel, msg.id, msg.attempts)
        error: BaseException | None = None
        try:
            r = handler(msg)
            if r is not None and inspect.isawaitable(r):
                await self._suspended(r)
        except BaseException as exc:
            error = exc
            if self._settle(msg, exc):
                raise
        else:
            self._finish_many((msg,))
        finally:
            span.end(error)

    def _settle(self, msg: Message, exc: BaseException) -> bool:
        """The one path for a handler that raised; True: re-raise (this worker is stopping).

        A ``CancelledError`` while the worker is being cancelled (``stop()``) requeues
        the message at once (delay 0) and re-raises; other ``BaseException`` s that are
        not ``Exception`` s (KeyboardInterrupt, SystemExit) re-raise without an answer.
        Any other error (a ``CancelledError`` the handler raised itself included) is a
        failure: REQ with the backoff by attempts, unless the handler answered already.
        """
        if isinstance(exc, asyncio.CancelledError):
            if _being_cancelled():
                self._requeue(msg, 0)
                return True
        elif not isinstance(exc, Exception):
            return True
        self.stats.handler_errors += 1
        log.warning(
            "handler failed for message %s (attempt %d): %r", msg.id.hex(), msg.attempts, exc
        )
        self._requeue(msg, None)
        return False

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

    def _finish(self, msg: Message) -> None:
        """FIN ``msg`` (the core records its id in the window first); ignored if answered."""
        if msg._state == PENDING:
            self._finish_many((msg,))

    def _finish_many(self, msgs: Sequence[Message]) -> None:
        """FIN each of ``msgs`` not answered yet: the one path of a handler's success."""
        core = self._core
        core.finish_many(msgs, self._now())
        for box in core.sessions:
            box.answered()
        if core.woken or core.to_record or core.window_errors or not core.in_flight:
            self._after_answers()

    def _requeue(self, msg: Message, delay_ms: int | None) -> None:
        """REQ ``msg`` after ``delay_ms`` (None: backoff by attempts); ignored if answered."""
        if msg._state != PENDING:
            return
        core = self._core
        core.requeue(msg, delay_ms, self._now())
        box = msg._box
        if box.open:
            box.answered()
        self._after_answers()

    def _after_answers(self) -> None:
        """The less common consequences of answers: other sessions, records, idleness."""
        core = self._core
        if core.window_errors:
            for what, mid, exc in core.window_errors:
                log.error("dedupe %s failed for %s: %r", what, mid.hex(), exc)
            core.window_errors.clear()
        if core.woken:
            for box in core.woken:
                box.answered()
            core.woken.clear()
        n = len(core.to_record)
        if n >= self._fin_batch_size:
            self._record_wake.set()
        elif n == 1:
            asyncio.get_running_loop().call_later(self._fin_linger, self._record_wake.set)
        if not core.in_flight:
            self._last_activity = asyncio.get_running_loop().time()
            self._changed.set()

    async def _record_loop(self) -> None:
        dd = self._dedupe
        assert dd is not None
        core = self._core
        loop = asyncio.get_running_loop()
        while True:
            await self._record_wake.wait()
            self._record_wake.clear()
            batch = core.take_records()
            if not batch:
                continue
            ok = True
            try:
                await loop.run_in_executor(dd.executor, dd.add_many, [m.id for m in batch])
            except Exception as exc:
                ok = False
                log.error("could not record %d ids in the dedupe window: %r", len(batch), exc)
            core.recorded(batch, ok)
            self._after_answers()
            for b in core.sessions:
                self._session(b).flush()

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
