"""De-duplication windows: message ids handled recently.

``MemoryDedupe`` (what a ``Consumer`` uses by default) keeps them in this
process; ``Dedupe`` keeps them in an LMDB file, so they survive a restart of
the consumer. Both answer ``contains`` and ``add_many``; ``executor`` says
where ``add_many`` should run (None: inline, it never blocks).

Persistent window (``Dedupe``):

The window holds at most ``max_entries`` ids, none older than ``ttl`` seconds;
the oldest entries are evicted first (a little on every write, so no pause
ever scans the whole file). Two named databases: ``ids`` maps a message id to
the Unix-ns time it was recorded; ``order`` is keyed by that time (8 bytes,
big-endian) followed by the id, which makes eviction a forward cursor walk.

``add_many`` commits one write transaction (fsynced unless ``sync=False``)
and is meant to run on ``executor`` (one thread), off the event loop;
``contains`` is a short read transaction and safe from any thread.
"""

from __future__ import annotations

import collections
import os
import struct
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import lmdb

__all__ = ["Dedupe", "DedupeWindow", "MemoryDedupe"]

_TS = struct.Struct(">Q")
_GiB = 1024**3


class DedupeWindow(Protocol):
    """What a ``Consumer`` needs of a de-duplication window."""

    @property
    def executor(self) -> Executor | None:
        """Where ``add_many`` should run; None: inline (it never blocks)."""

    def contains(self, mid: bytes) -> bool: ...

    def add_many(self, ids: list[bytes]) -> None: ...

    def add(self, mid: bytes) -> None: ...

    def close(self) -> None: ...


class MemoryDedupe:
    """An in-memory window: at most ``max_entries`` ids, none older than ``ttl`` seconds,
    oldest evicted first. Forgotten when the process ends: a consumer restarted right
    after a failover may run a handler again for an id it had handled (use
    ``Dedupe(path)`` where that matters).

    One structure, no Python-level work per id in the common case: a set of the
    ids, and a deque of ``(time, ids)`` marks, one per recorded batch, oldest
    first. Recording adds the batch to the set and appends its mark; expiry
    and eviction drop whole marks from the front (``set.difference_update``),
    the last one partly when only part of it must go for the size bound. The
    ttl is applied before every lookup and record (``seen``, ``disjoint``,
    ``record_many`` drop the marks older than ``now - ttl`` first), so an
    expired id is never reported; the size bound holds after every record. An
    id recorded again moves to the young end: its older mark is *stale* for it
    (counted in ``_stale``) and dropping that mark leaves the id in place.
    ``seen``, ``disjoint`` and ``record_many`` take the time (``clock``
    seconds, non-decreasing) from the caller; ``contains``, ``add`` and
    ``add_many`` read ``clock``."""

    executor = None

    def __init__(
        self, *, max_entries: int = 100_000, ttl: float = 600.0, clock: Any = time.monotonic
    ) -> None:
        if max_entries < 1 or ttl <= 0:
            raise ValueError("max_entries must be >= 1 and ttl > 0")
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        """The time source of ``contains`` / ``add`` (and of a Consumer's calls)."""
        self._ids: set[bytes] = set()
        self._marks: collections.deque[tuple[float, list[bytes]]] = collections.deque()
        self._stale: dict[bytes, int] = {}  # id -> older marks that still list it

    def expire(self, now: float) -> None:
        """Drop every id recorded before ``now - ttl``."""
        marks = self._marks
        oldest = now - self.ttl
        while marks and marks[0][0] < oldest:
            self._drop(marks.popleft()[1])

    def _drop(self, ids: list[bytes]) -> None:
        stale = self._stale
        if stale:
            keep = []
            for mid in ids:
                n = stale.get(mid)
                if n is None:
                    keep.append(mid)
                elif n == 1:
                    del stale[mid]  # its latest record is younger: it stays
                else:
                    stale[mid] = n - 1
            ids = keep
        self._ids.difference_update(ids)

    def seen(self, mid: bytes, now: float) -> bool:
        """Whether ``mid`` was recorded at or after ``now - ttl``."""
        marks = self._marks
        if marks and marks[0][0] < now - self.ttl:
            self.expire(now)
        return mid in self._ids

    def disjoint(self, ids: list[bytes], now: float) -> bool:
        """Whether none of ``ids`` was recorded at or after ``now - ttl``."""
        marks = self._marks
        if marks and marks[0][0] < now - self.ttl:
            self.expire(now)
        return self._ids.isdisjoint(ids)

    def contains(self, mid: bytes) -> bool:
        return self.seen(mid, self.clock())

    __contains__ = contains

    def record_many(self, ids: list[bytes], now: float) -> None:
        """Record ``ids`` at ``now`` (non-decreasing; the window keeps the list), keep bounds."""
        if not ids:
            return
        self.expire(now)
        s = self._ids
        before = len(s)
        s.update(ids)
        if len(s) != before + len(ids):  # recorded again, or twice in ids (rare)
            self._count_stale(ids)
        marks = self._marks
        marks.append((now, ids))
        cap = self.max_entries
        while len(s) > cap:
            t, front = marks[0]
            k = len(s) - cap
            if k >= len(front):
                marks.popleft()
                self._drop(front)
            else:
                marks[0] = (t, front[k:])
                self._drop(front[:k])

    def _count_stale(self, ids: list[bytes]) -> None:
        """Some of ``ids`` (just added) were in the window already: their older marks are
        stale for them. Recounted from the marks (O(window): only for re-recorded ids)."""
        fresh = dict.fromkeys(ids)
        counts: dict[bytes, int] = {}
        for _, older in self._marks:
            for mid in older:
                if mid in fresh:
                    counts[mid] = counts.get(mid, 0) + 1
        stale = self._stale
        for mid, n in counts.items():
            stale[mid] = n  # every mark older than the one about to be appended
        for mid in fresh:
            k = ids.count(mid) - 1 if len(fresh) != len(ids) else 0
            if k:
                stale[mid] = stale.get(mid, 0) + k  # listed twice in this very batch

    def add_many(self, ids: list[bytes]) -> None:
        self.record_many(list(ids), self.clock())

    def add(self, mid: bytes) -> None:
        self.record_many([mid], self.clock())

    def __len__(self) -> int:
        return len(self._ids)

    def close(self) -> None:
        self._ids.clear()
        self._marks.clear()
        self._stale.clear()


class Dedupe:
    """Remembers handled message ids for ``ttl`` seconds, at most ``max_entries`` of them.

    ``path`` is the LMDB data file (a ``-lock`` file is kept beside it); its
    directory is created if needed. Options (keyword-only):

    - ``max_entries``: window size (default 1,000,000 ids, about 60 MB on disk).
    - ``ttl``: seconds an id is remembered (default 24 h). Choose it longer than
      the longest time a duplicate can arrive after the original (a broker
      failover plus its message timeout, or a producer's retry window).
    - ``map_size``: LMDB map size cap in bytes (default 1 GiB, sparse).
    - ``sync``: fsync every commit (default True). With False a machine crash
      may forget recent ids (their messages may be handled again).
    - ``clock``: returns Unix nanoseconds (for tests).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_entries: int = 1_000_000,
        ttl: float = 24 * 3600.0,
        map_size: int = _GiB,
        sync: bool = True,
        clock: Any = time.time_ns,
    ) -> None:
        if max_entries < 1 or ttl <= 0:
            raise ValueError("max_entries must be >= 1 and ttl > 0")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_entries = max_entries
        self.ttl_ns = int(ttl * 1e9)
        self._clock = clock
        self._env = lmdb.open(
            str(self.path),
            subdir=False,
            map_size=map_size,
            max_dbs=2,
            sync=sync,
            metasync=sync,
            writemap=False,
            readahead=False,
            max_readers=256,
        )
        self._env.reader_check()
        self._ids = self._env.open_db(b"ids")
        self._order = self._env.open_db(b"order")
        self._lock = threading.Lock()
        self._closed = False
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pairq-dedupe")
        """The single thread that should run ``add_many`` (writes are serialised anyway)."""

    def __enter__(self) -> Dedupe:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def contains(self, mid: bytes) -> bool:
        """Whether ``mid`` was recorded within the last ``ttl`` seconds."""
        with self._env.begin(db=self._ids, buffers=False) as txn:
            v = txn.get(mid)
        if v is None:
            return False
        return bool(_TS.unpack(v)[0] >= self._clock() - self.ttl_ns)

    __contains__ = contains

    def add_many(self, ids: list[bytes]) -> None:
        """Record ``ids`` as handled (one transaction, durable on return), then evict."""
        if not ids:
            return
        now = self._clock()
        ts = _TS.pack(now)
        with self._lock, self._env.begin(write=True) as txn:
            for mid in ids:
                old = txn.get(mid, db=self._ids)
                if old is not None:
                    txn.delete(old + mid, db=self._order)
                txn.put(mid, ts, db=self._ids)
                txn.put(ts + mid, b"", db=self._order)
            self._evict(txn, now, budget=2 * len(ids) + 64)

    def add(self, mid: bytes) -> None:
        """Record one id."""
        self.add_many([mid])

    def _evict(self, txn: Any, now: int, *, budget: int) -> int:
        excess = txn.stat(self._ids)["entries"] - self.max_entries
        cutoff = _TS.pack(max(0, now - self.ttl_ns))
        removed = 0
        cur = txn.cursor(db=self._order)
        if not cur.first():
            return 0
        while removed < budget:
            key = cur.key()
            if excess <= 0 and key[:8] >= cutoff:
                break
            txn.delete(key[8:], db=self._ids)
            removed += 1
            excess -= 1
            if not cur.delete():
                break
            if not cur.key():
                break
        return removed

    def evict(self) -> int:
        """Drop every expired or surplus entry now; return how many were dropped."""
        with self._lock, self._env.begin(write=True) as txn:
            return self._evict(txn, self._clock(), budget=1 << 62)

    def __len__(self) -> int:
        with self._env.begin() as txn:
            return int(txn.stat(self._ids)["entries"])

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.executor.shutdown(wait=True)
        self._env.close()
