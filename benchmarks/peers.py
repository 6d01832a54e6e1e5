"""pairq side by side with NATS JetStream R3 and a RabbitMQ quorum queue (``make bench-peers``).

    .venv/bin/python benchmarks/peers.py            # medians of 3 runs (--runs N)
    .venv/bin/python benchmarks/peers.py --quick    # one short run

Started on loopback, every process stopped by this script when it ends (also
on Ctrl-C or an error): a 3-server NATS cluster (JetStream, ``sync_interval:
always``), a 3-node RabbitMQ cluster, and for each run a fresh pairq pair
(``pairq broker --pair p --sync=always``, two processes) and a fresh single
broker (``--sync=always``). This process is the client of each in turn.

The same workload on each system, 200-byte messages, every measurement on a
fresh destination (pairq topic, R3 stream, quorum queue with 3 replicas):

1. ``lone``: publishes paced at 1,000/s (open loop, one call each) for 10 s;
   p50 and p99 of each publish from call to durable ack.
2. ``singles``: 64 callers, each awaiting one publish at a time, for 5 s (msg/s).
3. ``batch``: 16 callers, each sending 100 messages at a time (pairq's
   ``publish_batch``; the peers have no batch, so the 100 publishes are
   pipelined and all their acks awaited), for 5 s (msg/s).
4. ``consume``: 100,000 messages pre-loaded, then consumed with an ack for
   each, timed until the server says all are acked (msg/s).

An ack is credited only when it means durable by the system's own rules (see
``peer_clients``), and after each measurement the server's own count of the
destination's messages must equal the acks credited (or, for consume, the
pre-load); a mismatch is printed and marks the run unverified. Figures are
medians over the runs. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import open_loop, pct
from pair_bench import Pair
from peer_clients import NatsSystem, PairqSystem, RabbitSystem, System
from peer_procs import NatsCluster, RabbitCluster

from pairq.testing import BrokerProcess

BODY = bytes(range(200))


@dataclass(frozen=True)
class Sizes:
    """Counts and durations of one mode; every wait is also bounded by ``time_cap``."""

    runs: int
    lone_rate: int
    lone_seconds: float
    singles_in_flight: int
    singles_seconds: float
    batch_size: int
    batch_callers: int
    batch_seconds: float
    consume_n: int
    time_cap: float


FULL = Sizes(
    runs=3,
    lone_rate=1000,
    lone_seconds=10.0,
    singles_in_flight=64,
    singles_seconds=5.0,
    batch_size=100,
    batch_callers=16,
    batch_seconds=5.0,
    consume_n=100_000,
    time_cap=180.0,
)
QUICK = Sizes(
    runs=1,
    lone_rate=1000,
    lone_seconds=3.0,
    singles_in_flight=64,
    singles_seconds=2.0,
    batch_size=100,
    batch_callers=16,
    batch_seconds=2.0,
    consume_n=20_000,
    time_cap=60.0,
)

WARMUP_RUN = 99  # the warm-up's run number (its destinations' and data dirs' suffix)

PAIR, SINGLE = "pairq pair", "pairq single broker"
NATS, RABBIT = NatsSystem.name, RabbitSystem.name
METRICS = [
    "lone_p50_ms",
    "lone_p99_ms",
    "singles_msgs_per_s",
    "batch_msgs_per_s",
    "consume_msgs_per_s",
]

RATIOS: list[tuple[str, str, str, str, str, float]] = [
    # (name, metric, numerator system, denominator system, comparison, target)
    ("pair_vs_nats_lone_p50", "lone_p50_ms", PAIR, NATS, "<=", 1.0),
    ("pair_vs_nats_lone_p99", "lone_p99_ms", PAIR, NATS, "<=", 1.0),
    ("pair_vs_nats_singles", "singles_msgs_per_s", PAIR, NATS, ">=", 2.0),
    ("pair_vs_nats_batch", "batch_msgs_per_s", PAIR, NATS, ">=", 4.0),
    ("pair_vs_nats_consume", "consume_msgs_per_s", PAIR, NATS, ">=", 2.0),
    ("pair_vs_single_lone_p50", "lone_p50_ms", PAIR, SINGLE, "<=", 1.5),
]


def log(line: str) -> None:
    print(line, flush=True)


class Check:
    """Acks credited vs the server's own count, per measurement; mismatches are kept."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def equal(self, what: str, credited: int, server: int) -> None:
        if credited != server:
            self.problems.append(f"{what}: {credited:,} credited, server counts {server:,}")


# -- the workload ------------------------------------------------------------------


async def lone(s: System, sz: Sizes, tag: str, check: Check) -> dict[str, Any]:
    await s.open(tag)
    credited = sum([await s.publish(BODY) for _ in range(200)])  # warm-up, same destination
    lats: list[float] = []
    errors: list[BaseException] = []
    clock = time.perf_counter

    async def one(_due: float) -> None:
        nonlocal credited
        t = clock()
        try:
            ok = await s.publish(BODY)
        except Exception as exc:
            errors.append(exc)
            return
        lats.append(clock() - t)
        credited += ok

    elapsed = await open_loop(sz.lone_rate, int(sz.lone_rate * sz.lone_seconds), one)
    check.equal(f"{s.name} lone", credited, await s.stored())
    ms = [x * 1000 for x in lats]
    r = {"lone_p50_ms": pct(ms, 50), "lone_p99_ms": pct(ms, 99), "lone_errors": len(errors)}
    log(
        f"  {s.name:<34} lone @{sz.lone_rate}/s : p50 {r['lone_p50_ms']:.2f} ms  p99 "
        f"{r['lone_p99_ms']:.2f} ms  max {max(ms, default=0):.2f} ms ({len(ms):,} in {elapsed:.1f} s"
        f"{f', {len(errors)} errors: {errors[0]!r}' if errors else ''})"
    )
    return r


async def _timed(
    s: System,
    tag: str,
    callers: int,
    seconds: float,
    send: Callable[[], Awaitable[int]],
    check: Check,
    warm: int,
) -> tuple[float, int]:
    await s.open(tag)
    credited = sum([await send() for _ in range(warm)])
    n = 0
    clock = time.perf_counter
    stop = clock() + seconds

    async def caller() -> None:
        nonlocal n
        while clock() < stop:
            k = await send()  # not `n += await ...`: that reads n before the await
            n += k

    t0 = clock()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = clock() - t0
    check.equal(f"{s.name} {tag}", credited + n, await s.stored())
    return n / elapsed, n


async def singles(s: System, sz: Sizes, tag: str, check: Check) -> dict[str, Any]:
    async def send() -> int:
        return int(await s.publish(BODY))

    rate, n = await _timed(s, tag, sz.singles_in_flight, sz.singles_seconds, send, check, 50)
    log(f"  {s.name:<34} singles   : {rate:>9,.0f} msg/s ({n:,}, {sz.singles_in_flight} in flight)")
    return {"singles_msgs_per_s": rate}


async def batch(s: System, sz: Sizes, tag: str, check: Check) -> dict[str, Any]:
    bodies = [BODY] * sz.batch_size

    async def send() -> int:
        return await s.publish_batch(bodies)

    rate, n = await _timed(s, tag, sz.batch_callers, sz.batch_seconds, send, check, 3)
    log(
        f"  {s.name:<34} batch     : {rate:>9,.0f} msg/s ({n:,}, {sz.batch_callers} callers x "
        f"{sz.batch_size})"
    )
    return {"batch_msgs_per_s": rate}


async def consume(s: System, sz: Sizes, tag: str, check: Check) -> dict[str, Any]:
    await s.open(tag)
    n = sz.consume_n
    bodies = [BODY] * sz.batch_size
    issued = preloaded = 0
    tp = time.perf_counter()

    async def loader() -> None:
        nonlocal issued, preloaded
        while issued < n:
            k = min(sz.batch_size, n - issued)
            issued += k
            good = await s.publish_batch(bodies[:k])
            preloaded += good

    await asyncio.gather(*(loader() for _ in range(sz.batch_callers)))
    preload_s = time.perf_counter() - tp
    stored = await s.stored()
    check.equal(f"{s.name} consume pre-load", preloaded, stored)
    t0 = time.perf_counter()
    acked = await s.consume(stored, t0 + sz.time_cap)
    elapsed = time.perf_counter() - t0
    check.equal(f"{s.name} consume acked", n, acked)
    rate = acked / elapsed
    log(
        f"  {s.name:<34} consume   : {rate:>9,.0f} msg/s ({acked:,}/{n:,} acked per the server in "
        f"{elapsed:.2f} s; pre-load {preload_s:.1f} s)"
    )
    return {"consume_msgs_per_s": rate}


MEASURES = [("lone", lone), ("singles", singles), ("batch", batch), ("consume", consume)]


async def measure(s: System, sz: Sizes, run: int) -> dict[str, Any]:
    """Every measurement on ``s``; its figures, bad acks and verification problems."""
    check = Check()
    out: dict[str, Any] = {}
    await s.connect()
    try:
        for name, fn in MEASURES:
            out.update(await fn(s, sz, f"peers_{name}_{run}", check))
    finally:
        await s.close()
    out["bad_acks"] = s.bad
    out["problems"] = check.problems
    for p in check.problems:
        log(f"  ** {s.name}: {p}")
    if s.bad:
        log(f"  ** {s.name}: {s.bad} acks did not mean durable (not credited)")
    return out


# -- pairq processes ----------------------------------------------------------------


async def run_pair(tmp: Path, sz: Sizes, run: int) -> dict[str, Any]:
    pair = Pair(tmp, f"peers-pair-{run}")
    try:
        await pair.start()
        return await measure(
            PairqSystem(PAIR, "fsync on both brokers", pair.addresses, need=2), sz, run
        )
    finally:
        pair.stop()


async def run_single(tmp: Path, sz: Sizes, run: int) -> dict[str, Any]:
    bp = BrokerProcess(
        tmp / f"peers-single-{run}",
        args=["--sync", "always", "--log-level", "warning"],
        log_path=str(tmp / f"peers-single-{run}.log"),
    )
    await asyncio.to_thread(bp.start)
    try:
        return await measure(
            PairqSystem(SINGLE, "fsync on 1 broker", [bp.address], need=1), sz, run
        )
    finally:
        bp.kill()
        shutil.rmtree(bp.data_dir, ignore_errors=True)


# -- driver ---------------------------------------------------------------------------


def _median(rs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rs if isinstance(r.get(key), float) and r[key] == r[key]]
    return float(statistics.median(vals)) if vals else None


async def main_async(
    sz: Sizes,
    tmp: Path,
    nats: NatsCluster | None,
    rabbit: RabbitCluster | None,
    warmup: bool = False,
) -> dict[str, dict[str, Any]]:
    # SIGTERM cancels the run like Ctrl-C does (asyncio.run's own SIGINT handling): every
    # `finally` below stops the pairq processes, then main()'s ExitStack stops the peers.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    runners: list[tuple[str, Callable[[Sizes, int], Awaitable[dict[str, Any]]]]] = [
        (PAIR, lambda sz, run: run_pair(tmp, sz, run)),
        (SINGLE, lambda sz, run: run_single(tmp, sz, run)),
    ]
    if nats is not None:
        ns = NatsSystem(nats.urls)
        await ns.connect()
        try:
            await ns.wait_ready(60)
        finally:
            await ns.close()
        runners.append((NATS, lambda sz, run: measure(NatsSystem(nats.urls), sz, run)))
    if rabbit is not None:
        runners.append((RABBIT, lambda sz, run: measure(RabbitSystem(rabbit.urls), sz, run)))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in runners}
    if warmup:
        # One short pass over every system, not counted: on this VM the first
        # minutes after the peers start are slow for whichever system runs then (in
        # two runs of 2026-12-03 without it, the first system measured had p99s of
        # 0.3-1.2 s and the systems after it 0.14-0.34 s, against 7-40 ms later).
        log("warm-up (not counted): every system once, quick sizes")
        for _name, fn in runners:
            await asyncio.to_thread(os.sync)
            await fn(QUICK, WARMUP_RUN)
    for run in range(sz.runs):
        # Each run starts with another system (a b c d, b c d a, ...): whatever the
        # machine does after the peers' start-up or a system's big writes does not
        # always fall on the same one. Dirty pages are written back first (sync), so
        # no system's fsyncs wait behind the previous one's page cache.
        k = run % len(runners)
        order = runners[k:] + runners[:k]
        log(f"run {run + 1}/{sz.runs}: {', '.join(name for name, _ in order)}")
        for name, fn in order:
            await asyncio.to_thread(os.sync)
            results[name].append(await fn(sz, run))
            if name == RABBIT and run == 0 and rabbit is not None:
                members = await asyncio.to_thread(rabbit.quorum_members, f"peers_consume_{run}")
                log(f"  {RABBIT}: replicas of the last queue: {members}")
                if len(members) != 3:
                    results[name][-1]["problems"].append(f"quorum queue members {members}")
    summary: dict[str, dict[str, Any]] = {}
    for name, rs in results.items():
        summary[name] = {m: _median(rs, m) for m in METRICS}
        summary[name]["bad_acks"] = sum(r["bad_acks"] for r in rs)
        summary[name]["problems"] = [p for r in rs for p in r["problems"]]
        summary[name]["verified"] = not summary[name]["problems"] and not summary[name]["bad_acks"]
        summary[name]["runs"] = [{m: r.get(m) for m in METRICS} for r in rs]
    return summary


DURABILITY = {
    PAIR: "fsync on both brokers",
    SINGLE: "fsync on 1 broker",
    RABBIT: RabbitSystem.durability,
    NATS: NatsSystem.durability,
}


def table(summary: dict[str, dict[str, Any]], failed: dict[str, str]) -> list[str]:
    def f(v: float | None, digits: int) -> str:
        return "n/a" if v is None else f"{v:,.{digits}f}"

    lines = [
        "| system | durability at ack | lone p50 ms | p99 ms | singles msg/s | batch msg/s | consume msg/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in (PAIR, SINGLE, RABBIT, NATS):
        if name in failed:
            lines.append(f"| {name} | {DURABILITY[name]} | did not run: {failed[name]} | | | | |")
            continue
        if name not in summary:
            continue
        s = summary[name]
        piped = "" if name in (PAIR, SINGLE) else " (pipelined)"
        mark = "" if s["verified"] else " (UNVERIFIED)"
        lines.append(
            f"| {name}{mark} | {DURABILITY[name]} | {f(s['lone_p50_ms'], 2)} | "
            f"{f(s['lone_p99_ms'], 2)} | {f(s['singles_msgs_per_s'], 0)} | "
            f"{f(s['batch_msgs_per_s'], 0)}{piped} | {f(s['consume_msgs_per_s'], 0)} |"
        )
    return lines


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, metric, num, den, op, target in RATIOS:
        a = summary.get(num, {}).get(metric)
        b = summary.get(den, {}).get(metric)
        value = a / b if a is not None and b else None
        met = None if value is None else (value <= target if op == "<=" else value >= target)
        out[name] = {
            "value": None if value is None else round(value, 3),
            "target": f"{op} {target}",
            "met": met,
        }
    return out


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Before and after the event loop runs (peer start-up): unwind, so ``with`` blocks stop."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short run")
    ap.add_argument("--runs", type=int, default=None, help="runs to take the median of (default 3)")
    ap.add_argument("--no-nats", action="store_true")
    ap.add_argument("--no-rabbitmq", action="store_true")
    ap.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a short uncounted pass over every system first (default: on, off with --quick)",
    )
    args = ap.parse_args()
    sz = QUICK if args.quick else FULL
    if args.runs:
        sz = Sizes(**{**sz.__dict__, "runs": args.runs})
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    load0 = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    failed: dict[str, str] = {}
    with (
        tempfile.TemporaryDirectory(prefix="pairq-peers-") as d,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(d)
        nats: NatsCluster | None = None
        rabbit: RabbitCluster | None = None
        if not args.no_nats:
            try:
                nats = stack.enter_context(NatsCluster(tmp))
                log(f"NATS JetStream cluster up: {', '.join(nats.urls)}")
            except Exception as exc:
                failed[NATS] = f"{type(exc).__name__}: {exc}"
                log(f"** NATS did not start: {failed[NATS]}")
        if not args.no_rabbitmq:
            try:
                t = time.perf_counter()
                rabbit = stack.enter_context(RabbitCluster(tmp))
                log(
                    f"RabbitMQ cluster up in {time.perf_counter() - t:.0f} s: {', '.join(rabbit.urls)}"
                )
            except Exception as exc:
                failed[RABBIT] = f"{type(exc).__name__}: {exc}"
                log(f"** RabbitMQ did not start: {failed[RABBIT]}")
        try:
            warmup = not args.quick if args.warmup is None else args.warmup
            summary = asyncio.run(main_async(sz, tmp, nats, rabbit, warmup))
        except (KeyboardInterrupt, asyncio.CancelledError):
            log("** interrupted: stopping every process this benchmark started")
            return 130
        finally:
            # The loop's close reset SIGTERM to its default: let the stopping below finish
            # (each wait in it is bounded).
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    rs = ratios(summary)
    log("")
    for line in table(summary, failed):
        log(line)
    log("")
    for name, r in rs.items():
        verdict = "n/a" if r["met"] is None else ("met" if r["met"] else "NOT met")
        log(f"  {name:<26} {r['value']}  (target {r['target']}: {verdict})")
    load1 = os.getloadavg()
    log(
        f"  {sz.runs} run(s), medians; load average {load0[0]:.2f} at start, {load1[0]:.2f} at end; "
        f"{os.cpu_count()} CPUs"
    )
    result = {
        "date": started.isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}",
        "quick": args.quick,
        "runs": sz.runs,
        "load_average": [round(load0[0], 2), round(load1[0], 2)],
        "systems": summary,
        "failed": failed,
        "ratios": rs,
    }
    print(json.dumps(result, sort_keys=True))
    ok = all(s["verified"] for s in summary.values())
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("** interrupted while starting or stopping the peers (what had started is stopped)")
        sys.exit(130)
