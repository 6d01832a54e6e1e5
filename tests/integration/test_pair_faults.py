"""Fault injection on real broker pairs: SIGSTOP, both paused, a network partition of
the pair link, a 60 MiB batch, clean restarts, kill -9 with and without data.

Every test runs real ``pairq broker`` processes (logs in tmp_path/a.log and b.log,
whose tails are printed when a test fails). The acceptance items of the
pair-hardening issue are checked as *findings*: a test keeps going after a
failed check (so one run shows every problem) and fails at the end listing
them all. Nothing here sleeps to synchronise except for the length of a fault
itself: everything else waits on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import pytest
from google.protobuf import text_format
from netns import NetnsError, PairNet, require_tools
from rawclient import RawSub

from pairq import grpcopts
from pairq.client import Consumer, Dedupe
from pairq.testing import BrokerProcess, free_port
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg

# After a fault ends (SIGCONT, partition healed, broker restarted) the pair must be
# fully healthy again, and accept copies=2 publishes on both brokers, within this
# bound: a few seconds plus re-fill.
HEAL_BOUND_S = 10
START_BOUND_S = 20  # a fresh pair connects within this
DRAIN_BOUND_S = 30  # every acked message handled within this once publishing stopped
SETTLE_BOUND_S = 10  # FINs replicated: standby and depth back to 0 within this
STATS_TIMEOUT_S = 2.0
PUBLISH_TIMEOUT_S = 3.0  # per PublishBatch attempt of the health probe and the publishers
MiB = 1024 * 1024
TOPIC = "orders"


# ----------------------------------------------------------------------------- processes
def make_pair(tmp: Path, *extra: str) -> tuple[BrokerProcess, BrokerProcess]:
    pa, pb_ = free_port(), free_port()
    a = BrokerProcess(
        tmp / "a",
        port=pa,
        log_path=str(tmp / "a.log"),
        args=["--pair", "p", "--partner", f"127.0.0.1:{pb_}", "--node-name", "broker-a", *extra],
    )
    b = BrokerProcess(
        tmp / "b",
        port=pb_,
        log_path=str(tmp / "b.log"),
        args=["--pair", "p", "--partner", f"127.0.0.1:{pa}", "--node-name", "broker-b", *extra],
    )
    return a, b


class NsBrokerProcess(BrokerProcess):
    """A BrokerProcess bound to ``host`` and started inside a network namespace."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str,
        prefix: list[str],
        port: int,
        args: list[str],
        log_path: str,
    ) -> None:
        super().__init__(
            data_dir, port=port, args=args, log_path=log_path, host=host, prefix=prefix
        )


def make_ns_pair(tmp: Path, net: PairNet, *extra: str) -> tuple[NsBrokerProcess, NsBrokerProcess]:
    pa, pb_ = free_port(), free_port()
    a = NsBrokerProcess(
        tmp / "a",
        host=net.ip_a,
        prefix=net.exec_prefix("a"),
        port=pa,
        log_path=str(tmp / "a.log"),
        args=["--pair", "p", "--partner", f"{net.ip_b}:{pb_}", "--node-name", "broker-a", *extra],
    )
    b = NsBrokerProcess(
        tmp / "b",
        host=net.ip_b,
        prefix=net.exec_prefix("b"),
        port=pb_,
        log_path=str(tmp / "b.log"),
        args=["--pair", "p", "--partner", f"{net.ip_a}:{pa}", "--node-name", "broker-b", *extra],
    )
    return a, b


def counting_consumer(
    h: Harness, tmp: Path, brokers: list[BrokerProcess], handled: dict[bytes, int]
) -> Consumer:
    """A consumer of TOPIC/work on ``brokers`` with a persistent Dedupe window that
    counts handler runs per id in ``handled``; stopped (and the window closed) by
    ``h``. Not started."""

    def handler(msg: Any) -> None:
        handled[msg.id] = handled.get(msg.id, 0) + 1

    dedupe = Dedupe(tmp / "dedupe")
    h.closers.append(dedupe.close)
    consumer = Consumer(
        TOPIC,
        "work",
        brokers=[p.address for p in brokers],
        handler=handler,
        dedupe=dedupe,
        max_in_flight=200,
        reconnect_backoff=0.05,
        reconnect_backoff_max=0.5,
    )
    h.closers.append(consumer.stop)
    return consumer


def running(p: BrokerProcess) -> bool:
    return p.proc is not None and p.proc.poll() is None


def sigstop(p: BrokerProcess) -> None:
    assert p.proc is not None and running(p)
    os.kill(p.proc.pid, signal.SIGSTOP)


def sigcont(p: BrokerProcess) -> None:
    if p.proc is not None and running(p):
        os.kill(p.proc.pid, signal.SIGCONT)


KEY_LINE = re.compile(
    r"took over|takeover|solo|partner|lost|fenc|lease|new node id|re-?fill|re-?sync|"
    r"ERROR|WARNING|Traceback|Error",
    re.IGNORECASE,
)


def _collapse(lines: list[str]) -> list[str]:
    """Fold runs of one log message repeated (timestamps aside) into one line and a count."""
    out: list[str] = []
    runs: list[tuple[str, str, int]] = []  # (first line, last line, count)
    for ln in lines:
        body = re.sub(r"^\S+ \S+ ", "", ln)
        if runs and re.sub(r"^\S+ \S+ ", "", runs[-1][0]) == body:
            runs[-1] = (runs[-1][0], ln, runs[-1][2] + 1)
        else:
            runs.append((ln, ln, 1))
    for first, last, n in runs:
        out.append(first if n == 1 else f"{first}   [x{n}, last at {last[:23]}]")
    return out


def print_log_tails(tmp: Path, patterns: int = 25, tail: int = 15) -> None:
    """For each broker log: its pair/warning messages as patterns (numbers folded) with a
    count, first and last time and the first example; then its last lines."""
    for name in ("a.log", "b.log"):
        path = tmp / name
        if not path.exists():
            continue
        lines = path.read_text(errors="replace").splitlines()
        seen: dict[str, list[Any]] = {}
        for ln in lines:
            if not KEY_LINE.search(ln):
                continue
            body = re.sub(r"^\S+ \S+ ", "", ln)
            key = re.sub(r"\d+(\.\d+)?", "#", body)
            if key in seen:
                seen[key][1] += 1
                seen[key][3] = ln[:23]
            else:
                seen[key] = [body, 1, ln[:23], ln[:23]]
        print(f"======== {path}: {len(lines)} lines; pair/warning messages (count, first .. last):")
        for example, n, first, last in list(seen.values())[-patterns:]:
            print(f"  x{n} {first} .. {last[11:]}: {example[:300]}")
        print(f"======== {path}: last {tail} lines:")
        print("\n".join(_collapse(lines)[-tail:]))


class Findings:
    """Failed acceptance checks, collected so that one run reports all of them."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def check(self, ok: bool, msg: str | Callable[[], str]) -> bool:
        if not ok:
            text = msg() if callable(msg) else msg
            self.items.append(text)
            print(f"FINDING: {text}")
        return ok

    def add(self, problems: str | Iterable[str] | None) -> None:
        if problems is None:
            return
        for p in [problems] if isinstance(problems, str) else problems:
            self.check(False, p)

    def assert_none(self) -> None:
        assert not self.items, f"{len(self.items)} failed check(s):\n- " + "\n- ".join(self.items)


class Harness:
    """Owns the processes, gRPC channels, background tasks and netns of one test; on
    exit it cancels the tasks, SIGCONTs and kills the brokers it started (by PID),
    removes the namespaces, and on failure prints the broker logs."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[BrokerProcess] = []
        self.net: PairNet | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self.closers: list[Callable[[], Any]] = []
        self._channels: dict[str, grpc.aio.Channel] = {}

    def pair(self, *extra: str) -> tuple[BrokerProcess, BrokerProcess]:
        a, b = make_pair(self.tmp, *extra)
        self.procs += [a, b]
        return a, b

    def network(self) -> PairNet:
        """The test's network namespaces (removed on exit); the test fails saying why
        when the tools are missing or the network cannot be built."""
        try:
            require_tools()
        except NetnsError as exc:
            pytest.fail(str(exc))
        net = PairNet()
        self.net = net
        try:
            net.setup()
        except NetnsError as exc:
            pytest.fail(f"cannot build the test network: {exc}")
        return net

    def ns_pair(self, net: PairNet, *extra: str) -> tuple[NsBrokerProcess, NsBrokerProcess]:
        a, b = make_ns_pair(self.tmp, net, *extra)
        self.procs += [a, b]
        return a, b

    def stub(self, addr: str) -> pbg.BrokerServiceStub:
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = grpc.aio.insecure_channel(
                addr, options=grpcopts.client_options(2 * MiB)
            )  # frame limit 64 MiB
        return pbg.BrokerServiceStub(ch)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        t = asyncio.create_task(coro)
        self.tasks.append(t)
        return t

    async def __aenter__(self) -> Harness:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for c in reversed(self.closers):
            with contextlib.suppress(Exception):
                r = c()
                if asyncio.iscoroutine(r):
                    await asyncio.wait_for(r, 10)
        for p in self.procs:
            sigcont(p)
        for p in self.procs:
            p.stop()
        for ch in self._channels.values():
            with contextlib.suppress(Exception):
                await ch.close(grace=None)
        if self.net is not None:
            self.net.cleanup()
        if et is not None:
            print_log_tails(self.tmp)


# ----------------------------------------------------------------------------- stats
async def get_stats(
    h: Harness, addr: str, timeout: float = STATS_TIMEOUT_S
) -> pb.GetStatsResponse | None:
    try:
        return await h.stub(addr).GetStats(pb.GetStatsRequest(no_clients=True), timeout=timeout)
    except grpc.aio.AioRpcError:
        return None


def channel_stats(
    s: pb.GetStatsResponse | None, topic: str, channel: str
) -> pb.ChannelStats | None:
    for t in s.topics if s is not None else ():
        if t.name == topic:
            for c in t.channels:
                if c.name == channel:
                    return c
    return None


def topic_stats(s: pb.GetStatsResponse | None, topic: str) -> pb.TopicStats | None:
    for t in s.topics if s is not None else ():
        if t.name == topic:
            return t
    return None


def fmt_pair(s: pb.GetStatsResponse | None) -> str:
    if s is None:
        return "(stats RPC failed)"
    return "{" + text_format.MessageToString(s.pair, as_one_line=True) + "}"


def pair_problems(s: pb.GetStatsResponse | None) -> list[str]:
    """Why this broker's half of the pair is not healthy ([] = healthy)."""
    if s is None:
        return ["stats RPC failed"]
    p = s.pair
    out = []
    if not p.connected:
        out.append("connected=false")
    if not p.partner_connected:
        out.append("partner_connected=false")
    if p.lease_remaining_ms <= 0:
        out.append("lease_remaining_ms=0")
    if p.solo:
        out.append("solo=true")
    if p.replication_lag != 0:
        out.append(f"replication_lag={p.replication_lag}")
    return out


async def wait_healthy(
    h: Harness,
    brokers: dict[str, BrokerProcess],
    deadline: float,
    what: str,
    t0: float | None = None,
) -> str | None:
    """None once every broker is healthy (one round of stats), else why not by ``deadline``."""
    t0 = time.monotonic() if t0 is None else t0
    while True:
        got = await asyncio.gather(*(get_stats(h, p.address) for p in brokers.values()))
        problems = {label: pair_problems(s) for label, s in zip(brokers, got, strict=True)}
        if not any(problems.values()):
            print(f"{what}: pair healthy {time.monotonic() - t0:.2f} s after the fault ended")
            return None
        if time.monotonic() > deadline:
            return f"{what}: pair not healthy within {deadline - t0:.0f} s: " + "; ".join(
                f"{label}: {','.join(problems[label]) or 'ok'} {fmt_pair(s)}"
                for label, s in zip(brokers, got, strict=True)
            )
        await asyncio.sleep(0.05)


@dataclass
class Ledger:
    """Every acknowledged message id: which broker it was published to, and when."""

    acked: dict[bytes, tuple[str, float]] = field(default_factory=dict)
    bad_copies: list[str] = field(default_factory=list)

    def record(self, label: str, r: pb.PublishBatchResponse) -> None:
        now = time.monotonic()
        for i in r.ids:
            self.acked[bytes(i)] = (label, now)
        if r.copies != 2:
            self.bad_copies.append(f"{label}: {len(r.ids)} message(s) acked with copies={r.copies}")

    def ids(self) -> set[bytes]:
        return set(self.acked)

    def owner(self, mid: bytes) -> str:
        return self.acked.get(mid, ("?", 0.0))[0]


async def publish_check(
    h: Harness,
    brokers: dict[str, BrokerProcess],
    deadline: float,
    what: str,
    topic: str,
    ledger: Ledger | None,
) -> list[str]:
    """A PublishBatch to EACH broker directly answers copies == 2 (3 s per attempt,
    retried until ``deadline``; at least one attempt each)."""
    problems = []
    for label, p in brokers.items():
        attempts, last = 0, ""
        while True:
            attempts += 1
            items = [pb.PublishItem(id=os.urandom(16), body=b"probe-%d" % k) for k in range(5)]
            try:
                r = await h.stub(p.address).PublishBatch(
                    pb.PublishBatchRequest(topic=topic, messages=items), timeout=PUBLISH_TIMEOUT_S
                )
                if ledger is not None:
                    ledger.record(label, r)
                if r.copies == 2:
                    break
                last = f"copies={r.copies}"
            except grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            if time.monotonic() >= deadline:
                problems.append(
                    f"{what}: PublishBatch to {label} did not answer copies=2 within the heal "
                    f"bound ({attempts} attempt(s); last: {last})"
                )
                break
            await asyncio.sleep(0.1)
    return problems


async def heal_check(
    h: Harness,
    brokers: dict[str, BrokerProcess],
    t0: float,
    what: str,
    topic: str = TOPIC,
    ledger: Ledger | None = None,
) -> list[str]:
    """Acceptance (a) and (b), with one deadline: HEAL_BOUND_S after the fault ended at ``t0``."""
    deadline = t0 + HEAL_BOUND_S
    out = []
    problem = await wait_healthy(h, brokers, deadline, what, t0)
    if problem:
        out.append(problem)
    out += await publish_check(h, brokers, deadline, what, topic, ledger)
    return out


async def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    """Poll ``cond`` until true (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def create_channels(
    h: Harness, procs: Iterable[BrokerProcess], topic: str, channels: Iterable[str]
) -> None:
    for p in procs:
        stub = h.stub(p.address)
        await stub.CreateTopic(pb.CreateTopicRequest(topic=topic), timeout=5)
        for c in channels:
            await stub.CreateChannel(pb.CreateChannelRequest(topic=topic, channel=c), timeout=5)


async def publish_direct(
    h: Harness,
    p: BrokerProcess,
    label: str,
    ledger: Ledger,
    topic: str,
    n: int,
    batch: int = 5000,
    size: int = 100,
) -> list[bytes]:
    """Publish n messages to one broker in PublishBatch calls; return their ids."""
    ids: list[bytes] = []
    for start in range(0, n, batch):
        items = [
            pb.PublishItem(id=os.urandom(16), body=b"%d" % (start + k) + b"." * size)
            for k in range(min(batch, n - start))
        ]
        r = await h.stub(p.address).PublishBatch(
            pb.PublishBatchRequest(topic=topic, messages=items), timeout=60
        )
        ledger.record(label, r)
        ids += [bytes(i) for i in r.ids]
    return ids


async def settle_zero(
    h: Harness,
    brokers: dict[str, BrokerProcess],
    topic: str,
    channels: list[str],
    timeout: float,
    what: str,
    *,
    in_flight: bool = False,
    standby: bool = True,
) -> str | None:
    """Wait until standby_messages == 0 and the channels' depth == 0 on every broker."""
    deadline = time.monotonic() + timeout
    while True:
        got = dict(
            zip(
                brokers,
                await asyncio.gather(*(get_stats(h, p.address) for p in brokers.values())),
                strict=True,
            )
        )
        bad = []
        for label, s in got.items():
            if s is None:
                bad.append(f"{label}: stats RPC failed")
                continue
            if standby and s.pair.standby_messages != 0:
                bad.append(f"{label}: standby_messages={s.pair.standby_messages}")
            for c in channels:
                cs = channel_stats(s, topic, c)
                if cs is None:
                    bad.append(f"{label}: channel {topic}/{c} missing")
                elif cs.depth != 0 or (in_flight and cs.in_flight != 0):
                    bad.append(f"{label}: {topic}/{c} depth={cs.depth} in_flight={cs.in_flight}")
        if not bad:
            return None
        if time.monotonic() > deadline:
            return f"{what}: not settled within {timeout:.0f} s: " + "; ".join(bad)
        await asyncio.sleep(0.1)


# ----------------------------------------------------------------------------- load
class Publisher:
    """Publishes continuously to ONE broker (no failover), recording every ack."""

    def __init__(
        self,
        h: Harness,
        proc: BrokerProcess,
        label: str,
        ledger: Ledger,
        topic: str = TOPIC,
        batch: int = 10,
        pace: float = 0.05,
    ) -> None:
        self.h, self.proc, self.label, self.ledger = h, proc, label, ledger
        self.topic, self.batch, self.pace = topic, batch, pace
        self.errors = 0
        self.last_error = ""
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Publisher:
        self._task = self.h.spawn(self._run())
        return self

    async def _run(self) -> None:
        stub = self.h.stub(self.proc.address)
        while not self._stop.is_set():
            items = [pb.PublishItem(id=os.urandom(16), body=b"m") for _ in range(self.batch)]
            try:
                r = await stub.PublishBatch(
                    pb.PublishBatchRequest(topic=self.topic, messages=items),
                    timeout=PUBLISH_TIMEOUT_S,
                )
            except grpc.aio.AioRpcError as exc:
                self.errors += 1
                self.last_error = f"{exc.code().name}: {exc.details()}"
                await asyncio.sleep(0.05)  # retry pacing
                continue
            self.ledger.record(self.label, r)
            await asyncio.sleep(self.pace)  # load pacing

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class Delivery:
    t: float  # arrival, monotonic
    broker_id: str
    epoch: int
    id: bytes


class Recorder:
    """RawSub on each broker given (re-subscribing when a stream ends), recording every
    delivery (arrival time, broker_id, epoch, id) and FINing it at once."""

    def __init__(
        self,
        h: Harness,
        topic: str,
        channel: str,
        procs: Iterable[BrokerProcess],
        rdy: int = 200,
        max_reconnects: int = 3000,
        reconnect_backoff: float = 0.1,
    ) -> None:
        self.h, self.topic, self.channel = h, topic, channel
        self.reconnect_backoff = reconnect_backoff
        self.rdy_count = rdy
        self.max_reconnects = max_reconnects
        self.deliveries: list[Delivery] = []
        self.ids: set[bytes] = set()
        self.subs: dict[str, RawSub] = {}
        self.reconnects = 0
        self._tasks: list[asyncio.Task[None]] = []
        h.closers.append(self.close)
        for p in procs:
            self.add(p)

    def add(self, p: BrokerProcess) -> None:
        self._tasks.append(self.h.spawn(self._run(p.address)))

    def _drain(self, sub: RawSub, fin: bool) -> None:
        got = sub.take()
        if not got:
            return
        now = time.monotonic()
        for m in got:
            self.deliveries.append(Delivery(now, m.broker_id, m.epoch, bytes(m.id)))
            self.ids.add(bytes(m.id))
        if fin:
            sub.fin([m.id for m in got])

    async def _run(self, addr: str) -> None:
        stub = self.h.stub(addr)
        for _ in range(self.max_reconnects):
            sub = RawSub(stub, self.topic, self.channel)
            self.subs[addr] = sub
            if self.rdy_count:
                sub.rdy(self.rdy_count)
            try:
                while not sub.ended.is_set():
                    self._drain(sub, fin=True)
                    await asyncio.sleep(0.01)
                self._drain(sub, fin=False)
            finally:
                await sub.cancel()
            self.reconnects += 1
            await asyncio.sleep(self.reconnect_backoff)

    def set_rdy(self, n: int) -> None:
        self.rdy_count = n
        for sub in self.subs.values():
            if not sub.ended.is_set():
                sub.rdy(n)

    def by_id(self) -> dict[bytes, list[Delivery]]:
        out: dict[bytes, list[Delivery]] = {}
        for d in self.deliveries:
            out.setdefault(d.id, []).append(d)
        return out

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []


def lost_report(
    what: str,
    acked: dict[bytes, tuple[str, float]],
    got: set[bytes],
    marks: Iterable[tuple[str, float]] = (),
) -> str | None:
    """None if every acked id is in ``got``; else how many are missing, by owner and phase."""
    lost = [i for i in acked if i not in got]
    if not lost:
        return None
    marks = sorted(marks, key=lambda m: m[1])
    by: dict[str, int] = {}
    for i in lost:
        owner, t = acked[i]
        phase = "start"
        for name, tm in marks:
            if t >= tm:
                phase = name
        by[f"published to {owner}, acked after {phase}"] = (
            by.get(f"published to {owner}, acked after {phase}", 0) + 1
        )
    return f"{what}: {len(lost)} of {len(acked)} acknowledged messages never delivered ({by})"


async def start_pair(h: Harness, a: BrokerProcess, b: BrokerProcess) -> dict[str, str]:
    """Start A then B; wait until healthy; return {label: broker_id}."""
    await asyncio.to_thread(a.start)
    await asyncio.to_thread(b.start)
    problem = await wait_healthy(h, {"a": a, "b": b}, time.monotonic() + START_BOUND_S, "start")
    assert problem is None, problem
    ids = {}
    for label, p in (("a", a), ("b", b)):
        s = await get_stats(h, p.address)
        assert s is not None
        ids[label] = s.broker_id
    return ids


# ----------------------------------------------------------------------------- 1. SIGSTOP
@dataclass
class Pause:
    paused: str
    partner: str
    paused_id: str
    partner_id: str
    pre_epoch: int
    pre_takeovers: int
    post_takeovers: int
    t_stop: float
    t_cont: float
    takeover_seen_at: float | None


async def pause_and_heal(
    h: Harness,
    f: Findings,
    brokers: dict[str, BrokerProcess],
    ids: dict[str, str],
    x: str,
    pause_s: float,
    ledger: Ledger,
) -> Pause:
    y = "b" if x == "a" else "a"
    px, py = brokers[x], brokers[y]
    sx, sy = await get_stats(h, px.address), await get_stats(h, py.address)
    assert sx is not None and sy is not None, "stats unavailable before the pause"
    t_stop = time.monotonic()
    sigstop(px)
    seen: float | None = None
    try:
        # The fault itself lasts pause_s; meanwhile watch the partner for a takeover.
        while (left := t_stop + pause_s - time.monotonic()) > 0:
            if seen is None:
                s = await get_stats(h, py.address, timeout=max(0.05, min(STATS_TIMEOUT_S, left)))
                if s is not None and s.pair.takeovers > sy.pair.takeovers:
                    seen = time.monotonic()
            await asyncio.sleep(max(0.0, min(0.05, t_stop + pause_s - time.monotonic())))
    finally:
        sigcont(px)
    t_cont = time.monotonic()
    print(
        f"paused {x} for {t_cont - t_stop:.2f} s; partner takeover seen "
        f"{'after %.2f s' % (seen - t_stop) if seen else 'no'}"
    )
    f.add(await heal_check(h, brokers, t_cont, f"after SIGSTOP {x} {pause_s} s", TOPIC, ledger))
    post = await get_stats(h, py.address)
    return Pause(
        x,
        y,
        ids[x],
        ids[y],
        sx.pair.epoch,
        sy.pair.takeovers,
        post.pair.takeovers if post is not None else sy.pair.takeovers,
        t_stop,
        t_cont,
        seen,
    )


def check_fencing(
    f: Findings, pauses: list[Pause], deliveries: list[Delivery], ledger: Ledger
) -> None:
    """(d): after a takeover, the paused ex-owner delivers nothing under its pre-pause epoch."""
    for k, p in enumerate(pauses):
        until = pauses[k + 1].t_stop if k + 1 < len(pauses) else float("inf")
        taken = [
            d
            for d in deliveries
            if d.broker_id == p.partner_id
            and p.t_stop <= d.t < until
            and ledger.owner(d.id) == p.paused
        ]
        took_over = bool(taken) or p.post_takeovers > p.pre_takeovers
        print(
            f"pause of {p.paused}: partner delivered {len(taken)} of its messages; takeovers "
            f"{p.pre_takeovers}->{p.post_takeovers}; pre-pause epoch {p.pre_epoch}"
        )
        if not took_over:
            continue
        if taken:
            t_first = min(d.t for d in taken)
            anchor = "the partner's first takeover delivery"
        else:  # the stats show a takeover, but nothing of the paused broker's was delivered by it
            t_first = p.takeover_seen_at or p.t_cont
            anchor = (
                "the partner's takeover (seen in its stats; it delivered none of the paused "
                "broker's messages)"
            )
        late = [
            d
            for d in deliveries
            if d.broker_id == p.paused_id and d.epoch == p.pre_epoch and d.t > t_first
        ]
        if late:
            stale = sum(1 for d in late if ledger.acked.get(d.id, ("", 0.0))[1] < p.t_stop)
            f.check(
                False,
                f"pause of {p.paused}: the ex-owner delivered {len(late)} message(s) under its "
                f"pre-pause epoch {p.pre_epoch} after {anchor} "
                f"({stale} published before the pause, {len(late) - stale} after; first "
                f"{late[0].t - t_first:.2f} s after it, last {late[-1].t - t_first:.2f} s)",
            )


@pytest.mark.parametrize("pause_s", [0.3, 1, 5, 30])
async def test_sigstop_each_broker_then_heal(tmp_path: Path, pause_s: float) -> None:
    f = Findings()
    async with Harness(tmp_path) as h:
        a, b = h.pair()
        brokers = {"a": a, "b": b}
        ids = await start_pair(h, a, b)
        await create_channels(h, [a, b], TOPIC, ["work", "raw"])
        ledger = Ledger()
        raw = Recorder(h, TOPIC, "raw", [a, b])
        handled: dict[bytes, int] = {}
        consumer = counting_consumer(h, tmp_path, [a, b], handled)
        await consumer.start()
        pubs = [Publisher(h, a, "a", ledger).start(), Publisher(h, b, "b", ledger).start()]
        owners = lambda: [o for o, _ in ledger.acked.values()]  # noqa: E731
        assert await wait_for(lambda: min(owners().count("a"), owners().count("b")) >= 100, 20), (
            "publishers made no progress before the fault"
        )
        pauses = [await pause_and_heal(h, f, brokers, ids, x, pause_s, ledger) for x in ("a", "b")]
        for p in pubs:
            await p.stop()
        acked = dict(ledger.acked)
        # (c) every acknowledged id handled, the handler once per id
        await wait_for(
            lambda: all(i in handled for i in acked) and all(i in raw.ids for i in acked),
            DRAIN_BOUND_S,
        )
        marks = [(f"pause of {p.paused}", p.t_stop) for p in pauses]
        f.add(lost_report("consumer with dedupe (channel work)", acked, set(handled), marks))
        f.add(lost_report("raw subscribers (channel raw)", acked, raw.ids, marks))
        twice = [i for i, n in handled.items() if n > 1]
        f.check(not twice, lambda: f"the handler ran more than once for {len(twice)} id(s)")
        f.check(not ledger.bad_copies, lambda: f"acks with copies != 2: {ledger.bad_copies[:5]}")
        # (d) fencing of the paused ex-owner
        check_fencing(f, pauses, raw.deliveries, ledger)
        # (e) everything FINed: standby and channel depth back to 0 on both
        with contextlib.suppress(TimeoutError):
            await consumer.wait_idle(timeout=10)
        f.add(
            await settle_zero(
                h, brokers, TOPIC, ["work", "raw"], SETTLE_BOUND_S, "after FINing everything"
            )
        )
        print(
            f"acked={len(acked)} handled={len(handled)} dup_absorbed={consumer.stats.duplicates} "
            f"raw_deliveries={len(raw.deliveries)} publish_errors={[p.errors for p in pubs]} "
            f"raw_reconnects={raw.reconnects}"
        )
        f.assert_none()


# ----------------------------------------------------------------------------- 2. both paused
async def test_both_paused_3s_no_message_delivered_by_both(tmp_path: Path) -> None:
    f = Findings()
    async with Harness(tmp_path) as h:
        a, b = h.pair()
        brokers = {"a": a, "b": b}
        ids = await start_pair(h, a, b)
        await create_channels(h, [a, b], TOPIC, ["c"])
        ledger = Ledger()
        for label, p in brokers.items():
            await publish_direct(h, p, label, ledger, TOPIC, 2000, batch=500)
        assert not ledger.bad_copies, ledger.bad_copies
        rec = Recorder(h, TOPIC, "c", [a, b], rdy=20)
        assert await wait_for(lambda: len(rec.ids) >= 200, 15), "nothing delivered before the pause"
        rec.set_rdy(0)  # nothing in flight during the pause; the rest is a backlog

        async def quiet() -> int:
            deadline = time.monotonic() + 10
            while True:
                got = [await get_stats(h, p.address) for p in (a, b)]
                cs = [channel_stats(s, TOPIC, "c") for s in got]
                if all(c is not None and c.in_flight == 0 for c in cs):
                    return sum(c.depth for c in cs if c is not None)
                assert time.monotonic() < deadline, f"in-flight messages did not drain: {cs}"
                await asyncio.sleep(0.05)

        backlog = await quiet()
        assert backlog >= 2000, f"backlog only {backlog}"
        t_stop = time.monotonic()
        sigstop(a)
        sigstop(b)
        try:
            await asyncio.sleep(3)  # the fault itself
        finally:
            sigcont(a)
            sigcont(b)
        t_cont = time.monotonic()
        rec.set_rdy(100)
        f.add(await heal_check(h, brokers, t_cont, "after pausing both 3 s", TOPIC, ledger))
        acked = dict(ledger.acked)
        await wait_for(lambda: all(i in rec.ids for i in acked), DRAIN_BOUND_S)
        f.add(lost_report("channel c", acked, rec.ids, [("the pause", t_stop)]))
        after: dict[bytes, set[str]] = {}
        for d in rec.deliveries:
            if d.t >= t_cont:
                after.setdefault(d.id, set()).add(d.broker_id)
        both = [i for i, s in after.items() if len(s) > 1]
        owner_of_both = [ledger.owner(i) for i in both]
        f.check(
            not both,
            lambda: (
                f"{len(both)} id(s) delivered by both brokers after the resume (backlog "
                f"{backlog}; published to a: {owner_of_both.count('a')}, to b: "
                f"{owner_of_both.count('b')})"
            ),
        )
        st = {label: await get_stats(h, p.address) for label, p in brokers.items()}
        print(
            f"backlog={backlog} delivered_after_resume={len(after)} ids={ids} "
            f"takeovers={ {k: (s.pair.takeovers if s else None) for k, s in st.items()} }"
        )
        f.assert_none()


# ----------------------------------------------------------------------------- 3. partition
async def test_pair_link_partition_10s_then_heal(tmp_path: Path) -> None:
    f = Findings()
    async with Harness(tmp_path) as h:
        net = h.network()
        print(f"partition method: {net.partition_method}; stale removed: {net.stale_removed}")
        a, b = h.ns_pair(net)
        brokers: dict[str, BrokerProcess] = {"a": a, "b": b}
        await start_pair(h, a, b)
        await create_channels(h, [a, b], TOPIC, ["work"])
        ledger = Ledger()
        handled: dict[bytes, int] = {}
        consumer = counting_consumer(h, tmp_path, [a, b], handled)
        await consumer.start()
        pubs = [Publisher(h, a, "a", ledger).start(), Publisher(h, b, "b", ledger).start()]
        assert await wait_for(lambda: len(ledger.acked) >= 200, 20), "publishers made no progress"
        t_cut = time.monotonic()
        net.partition()
        # The test network itself: A cannot reach B's port while partitioned (checked
        # meanwhile, in a thread), and can again once healed.
        cut_probe = asyncio.ensure_future(asyncio.to_thread(net.can_connect, "a", net.ip_b, b.port))
        unhealthy_seen: set[str] = set()
        try:
            # The fault lasts 10 s; meanwhile record whether the brokers noticed it.
            while (left := t_cut + 10 - time.monotonic()) > 0:
                got = await asyncio.gather(
                    *(
                        get_stats(h, p.address, timeout=max(0.05, min(1.0, left)))
                        for p in brokers.values()
                    )
                )
                unhealthy_seen |= {
                    label
                    for label, s in zip(brokers, got, strict=True)
                    if s is not None and pair_problems(s)
                }
                await asyncio.sleep(max(0.0, min(0.1, t_cut + 10 - time.monotonic())))
        finally:
            net.heal()
        t_heal = time.monotonic()
        assert not await cut_probe, "test network: A still reached B during the partition"
        assert await asyncio.to_thread(net.can_connect, "a", net.ip_b, b.port), (
            "test network: A cannot reach B after the heal"
        )
        f.check(bool(unhealthy_seen), "neither broker's stats showed the 10 s partition")
        f.add(await heal_check(h, brokers, t_heal, "after the 10 s partition", TOPIC, ledger))
        for p in pubs:
            await p.stop()
        acked = dict(ledger.acked)
        await wait_for(lambda: all(i in handled for i in acked), DRAIN_BOUND_S)
        f.add(
            lost_report(
                "consumer with dedupe",
                acked,
                set(handled),
                [("the partition", t_cut), ("the heal", t_heal)],
            )
        )
        twice = [i for i, n in handled.items() if n > 1]
        f.check(not twice, lambda: f"the handler ran more than once for {len(twice)} id(s)")
        f.check(not ledger.bad_copies, lambda: f"acks with copies != 2: {ledger.bad_copies[:5]}")
        st = {label: await get_stats(h, p.address) for label, p in brokers.items()}
        print(
            f"acked={len(acked)} handled={len(handled)} dup_absorbed={consumer.stats.duplicates} "
            f"unhealthy_during={sorted(unhealthy_seen)} "
            f"takeovers={ {k: (s.pair.takeovers if s else None) for k, s in st.items()} }"
        )
        f.assert_none()


# ----------------------------------------------------------------------------- 4. 60 MiB batch
async def test_60mib_batch_is_acked_with_two_copies_and_causes_no_takeover(tmp_path: Path) -> None:
    f = Findings()
    async with Harness(tmp_path) as h:
        # --max-msg-size defaults to exactly 1 MiB: give the 1 MiB bodies headroom.
        a, b = h.pair("--max-msg-size", str(2 * MiB))
        brokers = {"a": a, "b": b}
        await start_pair(h, a, b)
        # On a loaded host the first broker may take over its late partner's (empty)
        # log at start-up (startup grace): count only what the batch causes.
        before = {}
        for label, p in brokers.items():
            s0 = await get_stats(h, p.address)
            assert s0 is not None
            before[label] = s0.pair.takeovers
        samples: list[tuple[str, pb.PairStats]] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                for label, p in brokers.items():
                    s = await get_stats(h, p.address)
                    if s is not None:
                        samples.append((label, s.pair))
                await asyncio.sleep(0.05)

        sampler = h.spawn(sample())
        items = [
            pb.PublishItem(id=os.urandom(16), body=bytes([65 + k % 26]) * MiB) for k in range(60)
        ]
        t0 = time.monotonic()
        try:
            r = await h.stub(a.address).PublishBatch(
                pb.PublishBatchRequest(topic="big", messages=items), timeout=120
            )
            f.check(r.copies == 2, f"the 60 MiB batch was acked with copies={r.copies}")
        except grpc.aio.AioRpcError as exc:
            f.check(False, f"the 60 MiB batch failed: {exc.code().name}: {exc.details()}")
        t_ack = time.monotonic()
        print(f"60 MiB PublishBatch answered in {t_ack - t0:.2f} s")
        f.add(await heal_check(h, brokers, t_ack, "after the 60 MiB batch", "big-probe"))
        stop.set()
        await sampler
        final = {label: await get_stats(h, p.address) for label, p in brokers.items()}
        for label, s in final.items():
            f.check(
                s is not None and s.pair.takeovers == before[label],
                f"{label}: takeovers={s.pair.takeovers if s else '?'} after the 60 MiB batch",
            )
        bad = [(label, p) for label, p in samples if p.solo or p.takeovers > before[label]]
        f.check(
            not bad,
            lambda: (
                f"solo/takeover observed during the batch: {bad[0][0]} {fmt_pair_stats(bad[0][1])}"
            ),
        )
        unhealthy = [
            (label, p) for label, p in samples if not (p.connected and p.partner_connected)
        ]
        print(
            f"{len(samples)} samples, {len(unhealthy)} with the link down; first: "
            f"{[(label, fmt_pair_stats(p)) for label, p in unhealthy[:2]]}"
        )
        f.check(
            not unhealthy,
            lambda: (
                f"the pair link went down during the batch ({len(unhealthy)} of "
                f"{len(samples)} samples), e.g. {unhealthy[0][0]} "
                f"{fmt_pair_stats(unhealthy[0][1])}"
            ),
        )
        f.assert_none()


async def test_big_batch_to_a_stopped_partner_is_answered_and_the_pair_heals(
    tmp_path: Path,
) -> None:
    """A batch split into several replication frames, sent while the partner is
    stopped: the session breaks in the middle of the frames (reset by the ack
    timeout, or the partner's takeover). The publish must still be answered (here
    UNAVAILABLE: --min-copies=2 and no partner copy), and the pair heal once the
    partner runs again. Regression: the frames' futures were held only by the send
    loop, so a session lost between frames left them pending forever; the topic's
    committed head then waited on them, and so did every later publish and the
    partner's re-fill (the pair never healed; CI saw it as a 120 s hang)."""
    f = Findings()
    async with Harness(tmp_path) as h:
        a, b = h.pair("--max-msg-size", str(2 * MiB))
        brokers = {"a": a, "b": b}
        await start_pair(h, a, b)
        # 24 MiB: three frames (sender.MAX_BATCH_BYTES), more than loopback buffers hold.
        items = [pb.PublishItem(id=os.urandom(16), body=bytes([65 + k]) * MiB) for k in range(24)]
        sigstop(b)
        t0 = time.monotonic()
        try:
            try:
                r = await h.stub(a.address).PublishBatch(
                    pb.PublishBatchRequest(topic="big", messages=items), timeout=30
                )
                f.check(False, f"acked with copies={r.copies} while the partner was stopped")
            except grpc.aio.AioRpcError as exc:
                took = time.monotonic() - t0
                print(f"answered {exc.code().name} after {took:.2f} s: {exc.details()}")
                f.check(
                    exc.code() == grpc.StatusCode.UNAVAILABLE and took < HEAL_BOUND_S,
                    f"the batch got {exc.code().name} after {took:.1f} s "
                    f"(want UNAVAILABLE within {HEAL_BOUND_S} s): {exc.details()}",
                )
        finally:
            sigcont(b)
        t_cont = time.monotonic()
        f.add(await heal_check(h, brokers, t_cont, "after the stopped partner ran again", "big"))
        f.assert_none()


def fmt_pair_stats(p: pb.PairStats) -> str:
    return "{" + text_format.MessageToString(p, as_one_line=True) + "}"


# ----------------------------------------------------------------------------- 5. clean restart
async def test_depth_exact_after_clean_restart(tmp_path: Path) -> None:
    f = Findings()
    async with Harness(tmp_path) as h:
        a, b = h.pair()
        brokers = {"a": a, "b": b}
        await start_pair(h, a, b)
        await create_channels(h, [a, b], TOPIC, ["c"])
        ledger = Ledger()
        for label, p in brokers.items():
            await publish_direct(h, p, label, ledger, TOPIC, 10_000)
        assert not ledger.bad_copies, ledger.bad_copies
        rec = Recorder(h, TOPIC, "c", [a, b], rdy=2500)
        acked = dict(ledger.acked)
        assert await wait_for(lambda: all(i in rec.ids for i in acked), DRAIN_BOUND_S), lost_report(
            "before the restart", acked, rec.ids
        )
        problem = await settle_zero(
            h,
            brokers,
            TOPIC,
            ["c"],
            SETTLE_BOUND_S,
            "before the restart",
            in_flight=True,
            standby=False,
        )
        assert problem is None, problem
        await rec.close()
        before = {label: await get_stats(h, p.address) for label, p in brokers.items()}
        print(
            "before stop: "
            + "; ".join(
                f"{k}: topic depth={t.depth if (t := topic_stats(s, TOPIC)) else '?'} standby="
                f"{s.pair.standby_messages if s else '?'}"
                for k, s in before.items()
            )
        )
        rcs = {label: await asyncio.to_thread(p.terminate) for label, p in brokers.items()}
        for label, rc in rcs.items():
            f.check(rc == 0, f"{label} exited with {rc} on SIGTERM")
        await asyncio.to_thread(a.start)
        await asyncio.to_thread(b.start)
        t_restart = time.monotonic()

        def depth_problems(s: pb.GetStatsResponse | None, label: str, when: str) -> list[str]:
            t, c = topic_stats(s, TOPIC), channel_stats(s, TOPIC, "c")
            out = []
            if t is None or c is None:
                out.append(f"{when}: {label} lost topic/channel {TOPIC}/c")
            else:
                if c.depth != 0:
                    out.append(f"{when}: {label} channel depth={c.depth} (expected 0)")
                if t.depth != 0:
                    out.append(f"{when}: {label} topic depth={t.depth} (expected 0)")
            return out

        for label, p in brokers.items():
            s = None
            deadline = time.monotonic() + 10
            while s is None and time.monotonic() < deadline:
                s = await get_stats(h, p.address)
            f.add(depth_problems(s, label, "first stats after the restart"))
        f.add(
            await wait_healthy(
                h, brokers, t_restart + HEAL_BOUND_S, "after the clean restart", t_restart
            )
        )
        f.add(
            await settle_zero(
                h,
                brokers,
                TOPIC,
                ["c"],
                max(0.0, t_restart + HEAL_BOUND_S - time.monotonic()),
                "after the clean restart",
            )
        )
        for label, p in brokers.items():
            f.add(depth_problems(await get_stats(h, p.address), label, "after healing"))
        f.assert_none()


# ----------------------------------------------------------------------------- 6. loss finding 1
async def test_channel_on_owner_only_survives_kill9_of_owner(tmp_path: Path) -> None:
    """Regression, loss finding 1: c1 exists on both and consumed everything; c2 exists
    on A only. A's 500 messages are acked with 2 copies and A is killed: c2 must still
    get all 500 (from B's takeover, or from A once it is back)."""
    f = Findings()
    async with Harness(tmp_path) as h:
        a, b = h.pair()
        brokers = {"a": a, "b": b}
        await start_pair(h, a, b)
        await create_channels(h, [a, b], TOPIC, ["c1"])
        ledger = Ledger()
        rec1 = Recorder(h, TOPIC, "c1", [a, b])
        warm = await publish_direct(h, a, "a", ledger, TOPIC, 100) + await publish_direct(
            h, b, "b", ledger, TOPIC, 100
        )
        assert await wait_for(lambda: set(warm) <= rec1.ids, 15), "c1 did not consume the warm-up"
        await h.stub(a.address).CreateChannel(
            pb.CreateChannelRequest(topic=TOPIC, channel="c2"), timeout=5
        )
        five = await publish_direct(h, a, "a", ledger, TOPIC, 500)
        assert not ledger.bad_copies, ledger.bad_copies
        assert await wait_for(lambda: set(five) <= rec1.ids, 15), "c1 did not consume the 500"
        problem = await settle_zero(
            h, {"a": a}, TOPIC, ["c1"], SETTLE_BOUND_S, "c1 on A", in_flight=True, standby=False
        )
        assert problem is None, problem
        await rec1.close()
        sb = await get_stats(h, b.address)
        assert sb is not None
        print(f"before the kill: B standby_messages={sb.pair.standby_messages}")
        a.kill()
        t_kill = time.monotonic()
        took = False
        while time.monotonic() < t_kill + HEAL_BOUND_S:
            s = await get_stats(h, b.address)
            if s is not None and s.pair.takeovers > sb.pair.takeovers:
                took = True
                break
            await asyncio.sleep(0.05)
        f.check(took, f"B did not take over within {HEAL_BOUND_S} s of kill -9 A")
        rec2 = Recorder(h, TOPIC, "c2", [b])
        await asyncio.to_thread(a.start)
        t_restart = time.monotonic()
        rec2.add(a)
        await wait_for(lambda: set(five) <= rec2.ids, 20)
        lost = [i for i in five if i not in rec2.ids]
        by_broker: dict[str, int] = {}
        for d in rec2.deliveries:
            by_broker[d.broker_id] = by_broker.get(d.broker_id, 0) + 1
        c2 = {
            label: channel_stats(await get_stats(h, p.address), TOPIC, "c2")
            for label, p in brokers.items()
        }
        f.check(
            not lost,
            lambda: (
                f"c2 lost {len(lost)} of the 500 acked messages (c2 deliveries by broker: "
                f"{by_broker}; c2 now: "
                + "; ".join(
                    f"{k}: " + (f"depth={c.depth} in_flight={c.in_flight}" if c else "missing")
                    for k, c in c2.items()
                )
                + ")"
            ),
        )
        f.add(await heal_check(h, brokers, t_restart, "after restarting A", "probe"))
        f.assert_none()


# ----------------------------------------------------------------------------- 7. loss finding 2
async def test_wiped_partner_restart_under_load_loses_nothing_on_any_channel(
    tmp_path: Path,
) -> None:
    """Regression, loss finding 2: kill -9 B, wipe its data, restart it while producers
    publish to both brokers: every acked message reaches both channels."""
    f = Findings()
    async with Harness(tmp_path) as h:
        a, b = h.pair()
        brokers = {"a": a, "b": b}
        await start_pair(h, a, b)
        await create_channels(h, [a, b], TOPIC, ["c1", "c2"])
        ledger = Ledger()
        # Consumers do not all come back at once: c2's re-subscribes after 2 s, c1's after 0.1 s.
        rec1 = Recorder(h, TOPIC, "c1", [a, b])
        rec2 = Recorder(h, TOPIC, "c2", [a, b], reconnect_backoff=2.0)
        pubs = [Publisher(h, a, "a", ledger).start(), Publisher(h, b, "b", ledger).start()]
        owners = lambda: [o for o, _ in ledger.acked.values()]  # noqa: E731
        assert await wait_for(lambda: min(owners().count("a"), owners().count("b")) >= 200, 20), (
            "publishers made no progress"
        )
        t_kill = time.monotonic()
        b.kill()
        shutil.rmtree(b.data_dir)
        await asyncio.to_thread(b.start)
        t_restart = time.monotonic()
        f.add(await heal_check(h, brokers, t_restart, "after restarting B wiped", TOPIC, ledger))
        for p in pubs:
            await p.stop()
        acked = dict(ledger.acked)
        await wait_for(lambda: all(i in rec1.ids and i in rec2.ids for i in acked), DRAIN_BOUND_S)
        marks = [("the kill", t_kill), ("the restart", t_restart)]
        f.add(lost_report("channel c1", acked, rec1.ids, marks))
        f.add(lost_report("channel c2", acked, rec2.ids, marks))
        f.check(not ledger.bad_copies, lambda: f"acks with copies != 2: {ledger.bad_copies[:5]}")
        print(
            f"acked={len(acked)} c1={len(rec1.ids)} c2={len(rec2.ids)} "
            f"publish_errors={[p.errors for p in pubs]}"
        )
        f.assert_none()
