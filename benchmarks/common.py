"""Helpers shared by the benchmark scripts (run.py, pair_bench.py, gossip_bench.py, ...)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path


def pct(values: list[float], p: float, empty: float = 0.0) -> float:
    """The p-th percentile (nearest rank) of ``values``; ``empty`` when there are none."""
    if not values:
        return empty
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux /proc); NaN if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


async def open_loop(rate: float, total: int, one: Callable[[float], Awaitable[None]]) -> float:
    """Call ``one(due)`` at each of ``total`` due times ``rate`` per second apart (the
    first 10 ms from now), each in a task of its own, so a slow call never delays
    the next one (an open loop, as real publishers are); wait for all of them.
    Returns the seconds from the first due time to the last call's end."""
    tasks: list[asyncio.Future[None]] = []
    interval = 1.0 / rate
    start = time.perf_counter() + 0.01
    for i in range(total):
        due = start + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - start
