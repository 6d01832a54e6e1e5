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
    oldest evicted first (a dict in insertion order: O(1) per id). Forgotten when the
    process ends: a consumer restarted right after a failover may run a handler again
    for an id it had handled (use ``Dedupe(path)`` where that matters)."""

    executor = None

    def __init__(
        self, *, max_entries: int = 100_000, ttl: float = 600.0, clock: Any = time.monotonic
    ) -> None:
        if max_entries < 1 or ttl <= 0:
            raise ValueError("max_entries must be >= 1 and ttl > 0")
        self.max_entries = max_entries
        self.ttl = ttl
        self._clock = clock
        self._ids: dict[bytes, float] = {}
        self._adds = 0

    def contains(self, mid: bytes) -> bool:
        at = self._ids.get(mid)
        return at is not None and at >= self._clock() - self.ttl

    __contains__ = contains

    def add_many(self, ids: list[bytes]) -> None:
        for mid in ids:
            self.add(mid)

    def add(self, mid: bytes) -> None:
        now = self._clock()
        d = self._ids
        if mid in d:
            del d[mid]  # re-recorded: it moves to the young end
        d[mid] = now
        if len(d) > self.max_entries:
            del d[next(iter(d))]
        self._adds += 1
        if self._adds >= 256:  # the ttl is checked every 256 adds (amortized O(1))
            self._adds = 0
            oldest = now - self.ttl
            while d and next(iter(d.values())) < oldest:
                del d[next(iter(d))]

    def __len__(self) -> int:
        return len(self._ids)

    def close(self) -> None:
        self._ids.clear()


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
