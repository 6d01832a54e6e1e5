"""Dedupe window on a real LMDB file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pairq.client import Dedupe, MemoryDedupe


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


class DedupeModel(RuleBasedStateMachine):
    """The LMDB window against a dict model: bounded size, TTL, oldest evicted first."""

    MAX = 20
    TTL_S = 5

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.clock = Clock()
        self.d = Dedupe(
            Path(self.tmp.name) / "d",
            max_entries=self.MAX,
            ttl=self.TTL_S,
            clock=self.clock,
            sync=False,
        )
        self.model: dict[bytes, int] = {}  # id -> recorded at (ns)

    def teardown(self) -> None:
        self.d.close()
        self.tmp.cleanup()

    @rule(keys=st.lists(st.integers(0, 60), min_size=1, max_size=8))
    def add(self, keys: list[int]) -> None:
        batch = [k.to_bytes(16, "big") for k in keys]
        self.d.add_many(batch)
        for mid in batch:
            self.model[mid] = self.clock.ns

    @rule(seconds=st.integers(0, 3))
    def tick(self, seconds: int) -> None:
        self.clock.ns += seconds * 10**9 + 1

    @rule(k=st.integers(0, 60))
    def check(self, k: int) -> None:
        mid = k.to_bytes(16, "big")
        fresh = mid in self.model and self.model[mid] >= self.clock.ns - self.TTL_S * 10**9
        if not fresh:
            assert not self.d.contains(mid)
        # A fresh id may only be missing if it was evicted as one of the oldest
        # beyond the size bound (ties in time are evicted in id order).
        elif not self.d.contains(mid):
            at_least_as_new = sum(1 for t in self.model.values() if t >= self.model[mid])
            assert at_least_as_new > self.MAX

    @invariant()
    def bounded(self) -> None:
        assert len(self.d) <= self.MAX


DedupeModel.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestDedupeModel = DedupeModel.TestCase


# ------------------------------------------------------------------ the in-memory window


def test_memory_window_remembers_then_forgets_after_ttl() -> None:
    now = [100.0]
    d = MemoryDedupe(ttl=10, clock=lambda: now[0])
    d.add_many([b"a" * 16, b"b" * 16])
    assert d.contains(b"a" * 16) and b"b" * 16 in d and not d.contains(b"c" * 16)
    now[0] += 10.5
    assert not d.contains(b"a" * 16)
    for i in range(256):  # writes evict what the ttl expired (checked every 256 adds)
        d.add(i.to_bytes(16, "big"))
    assert not d.contains(b"a" * 16) and len(d) == 256


def test_memory_window_evicts_the_oldest_beyond_max_entries() -> None:
    now = [0.0]
    d = MemoryDedupe(max_entries=3, clock=lambda: now[0])
    for i in range(5):
        now[0] += 1
        d.add(bytes([i]) * 16)
    assert len(d) == 3
    assert [d.contains(bytes([i]) * 16) for i in range(5)] == [False, False, True, True, True]
    d.add(bytes([2]) * 16)  # recorded again: now the youngest
    d.add(bytes([9]) * 16)
    assert d.contains(bytes([2]) * 16) and not d.contains(bytes([3]) * 16)


def test_memory_window_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        MemoryDedupe(max_entries=0)
    with pytest.raises(ValueError):
        MemoryDedupe(ttl=0)
