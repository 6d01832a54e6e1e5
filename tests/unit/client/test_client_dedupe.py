"""Dedupe window on a real LMDB file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pairq.client import Dedupe


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000_000

    def __call__(self) -> int:
        return self.ns


def ids(n: int, start: int = 0) -> list[bytes]:
    return [i.to_bytes(16, "big") for i in range(start, start + n)]


def test_records_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dedupe.lmdb"
    with Dedupe(path) as d:
        assert not d.contains(ids(1)[0])
        d.add_many(ids(3))
        assert all(d.contains(i) for i in ids(3))
        assert ids(1, 5)[0] not in d
        assert len(d) == 3
    with Dedupe(path) as d:  # survives reopening
        assert all(d.contains(i) for i in ids(3))


def test_ttl_expires(tmp_path: Path) -> None:
    clock = Clock()
    with Dedupe(tmp_path / "d", ttl=10, clock=clock) as d:
        d.add_many(ids(5))
        clock.ns += 9 * 10**9
        assert d.contains(ids(1)[0])
        clock.ns += 2 * 10**9
        assert not d.contains(ids(1)[0])  # expired even before eviction
        d.add_many(ids(1, 100))  # a write evicts what has expired
        assert len(d) == 1
        assert d.contains(ids(1, 100)[0])


def test_size_bound_evicts_oldest(tmp_path: Path) -> None:
    clock = Clock()
    with Dedupe(tmp_path / "d", max_entries=100, clock=clock) as d:
        for k in range(10):
            clock.ns += 1
            d.add_many(ids(30, k * 30))
        assert len(d) == 100
        assert not d.contains(ids(1)[0])
        assert d.contains(ids(1, 299)[0])
        assert d.contains(ids(1, 200)[0])
        assert not d.contains(ids(1, 199)[0])


def test_re_recording_refreshes(tmp_path: Path) -> None:
    clock = Clock()
    with Dedupe(tmp_path / "d", ttl=10, clock=clock) as d:
        d.add(ids(1)[0])
        clock.ns += 8 * 10**9
        d.add(ids(1)[0])
        clock.ns += 8 * 10**9
        assert d.contains(ids(1)[0])
        assert len(d) == 1
        clock.ns += 100 * 10**9
        assert d.evict() == 1
        assert len(d) == 0


def test_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Dedupe(tmp_path / "d", max_entries=0)
    with pytest.raises(ValueError):
        Dedupe(tmp_path / "d", ttl=0)
    assert not os.path.exists(tmp_path / "d")
