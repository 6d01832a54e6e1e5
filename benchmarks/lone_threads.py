"""Where the CPU of a lone pair publish goes, thread by thread.

Starts a fresh pair (``pair_bench.running_pair``: ``--sync=always``, default event
loop unless ``--broker-arg`` says otherwise), measures each broker idle, then sends
lone publishes paced at ``--rate`` for ``--seconds`` (open loop, one task per due
time, every ack must have ``copies == 2``) and prints, per broker and per thread
(the event loop's ``MainThread``, ``pairq-store-writer``, gRPC's poller and
``event_engine`` threads), user and system CPU per publish and voluntary context
switches per publish, from ``/proc/PID/task/TID``. Python 3.11 does not name its
threads for the OS: besides the ``event loop`` (the main thread), the ``python``
thread with about 5 context switches per publish is the LMDB writer (one wake-up,
two flushes, GIL hand-offs) and the one with about 2 is grpc.aio's poller.

    .venv/bin/python benchmarks/lone_threads.py [--rate 1000] [--seconds 5]
        [--broker-arg=--event-loop=asyncio ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from common import pct, proc_cpu
from pair_bench import BODY, lone_publishes, running_pair

from pairq.client import Producer

TICK = os.sysconf("SC_CLK_TCK")
_VOL = re.compile(r"voluntary_ctxt_switches:\s+(\d+)")


def threads(pid: int) -> dict[str, tuple[float, float, int]]:
    """{name/tid: (user s, system s, voluntary context switches)} of each thread."""
    out: dict[str, tuple[float, float, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        f = stat.rsplit(")", 1)[1].split()
        m = _VOL.search(status)
        if int(tid) == pid:
            name = "event loop"
        out[f"{name}/{tid}"] = (int(f[11]) / TICK, int(f[12]) / TICK, int(m.group(1)) if m else 0)
    return out


async def main(rate: int, seconds: float, broker_args: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="pairq-lone-") as tmp:
        async with running_pair(Path(tmp), "lone", broker_args or None) as pair:
            pids = pair.pids()
            await asyncio.sleep(1.0)  # start-up work done
            c0, t0 = [proc_cpu(p) for p in pids], time.perf_counter()
            await asyncio.sleep(3.0)  # idle: what the brokers cost with nothing to do
            wall = time.perf_counter() - t0
            idle = [(proc_cpu(p) - c) / wall for p, c in zip(pids, c0, strict=True)]
            print(f"idle: A {idle[0]:.1%}, B {idle[1]:.1%} of a core")
            async with Producer(brokers=pair.addresses) as p:
                for _ in range(300):
                    await p.publish("lone", BODY)
                before = {pid: threads(pid) for pid in pids}
                c0 = [proc_cpu(q) for q in pids]
                ms, bad = await lone_publishes(p, "lone", rate, int(rate * seconds))
                used = [proc_cpu(q) - c for q, c in zip(pids, c0, strict=True)]
                after = {pid: threads(pid) for pid in pids}
    n = len(ms)
    print(
        f"lone @{rate}/s: {n} publishes (copies != 2: {bad}), p50 {pct(ms, 50):.2f} ms, "
        f"p99 {pct(ms, 99):.2f} ms; CPU per publish: A {used[0] / n * 1e6:.0f} us, "
        f"B {used[1] / n * 1e6:.0f} us, both {(used[0] + used[1]) / n * 1e6:.0f} us"
    )
    for side, pid in zip("AB", pids, strict=True):
        print(f"  {side} (pid {pid}), per publish:")
        for key, (u, s, v) in sorted(after[pid].items()):
            bu, bs, bv = before[pid].get(key, (0.0, 0.0, 0))
            if u - bu or s - bs or v - bv:
                print(
                    f"    {key:<28} user {(u - bu) / n * 1e6:6.0f} us  sys {(s - bs) / n * 1e6:6.0f} us"
                    f"  context switches {(v - bv) / n:5.1f}"
                )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--broker-arg", action="append", default=[], help="extra broker flag")
    a = ap.parse_args()
    sys.exit(asyncio.run(main(a.rate, a.seconds, a.broker_arg)))
