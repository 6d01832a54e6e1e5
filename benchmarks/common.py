"""Helpers shared by the benchmark scripts (run.py, pair_bench.py, gossip_bench.py)."""

from __future__ import annotations

import os
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
