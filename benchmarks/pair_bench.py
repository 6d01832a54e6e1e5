"""Redundant-pair benchmarks for ``make bench`` (imported by ``benchmarks/run.py``).

Both brokers of a pair run as separate OS processes on loopback, each with
``--sync=always`` (nothing is acknowledged before the owner's fsync AND the
partner's fsync of its standby copy); 200-byte messages; this process is
the client (``pairq.client.Producer(brokers=[a, b])``, raw Subscribe streams).

Measured (see benchmarks/README.md for the exact definitions):

1. ``pair_publish_single``: pipelined ``producer.publish()`` calls on the pair.
2. ``pair_publish_batch``: ``producer.publish_batch`` of 100.
3. ``pair_latency``: open-loop single publishes at 1,000 msg/s, p50/p99; every ack
   must say ``copies == 2``.
4. ``takeover``: kill -9 of the owner -> the partner's first delivery of one of the
   owner's messages to a subscriber already on the partner; the killed broker is
   restarted with its data and the pair waited healthy between trials.
5. ``resilver``: N unfinished messages on A, B stopped, its data dir wiped, B
   restarted: time until B holds N standby copies and A's replication lag is 0.
6. ``pair_secure``: ``pair_publish_single`` on a plaintext pair and on a pair with
   everything on (mTLS on every link, --auth-file with a token, --pair-secret-file),
   alternating in one run; ``pair_secure_ratio`` is secure / plaintext (issue 14
   asks for at least 0.8).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import floor
import grpc
from common import open_loop, proc_cpu

from pairq.client import Producer
from pairq.security.client import ClientSecurity
from pairq.testing import BrokerProcess, free_port
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc

BODY = bytes(range(200))
Log = Callable[[str], None]


@dataclass(frozen=True)
class PairSizes:
    """Counts and caps of one mode; every loop is bounded by a count and a time cap."""

    runs: int
    single_n: int
    single_in_flight: int
    batch_n: int
    batch_size: int
    batch_in_flight: int
    latency_rate: int
    latency_seconds: float
    takeover_trials: int
    takeover_msgs: int
    resilver_n: int
    time_cap: float


PAIR_FULL = PairSizes(
    runs=3,
    single_n=120_000,
    single_in_flight=2000,
    batch_n=300_000,
    batch_size=100,
    batch_in_flight=64,
    latency_rate=1000,
    latency_seconds=5.0,
    takeover_trials=30,
    takeover_msgs=5,
    resilver_n=100_000,
    time_cap=15.0,
)
PAIR_QUICK = PairSizes(
    runs=1,
    single_n=30_000,
    single_in_flight=2000,
    batch_n=100_000,
    batch_size=100,
    batch_in_flight=64,
    latency_rate=1000,
    latency_seconds=3.0,
    takeover_trials=8,
    takeover_msgs=5,
    resilver_n=20_000,
    time_cap=5.0,
)

PAIR_TARGETS: dict[str, tuple[str, float]] = {
    "pair_publish_single_msgs_per_s": (">=", 30_000),
    "pair_publish_batch_msgs_per_s": (">=", 200_000),
    "pair_publish_p50_ms": ("<=", 1.5),
    "pair_publish_p99_ms": ("<=", 5.0),
    "takeover_p50_s": ("<=", 1.0),
    "takeover_p99_s": ("<=", 2.0),
    "pair_secure_ratio": (">=", 0.8),
    # issue 12: both brokers' CPU per lone publish at 1,000/s (the floor is printed beside it)
    "pair_lone_cpu_us_both_brokers": ("<=", 400),
}

PAIR_MEASUREMENTS = [
    "pair_publish_single",
    "pair_publish_batch",
    "pair_latency",
    "takeover",
    "resilver",
    "pair_secure",
    "lone_floor",
]


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``; NaN when empty."""
    return common.pct(values, p, empty=float("nan"))


# -- the pair ----------------------------------------------------------------------


class Pair:
    """Two ``pairq broker --pair p --sync=always`` processes partnered with each other."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        extra: list[str] | None = None,
        client: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.client = client or {}  # Producer keyword arguments (token, TLS files)
        self.security = ClientSecurity(**self.client)
        pa, pb_ = free_port(), free_port()
        common = ["--sync", "always", "--log-level", "warning", "--pair", "p", *(extra or [])]
        self.a = BrokerProcess(
            tmp / f"{name}-a",
            port=pa,
            log_path=str(tmp / f"{name}-a.log"),
            args=[*common, "--partner", f"127.0.0.1:{pb_}"],
            env=env,
        )
        self.b = BrokerProcess(
            tmp / f"{name}-b",
            port=pb_,
            log_path=str(tmp / f"{name}-b.log"),
            args=[*common, "--partner", f"127.0.0.1:{pa}"],
            env=env,
        )

    @property
    def addresses(self) -> list[str]:
        return [self.a.address, self.b.address]

    def pids(self) -> list[int]:
        return [bp.proc.pid for bp in (self.a, self.b) if bp.proc is not None]

    async def start(self, timeout: float = 30.0) -> float:
        """Start both (concurrently), wait until healthy; return the seconds it took."""
        t0 = time.perf_counter()
        await asyncio.gather(asyncio.to_thread(self.a.start), asyncio.to_thread(self.b.start))
        await wait_healthy(self.a.address, self.b.address, timeout, self.security)
        return time.perf_counter() - t0

    def stop(self) -> None:
        """SIGKILL both and delete their data (every measurement starts on a fresh disk state)."""
        for bp in (self.a, self.b):
            bp.kill()
            shutil.rmtree(bp.data_dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def running_pair(
    tmp: Path,
    name: str,
    extra: list[str] | None = None,
    client: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Pair]:
    pair = Pair(tmp, name, extra, client, env)
    try:
        await pair.start()
        yield pair
    finally:
        pair.stop()


async def get_stats(
    address: str, timeout: float = 2.0, security: ClientSecurity | None = None
) -> pb.GetStatsResponse:
    # A fresh channel per call: a channel to a killed and restarted broker would
    # otherwise sit in gRPC's reconnect backoff (1 s and growing).
    async with (security or ClientSecurity()).channel(address) as ch:
        stub = broker_pb2_grpc.BrokerServiceStub(ch)
        resp: pb.GetStatsResponse = await stub.GetStats(
            pb.GetStatsRequest(no_clients=True), timeout=timeout
        )
        return resp


async def pair_state(a: str, b: str, security: ClientSecurity | None = None) -> tuple[bool, str]:
    """(healthy, description): both connected both ways, leases live, neither solo."""
    try:
        sa, sb = await asyncio.gather(
            get_stats(a, security=security), get_stats(b, security=security)
        )
    except grpc.aio.AioRpcError as exc:
        return False, f"stats failed: {exc.code().name}"
    ok = all(
        s.pair.connected
        and s.pair.partner_connected
        and s.pair.lease_remaining_ms > 0
        and not s.pair.solo
        for s in (sa, sb)
    )
    return ok, f"A {_pair_line(sa.pair)} | B {_pair_line(sb.pair)}"


def _pair_line(p: pb.PairStats) -> str:
    return (
        f"connected={p.connected} partner_connected={p.partner_connected} "
        f"lease={p.lease_remaining_ms}ms solo={p.solo} epoch={p.epoch} lag={p.replication_lag} "
        f"standby={p.standby_messages} takeovers={p.takeovers}"
    )


async def wait_healthy(
    a: str, b: str, timeout: float = 30.0, security: ClientSecurity | None = None
) -> float:
    t0 = time.perf_counter()
    deadline = t0 + timeout
    desc = ""
    while time.perf_counter() < deadline:
        ok, desc = await pair_state(a, b, security)
        if ok:
            return time.perf_counter() - t0
        await asyncio.sleep(0.02)
    raise TimeoutError(f"pair not healthy after {timeout} s: {desc}")


def run_delay(pid: int) -> float:
    """Seconds the main thread of ``pid`` spent runnable but waiting for a CPU (schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return float("nan")


class CpuPair:
    """CPU seconds of this process and both brokers over a timed section.

    Also how long each process's main thread (its event loop) waited for a CPU
    while runnable: on a shared 2-vCPU machine a process can be starved
    although its CPU share looks low.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._t0 = 0.0
        self._c0: list[float] = []
        self._w0: list[float] = []
        self.text = ""
        self.per_msg: dict[str, float] = {}

    def _now(self) -> tuple[list[float], list[float]]:
        t = os.times()
        pids = [os.getpid(), *self.pids]
        return [t.user + t.system, *(proc_cpu(p) for p in self.pids)], [run_delay(p) for p in pids]

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._c0, self._w0 = self._now()

    def stop(self, n: int) -> None:
        wall = time.perf_counter() - self._t0
        c1, w1 = self._now()
        used = [b - a for a, b in zip(self._c0, c1, strict=True)]
        waited = [b - a for a, b in zip(self._w0, w1, strict=True)]
        names = ["client", "A", "B"][: len(used)]
        n = max(n, 1)
        self.per_msg = {f"{nm}_us": u / n * 1e6 for nm, u in zip(names, used, strict=True)}
        self.per_msg.update(
            {f"{nm}_cpu_wait": w / wall for nm, w in zip(names, waited, strict=True)}
        )
        self.text = "cpu: " + ", ".join(
            f"{nm} {u / wall:.0%} ({u / n * 1e6:.1f} us/msg, loop waited for a CPU {w / wall:.0%})"
            for nm, u, w in zip(names, used, waited, strict=True)
        )


# -- throughput and latency -----------------------------------------------------------


async def pair_publish_single(pair: Pair, sz: PairSizes, log: Log) -> dict[str, Any]:
    topic = "pair_single"
    lats: list[float] = []
    not2 = 0
    async with Producer(brokers=pair.addresses, **pair.client) as p:
        for _ in range(50):
            await p.publish(topic, BODY)
        rpc0 = p.rpc_count
        issued = 0
        deadline = time.perf_counter() + sz.time_cap

        async def worker() -> None:
            nonlocal issued, not2
            clock = time.perf_counter
            while issued < sz.single_n and clock() < deadline:
                issued += 1
                t = clock()
                ack = await p.publish(topic, BODY)
                lats.append(clock() - t)
                if ack.copies != 2:
                    not2 += 1

        cpu = CpuPair(pair.pids())
        cpu.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(sz.single_in_flight)))
        elapsed = time.perf_counter() - t0
        n = len(lats)
        cpu.stop(n)
        rpcs = p.rpc_count - rpc0
    rate = n / elapsed
    log(
        f"  pair single     : {rate:>10,.0f} msg/s  ({n:,} msgs in {elapsed:.2f} s, "
        f"{sz.single_in_flight} in flight, {rpcs:,} RPCs, avg batch {n / max(rpcs, 1):.0f}; "
        f"acks with copies != 2: {not2})  p50 {pct(lats, 50) * 1000:.2f} ms "
        f"p99 {pct(lats, 99) * 1000:.2f} ms; {cpu.text}"
    )
    return {"msgs_per_s": rate, "n": n, "copies_not_2": not2, **cpu.per_msg}


async def pair_publish_batch(pair: Pair, sz: PairSizes, log: Log) -> dict[str, Any]:
    topic = "pair_batch"
    lats: list[float] = []
    not2 = 0
    bodies = [BODY] * sz.batch_size
    async with Producer(brokers=pair.addresses) as p:
        for _ in range(5):
            await p.publish_batch(topic, bodies)
        batches = sz.batch_n // sz.batch_size
        rpc0 = p.rpc_count
        issued = 0
        deadline = time.perf_counter() + sz.time_cap

        async def worker() -> None:
            nonlocal issued, not2
            clock = time.perf_counter
            while issued < batches and clock() < deadline:
                issued += 1
                t = clock()
                acks = await p.publish_batch(topic, bodies)
                lats.append(clock() - t)
                not2 += sum(1 for a in acks if a.copies != 2)

        cpu = CpuPair(pair.pids())
        cpu.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(sz.batch_in_flight)))
        elapsed = time.perf_counter() - t0
        n = len(lats) * sz.batch_size
        cpu.stop(n)
        rpcs = p.rpc_count - rpc0
    rate = n / elapsed
    log(
        f"  pair batch      : {rate:>10,.0f} msg/s  ({n:,} msgs in {elapsed:.2f} s, batches of "
        f"{sz.batch_size}, {sz.batch_in_flight} in flight, {rpcs:,} RPCs, avg {n / max(rpcs, 1):.0f} msgs "
        f"per RPC; copies != 2: {not2})  per batch "
        f"p50 {pct(lats, 50) * 1000:.2f} ms p99 {pct(lats, 99) * 1000:.2f} ms; {cpu.text}"
    )
    return {"msgs_per_s": rate, "n": n, "copies_not_2": not2, **cpu.per_msg}


async def lone_publishes(p: Producer, topic: str, rate: int, total: int) -> tuple[list[float], int]:
    """Latencies (ms) of ``total`` lone publishes paced at ``rate``, open loop, and how
    many were acknowledged with fewer than 2 copies."""
    out: list[float] = []
    bad = 0

    async def one(_due: float) -> None:
        nonlocal bad
        t = time.perf_counter()
        ack = await p.publish(topic, BODY)
        out.append((time.perf_counter() - t) * 1000)
        bad += ack.copies != 2

    await open_loop(rate, total, one)
    return out, bad


async def pair_latency(pair: Pair, sz: PairSizes, log: Log) -> dict[str, Any]:
    topic = "pair_latency"
    lats: list[float] = []
    lags: list[float] = []
    copies: dict[int, int] = {}
    async with Producer(brokers=pair.addresses) as p:
        for _ in range(300):
            await p.publish(topic, BODY)

        async def one(scheduled: float) -> None:
            t = time.perf_counter()
            lags.append(t - scheduled)
            ack = await p.publish(topic, BODY)
            lats.append(time.perf_counter() - t)
            copies[ack.copies] = copies.get(ack.copies, 0) + 1

        cpu = CpuPair(pair.pids())
        cpu.start()
        elapsed = await open_loop(sz.latency_rate, int(sz.latency_rate * sz.latency_seconds), one)
        cpu.stop(len(lats))
    ms = [x * 1000 for x in lats]
    not2 = sum(v for k, v in copies.items() if k != 2)
    both = cpu.per_msg["A_us"] + cpu.per_msg["B_us"]
    log(
        f"  pair latency @{sz.latency_rate}/s: p50 {pct(ms, 50):.3f} ms  p90 {pct(ms, 90):.3f} ms  "
        f"p99 {pct(ms, 99):.3f} ms  max {max(ms, default=0):.2f} ms  ({len(ms):,} publishes in "
        f"{elapsed:.2f} s, open loop; schedule lag p99 {pct(lags, 99) * 1000:.2f} ms; acks by copies "
        f"{dict(sorted(copies.items()))}; {cpu.text}; both brokers {both:.0f} us/msg)"
    )
    return {
        "p50_ms": pct(ms, 50),
        "p99_ms": pct(ms, 99),
        "n": len(ms),
        "copies_not_2": not2,
        "both_us": both,
        **cpu.per_msg,
    }


# -- takeover ------------------------------------------------------------------------


class Subscriber:
    """A raw Subscribe stream that FINs every delivery and records when each id first arrived."""

    def __init__(self, address: str, topic: str, channel: str, rdy: int = 1000) -> None:
        self._ch = grpc.aio.insecure_channel(address)
        self._q: asyncio.Queue[pb.SubscribeRequest | None] = asyncio.Queue()
        self.first_seen: dict[bytes, tuple[float, str, int]] = {}
        self.deliveries = 0
        self.accepted = asyncio.Event()
        self.arrived = asyncio.Event()
        self.ended: str | None = None
        self._q.put_nowait(
            pb.SubscribeRequest(
                identify=pb.SubscribeIdentify(topic=topic, channel=channel, msg_timeout_ms=60_000)
            )
        )
        self._q.put_nowait(pb.SubscribeRequest(ready=pb.SubscribeReady(count=rdy)))
        stub = broker_pb2_grpc.BrokerServiceStub(self._ch)
        self._call = stub.Subscribe(self._requests())
        self._task = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[pb.SubscribeRequest]:
        while True:
            item = await self._q.get()
            if item is None:
                return
            yield item

    async def _read(self) -> None:
        try:
            async for resp in self._call:
                kind = resp.WhichOneof("event")
                if kind == "deliveries":
                    now = time.perf_counter()
                    ids = []
                    for m in resp.deliveries.messages:
                        self.deliveries += 1
                        ids.append(m.id)
                        self.first_seen.setdefault(m.id, (now, m.broker_id, m.epoch))
                    self._q.put_nowait(pb.SubscribeRequest(finish=pb.SubscribeFinish(ids=ids)))
                    self.arrived.set()
                elif kind == "accepted":
                    self.accepted.set()
                elif kind == "heartbeat":
                    self._q.put_nowait(pb.SubscribeRequest(nop=True))
            self.ended = "stream ended"
        except grpc.aio.AioRpcError as exc:
            self.ended = f"{exc.code().name}: {exc.details()}"
        except asyncio.CancelledError:
            pass
        finally:
            self.arrived.set()
            self.accepted.set()

    async def wait_for(self, ids: set[bytes], deadline: float, *, every: bool) -> None:
        """Until one (or ``every``) of ``ids`` arrived, or ``deadline`` (perf_counter) passed."""

        def cond() -> bool:
            seen = self.first_seen.keys()
            return ids <= seen if every else bool(ids & seen)

        while not cond() and self.ended is None:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(left, 0.5))

    async def close(self) -> None:
        self._q.put_nowait(None)
        await asyncio.sleep(0)
        self._call.cancel()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._ch.close()


async def takeover(tmp: Path, sz: PairSizes, log: Log) -> dict[str, Any]:
    """kill -9 the owner A; time until B delivers the first of A's messages to B's subscriber."""
    topic, channel = "takeover", "c"
    pair = Pair(tmp, "takeover")
    times: list[float] = []
    all_in: list[float] = []
    restarts: list[float] = []
    problems: list[str] = []
    try:
        await pair.start()
        async with grpc.aio.insecure_channel(pair.a.address) as ch:
            stub = broker_pb2_grpc.BrokerServiceStub(ch)
            await stub.CreateTopic(pb.CreateTopicRequest(topic=topic), timeout=5)
            # A channel on A with no consumer: A's copies stay undelivered.
            await stub.CreateChannel(
                pb.CreateChannelRequest(topic=topic, channel=channel), timeout=5
            )
        sub = Subscriber(pair.b.address, topic, channel)
        try:
            await asyncio.wait_for(sub.accepted.wait(), 10)
            if sub.ended:
                raise RuntimeError(f"subscriber on B: {sub.ended}")
            b_id = (await get_stats(pair.b.address)).broker_id
            for trial in range(sz.takeover_trials):
                async with grpc.aio.insecure_channel(pair.a.address) as ch:
                    stub = broker_pb2_grpc.BrokerServiceStub(ch)
                    r = await stub.PublishBatch(
                        pb.PublishBatchRequest(
                            topic=topic, messages=[pb.PublishItem(body=BODY)] * sz.takeover_msgs
                        ),
                        timeout=10,
                    )
                ids = set(r.ids)
                if r.copies != 2:
                    problems.append(f"trial {trial}: publish acked with copies={r.copies}")
                early = ids & sub.first_seen.keys()
                if early:
                    problems.append(
                        f"trial {trial}: B delivered {len(early)} standby copies before the kill"
                    )
                await asyncio.sleep(0.05)  # let A's heartbeats settle (not part of the measurement)
                t0 = time.perf_counter()
                pair.a.kill()
                deadline = t0 + 15.0
                await sub.wait_for(ids, deadline, every=False)
                got = ids & sub.first_seen.keys()
                if not got:
                    problems.append(
                        f"trial {trial}: no takeover delivery within 15 s "
                        f"(B state: {_pair_line((await get_stats(pair.b.address)).pair)})"
                    )
                    break
                first = min(sub.first_seen[i][0] for i in got)
                times.append(first - t0)
                await sub.wait_for(ids, deadline, every=True)
                if not ids <= sub.first_seen.keys():
                    problems.append(
                        f"trial {trial}: only {len(ids & sub.first_seen.keys())}/{len(ids)} "
                        "of A's messages delivered by B"
                    )
                else:
                    all_in.append(max(sub.first_seen[i][0] for i in ids) - t0)
                wrong = {sub.first_seen[i][1] for i in got} - {b_id}
                if wrong:
                    problems.append(f"trial {trial}: delivered by {wrong}, not B")
                # Bring A back with its data; the next trial starts from a healthy pair.
                t1 = time.perf_counter()
                await asyncio.to_thread(pair.a.start)
                await wait_healthy(pair.a.address, pair.b.address, 30)
                restarts.append(time.perf_counter() - t1)
        finally:
            await sub.close()
    finally:
        pair.stop()
    p50, p99 = pct(times, 50), pct(times, 99)
    log(
        f"  takeover        : p50 {p50:.3f} s  p99 {p99:.3f} s  min {min(times, default=0):.3f} s  "
        f"max {max(times, default=0):.3f} s  ({len(times)}/{sz.takeover_trials} trials; kill -9 of A "
        f"-> B's first delivery of A's {sz.takeover_msgs} messages; all {sz.takeover_msgs} by p50 "
        f"{pct(all_in, 50):.3f} s; restart of A + healthy again p50 {pct(restarts, 50):.2f} s)"
    )
    for p in problems:
        log(f"  ** takeover problem: {p}")
    return {
        "p50_s": p50,
        "p99_s": p99,
        "trials": len(times),
        "times_s": times,
        "problems": problems,
    }


# -- re-silver -----------------------------------------------------------------------


async def resilver(tmp: Path, sz: PairSizes, log: Log) -> dict[str, Any]:
    """N unfinished messages on A; B stopped, wiped, restarted: time to 2 copies of all N."""
    topic, channel, n = "resilver", "c", sz.resilver_n
    pair = Pair(tmp, "resilver")
    try:
        await pair.start()
        async with grpc.aio.insecure_channel(pair.a.address) as ch:
            stub = broker_pb2_grpc.BrokerServiceStub(ch)
            await stub.CreateTopic(pb.CreateTopicRequest(topic=topic), timeout=5)
            await stub.CreateChannel(
                pb.CreateChannelRequest(topic=topic, channel=channel), timeout=5
            )
        tp = time.perf_counter()
        async with Producer(brokers=[pair.a.address]) as p:
            sem = asyncio.Semaphore(8)

            async def put(k: int) -> int:
                async with sem:
                    acks = await p.publish_batch(topic, [BODY] * k)
                    return sum(1 for a in acks if a.copies != 2)

            not2 = sum(await asyncio.gather(*(put(min(1000, n - i)) for i in range(0, n, 1000))))
        preload = time.perf_counter() - tp
        sa, sb = await get_stats(pair.a.address), await get_stats(pair.b.address)
        if sb.pair.standby_messages < n or sa.pair.replication_lag:
            raise RuntimeError(
                f"pre-load incomplete: A {_pair_line(sa.pair)} | B {_pair_line(sb.pair)}"
            )
        old_id = sb.broker_id
        pair.b.kill()
        shutil.rmtree(pair.b.data_dir)
        t0 = time.perf_counter()
        await asyncio.to_thread(pair.b.start)
        listening = time.perf_counter() - t0
        assert pair.a.proc is not None and pair.b.proc is not None
        cpu = CpuPair([pair.a.proc.pid, pair.b.proc.pid])
        cpu.start()
        deadline = t0 + max(60.0, n / 1000)
        done = False
        progress: list[tuple[float, int]] = []
        desc = ""
        while time.perf_counter() < deadline:
            try:
                sa, sb = await asyncio.gather(get_stats(pair.a.address), get_stats(pair.b.address))
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.02)
                continue
            progress.append((time.perf_counter() - t0, sb.pair.standby_messages))
            desc = f"A {_pair_line(sa.pair)} | B {_pair_line(sb.pair)}"
            if sb.pair.standby_messages >= n and sa.pair.replication_lag == 0:
                done = True
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - t0
        cpu.stop(n)
        first_progress = next((t for t, k in progress if k > 0), float("nan"))
        new_id = sb.broker_id
    finally:
        pair.stop()
    log(
        f"  re-silver {n:,}: {elapsed:.2f} s{'' if done else ' ** INCOMPLETE **'} from B's restart "
        f"with an empty data dir (B listening after {listening:.2f} s, first standby copy seen "
        f"{first_progress:.2f} s; new node id {new_id != old_id}); {n / elapsed:,.0f} msg/s; "
        f"pre-load {preload:.1f} s (copies != 2: {not2}); {cpu.text}"
    )
    if not done:
        log(f"  ** re-silver did not complete in time: {desc}")
    return {
        "seconds": elapsed if done else float("nan"),
        "n": n,
        "complete": done,
        "listening_s": listening,
        "new_node_id": new_id != old_id,
        **cpu.per_msg,
    }


# -- driver ----------------------------------------------------------------------------


PairMeasure = Callable[[Pair, PairSizes, Log], Any]

_THROUGHPUT: list[tuple[str, PairMeasure]] = [
    ("pair_publish_single", pair_publish_single),
    ("pair_publish_batch", pair_publish_batch),
    ("pair_latency", pair_latency),
]


async def pair_secure(tmp: Path, sz: PairSizes, log: Log) -> float:
    """``pair_publish_single`` plaintext vs everything on, alternating ``sz.runs``
    times in this run; the ratio of the medians (secure / plaintext)."""
    import secure_files

    flags, client = secure_files.make(tmp / "secure-files")
    plain: list[float] = []
    secure: list[float] = []
    for run in range(sz.runs):
        for label, extra, kw, out in (
            ("plaintext", None, None, plain),
            ("mTLS+auth+secret", flags, client, secure),
        ):
            log(f"  pair secure run {run + 1}/{sz.runs}: {label}")
            async with running_pair(tmp, f"secure-{label[:5]}-{run}", extra, kw) as pair:
                r = await pair_publish_single(pair, sz, log)
                if r["copies_not_2"]:
                    raise RuntimeError(f"{label}: {r['copies_not_2']} acks with copies != 2")
                out.append(r["msgs_per_s"])
    ratio = statistics.median(secure) / statistics.median(plain)
    log(
        f"  pair secure     : {statistics.median(secure):>10,.0f} msg/s with mTLS, a token and the "
        f"pair secret vs {statistics.median(plain):,.0f} plaintext: {ratio:.2f}x"
    )
    return ratio


def _med(rs: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in rs if r.get(key) == r.get(key)]
    return float(statistics.median(vals)) if vals else float("nan")


async def run_pair_benchmarks(
    tmp: Path, sz: PairSizes, log: Log, only: set[str] | None = None
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Every pair measurement (or those in ``only``); (summary values, raw results per name)."""
    want = set(PAIR_MEASUREMENTS) if only is None else only & set(PAIR_MEASUREMENTS)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in PAIR_MEASUREMENTS}
    for run in range(sz.runs):
        if not want & {n for n, _ in _THROUGHPUT}:
            break
        log(f"pair run {run + 1}/{sz.runs}")
        for name, fn in _THROUGHPUT:
            if name not in want:
                continue
            async with running_pair(tmp, f"{name}-{run}") as pair:
                results[name].append(await fn(pair, sz, log))
    if "takeover" in want:
        results["takeover"].append(await takeover(tmp, sz, log))
    if "resilver" in want:
        results["resilver"].append(await resilver(tmp, sz, log))
    if "lone_floor" in want:
        f = await floor.measure(tmp, sz.latency_rate, min(sz.latency_seconds, 3.0))
        log("  " + floor.describe(f))
        results["lone_floor"].append(f)
    secure_ratio = float("nan")
    if "pair_secure" in want:
        secure_ratio = await pair_secure(tmp, sz, log)

    def num(x: float, digits: int = 0) -> float | int | None:
        if x != x:
            return None
        return round(x, digits) if digits else round(x)

    tk = results["takeover"][0] if results["takeover"] else {}
    rs = results["resilver"][0] if results["resilver"] else {}
    copies_not_2 = sum(r["copies_not_2"] for name, _ in _THROUGHPUT for r in results[name])
    summary: dict[str, Any] = {
        "pair_publish_single_msgs_per_s": num(_med(results["pair_publish_single"], "msgs_per_s")),
        "pair_publish_batch_msgs_per_s": num(_med(results["pair_publish_batch"], "msgs_per_s")),
        "pair_publish_p50_ms": num(_med(results["pair_latency"], "p50_ms"), 3),
        "pair_publish_p99_ms": num(_med(results["pair_latency"], "p99_ms"), 3),
        "pair_acks_copies_not_2": copies_not_2 if any(results[n] for n, _ in _THROUGHPUT) else None,
        "takeover_p50_s": num(tk.get("p50_s", float("nan")), 3),
        "takeover_p99_s": num(tk.get("p99_s", float("nan")), 3),
        "takeover_max_s": num(max(tk.get("times_s") or [float("nan")]), 3),
        "takeover_trials": tk.get("trials"),
        "takeover_problems": len(tk["problems"]) if tk else None,
        "pair_secure_ratio": num(secure_ratio, 3),
        "pair_lone_cpu_us_both_brokers": num(_med(results["pair_latency"], "both_us")),
        "pair_lone_floor_us": num(_med(results["lone_floor"], "pair_floor_us")),
        "pair_lone_floor": {
            k: num(_med(results["lone_floor"], k), 1)
            for k in (
                "commit_cpu_us",
                "commit_wall_us",
                "stream_cpu_us",
                "one_commit_wall_us",
                "two_commits_at_once_wall_us",
                "two_commits_offset_wall_us",
            )
        },
        "pair_cpu_us_per_msg": {
            side: {name: num(_med(results[name], f"{side}_us"), 1) for name, _ in _THROUGHPUT}
            for side in ("A", "B", "client")
        },
    }
    if sz.resilver_n == 100_000:
        summary["resilver_100k_s"] = num(rs.get("seconds", float("nan")), 2)
    else:
        summary["resilver_msgs"] = sz.resilver_n
        summary["resilver_s"] = num(rs.get("seconds", float("nan")), 2)
    return summary, results
