"""Lone pair latency of two broker configurations, A/B in alternating slices of one run.

This machine's fsync time drifts several-fold within minutes, so two runs of
``lone_threads.py`` one after the other cannot tell a 5 % change from the drift.
This starts two fresh pairs side by side, ``a`` and ``b``, which differ only in
the broker flags (``--a-arg`` / ``--b-arg``) or environment (``--a-env`` /
``--b-env``, e.g. an experiment switch read by the brokers) they are started
with, and sends lone publishes paced at ``--rate`` to one pair at a time, in
``--slices`` slices of ``--seconds`` each, ordered a b b a a b ... so a drift hits
both alike. Every ack must have ``copies == 2``. It prints each side's p50 and
p99 over all its slices, each slice's p50, and the b/a ratios. With no
difference between the two (the default), the ratios say how far noise alone
moves them in that run. ``--workload batch`` measures throughput instead: batches
of 100 from 16 callers (``make bench-peers``'s batch), msg/s per slice.

    .venv/bin/python benchmarks/ab_pairs.py [--b-env NAME=VALUE] [--b-arg=--flag=value]
        [--slices 6] [--seconds 1.5] [--rate 1000] [--workload lone|batch]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path

from common import pct
from pair_bench import BODY, lone_publishes, running_pair

from pairq.client import Producer


def environment(pairs: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` pairs as the brokers' extra environment."""
    env = {}
    for item in pairs:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--a-env/--b-env wants NAME=VALUE, not {item!r}")
        env[name] = value
    return env


async def lone_slice(p: Producer, rate: int, seconds: float) -> list[float]:
    """Latencies (ms) of lone publishes paced at ``rate`` for ``seconds``, open loop."""
    out, bad = await lone_publishes(p, "lone", rate, int(rate * seconds))
    if bad:
        raise SystemExit(f"{bad} publish(es) acknowledged with fewer than 2 copies")
    return out


async def batch_slice(p: Producer, seconds: float, callers: int = 16, size: int = 100) -> float:
    """msg/s of batches of ``size`` from ``callers`` callers for ``seconds``."""
    loop = asyncio.get_running_loop()
    bodies = [BODY] * size
    end = loop.time() + seconds
    done = 0

    async def caller() -> None:
        nonlocal done
        while loop.time() < end:
            acks = await p.publish_batch("batch", bodies)
            if any(x.copies < 2 for x in acks):
                raise SystemExit("a batch acknowledged with fewer than 2 copies")
            done += len(acks)

    t0 = loop.time()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / (loop.time() - t0)


async def throughput(a: argparse.Namespace, producers: dict[str, Producer]) -> int:
    per: dict[str, list[float]] = {"a": [], "b": []}
    order = ("a", "b", "b", "a")
    for i in range(2 * a.slices):
        side = order[i % 4]
        per[side].append(await batch_slice(producers[side], a.seconds))
    for side in ("a", "b"):
        slices = " ".join(f"{x:,.0f}" for x in per[side])
        print(f"{side}: batch median {pct(per[side], 50):,.0f} msg/s; slices {slices}")
    print(f"b/a: batch {pct(per['b'], 50) / pct(per['a'], 50):.3f}")
    return 0


async def main(a: argparse.Namespace) -> int:
    lat: dict[str, list[float]] = {"a": [], "b": []}
    per: dict[str, list[float]] = {"a": [], "b": []}
    with tempfile.TemporaryDirectory(prefix="pairq-ab-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            producers = {}
            for side, args, env in (("a", a.a_arg, a.a_env), ("b", a.b_arg, a.b_env)):
                pair = await stack.enter_async_context(
                    running_pair(Path(tmp), side, args or None, env=environment(env))
                )
                producers[side] = await stack.enter_async_context(Producer(brokers=pair.addresses))
            for p in producers.values():  # warm up: topic, channels, streams
                for _ in range(300):
                    await p.publish("lone", BODY)
            if a.workload == "batch":
                return await throughput(a, producers)
            order = ("a", "b", "b", "a")
            for i in range(2 * a.slices):
                side = order[i % 4]
                got = await lone_slice(producers[side], a.rate, a.seconds)
                lat[side] += got
                per[side].append(pct(got, 50))
    for side in ("a", "b"):
        slices = " ".join(f"{x:.2f}" for x in per[side])
        print(
            f"{side}: {len(lat[side])} publishes, p50 {pct(lat[side], 50):.2f} ms, "
            f"p99 {pct(lat[side], 99):.2f} ms; slice p50s {slices}"
        )
    print(
        f"b/a: p50 {pct(lat['b'], 50) / pct(lat['a'], 50):.3f}, "
        f"p99 {pct(lat['b'], 99) / pct(lat['a'], 99):.3f}"
    )
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a-arg", action="append", default=[], help="extra broker flag of pair a")
    ap.add_argument("--b-arg", action="append", default=[], help="extra broker flag of pair b")
    ap.add_argument("--a-env", action="append", default=[], help="NAME=VALUE for pair a")
    ap.add_argument("--b-env", action="append", default=[], help="NAME=VALUE for pair b")
    ap.add_argument("--slices", type=int, default=6, help="slices per side")
    ap.add_argument("--seconds", type=float, default=1.5, help="length of a slice")
    ap.add_argument("--rate", type=int, default=1000, help="lone publishes per second")
    ap.add_argument("--workload", choices=["lone", "batch"], default="lone")
    sys.exit(asyncio.run(main(ap.parse_args())))
