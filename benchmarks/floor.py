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
- **grpc.aio stream message**: ``benchmarks/echo.py``'s server process, whose
  bidirectional stream reads a message and writes it back (``context.read`` /
  ``context.write``, as ``PublishStream`` does), on the brokers' default loop
  (uvloop); the client sends one 220-byte message at a time, paced, open loop.
  The server process's CPU per message, its gRPC threads included.

Run alone: ``.venv/bin/python benchmarks/floor.py [--rate 1000] [--seconds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import echo
import grpc
import lmdb
from common import pct, proc_cpu

RECORD = bytes(260)  # a 200-byte body's record, about
MESSAGE = bytes(220)  # a one-message PublishStreamRequest, about


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
    res.update(await grpc_stream(rate, seconds))
    res["pair_floor_us"] = 2 * res["commit_cpu_us"] + res["stream_cpu_us"]
    return res


def describe(f: dict[str, float]) -> str:
    return (
        f"floor of a lone pair publish: 2 x durable LMDB commit ({f['commit_cpu_us']:.0f} us CPU, "
        f"{f['commit_sys_us']:.0f} of it in the kernel; {f['commit_wall_us']:.0f} us wall) + one "
        f"grpc.aio stream message served ({f['stream_cpu_us']:.0f} us CPU; round trip p50 "
        f"{f['stream_rtt_p50_ms']:.2f} ms) = {f['pair_floor_us']:.0f} us before any pairq code"
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
