"""The workload and the recorders: what the checker reads is only what these saw.

- ``Producers``: each publishes unique ids (``P<k><seq, 14 digits>``, 16 bytes) through
  the lookups in small batches at a fixed pace, each body the sha256 of its id (hex,
  so a corrupted body is recognised: ``body_of``); every ack (id, copies, time) and
  every failure (time, error) is recorded.
- ``Consumers``: one ``pairq.client.Consumer`` per channel, de-duplication on (the
  product's in-memory window, wrapped so every raw delivery it is asked about is
  counted); the handler records every run (channel, id, broker id, epoch, time,
  whether the body was the one published).
- ``Monitor``: GetStats of every broker every ``interval`` s (pair fields: connected,
  lag, solo, epoch, takeovers, re-fill), kept as samples for healing, takeovers and
  the lease check.
Time is ``time.monotonic()`` everywhere, relative to the run's start.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from pairq.client import Consumer, Producer
from pairq.client.dedupe import MemoryDedupe
from pairq.errors import PairqError

from .cluster import BROKERS, Cluster

TOPIC = "chaos"
CHANNELS = ("c1", "c2")
PROBE_TOPIC = "chaos-probe"


def body_of(mid: bytes) -> bytes:
    """The body published with id ``mid`` (64 bytes)."""
    return hashlib.sha256(mid).hexdigest().encode()


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0


# Which workload producer a log record comes from: set in each producer's task, and
# inherited by the tasks its Producer makes (senders, placement refreshes).
_PRODUCER: contextvars.ContextVar[str] = contextvars.ContextVar("chaos_producer", default="-")


class _Stamp(logging.Filter):
    """Adds the run's clock (``t``, as in the report) and the workload producer (``producer``)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def filter(self, record: logging.LogRecord) -> bool:
        record.t = self.clock()
        record.producer = _PRODUCER.get()
        return True


def log_producers(path: Path, clock: Clock) -> logging.Handler:
    """Every record of ``pairq.client.producer``, DEBUG included (each failed attempt,
    failover, penalty and placement change), into ``path``, stamped with the run's
    clock and the workload producer (P0, P1; probes and others "-"). Returns the
    handler, for the caller to remove."""
    handler = logging.FileHandler(path)
    handler.addFilter(_Stamp(clock))
    handler.setFormatter(
        logging.Formatter("t=%(t)8.3f %(producer)s %(levelname)s %(name)s: %(message)s")
    )
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("pairq.client.producer")
    logger.setLevel(logging.DEBUG)  # the harness's own log keeps INFO and above
    logger.addHandler(handler)
    return handler


class Producers:
    def __init__(
        self, lookups: list[str], clock: Clock, *, n: int = 2, batch: int = 10, every: float = 0.05
    ) -> None:
        self.lookups, self.clock, self.n, self.batch, self.every = lookups, clock, n, batch, every
        self.acks: dict[bytes, tuple[int, float, int]] = {}  # id -> (copies, t, producer)
        self.failures: list[tuple[float, int, str]] = []
        self.latencies: list[tuple[float, float, int]] = []  # (t ack, latency s, producer)
        self.attempted = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(k)) for k in range(self.n)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _run(self, k: int) -> None:
        _PRODUCER.set(f"P{k}")
        seq = 0
        async with Producer(
            lookups=self.lookups,
            lookup_poll_interval=1.0,
            retry_timeout=8.0,
            rpc_timeout=2.0,
            retry_backoff_max=0.3,
            trace_context=False,
        ) as p:
            while not self._stop.is_set():
                ids = [f"P{k}{seq + i:014d}".encode() for i in range(self.batch)]
                seq += self.batch
                self.attempted += len(ids)
                t = self.clock()
                try:
                    acks = await p.publish_batch(TOPIC, [body_of(i) for i in ids], ids=ids)
                except PairqError as exc:
                    self.failures.append((self.clock(), k, f"{type(exc).__name__}: {exc}"[:200]))
                    await asyncio.sleep(0.05)
                    continue
                done = self.clock()
                self.latencies.append((done, done - t, k))
                for a in acks:
                    self.acks[bytes(a.id)] = (a.copies, done, k)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.every)


class CountingDedupe:
    """The product's MemoryDedupe, counting the ids it is asked about (raw deliveries that
    reached the window; deliveries of an id whose handler is running are counted by the
    consumer's ``stats.duplicates`` only)."""

    def __init__(self, inner: MemoryDedupe) -> None:
        self.inner = inner
        self.asked = 0

    @property
    def executor(self) -> Any:
        return self.inner.executor

    def contains(self, mid: bytes) -> bool:
        self.asked += 1
        return self.inner.contains(mid)

    def add_many(self, ids: list[bytes]) -> None:
        self.inner.add_many(ids)

    def add(self, mid: bytes) -> None:
        self.inner.add(mid)

    def close(self) -> None:
        self.inner.close()


@dataclasses.dataclass
class Run:
    channel: str
    id: bytes
    broker_id: str
    epoch: int
    t: float
    intact: bool = True  # the body is the one published with this id


class Consumers:
    def __init__(self, lookups: list[str], clock: Clock, *, dedupe: bool = True) -> None:
        self.lookups, self.clock, self.dedupe = lookups, clock, dedupe
        self.runs: list[Run] = []
        self.consumers: list[Consumer] = []
        self.windows: list[CountingDedupe] = []

    async def start(self) -> None:
        for ch in CHANNELS:

            def handle(msg: Any, ch: str = ch) -> None:
                mid = bytes(msg.id)
                intact = bytes(msg.body) == body_of(mid)
                self.runs.append(Run(ch, mid, msg.broker_id, msg.epoch, self.clock(), intact))

            window = CountingDedupe(MemoryDedupe(max_entries=1_000_000, ttl=3600))
            self.windows.append(window)
            c = Consumer(
                TOPIC,
                ch,
                lookups=self.lookups,
                handler=handle,
                dedupe=window if self.dedupe else False,
                max_in_flight=200,
                lookup_poll_interval=1.0,
                reconnect_backoff=0.05,
                reconnect_backoff_max=0.5,
                trace_context=False,
            )
            await c.start()
            self.consumers.append(c)

    @property
    def raw_duplicates(self) -> int:
        return sum(c.stats.duplicates for c in self.consumers)

    @property
    def received(self) -> int:
        return sum(c.stats.received for c in self.consumers)

    async def stop(self) -> None:
        for c in self.consumers:
            with contextlib.suppress(Exception):
                await c.stop()


@dataclasses.dataclass
class Sample:
    t: float
    node: str
    ok: bool
    broker_id: str = ""
    start_ns: int = 0
    health: str = ""
    connected: bool = False
    partner_connected: bool = False
    lag: int = 0
    solo: bool = False
    epoch: int = 0
    takeovers: int = 0
    lease_ms: int = 0
    refill: int = 0
    checksum_failures: int = 0  # this process life's integrity counters
    repairs: int = 0
    quarantined: int = 0


class Monitor:
    def __init__(self, cluster: Cluster, clock: Clock, interval: float = 0.25) -> None:
        self.cluster, self.clock, self.interval = cluster, clock, interval
        self.samples: list[Sample] = []
        self.last: dict[str, Sample] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def poll(self, node: str) -> Sample:
        if node in self.cluster.paused or not self.cluster.alive(node):
            s = Sample(self.clock(), node, False)
        else:
            r = await self.cluster.stats(node, timeout=max(0.2, self.interval * 1.5))
            if r is None:
                s = Sample(self.clock(), node, False)
            else:
                p = r.pair
                s = Sample(
                    self.clock(),
                    node,
                    True,
                    r.broker_id,
                    r.start_time_ns,
                    r.health,
                    p.connected,
                    p.partner_connected,
                    p.replication_lag,
                    p.solo,
                    p.epoch,
                    p.takeovers,
                    p.lease_remaining_ms,
                    p.refill_sending + p.refill_receiving,
                    r.integrity.checksum_failures,
                    r.integrity.repairs,
                    r.integrity.quarantined,
                )
        self.samples.append(s)
        self.last[node] = s
        return s

    async def _run(self) -> None:
        while not self._stop.is_set():
            await asyncio.gather(*(self.poll(n) for n in BROKERS))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    def healthy(self, pair: tuple[str, str]) -> bool:
        return not self.unhealthy(pair)

    def unhealthy(self, pair: tuple[str, str]) -> str:
        """What keeps ``pair`` from healthy ("" when healthy): both up, both replication
        streams up, nothing with one copy, no re-fill, no SOLO, a live lease, store ok;
        from the latest sample of each."""
        for n in pair:
            s = self.last.get(n)
            if s is None or not s.ok:
                return f"{n} not answering"
            for bad, what in (
                (not s.connected, "replication down"),
                (not s.partner_connected, "partner's replication down"),
                (s.lag, f"lag {s.lag}"),
                (s.refill, f"re-fill {s.refill}"),
                (s.solo, "solo"),
                (s.lease_ms == 0, "no lease"),
                (s.health != "ok", f"health {s.health!r}"),
            ):
                if bad:
                    return f"{n}: {what}"
        return ""


async def probe_publish(cluster: Cluster, pair: tuple[str, str]) -> bool:
    """One publish straight to the pair (either broker) that must come back with 2 copies."""
    with contextlib.suppress(PairqError, asyncio.TimeoutError):
        async with Producer(
            brokers=[cluster.address(n) for n in pair],
            retry_timeout=1.0,
            rpc_timeout=1.0,
            trace_context=False,
        ) as p:
            ack = await asyncio.wait_for(p.publish(PROBE_TOPIC, b"probe"), 3.0)
            return ack.copies == 2
    return False
