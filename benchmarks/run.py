"""pairq benchmarks: one broker, then a redundant pair; 200-byte messages, fsync before every ack.

    .venv/bin/python benchmarks/run.py            # full: medians of 3 runs (about 5 minutes)
    .venv/bin/python benchmarks/run.py --quick    # one smaller run, about a minute

The broker runs as a separate OS process (``pairq broker --sync=always``,
fresh data directory and free loopback port for every measurement); this
process is the client. Measured:

1. ``publish_single``: many concurrent ``producer.publish()`` calls (2,000 in
   flight); the producer coalesces them into pipelined batch RPCs.
2. ``publish_batch``: ``producer.publish_batch`` of 100 messages, 16 batches in flight.
3. ``consume``: N messages pre-loaded into a channel, then a ``Consumer`` with
   a trivial handler (max_in_flight 2,500); time until the broker's stats say
   all N are finished (not just handled by the client).
4. ``publish_latency``: open-loop schedule of single publishes at 1,000 msg/s,
   latency of each ``publish()`` from call to ack.
5. ``channels``: batch publish throughput into a topic with 1 and with 10
   channels (created beforehand, no consumers) -> ``channels10_vs_1_ratio``.
6. ``nsq_protocol_publish``: pynsq (NSQ's own Python client) publishing single
   PUBs over the broker's NSQ TCP protocol (``--nsq-tcp-address``), 4 connections
   pipelining up to ``NSQ_WINDOW`` each; every OK counted, and the broker's stats
   must show that many messages in the topic.

Baselines measured in the same run (absolute numbers on a shared 2-core
machine are noisy): fsync'd LMDB commits/s on this disk, and raw unary gRPC
round trips (sequential latency and pipelined calls/s) against a trivial
echo server in another process (``benchmarks/echo.py``).

Then the redundant-pair measurements of ``benchmarks/pair_bench.py`` (two
``pairq broker --pair p --sync=always`` processes partnered on loopback):
pipelined singles, batches of 100 and latency at 1,000 msg/s on the pair
(every ack must say copies == 2), takeover time after a kill -9 of the owner,
and re-silvering of a partner restarted with an empty data dir.

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import lmdb

from pairq.client import Consumer, Producer
from pairq.testing import BrokerProcess, free_port, wait_for_port
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import echo
from common import open_loop, pct, proc_cpu
from pair_bench import (
    PAIR_FULL,
    PAIR_MEASUREMENTS,
    PAIR_QUICK,
    PAIR_TARGETS,
    run_pair_benchmarks,
)

BODY = bytes(range(200))  # 200-byte messages
assert len(BODY) == 200


@dataclass(frozen=True)
class Sizes:
    """Counts and time caps of one mode (every measurement is bounded by both)."""

    runs: int
    single_n: int
    single_in_flight: int
    batch_n: int
    batch_size: int
    batch_in_flight: int
    consume_n: int
    consume_max_in_flight: int
    latency_rate: int
    latency_seconds: float
    channels_n: int
    time_cap: float
    baseline_seconds: float


FULL = Sizes(
    runs=3,
    single_n=200_000,
    single_in_flight=2000,
    batch_n=600_000,
    batch_size=100,
    batch_in_flight=64,
    consume_n=300_000,
    consume_max_in_flight=2500,
    latency_rate=1000,
    latency_seconds=5.0,
    channels_n=300_000,
    time_cap=20.0,
    baseline_seconds=1.5,
)
QUICK = Sizes(
    runs=1,
    single_n=60_000,
    single_in_flight=2000,
    batch_n=200_000,
    batch_size=100,
    batch_in_flight=64,
    consume_n=100_000,
    consume_max_in_flight=2500,
    latency_rate=1000,
    latency_seconds=3.0,
    channels_n=100_000,
    time_cap=5.0,
    baseline_seconds=0.5,
)

TARGETS: dict[str, tuple[str, float]] = {
    "publish_single_msgs_per_s": (">=", 30_000),
    "publish_batch_msgs_per_s": (">=", 250_000),
    "consume_msgs_per_s": (">=", 100_000),
    "publish_p50_ms": ("<=", 1.0),
    "publish_p99_ms": ("<=", 3.0),
    "channels10_vs_1_ratio": (">=", 0.9),
    "telemetry_on_vs_off_publish_ratio": (">=", 0.9),
    "telemetry_traced_on_vs_off_publish_ratio": (">=", 0.9),
}


def log(line: str) -> None:
    print(line, flush=True)


def lat_summary(seconds: list[float]) -> str:
    ms = [x * 1000 for x in seconds]
    return f"p50 {pct(ms, 50):.2f} ms  p99 {pct(ms, 99):.2f} ms  max {max(ms, default=0):.2f} ms"


# -- processes -----------------------------------------------------------------


BROKER_ARGS: list[str] = []
EXTERNAL_BROKER: list[str] = []
"""``--address``: measure against this already running broker instead (for profiling it)."""
"""Extra ``pairq broker`` flags (``--broker-args``), e.g. to compare ``--sync=periodic``."""


NSQ_ADDRESSES: dict[str, str] = {}
"""gRPC address of a benchmark broker -> its NSQ TCP address (``nsq=True``)."""


@contextlib.contextmanager
def broker_process(
    tmp: Path, name: str, *, telemetry: bool = False, nsq: bool = False
) -> Iterator[BrokerProcess]:
    """A fresh ``pairq broker --sync=always`` on a free loopback port; stopped on exit.

    ``telemetry``: with a Prometheus endpoint and OTLP metrics and traces on (to a
    loopback port nothing listens on: every export is attempted and fails fast),
    for the on-vs-off comparison."""

    data = tmp / name
    extra = ["--metrics-address", f"127.0.0.1:{free_port()}"] if telemetry else []
    nsq_address = f"127.0.0.1:{free_port()}" if nsq else ""
    if nsq:
        extra += ["--nsq-tcp-address", nsq_address]
    otlp = (
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "OTEL_TRACES_EXPORTER": "otlp",
        }
        if telemetry
        else None
    )
    bp = BrokerProcess(
        data,
        args=["--sync", "always", "--log-level", "warning", *extra, *BROKER_ARGS],
        log_path=str(tmp / f"{name}.log"),
        env=otlp,
    )
    bp.start()
    if nsq:
        NSQ_ADDRESSES[bp.address] = nsq_address
        wait_for_port(int(nsq_address.rpartition(":")[2]))
    try:
        yield bp
    finally:
        NSQ_ADDRESSES.pop(bp.address, None)
        try:
            bp.terminate(timeout=15)
        except subprocess.TimeoutExpired:
            bp.kill()
        # Each measurement starts on a fresh disk state: drop this one's data now
        # rather than letting every run's LMDB files pile up until the end.
        shutil.rmtree(data, ignore_errors=True)


# -- baselines -----------------------------------------------------------------


def baseline_lmdb(path: Path, seconds: float) -> float:
    """fsync'd LMDB commits per second of one 200-byte put (the disk's floor)."""
    env = lmdb.open(str(path), map_size=256 * 1024 * 1024, sync=True)
    try:
        n = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            with env.begin(write=True) as txn:
                txn.put(n.to_bytes(8, "big"), BODY, append=True)
            n += 1
        return n / (time.perf_counter() - t0)
    finally:
        env.close()


async def baseline_grpc(address: str, seconds: float) -> tuple[float, float]:
    """(sequential round-trip p50 in ms, pipelined calls/s with 64 in flight) of a 200-byte echo."""
    async with grpc.aio.insecure_channel(address) as ch:
        call = ch.unary_unary(echo.UNARY)
        for _ in range(200):
            await call(BODY)
        rtts: list[float] = []
        end = time.perf_counter() + seconds / 2
        while time.perf_counter() < end:
            t = time.perf_counter()
            await call(BODY)
            rtts.append(time.perf_counter() - t)
        count = 0
        stop = time.perf_counter() + seconds / 2

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < stop:
                await call(BODY)
                count += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(64)))
        return pct(rtts, 50) * 1000, count / (time.perf_counter() - t0)


async def baseline(lmdb_dir: Path, seconds: float) -> dict[str, float]:
    """Both baselines, logged: the disk's fsync'd commit rate and raw unary gRPC."""
    fsyncs = baseline_lmdb(lmdb_dir, seconds)
    with echo.echo_process() as (address, _pid):
        rtt_ms, grpc_calls = await baseline_grpc(address, seconds)
    log(
        f"  baseline        : LMDB fsync'd commits {fsyncs:,.0f}/s ({1000 / fsyncs:.3f} ms each); "
        f"unary gRPC echo round trip p50 {rtt_ms:.3f} ms, pipelined {grpc_calls:,.0f} calls/s"
    )
    return {"lmdb_commits_per_s": fsyncs, "grpc_rtt_p50_ms": rtt_ms, "grpc_calls_per_s": grpc_calls}


# -- CPU accounting --------------------------------------------------------------


class CpuProbe:
    """CPU seconds used by this (client) process and the broker process over a timed section.

    Shows which side is the bottleneck on a 2-core machine: a process near
    100% of one core is saturated. Broker CPU is read from /proc (Linux).
    """

    def __init__(self) -> None:
        self.broker_pid = 0
        self._t = self._client = self._broker = 0.0
        self.client_s = self.broker_s = 0.0
        self.last = ""

    def _broker_cpu(self) -> float:
        return proc_cpu(self.broker_pid)

    def start(self) -> None:
        t = os.times()
        self._t, self._client, self._broker = (
            time.perf_counter(),
            t.user + t.system,
            self._broker_cpu(),
        )

    def stop(self) -> str:
        t = os.times()
        wall = time.perf_counter() - self._t
        self.client_s = t.user + t.system - self._client
        self.broker_s = self._broker_cpu() - self._broker
        self.last = f"cpu: client {self.client_s / wall:.0%}, broker {self.broker_s / wall:.0%}"
        return self.last

    def per_msg(self, n: int) -> dict[str, float]:
        """CPU microseconds per message of each process over the last section.

        Much steadier than throughput on a shared machine: it does not count
        time spent waiting for the disk or for a CPU.
        """
        n = max(n, 1)
        us = {"client_us": self.client_s / n * 1e6, "broker_us": self.broker_s / n * 1e6}
        self.last += f" = client {us['client_us']:.1f} us/msg, broker {us['broker_us']:.1f} us/msg"
        return us


CPU = CpuProbe()


# -- admin helpers ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def admin(address: str) -> Any:
    async with grpc.aio.insecure_channel(address) as ch:
        yield broker_pb2_grpc.BrokerServiceStub(ch)


async def channel_stats(stub: Any, topic: str, channel: str) -> Any:
    resp = await stub.GetStats(pb.GetStatsRequest(topic=topic, channel=channel, no_clients=True))
    for t in resp.topics:
        if t.name == topic:
            for c in t.channels:
                if c.name == channel:
                    return c
    raise RuntimeError(f"no stats for {topic}/{channel}")


# -- measurements ------------------------------------------------------------------


async def publish_single(
    address: str,
    sz: Sizes,
    topic: str = "bench_single",
    headers: list[dict[str, str]] | None = None,
    label: str = "publish single",
) -> dict[str, Any]:
    """``headers``: the i-th message carries ``headers[i % len(headers)]``."""
    lats: list[float] = []
    hs: list[dict[str, str] | None] = list(headers) if headers else [None]
    nh = len(hs)
    async with Producer(brokers=[address]) as p:
        for i in range(50):  # warm up: connection, topic creation
            await p.publish(topic, BODY, headers=hs[i % nh])
        rpc0 = p.rpc_count
        issued = 0
        deadline = time.perf_counter() + sz.time_cap

        async def worker() -> None:
            nonlocal issued
            clock = time.perf_counter
            while issued < sz.single_n and clock() < deadline:
                h = hs[issued % nh]
                issued += 1
                t = clock()
                await p.publish(topic, BODY, headers=h)
                lats.append(clock() - t)

        CPU.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(sz.single_in_flight)))
        elapsed = time.perf_counter() - t0
        CPU.stop()
        rpcs = p.rpc_count - rpc0
    n = len(lats)
    rate = n / elapsed
    cpu = CPU.per_msg(n)
    log(
        f"  {label:<16}: {rate:>10,.0f} msg/s  ({n:,} msgs in {elapsed:.2f} s, "
        f"{sz.single_in_flight} in flight, {rpcs:,} RPCs, avg batch {n / max(rpcs, 1):.0f})  "
        f"{lat_summary(lats)}; {CPU.last}"
    )
    return {
        "msgs_per_s": rate,
        "n": n,
        "p50_ms": pct(lats, 50) * 1000,
        "p99_ms": pct(lats, 99) * 1000,
        **cpu,
    }


async def publish_batches(
    address: str, sz: Sizes, topic: str, n_total: int, label: str
) -> dict[str, Any]:
    lats: list[float] = []
    bodies = [BODY] * sz.batch_size
    async with Producer(brokers=[address]) as p:
        for _ in range(5):
            await p.publish_batch(topic, bodies)
        batches = n_total // sz.batch_size
        issued = 0
        deadline = time.perf_counter() + sz.time_cap

        async def worker() -> None:
            nonlocal issued
            clock = time.perf_counter
            while issued < batches and clock() < deadline:
                issued += 1
                t = clock()
                await p.publish_batch(topic, bodies)
                lats.append(clock() - t)

        CPU.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(sz.batch_in_flight)))
        elapsed = time.perf_counter() - t0
        CPU.stop()
    n = len(lats) * sz.batch_size
    rate = n / elapsed
    cpu = CPU.per_msg(n)
    log(
        f"  {label:<16}: {rate:>10,.0f} msg/s  ({n:,} msgs in {elapsed:.2f} s, batches of "
        f"{sz.batch_size}, {sz.batch_in_flight} in flight)  per batch {lat_summary(lats)}; {CPU.last}"
    )
    return {"msgs_per_s": rate, "n": n, "batch_p50_ms": pct(lats, 50) * 1000, **cpu}


async def publish_batch(address: str, sz: Sizes) -> dict[str, Any]:
    return await publish_batches(address, sz, "bench_batch", sz.batch_n, "publish batch")


async def publish_channels(address: str, sz: Sizes, channels: int) -> dict[str, Any]:
    topic = f"bench_ch{channels}"
    async with admin(address) as stub:
        await stub.CreateTopic(pb.CreateTopicRequest(topic=topic))
        for i in range(channels):
            await stub.CreateChannel(pb.CreateChannelRequest(topic=topic, channel=f"c{i}"))
    return await publish_batches(address, sz, topic, sz.channels_n, f"{channels:>2} channel(s)")


async def consume(address: str, sz: Sizes) -> dict[str, Any]:
    topic, channel = "bench_consume", "sink"
    n = sz.consume_n
    async with admin(address) as stub:
        await stub.CreateTopic(pb.CreateTopicRequest(topic=topic))
        await stub.CreateChannel(pb.CreateChannelRequest(topic=topic, channel=channel))
        tp = time.perf_counter()
        async with Producer(brokers=[address]) as p:
            bodies = [BODY] * 1000
            await asyncio.gather(
                *(p.publish_batch(topic, bodies[: min(1000, n - i)]) for i in range(0, n, 1000))
            )
        preload_s = time.perf_counter() - tp
        before = await channel_stats(stub, topic, channel)
        if before.depth < n:
            raise RuntimeError(f"pre-load: channel depth {before.depth} < {n}")

        def handle(msg: Any) -> None:
            return None

        consumer = Consumer(
            topic,
            channel,
            brokers=[address],
            handler=handle,
            max_in_flight=sz.consume_max_in_flight,
        )
        CPU.start()
        t0 = time.perf_counter()
        deadline = t0 + sz.time_cap
        await consumer.start()
        try:
            last, last_t = -1, t0
            while consumer.stats.finished < n and time.perf_counter() < deadline:
                await asyncio.sleep(0.002)
                if consumer.stats.finished != last:
                    last, last_t = consumer.stats.finished, time.perf_counter()
                elif time.perf_counter() - last_t > 1.0:
                    break  # stalled: no progress for 1 s; report what was finished
            t_client = time.perf_counter() - t0
            # Done means the broker has committed every FIN, not just that handlers ran.
            stalled = consumer.stats.finished < n
            settle = time.perf_counter() + (0.5 if stalled else 5.0)
            while True:
                st = await channel_stats(stub, topic, channel)
                done = st.finished - before.finished
                if (done >= n and st.in_flight == 0) or time.perf_counter() > settle:
                    break
                await asyncio.sleep(0.002)
            elapsed = (last_t if stalled else time.perf_counter()) - t0
            CPU.stop()
        finally:
            await consumer.stop()
        finished = st.finished - before.finished
    rate = finished / elapsed
    cpu = CPU.per_msg(finished)
    ok = finished >= n and consumer.stats.finished >= n
    lost = ""
    if not ok:
        lost = (
            f"  ** INCOMPLETE: stalled; broker channel depth now {st.depth}, in flight "
            f"{st.in_flight} for {n - finished:,} unfinished (rate is up to the stall) **"
        )
    log(
        f"  consume + FIN   : {rate:>10,.0f} msg/s  ({finished:,}/{n:,} finished per broker stats in "
        f"{elapsed:.2f} s; client counted {consumer.stats.finished:,} after {t_client:.2f} s; received "
        f"{consumer.stats.received:,}, requeued {consumer.stats.requeued}; pre-load {preload_s:.1f} s; "
        f"{CPU.last})" + lost
    )
    return {"msgs_per_s": rate, "n": finished, "complete": ok, **cpu}


async def publish_latency(address: str, sz: Sizes, topic: str = "bench_latency") -> dict[str, Any]:
    lats: list[float] = []
    lags: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pairq-bench-lmdb-") as d:
        # The disk is shared and its fsync time drifts: sample it right before.
        fsync_ms = 1000 / baseline_lmdb(Path(d), min(1.0, sz.baseline_seconds))
    async with Producer(brokers=[address]) as p:
        for _ in range(300):
            await p.publish(topic, BODY)

        async def one(scheduled: float) -> None:
            t = time.perf_counter()
            lags.append(t - scheduled)
            await p.publish(topic, BODY)
            lats.append(time.perf_counter() - t)

        CPU.start()
        elapsed = await open_loop(sz.latency_rate, int(sz.latency_rate * sz.latency_seconds), one)
        CPU.stop()
    cpu = CPU.per_msg(len(lats))
    ms = [x * 1000 for x in lats]
    log(
        f"  latency @{sz.latency_rate}/s : p50 {pct(ms, 50):.3f} ms  p90 {pct(ms, 90):.3f} ms  "
        f"p99 {pct(ms, 99):.3f} ms  max {max(ms):.2f} ms  ({len(ms):,} publishes in {elapsed:.2f} s, "
        f"open loop; schedule lag p99 {pct(lags, 99) * 1000:.2f} ms; LMDB commit just before "
        f"{fsync_ms:.3f} ms; {CPU.last})"
    )
    return {"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "n": len(ms), "fsync_ms": fsync_ms, **cpu}


# -- driver ------------------------------------------------------------------------------


def broker_has_nsq() -> bool:
    """Whether the broker being measured (``pairq broker``, as importable here) serves
    NSQ's TCP protocol."""
    import importlib.util

    return importlib.util.find_spec("pairq.broker.nsq.tcp") is not None


NSQ_CONNECTIONS = 4
NSQ_WINDOW = 500  # PUBs in flight per connection


async def nsq_protocol_publish(address: str, sz: Sizes) -> dict[str, Any]:
    """pynsq Writers publishing single PUBs over the NSQ TCP protocol (see the docstring)."""
    import logging

    import nsq  # pynsq (the test extra); runs on tornado, i.e. on this asyncio loop

    logging.getLogger("nsq").setLevel(logging.CRITICAL)  # its reconnect chatter at the end

    nsq_address = NSQ_ADDRESSES.get(address)
    if nsq_address is None:
        raise RuntimeError("nsq_protocol_publish needs a broker started here (not --address)")
    topic = "bench_nsq"
    writers = [nsq.Writer([nsq_address], reconnect_interval=1.0) for _ in range(NSQ_CONNECTIONS)]
    deadline = time.monotonic() + 20
    while not all(any(c.connected() for c in w.conns.values()) for w in writers):
        if time.monotonic() > deadline:
            raise RuntimeError("pynsq did not connect to the NSQ port in 20 s")
        await asyncio.sleep(0.01)
    total = sz.single_n
    acked = 0
    errors: list[Any] = []
    issued = 0
    lats: list[float] = []
    done = asyncio.Event()
    stop_at = 0.0

    def publish(w: Any) -> None:
        nonlocal issued
        issued += 1
        t = time.perf_counter()

        def cb(conn: Any, data: Any) -> None:
            nonlocal acked
            if isinstance(data, nsq.Error):
                errors.append(data)
                done.set()
                return
            acked += 1
            lats.append(time.perf_counter() - t)
            if acked + len(errors) >= issued and (issued >= total or time.perf_counter() > stop_at):
                done.set()
            elif issued < total and time.perf_counter() <= stop_at:
                publish(w)

        w.pub(topic, BODY, callback=cb)

    # warm up: connections, topic creation
    for w in writers:
        w.pub(topic, BODY)
    async with admin(address) as stub:
        while True:
            resp = await stub.GetStats(pb.GetStatsRequest(topic=topic, no_clients=True))
            if resp.topics and resp.topics[0].message_count >= NSQ_CONNECTIONS:
                break
            await asyncio.sleep(0.01)
        base = resp.topics[0].message_count
        CPU.start()
        t0 = time.perf_counter()
        stop_at = t0 + sz.time_cap
        for w in writers:
            for _ in range(min(NSQ_WINDOW, total // NSQ_CONNECTIONS)):
                publish(w)
        await asyncio.wait_for(done.wait(), sz.time_cap + 60)
        elapsed = time.perf_counter() - t0
        CPU.stop()
        if errors:
            raise RuntimeError(f"NSQ PUB failed: {errors[0]}")
        # every OK is a stored message: the broker's own count agrees
        resp = await stub.GetStats(pb.GetStatsRequest(topic=topic, no_clients=True))
        stored = resp.topics[0].message_count - base
    for w in writers:
        w.reconnect_interval = 3600.0  # pynsq reconnects a closed connection otherwise
        for c in list(w.conns.values()):
            c.close()
    if stored != acked:
        raise RuntimeError(f"broker stats show {stored} messages, pynsq got {acked} OKs")
    rate = acked / elapsed
    cpu = CPU.per_msg(acked)
    log(
        f"  nsq protocol PUB: {rate:>10,.0f} msg/s  ({acked:,} msgs in {elapsed:.2f} s, pynsq, "
        f"{NSQ_CONNECTIONS} connections x {NSQ_WINDOW} in flight, broker stats agree)  "
        f"{lat_summary(lats)}; {CPU.last}"
    )
    return {"msgs_per_s": rate, "n": acked, "p50_ms": pct(lats, 50) * 1000, **cpu}


Measure = Callable[[str, Sizes], Awaitable[dict[str, Any]]]


async def _ch1(address: str, sz: Sizes) -> dict[str, Any]:
    return await publish_channels(address, sz, 1)


async def _ch10(address: str, sz: Sizes) -> dict[str, Any]:
    return await publish_channels(address, sz, 10)


async def _single_telemetry(address: str, sz: Sizes) -> dict[str, Any]:
    return await publish_single(
        address, sz, topic="bench_single_telemetry", label="single telem. on"
    )


# Every message of the traced pair of measurements carries the W3C trace context of its
# own sampled trace (as producers publishing inside their own request spans send it,
# without the producer's own span work, so the figure is the broker's): with tracing
# on, the broker records ONE ``pairq publish`` span per request, child of its first
# message's context and linked to the others' (at most ``pairq.telemetry.MAX_LINKS``,
# 32 unless OTEL_SPAN_LINK_COUNT_LIMIT says otherwise). Distinct contexts are the
# dearer case: identical ones collapse into the parent. With tracing off, the same
# messages cost no span.
_rng = random.Random(16)
TRACED = [
    {"traceparent": f"00-{_rng.getrandbits(128) | 1:032x}-{_rng.getrandbits(64) | 1:016x}-01"}
    for _ in range(4096)
]


async def _traced(address: str, sz: Sizes) -> dict[str, Any]:
    return await publish_single(
        address, sz, topic="bench_traced", headers=TRACED, label="traced, telem. off"
    )


async def _traced_telemetry(address: str, sz: Sizes) -> dict[str, Any]:
    return await publish_single(
        address, sz, topic="bench_traced_telemetry", headers=TRACED, label="traced, telem. on"
    )


TRACED_SLICES = 8
"""Slices of each traced measurement in one run (see :func:`traced_pair`), each of
half ``single_n`` messages: with 4 slices of a quarter (15,000 messages, 0.15 s in
quick mode) the CPU figures moved in steps of one clock tick (about 0.7 us/msg) and
one slow fsync decided a slice's msg/s."""


def _combine(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from the slices of a measurement: msg/s over their summed time, CPU
    per message over their summed messages, the median slice's latencies."""
    n = sum(r["n"] for r in slices)
    seconds = sum(r["n"] / r["msgs_per_s"] for r in slices)
    out: dict[str, Any] = {"msgs_per_s": n / seconds, "n": n}
    for key in ("client_us", "broker_us"):
        out[key] = sum(r[key] * r["n"] for r in slices) / max(n, 1)
    for key in ("p50_ms", "p99_ms"):
        out[key] = statistics.median(r[key] for r in slices)
    return out


# Each slice runs three brokers side by side (the traced measurement here, checksum_ab.py's
# checksums off / on / control) in another of these orders, so that none is always first
# or last: every one takes every position equally often over 6 slices.
ROTATIONS = [(0, 1, 2), (2, 1, 0), (1, 2, 0), (0, 2, 1), (2, 0, 1), (1, 0, 2)]


async def traced_pair(tmp: Path, run: int, sz: Sizes) -> dict[str, dict[str, Any]]:
    """``publish_traced`` and ``publish_traced_telemetry`` of one run, measured in
    :data:`TRACED_SLICES` slices each (each half the messages and time cap of
    ``publish_single``) against brokers started side by side: one without
    telemetry, one with it, and a second one with it, the control
    (``publish_traced_control``): their order rotates over the slices
    (:data:`ROTATIONS`), so a shared machine's drift (other processes, the
    disk's fsync time, which here varies several-fold within a minute) hits all
    alike instead of whichever ran second. on / off is the cost of tracing;
    control / on is the same code twice, so how far noise alone moves the ratio."""
    part = dataclasses.replace(sz, single_n=sz.single_n // 2, time_cap=sz.time_cap / 2)
    names = ("publish_traced", "publish_traced_telemetry", "publish_traced_control")
    slices: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with (
        broker_process(tmp, f"publish_traced-{run}") as off,
        broker_process(tmp, f"publish_traced_telemetry-{run}", telemetry=True) as on,
        broker_process(tmp, f"publish_traced_control-{run}", telemetry=True) as ctl,
    ):
        brokers = (off, on, ctl)
        labels = ("off", "on ", "ctl")
        for k in range(TRACED_SLICES):
            for i in ROTATIONS[k % len(ROTATIONS)]:
                bp = brokers[i]
                assert bp.proc is not None
                CPU.broker_pid = bp.proc.pid
                label = f"traced, telem. {labels[i]} {k + 1}/{TRACED_SLICES}"
                slices[names[i]].append(
                    await publish_single(
                        bp.address, part, topic=f"bench_{names[i]}", headers=TRACED, label=label
                    )
                )
    return {name: _combine(rs) for name, rs in slices.items()}


MEASUREMENTS: list[tuple[str, Measure]] = [
    ("publish_single", publish_single),
    # Right after the one without: the same publish path with metrics and tracing on
    # (the messages carry no trace context: the cost of having telemetry on).
    ("publish_single_telemetry", _single_telemetry),
    # The same pair with every message traced (the broker records a span per request
    # with tracing on, linked to every message's trace): the cost of tracing all traffic.
    # Run together, both brokers side by side, in alternating slices (traced_pair).
    ("publish_traced", _traced),
    ("publish_traced_telemetry", _traced_telemetry),
    ("publish_batch", publish_batch),
    ("consume", consume),
    ("latency", publish_latency),
    ("channels1", _ch1),
    ("channels10", _ch10),
    ("nsq_protocol_publish", nsq_protocol_publish),
]


ALL_MEASUREMENTS = [name for name, _ in MEASUREMENTS]


def median(results: list[dict[str, Any]], key: str) -> float:
    """Median of ``key`` over the runs (NaN when the measurement was skipped with --only)."""
    if not results:
        return float("nan")
    return float(statistics.median(r[key] for r in results))


def _num(x: float, digits: int = 0) -> float | int | None:
    if x != x:  # NaN: not measured
        return None
    return round(x, digits) if digits else round(x)


PAIR_ONLY: list[set[str]] = []
"""``--only`` names of pair measurements (empty list: all of them)."""


async def main_async(sz: Sizes, quick: bool) -> dict[str, Any]:
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pairq-bench-") as tmpdir:
        tmp = Path(tmpdir)
        log(
            f"pairq benchmark ({'quick, 1 run' if quick else f'full, median of {sz.runs} runs'}); "
            f"200-byte messages, broker --sync=always in its own process, data in {tmp}"
        )
        results: dict[str, list[dict[str, Any]]] = {
            name: [] for name in [*ALL_MEASUREMENTS, "publish_traced_control"]
        }
        baselines: list[dict[str, float]] = []
        for run in range(sz.runs):
            log(f"run {run + 1}/{sz.runs}")
            baselines.append(await baseline(tmp / f"lmdb-{run}", sz.baseline_seconds))
            names = {name for name, _ in MEASUREMENTS}
            paired = {"publish_traced", "publish_traced_telemetry"} <= names
            for name, fn in MEASUREMENTS:
                if EXTERNAL_BROKER:
                    results[name].append(await fn(EXTERNAL_BROKER[0], sz))
                    continue
                if paired and name.startswith("publish_traced"):
                    if name == "publish_traced":  # both, in alternating slices
                        for key, result in (await traced_pair(tmp, run, sz)).items():
                            results[key].append(result)
                    continue
                on = name.endswith("_telemetry")
                nsq = name.startswith("nsq_")
                if nsq and not broker_has_nsq():
                    # an older revision (make bench-compare BASE=...): not measured there
                    log(f"  {name}: skipped (this broker has no --nsq-tcp-address)")
                    continue
                with broker_process(tmp, f"{name}-{run}", telemetry=on, nsq=nsq) as bp:
                    assert bp.proc is not None
                    CPU.broker_pid = bp.proc.pid
                    results[name].append(await fn(bp.address, sz))
        pair_summary: dict[str, Any] = {}
        if not EXTERNAL_BROKER:
            log(
                "redundant pair: two brokers, --sync=always on both (ack after both fsyncs), "
                "each in its own process"
            )
            pair_summary, _ = await run_pair_benchmarks(
                tmp, PAIR_QUICK if quick else PAIR_FULL, log, PAIR_ONLY[0] if PAIR_ONLY else None
            )

    single = median(results["publish_single"], "msgs_per_s")
    ch1 = median(results["channels1"], "msgs_per_s")
    ch10 = median(results["channels10"], "msgs_per_s")
    p50 = median(results["latency"], "p50_ms")
    fsyncs = median(baselines, "lmdb_commits_per_s")
    rtt_ms = median(baselines, "grpc_rtt_p50_ms")
    grpc_calls = median(baselines, "grpc_calls_per_s")
    # The least a durable publish can cost is one round trip plus one fsync'd commit;
    # compare each run's p50 with the commit time measured right before it.
    floors = [
        {"r": lat["p50_ms"] / (b["grpc_rtt_p50_ms"] + lat["fsync_ms"])}
        for lat, b in zip(results["latency"], baselines, strict=False)
    ]
    summary: dict[str, Any] = {
        "publish_single_msgs_per_s": _num(single),
        "publish_batch_msgs_per_s": _num(median(results["publish_batch"], "msgs_per_s")),
        # Metrics (Prometheus + OTLP) and tracing on vs off, publish_single both ways.
        "publish_single_telemetry_msgs_per_s": _num(
            median(results["publish_single_telemetry"], "msgs_per_s")
        ),
        "telemetry_on_vs_off_publish_ratio": _num(
            median(results["publish_single_telemetry"], "msgs_per_s") / single, 3
        ),
        # ... and with every message traced (both runs send the same traced messages).
        "telemetry_traced_on_vs_off_publish_ratio": _num(
            median(results["publish_traced_telemetry"], "msgs_per_s")
            / median(results["publish_traced"], "msgs_per_s"),
            3,
        ),
        # Two identical brokers with telemetry on, in the same slices: how far noise
        # alone moves the traced ratio in this run.
        "telemetry_traced_control_vs_on_publish_ratio": _num(
            median(results["publish_traced_control"], "msgs_per_s")
            / median(results["publish_traced_telemetry"], "msgs_per_s"),
            3,
        ),
        # The same in broker CPU per message (1.0: telemetry costs nothing); steadier
        # than throughput when other work shares the machine.
        "telemetry_on_vs_off_broker_cpu_ratio": _num(
            median(results["publish_single"], "broker_us")
            / median(results["publish_single_telemetry"], "broker_us"),
            3,
        ),
        # ... and for the traced pair: broker CPU per traced message off / on, and each.
        "telemetry_traced_on_vs_off_broker_cpu_ratio": _num(
            median(results["publish_traced"], "broker_us")
            / median(results["publish_traced_telemetry"], "broker_us"),
            3,
        ),
        "publish_traced_broker_us_per_msg": _num(median(results["publish_traced"], "broker_us"), 2),
        "publish_traced_telemetry_broker_us_per_msg": _num(
            median(results["publish_traced_telemetry"], "broker_us"), 2
        ),
        "consume_msgs_per_s": _num(median(results["consume"], "msgs_per_s")),
        "publish_p50_ms": _num(p50, 3),
        "publish_p99_ms": _num(median(results["latency"], "p99_ms"), 3),
        "channels1_msgs_per_s": _num(ch1),
        "channels10_msgs_per_s": _num(ch10),
        "channels10_vs_1_ratio": _num(ch10 / ch1, 3),
        # The same comparison in broker CPU per message (1.0: no per-channel cost);
        # steadier than the throughput ratio when other work shares the machine.
        "channels10_vs_1_broker_cpu_ratio": _num(
            median(results["channels1"], "broker_us") / median(results["channels10"], "broker_us"),
            3,
        ),
        # pynsq publishing over the NSQ TCP protocol (beside the gRPC publish figures)
        "nsq_protocol_publish_msgs_per_s": _num(
            median(results["nsq_protocol_publish"], "msgs_per_s")
        ),
        "consume_complete": all(r["complete"] for r in results["consume"])
        if results["consume"]
        else None,
        "baseline_lmdb_fsync_commits_per_s": _num(fsyncs),
        "baseline_grpc_unary_rtt_p50_ms": _num(rtt_ms, 3),
        "baseline_grpc_unary_calls_per_s": _num(grpc_calls),
        "publish_single_per_grpc_call_ratio": _num(single / grpc_calls, 2),
        "publish_single_msgs_per_fsync": _num(single / fsyncs, 2),
        "publish_p50_vs_rtt_plus_fsync_ratio": _num(median(floors, "r"), 2),
        "latency_lmdb_commit_ms": _num(median(results["latency"], "fsync_ms"), 3),
        "cpu_us_per_msg": {
            side: {name: _num(median(results[name], f"{side}_us"), 1) for name in ALL_MEASUREMENTS}
            for side in ("broker", "client")
        },
        **pair_summary,
        "consume_max_in_flight": sz.consume_max_in_flight,
        "loadavg_1m_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "runs": sz.runs,
        "mode": "quick" if quick else "full",
        "seconds": round(time.perf_counter() - started, 1),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": f"{platform.node()} {os.cpu_count()} cpu, Python {platform.python_version()}",
    }
    log("summary (medians)" if sz.runs > 1 else "summary")
    for key, (op, target) in {**TARGETS, **PAIR_TARGETS}.items():
        value = summary.get(key)
        if value is None:
            continue
        ok = value >= target if op == ">=" else value <= target
        note = ""
        if key == "consume_msgs_per_s" and not summary["consume_complete"]:
            ok, note = False, " (not every message was finished: see the consume line)"
        if key == "pair_lone_cpu_us_both_brokers" and summary.get("pair_lone_floor_us"):
            note = f" (floor measured here: {summary['pair_lone_floor_us']:,} us, see benchmarks/floor.py)"
        log(f"  {key:<28} {value:>12,}   target {op} {target:,}   {'ok' if ok else 'MISSED'}{note}")
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="one smaller run (about a minute)")
    ap.add_argument(
        "--only",
        help="comma-separated measurement names (for profiling); pair ones: "
        + ", ".join(PAIR_MEASUREMENTS),
    )
    ap.add_argument(
        "--consume-max-in-flight",
        type=int,
        default=0,
        help="Consumer max_in_flight for the consume measurement (default 2500)",
    )
    ap.add_argument("--address", help="use this running broker (HOST:PORT) instead of starting one")
    ap.add_argument(
        "--broker-pid", type=int, default=0, help="with --address: its PID, for CPU accounting"
    )
    ap.add_argument("--broker-args", default="", help="extra broker flags, e.g. '--sync periodic'")
    args = ap.parse_args()
    BROKER_ARGS[:] = shlex.split(args.broker_args)
    if args.address:
        EXTERNAL_BROKER[:] = [args.address]
        CPU.broker_pid = args.broker_pid
    sz = QUICK if args.quick else FULL
    if args.consume_max_in_flight:
        sz = dataclasses.replace(sz, consume_max_in_flight=args.consume_max_in_flight)
    if args.only:
        keep = set(args.only.split(","))
        known = [n for n, _ in MEASUREMENTS] + PAIR_MEASUREMENTS
        if not keep <= set(known):
            ap.error(f"--only: choose from {', '.join(known)}")
        MEASUREMENTS[:] = [(n, f) for n, f in MEASUREMENTS if n in keep]
        PAIR_ONLY[:] = [keep & set(PAIR_MEASUREMENTS)]
    summary = asyncio.run(main_async(sz, args.quick))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
