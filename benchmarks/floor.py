"""What a lone pair publish cannot cost less than, measured here and now.

A lone publish to a pair is, at the least, one message served on a grpc.aio stream
by the owner (read the request, write the answer) and one durable LMDB commit on
each broker. This measures both with nothing of pairq around them, on the machine
and disk the brokers use, so ``make bench`` can print the brokers' CPU per lone
pair publish beside its floor:

- **LMDB durable commit**: one ``put`` of a record-sized value per write
  transaction, ``sync=True`` (what ``--sync=always`` opens), on a thread of its own;
  CPU from ``RUSAGE_THREAD``. LMDB flushes twice per commit (the data pages, then
  the meta page through its O_DSYNC descriptor); most of the cost is the kernel's.
- **A durable commit through a commit log** (what the store does with
  ``--sync=always``): LMDB commits without syncing and the record goes to a log
  file through an ``O_DSYNC`` descriptor, one flush. The floor takes the cheaper of
  the two.
- **grpc.aio stream message**: ``benchmarks/echo.py``'s server process, whose
  bidirectional stream reads a message and writes it back (``context.read`` /
  ``context.write``, as ``PublishStream`` does), on the brokers' default loop
  (uvloop); the client sends one 220-byte message at a time, paced, open loop.
  The server process's CPU per message, its gRPC threads included.
- **Two brokers' commits on one disk** (what a pair costs where, as here, both
  brokers share the machine's only disk): two processes, each with its own LMDB
  environment, commit one put per round, started together by a barrier, either at
  the same instant or the second ``OFFSET_US`` later (about when a partner starts
  its commit, a replication hop after the owner). The figure is the wall time from
  the first commit's start to the last one's end, p50 over the rounds, beside one
  commit alone measured the same way: on separate hosts the two would overlap at
  no cost, on one virtio disk their four flushes queue.

Run alone: ``.venv/bin/python benchmarks/floor.py [--rate 1000] [--seconds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import echo
import grpc
import lmdb
from common import pct, proc_cpu

RECORD = bytes(260)  # a 200-byte body's record, about
MESSAGE = bytes(220)  # a one-message PublishStreamRequest, about
OFFSET_US = 200  # the partner's commit starts about this much after the owner's


def lmdb_commit(directory: str, n: int = 1000) -> dict[str, float]:
    """CPU and wall microseconds per durable (``sync=True``) LMDB commit of one put."""
    out: dict[str, float] = {}

    def run() -> None:
        env = lmdb.open(directory, map_size=1 << 28, sync=True, metasync=True, max_dbs=2)
        db = env.open_db(b"floor")
        try:
            r0 = resource.getrusage(resource.RUSAGE_THREAD)
            t0 = time.perf_counter()
            for i in range(n):
                with env.begin(write=True) as txn:
                    txn.put(i.to_bytes(8, "big"), RECORD, db=db)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
        finally:
            env.close()
        out["commit_cpu_us"] = ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) / n * 1e6
        out["commit_sys_us"] = (r1.ru_stime - r0.ru_stime) / n * 1e6
        out["commit_wall_us"] = wall / n * 1e6

    t = threading.Thread(target=run, name="floor-lmdb")
    t.start()
    t.join()
    return out


def logged_commit(directory: str, n: int = 1000) -> dict[str, float]:
    """CPU and wall microseconds per durable commit made the way the store makes it
    with its commit log: LMDB commits one put without syncing, and the put's record
    is written to a log file through an ``O_DSYNC`` descriptor (one flush); the
    checkpoints' ``fdatasync`` of the data file, every 50 ms, is not counted."""
    out: dict[str, float] = {}

    def run() -> None:
        env = lmdb.open(directory, map_size=1 << 28, sync=False, max_dbs=2)
        db = env.open_db(b"floor")
        fd = os.open(os.path.join(directory, "floor.log"), os.O_RDWR | os.O_CREAT | os.O_DSYNC)
        try:
            rec = bytes(24) + RECORD
            for i in range(256):  # the log's first pass grows the file: not measured
                os.pwrite(fd, rec, i * len(rec))
            r0 = resource.getrusage(resource.RUSAGE_THREAD)
            t0 = time.perf_counter()
            for i in range(n):
                with env.begin(write=True) as txn:
                    txn.put(i.to_bytes(8, "big"), RECORD, db=db)
                os.pwrite(fd, rec, (i % 256) * len(rec))
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
        finally:
            os.close(fd)
            env.close()
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        out["logged_commit_cpu_us"] = cpu / n * 1e6
        out["logged_commit_sys_us"] = (r1.ru_stime - r0.ru_stime) / n * 1e6
        out["logged_commit_wall_us"] = wall / n * 1e6

    t = threading.Thread(target=run, name="floor-log")
    t.start()
    t.join()
    return out


def _committer(directory: str, rounds: int, offset_s: float, barrier: Any, out: Any) -> None:
    """One process of ``commits_on_one_disk``: per round, wait at the barrier, wait
    ``offset_s`` more (a busy wait: a sleep would be late by more than the offset),
    commit one put, and send (start, end) on ``out``."""
    env = lmdb.open(directory, map_size=1 << 28, sync=True, metasync=True)
    spans = []
    try:
        for i in range(rounds):
            barrier.wait(timeout=30)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < offset_s:
                pass
            start = time.perf_counter()
            with env.begin(write=True) as txn:
                txn.put(i.to_bytes(8, "big"), RECORD)
            spans.append((start, time.perf_counter()))
    finally:
        env.close()
    out.send(spans)


def commits_on_one_disk(directory: str, rounds: int = 400) -> dict[str, float]:
    """Wall microseconds (p50) from the first commit's start to the last one's end,
    for one commit alone and for two processes committing together on this disk
    (at once, and the second ``OFFSET_US`` later). ``perf_counter`` is
    CLOCK_MONOTONIC, one clock for every process of the machine."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process running gRPC
    out: dict[str, float] = {}
    for key, offsets in (
        ("one_commit_wall_us", [0.0]),
        ("two_commits_at_once_wall_us", [0.0, 0.0]),
        ("two_commits_offset_wall_us", [0.0, OFFSET_US / 1e6]),
    ):
        barrier = ctx.Barrier(len(offsets))
        pipes = [ctx.Pipe(duplex=False) for _ in offsets]
        procs = [
            ctx.Process(
                target=_committer,
                args=(tempfile.mkdtemp(prefix="c", dir=directory), rounds, off, barrier, w),
            )
            for off, (_, w) in zip(offsets, pipes, strict=True)
        ]
        for p in procs:
            p.start()
        for _, w in pipes:
            w.close()  # the children hold them: recv() then ends (EOFError) if one dies
        try:
            spans = [r.recv() for r, _ in pipes]
        finally:
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
        walls = [
            (max(e for _, e in rnd) - min(s for s, _ in rnd)) * 1e6
            for rnd in zip(*spans, strict=True)
        ]
        out[key] = pct(walls, 50)
    return out


async def grpc_stream(rate: int, seconds: float) -> dict[str, float]:
    """Server CPU microseconds per lone message on a grpc.aio stream, and the round trip."""
    with echo.echo_process("uvloop") as (address, pid):
        async with grpc.aio.insecure_channel(address) as ch:
            call = ch.stream_stream(echo.STREAM)()
            for _ in range(200):  # warm up
                await call.write(MESSAGE)
                await call.read()
            lats: list[float] = []
            sent: asyncio.Queue[float] = asyncio.Queue()

            async def reader(total: int) -> None:
                for _ in range(total):
                    await call.read()
                    lats.append(time.perf_counter() - sent.get_nowait())

            total = int(rate * seconds)
            c0 = proc_cpu(pid)
            t0 = time.perf_counter()
            rd = asyncio.create_task(reader(total))
            for i in range(total):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent.put_nowait(time.perf_counter())
                await call.write(MESSAGE)
            await asyncio.wait_for(rd, timeout=seconds + 30)
            used = proc_cpu(pid) - c0
            await call.done_writing()
    ms = [x * 1000 for x in lats]
    return {
        "stream_cpu_us": used / total * 1e6,
        "stream_rtt_p50_ms": pct(ms, 50),
        "stream_rtt_p99_ms": pct(ms, 99),
    }


async def measure(tmp: Path, rate: int = 1000, seconds: float = 3.0) -> dict[str, float]:
    """Both floors; ``pair_floor_us``: two commits and one stream message."""
    d = tempfile.mkdtemp(prefix="floor-lmdb-", dir=tmp)
    res = lmdb_commit(d)
    res.update(logged_commit(tempfile.mkdtemp(prefix="floor-log-", dir=tmp)))
    res.update(commits_on_one_disk(d))
    res.update(await grpc_stream(rate, seconds))
    durable = min(res["commit_cpu_us"], res["logged_commit_cpu_us"])
    res["pair_floor_us"] = 2 * durable + res["stream_cpu_us"]
    return res


def describe(f: dict[str, float]) -> str:
    return (
        f"floor of a lone pair publish: 2 x the cheaper durable commit (LMDB's own: "
        f"{f['commit_cpu_us']:.0f} us CPU, {f['commit_sys_us']:.0f} of it in the kernel, "
        f"{f['commit_wall_us']:.0f} us wall; through a commit log: "
        f"{f['logged_commit_cpu_us']:.0f} us CPU, {f['logged_commit_sys_us']:.0f} in the kernel, "
        f"{f['logged_commit_wall_us']:.0f} us wall) + one "
        f"grpc.aio stream message served ({f['stream_cpu_us']:.0f} us CPU; round trip p50 "
        f"{f['stream_rtt_p50_ms']:.2f} ms) = {f['pair_floor_us']:.0f} us before any pairq code; "
        f"on this one disk, two brokers' commits take {f['two_commits_at_once_wall_us']:.0f} us "
        f"wall when started at once and {f['two_commits_offset_wall_us']:.0f} us when the "
        f"second starts {OFFSET_US} us later, against {f['one_commit_wall_us']:.0f} us for one"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pairq-floor-", dir=os.environ.get("TMPDIR")) as t:
        f = asyncio.run(measure(Path(t), args.rate, args.seconds))
    print(describe(f))
    print(json.dumps({k: round(v, 3) for k, v in f.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
