"""The broker's LMDB store: one environment, one writer thread, group commit, typed access.

The key layout is ``schema.py``'s; this module is the only one that opens a
transaction or a cursor. Callers never build keys or name databases: each
concept has its own typed view on the store,

- ``log`` (``MessageLog``): a topic's records, by seq, and the idempotency index;
- ``catalog`` (``Catalog``): topics, channels, and the id allocator;
- ``progress`` (``ChannelProgress``): a channel's floor, finished seqs, requeue states;
- ``dead`` (``DeadLetters``): a channel's dead letters;
- ``standby`` (``StandbyCopies``): the partner's records and progress held here;
- ``meta`` (``NodeMeta``): node id, epoch, high-water marks, the catalog flag;

whose methods read directly, or return a ``Write`` that ``commit`` (a future
resolved after the fsync) or ``post`` (nobody waits) applies. Several writes
given to one ``commit`` land in one transaction.

Idempotency: every stored message id (owned or standby) goes into the
current ``ids_N`` generation; ``rotate_ids`` empties the older generation
and makes it current, so an id is remembered for between one and two
rotation periods at the cost of one put per message.

Each body is stored once per topic whatever the channel count; channels only
keep a floor, a sparse set of finished seqs above it and small state records.

Writes go through the writer thread: it drains its queue, applies
everything in one write transaction, commits (fsync with ``sync="always"``)
and then resolves every waiter with one ``call_soon_threadsafe``. One exception,
with a commit log (``commitlog.py``) only: a loop turn's small writes (the
partner's copy of a few records, a FIN's progress; never the owner's own appends,
whose commit the loop should not wait out: it has the partner's ack and the next
requests to serve) that find the writer idle (everything handed to it committed,
no checkpoint holding the write lock) are committed on the loop's thread at the
end of the turn ("inline": one ``O_DSYNC`` log write, about 0.1 ms here), which
spares the partner's part of a lone publish two thread hand-offs. An inline commit
slower than ``inline_commit_us`` (a slow or stalled disk) sends every write to the
writer thread for the next second, so a sick disk stalls the loop at most once a
second, never for long; one that fails is redone by the writer, which handles every
error.
Reads use short read transactions on the caller's thread, and every read
returns materialised values (no transaction outlives a call).

The memory map starts at ``initial_map_bytes`` and doubles whenever LMDB
reports it full (``MDB_MAP_FULL``), up to ``max_bytes``. The resize runs on
the event loop's thread between two callbacks, where no read transaction
can be open, while the writer waits. When the store reaches its cap
(``max_bytes - reserve_bytes``) or the disk runs out of space (free disk plus
LMDB's free pages below ``reserve_bytes``: see :func:`full_reason`), appends fail
with ``StoreFullError`` while every other write (FINs, cleanup) still
commits in the reserve, so delivery goes on and the store is never corrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import lmdb

from pairq.broker import checksum
from pairq.broker import schema as sc
from pairq.broker.checksum import crc as crc32c
from pairq.broker.commitlog import (
    COMMIT,
    CommitLog,
    CommitLogError,
    Recorder,
    apply_record,
    meta_txnid,
    plan_recovery,
)
from pairq.broker.schema import ChannelMeta, TopicMeta
from pairq.errors import StoreFullError
from pairq.names import is_valid_name

__all__ = ["ChannelMeta", "Store", "StoreFullError", "TopicMeta", "Write"]

log = logging.getLogger("pairq.store")

_STOP = object()


class TruncatedStoreError(Exception):
    """The data file is shorter than LMDB's meta page says (reading past its end would
    kill the process with SIGBUS)."""


class CorruptStoreError(Exception):
    """A read (the scrub's) met LMDB structure damage; ``Store.on_fatal`` was told."""


class CrashedStoreError(Exception):
    """The previous process died of a fatal signal (SIGSEGV, SIGBUS, ...) while it had
    this store open (its crash record says so: :class:`CrashRecord`). LMDB does not
    checksum its own pages, so a corrupt B-tree or overflow page can crash a reader
    instead of returning an error; a store that crashed its process is handled as a
    corrupt one, or the next start would crash on the same page again."""


class CrashRecord:
    """``native-crash.log`` in the store directory: Python's ``faulthandler`` writes the
    stacks there when the process dies of a fatal signal while the store is open.

    The rules: ``check()`` at open raises :class:`CrashedStoreError` when the file holds
    a report (an empty one is what a clean exit or a kill -9 leaves: removed);
    ``arm()`` (the daemon only: ``faulthandler`` is process-wide) opens it empty and
    points ``faulthandler`` at it; ``disarm()`` on a clean close removes it. The file
    lives in the store directory, so it moves aside with a corrupt store."""

    NAME = "native-crash.log"

    def __init__(self, store_dir: Path) -> None:
        self.path = store_dir / self.NAME
        self._fh: Any = None

    def check(self) -> None:
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return
        if not text.strip():
            self.path.unlink(missing_ok=True)
            return
        first = next((ln for ln in text.splitlines() if ln.strip()), "").strip()
        raise CrashedStoreError(
            f"the previous broker process died with {first!r} while this store was open "
            f"(stacks in {self.path}); LMDB does not checksum its pages, so a corrupt page "
            "can crash a reader: handled as a corrupt store"
        )

    def write(self, reason: str) -> None:
        """Record ``reason`` (malformed data found at start-up): the next ``check``
        handles the store as corrupt."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(reason + "\n")

    def arm(self) -> None:
        import faulthandler

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("w")
        faulthandler.enable(file=self._fh, all_threads=True)

    def disarm(self) -> None:
        if self._fh is None:
            return
        import faulthandler

        faulthandler.disable()
        self._fh.close()
        self._fh = None
        self.path.unlink(missing_ok=True)


# LMDB errors that mean its own structure is damaged (not a full disk): the store
# must not be served from (Broker: --on-corruption).
STRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.InvalidError,
    lmdb.VersionMismatchError,
    lmdb.PanicError,
    lmdb.BadTxnError,
    # Every database is opened with the flags it was created with, so a tree whose
    # stored flags no longer match (a flipped bit in its record: make chaos, bitflip
    # seed 3, session 8, where every cleanup then failed) is damage too.
    lmdb.IncompatibleError,
    TruncatedStoreError,
    CrashedStoreError,
)
# What decoding a damaged key or value raises (a flipped bit in a topic name, a value
# of the wrong length): at start-up the store is then handled as corrupt (Broker).
MALFORMED: tuple[type[BaseException], ...] = (
    UnicodeDecodeError,
    struct.error,
    ValueError,
    IndexError,
    KeyError,
)

# What the writer treats as a broken structure: those, and a SystemError that py-lmdb
# raises around one of them (checked for its cause in ``Store._commit``).
_FATAL_OR_WRAPPED: tuple[type[BaseException], ...] = (*STRUCTURE_ERRORS, SystemError)

# Within this many bytes of the reserve, room is checked after every commit.
_CLOSE_MARGIN = 64 * 1024**2

# How long the writer waits for the loop to resize the map before giving up.
_RESIZE_WAIT = 5.0
# Inline commits (module docstring): at most this many writes (a loop turn's, or the
# parts of one), each of at most this many records (a batch is left to the writer:
# the loop parses the next requests meanwhile), and off for this many seconds after
# one slower than inline_commit_us.
_INLINE_MAX_WRITES = 16
_INLINE_MAX_RECORDS = 16
_INLINE_PAUSE = 1.0


# ============================================================ writes
class Write:
    """One store write, applied inside the writer's transaction. Built by the typed
    views below, never by callers."""

    __slots__ = ()
    appends: ClassVar[bool] = False  # refused while the store is full

    def apply(self, txn: Any, s: Store) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def refused_when_full(self) -> bool:
        return self.appends

    def small(self) -> bool:
        """Cheap enough to commit inline (module docstring): a few records or keys."""
        return True


class _Append(Write):
    __slots__ = ("crcs", "records", "seq", "topic_id")
    appends = True

    def __init__(self, topic_id: int, seq: int, records: list[bytes], crcs: list[int]) -> None:
        self.topic_id, self.seq, self.records, self.crcs = topic_id, seq, records, crcs

    def small(self) -> bool:
        # Never inline: while the owner's own commit runs, its loop has the partner's
        # ack and the next requests to serve (inline, lone p99 rose 15-25 %); the
        # partner's copy (_StandbyAppend) is what its loop waits for anyway.
        return False

    def apply(self, txn: Any, s: Store) -> None:
        key = sc.seq_key
        prefix = sc.crc_prefix
        tid = self.topic_id
        keys = [key(tid, q) for q in range(self.seq, self.seq + len(self.records))]
        checks = checksum.keyed_many(self.crcs, keys)  # schema.keyed, the batch in one call
        txn.cursor(db=s.dbs[sc.MSGS]).putmulti(
            [(k, prefix(c) + rec) for k, rec, c in zip(keys, self.records, checks, strict=True)]
        )
        if s.index_ids:
            txn.cursor(db=s.dbs[sc.IDS0 + s.ids_gen]).putmulti(
                [(rec[: sc.ID_SIZE], b"") for rec in self.records]
            )


class _StandbyAppend(Write):
    # ``index=False`` for copies the owner has not confirmed yet (see
    # pair.StandbyStore); an ``_IndexIds`` follows once it does.
    __slots__ = ("crcs", "index", "records", "seq", "topic")
    appends = True

    def __init__(
        self, topic: str, seq: int, records: list[bytes], crcs: list[int], index: bool
    ) -> None:
        self.topic, self.seq, self.records, self.crcs, self.index = topic, seq, records, crcs, index

    def small(self) -> bool:
        return len(self.records) <= _INLINE_MAX_RECORDS

    def apply(self, txn: Any, s: Store) -> None:
        base = sc.sb_topic_prefix(self.topic)
        pack = sc.pack_q
        prefix = sc.crc_prefix
        keys = [base + pack(q) for q in range(self.seq, self.seq + len(self.records))]
        checks = checksum.keyed_many(self.crcs, keys)
        txn.cursor(db=s.dbs[sc.SB_MSGS]).putmulti(
            [(k, prefix(c) + rec) for k, rec, c in zip(keys, self.records, checks, strict=True)]
        )
        if s.index_ids and self.index:
            txn.cursor(db=s.dbs[sc.IDS0 + s.ids_gen]).putmulti(
                [(rec[: sc.ID_SIZE], b"") for rec in self.records]
            )


class _IndexIds(Write):
    __slots__ = ("ids",)

    def __init__(self, ids: list[bytes]) -> None:
        self.ids = ids

    def small(self) -> bool:
        return len(self.ids) <= _INLINE_MAX_RECORDS

    def apply(self, txn: Any, s: Store) -> None:
        if s.index_ids:
            txn.cursor(db=s.dbs[sc.IDS0 + s.ids_gen]).putmulti([(i, b"") for i in self.ids])


class _RotateIds(Write):
    __slots__ = ("gen",)

    def __init__(self, gen: int) -> None:
        self.gen = gen  # the generation to empty and make current (idempotent on retry)

    def small(self) -> bool:
        return False  # frees a whole generation's pages

    def apply(self, txn: Any, s: Store) -> None:
        txn.drop(s.dbs[sc.IDS0 + self.gen], delete=False)
        txn.put(sc.IDS_GEN, bytes((self.gen,)), db=s.dbs[sc.META])
        s.ids_gen = self.gen


class _Puts(Write):
    """Puts and deletes (value None) of small records."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[int, bytes, bytes | None]]) -> None:
        self.items = items

    def small(self) -> bool:
        return len(self.items) <= _INLINE_MAX_RECORDS

    def apply(self, txn: Any, s: Store) -> None:
        dbs = s.dbs
        for db, key, value in self.items:
            if value is None:
                txn.delete(key, db=dbs[db])
            else:
                txn.put(key, value, db=dbs[db])


class _DeleteRange(Write):
    """Delete every key in [lo, hi) (``hi`` None: every key starting with ``lo``)."""

    __slots__ = ("db", "hi", "lo")

    def __init__(self, db: int, lo: bytes, hi: bytes | None) -> None:
        self.db, self.lo, self.hi = db, lo, hi

    def small(self) -> bool:
        return False  # any number of keys

    def apply(self, txn: Any, s: Store) -> None:
        cur = txn.cursor(db=s.dbs[self.db])
        lo, hi = self.lo, self.hi
        if not cur.set_range(lo):
            return
        while True:
            k = cur.key()
            if not k or (k >= hi if hi is not None else not k.startswith(lo)):
                break
            if not cur.delete():
                break


class _Many(Write):
    __slots__ = ("writes",)

    def __init__(self, writes: list[Write]) -> None:
        self.writes = writes

    def refused_when_full(self) -> bool:
        return any(w.refused_when_full() for w in self.writes)

    def small(self) -> bool:
        return len(self.writes) <= _INLINE_MAX_WRITES and all(w.small() for w in self.writes)

    def apply(self, txn: Any, s: Store) -> None:
        for w in self.writes:
            w.apply(txn, s)


def _put(db: int, key: bytes, value: bytes) -> Write:
    return _Puts([(db, key, value)])


def _delete(db: int, key: bytes) -> Write:
    return _Puts([(db, key, None)])


def _drop(db: int, prefix: bytes) -> Write:
    return _DeleteRange(db, prefix, None)


def _one(writes: tuple[Write, ...] | list[Write]) -> Write:
    if not writes:
        return _Puts([])
    return writes[0] if len(writes) == 1 else _Many(list(writes))


# ============================================================ the engine
class Store:
    """LMDB environment + writer thread. Create, ``open()``, ``start(loop)``, ``close()``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: str = "always",
        sync_interval_ms: int = 100,
        max_bytes: int = 64 * 1024**3,
        reserve_bytes: int = 64 * 1024**2,
        max_commit_batch: int = 20000,
        initial_map_bytes: int = 1024**3,
        commit_log_bytes: int = 4 * 1024**2,
        checkpoint_interval_ms: int = 50,
        inline_commit_us: int = 20000,
    ) -> None:
        self.path = Path(path)
        self.sync_mode = sync
        # With sync="always" and a commit log (commitlog.py), each commit is made
        # durable by one O_DSYNC write to the log and LMDB is synced at checkpoints:
        # every ``checkpoint_interval_ms`` or ``commit_log_bytes`` of log.
        self.checkpoint_bytes = commit_log_bytes
        self.checkpoint_interval = checkpoint_interval_ms / 1000.0
        self.clog: CommitLog | None = None
        self._wlock = threading.Lock()  # one write transaction and its record at a time
        self._db_index: dict[int, int] = {}
        self._data_fd = -1
        self._psize = 4096
        self._pins: list[Any] = []  # read transactions that keep checkpoint bases intact
        self._ckpt_q: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._ckpt_thread: threading.Thread | None = None
        self._ckpt_idle = threading.Event()  # no checkpoint in flight
        self._ckpt_idle.set()
        self._ckpt_synced = threading.Event()  # the checkpointer is not syncing
        self._ckpt_synced.set()
        self._seg_started = 0.0
        self._ckpt_failed: BaseException | None = None  # no checkpoint after this one
        self.checkpoints = 0
        self.replayed = 0  # commits redone from the log at the last open
        self.sync_interval = sync_interval_ms / 1000.0
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self.max_commit_batch = max_commit_batch
        self.map_bytes = min(max_bytes, max(initial_map_bytes, 1024**2))
        self.env: Any = None
        self.dbs: list[Any] = []
        # The writer's queue holds lists of (write, future) (one per loop turn, see
        # ``_enqueue``) and the _STOP sentinel.
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: list[tuple[Write, asyncio.Future[None] | None]] = []
        self._pending_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Inline commits (module docstring): the loop's thread, the writes handed to
        # the writer and those it committed (equal: it is idle), and until when inline
        # commits are off after a slow one.
        self.inline_limit = inline_commit_us / 1e6
        self._loop_tid = 0
        self._handed = 0
        self._written = 0  # by the writer thread only
        self._inline_off_until = 0.0
        self.inline_commits = 0
        self.full_reason = ""  # non-empty while appends are refused
        self.commits = 0
        # Telemetry (pairq.telemetry), called on the writer thread: (seconds, writes)
        # of each group commit (fsync included with sync="always"), and seconds of
        # each periodic fsync. None: nobody listens.
        self.on_commit: Any = None
        self.on_fsync: Any = None
        self.committed_ops = 0
        self.map_grows = 0
        self.used_bytes = 0
        self._last_space_check = 0.0
        self._margin = 0  # bytes above the reserve at the last check (see full_reason)
        self.ids_gen = 0  # current idempotency generation (0 or 1)
        self.index_ids = True
        self.integrity = Integrity()
        # Called (from the writer thread) when LMDB reports its structure corrupt.
        self.on_fatal: Callable[[BaseException], None] | None = None
        self.log = MessageLog(self)
        self.catalog = Catalog(self)
        self.progress = ChannelProgress(self)
        self.dead = DeadLetters(self)
        self.standby = StandbyCopies(self)
        self.meta = NodeMeta(self)

    # ----------------------------------------------------------------- life
    def open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        data = self.path / "data.mdb"
        existed = data.exists()
        use_log = self.checkpoint_bytes > 0 and self.sync_mode == "always"
        clog = CommitLog(self.path)
        try:
            plan = plan_recovery(clog.read())
        except CommitLogError as exc:
            raise CorruptStoreError(f"{self.path}: {exc}") from exc
        if plan.start is not None and not existed:
            if plan.replay:
                raise CorruptStoreError(
                    f"{self.path}: the commit log holds {len(plan.replay)} commit(s) but "
                    "data.mdb is missing"
                )
            plan.start = None  # a log left behind by a store that is gone: begin anew
        if plan.start is not None:
            self._check_log_matches(data, plan.start.meta, bool(plan.replay))
            if plan.replay:  # back to the base exactly (commitlog.py, rule 3)
                _write_meta(data, plan.start.meta)
        if existed:  # never map less than the file already holds
            size = data.stat().st_size + 2 * sum(len(p) for _l, p in plan.replay)
            while self.map_bytes < size and self.map_bytes < self.max_bytes:
                self.map_bytes = min(self.max_bytes, self.map_bytes * 2)
        self.env = lmdb.open(
            str(self.path),
            map_size=self.map_bytes,
            max_dbs=len(sc.DB_NAMES) + 2,
            sync=self.sync_mode == "always" and not use_log,
            metasync=True,
            writemap=False,
            readahead=False,
            max_readers=256,
            lock=True,
        )
        info = self.env.info()
        self.map_bytes = int(info["map_size"])
        self._psize = int(self.env.stat()["psize"])
        if existed:
            need = (int(info["last_pgno"]) + 1) * self._psize
            have = data.stat().st_size
            if have < need:
                self.env.close()
                self.env = None
                raise TruncatedStoreError(
                    f"{data} is {have} bytes but its last page ends at byte {need} (truncated)"
                )
        self.env.reader_check()
        pin = self.env.begin()  # the base stays intact until the new segment is begun
        try:
            with self.env.begin(write=True) as txn:
                self.dbs = [self.env.open_db(n.encode(), txn=txn) for n in sc.DB_NAMES]
                self._check_format(txn)
            self._db_index = {id(h): i for i, h in enumerate(self.dbs)}
            if plan.replay:
                self._replay(plan.replay)
            with self.env.begin() as txn:
                gen = txn.get(sc.IDS_GEN, db=self.dbs[sc.META])
                self.ids_gen = gen[0] & 1 if gen else 0
                self.integrity.quarantined = txn.stat(self.dbs[sc.QUARANTINE])["entries"]
            self.env.sync(True)
            self._data_fd = os.open(data, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            if use_log:
                clog.open(plan.last_lsn, plan.next_gen)
                file = 1 - plan.start.file if plan.start is not None else 0
                clog.begin_segment(file, self._read_meta(), durable=True)
                self.clog = clog
                self._pins = [self.env.begin()]
                self._seg_started = time.monotonic()
            elif plan.start is not None:  # replayed (or nothing to): the log is done with
                for p in clog.paths():
                    p.unlink(missing_ok=True)
        finally:
            pin.abort()
        self._refresh_usage()

    def _check_format(self, txn: Any) -> None:
        version = txn.get(sc.FORMAT, db=self.dbs[sc.META])
        if version is None:
            txn.put(sc.FORMAT, sc.FORMAT_VERSION, db=self.dbs[sc.META])
        elif bytes(version) in (b"1", b"2"):
            old = bytes(version).decode()
            n = self._upgrade_from_1(txn) if old == "1" else self._upgrade_from_2(txn)
            txn.put(sc.FORMAT, sc.FORMAT_VERSION, db=self.dbs[sc.META])
            log.warning(
                "%s: upgraded the store from format %s to %s: %d record(s) now carry a "
                "crc32c check that covers their key",
                self.path,
                old,
                sc.FORMAT_VERSION.decode(),
                n,
            )
        elif version != sc.FORMAT_VERSION:
            raise RuntimeError(
                f"{self.path}: store format {bytes(version)!r} is not supported by this "
                f"pairq (expects {sc.FORMAT_VERSION!r}); start a pairq that wrote it, or "
                "move the data dir aside and let the partner re-fill this broker"
            )

    def _check_log_matches(self, data: Path, base_meta: bytes, replay: bool) -> None:
        """The log's base must be this data file's: a data file older than the base
        (restored from a backup, say) is not the one the log was written against."""
        psize = _meta_psize(base_meta)
        with data.open("rb") as fh:
            on_disk = fh.read(2 * psize)
        base_txn, disk_txn = meta_txnid(base_meta, psize), meta_txnid(on_disk, psize)
        if disk_txn < base_txn:
            raise CorruptStoreError(
                f"{self.path}: the commit log's checkpoint is transaction {base_txn} but "
                f"data.mdb's newest is {disk_txn}: data.mdb is older than its log (was it "
                "replaced?)"
            )
        if not replay and disk_txn != base_txn:
            log.warning(
                "%s: data.mdb is at transaction %d, its log's checkpoint at %d with nothing "
                "logged after it; opening data.mdb as it is",
                self.path,
                disk_txn,
                base_txn,
            )

    def _replay(self, records: list[tuple[int, bytes]]) -> None:
        """Redo the log's commits after the restored base, in one transaction."""
        ops = 0
        try:
            with self.env.begin(write=True) as txn:
                for _lsn, payload in records:
                    ops += apply_record(txn, self.dbs, payload)
        except CommitLogError as exc:
            raise CorruptStoreError(f"{self.path}: {exc}") from exc
        except lmdb.MapFullError as exc:
            raise RuntimeError(
                f"{self.path}: redoing {len(records)} logged commit(s) needs more room than "
                f"--max-store-bytes ({self.max_bytes}) allows: {exc}; restart with a larger "
                "--max-store-bytes"
            ) from exc
        self.replayed = len(records)
        log.warning(
            "%s: redid %d commit(s) (%d ops) from the commit log after an unclean stop",
            self.path,
            len(records),
            ops,
        )

    def _read_meta(self) -> bytes:
        return os.pread(self._data_fd, 2 * self._psize, 0)

    def _upgrade_from_1(self, txn: Any) -> int:
        """Give every record of a format-1 store its check (one transaction)."""
        n = 0
        for db in (sc.MSGS, sc.SB_MSGS):
            items = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self.dbs[db])]
            for k, v in items:
                txn.put(k, sc.pack_record(k, crc32c(v), v), db=self.dbs[db])
            n += len(items)
        items = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self.dbs[sc.DLQ])]
        for k, v in items:
            attempts = int.from_bytes(v[:4], "big")
            rec = v[4:]
            txn.put(k, sc.pack_dlq(k, attempts, crc32c(rec), rec), db=self.dbs[sc.DLQ])
        return n + len(items)

    def _upgrade_from_2(self, txn: Any) -> int:
        """Key every record's crc32c (format 2 -> 3, one transaction); a record that
        failed its checksum still does."""
        n = 0
        for db, at in ((sc.MSGS, 0), (sc.SB_MSGS, 0), (sc.DLQ, 4)):
            items = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self.dbs[db])]
            for k, v in items:
                if len(v) < at + 4:
                    continue  # too short to hold a check: fails it either way
                c = int.from_bytes(v[at : at + 4], "big")
                fixed = v[:at] + sc.keyed(c, k).to_bytes(4, "big") + v[at + 4 :]
                txn.put(k, fixed, db=self.dbs[db])
            n += len(items)
        return n

    def scrub_chunk(
        self, db: int, after: bytes | None, limit: int
    ) -> tuple[int, int, list[bytes], bytes | None]:
        """Check up to ``limit`` records of ``db`` after key ``after`` (None: from the
        start): (records checked, bytes read, keys that failed their check, the last
        key walked or None at the end). Records of ``msgs``, ``sb_msgs`` and ``dlq`` are
        checked against their crc32c; every other database's entries are only walked,
        so LMDB meets every page of every B-tree. LMDB structure damage met on the way
        is the store's end (``on_fatal``, as in the writer): ``CorruptStoreError``."""
        checked = walked = size = 0
        bad: list[bytes] = []
        last: bytes | None = None
        records = db in (sc.MSGS, sc.SB_MSGS, sc.DLQ)
        try:
            with self.env.begin(buffers=False) as txn:
                cur = txn.cursor(db=self.dbs[db])
                ok = cur.set_range(after) if after is not None else cur.first()
                if ok and after is not None and cur.key() == after:
                    ok = cur.next()
                while ok and walked < limit:
                    k, v = cur.key(), cur.value()
                    if records:
                        if db == sc.DLQ:
                            _a, c, rec = sc.unpack_dlq(v)
                        else:
                            c, rec = sc.split_record(v)
                        if crc32c(rec) != sc.keyed(c, k):
                            self.integrity.saw_bad(db, k)
                            bad.append(k)
                        checked += 1
                    walked += 1
                    size += len(k) + len(v)
                    last = k
                    ok = cur.next()
                if not ok:
                    last = None
        except _FATAL_OR_WRAPPED as exc:
            if isinstance(exc, SystemError) and not isinstance(exc.__cause__, lmdb.Error):
                raise
            log.critical(
                "scrub: LMDB reports the structure of %s corrupt: %s", sc.DB_NAMES[db], exc
            )
            if self.on_fatal is not None:
                self.on_fatal(exc)
            raise CorruptStoreError(f"{sc.DB_NAMES[db]}: {type(exc).__name__}: {exc}") from exc
        return checked, size, bad, last

    def quarantine_raw(self, db: int, key: bytes) -> Write:
        """Move aside a record whose key no longer decodes (kind b"x", then the
        database's name and the key)."""
        return _Quarantine(db, key, b"x" + sc.DB_NAMES[db].encode() + b"\0" + key)

    def quarantined(self, limit: int = 1000) -> list[tuple[bytes, bytes]]:
        """(key, stored value) of quarantined records (``schema.quarantine_key``)."""
        return self._scan(sc.QUARANTINE, b"", limit)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:
                self._loop_tid = threading.get_ident()
        self._thread = threading.Thread(target=self._run, name="pairq-store-writer", daemon=True)
        self._thread.start()
        if self.clog is not None:
            self._ckpt_thread = threading.Thread(
                target=self._checkpointer, name="pairq-store-checkpoint", daemon=True
            )
            self._ckpt_thread.start()

    def close(self) -> None:
        """Drain every queued write, commit, stop the writer and close the environment."""
        if self._thread is not None:
            self._flush()  # a loop turn's writes not handed over yet come first
            self._q.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._ckpt_thread is not None:
            self._ckpt_q.put(None)
            self._ckpt_thread.join()
            self._ckpt_thread = None
        if self.env is not None:
            if self.clog is not None:
                # A last checkpoint with nothing after it: the next open is as-is.
                try:
                    self._checkpoint_now()
                except OSError as exc:  # the log stays: the next start redoes it
                    log.error("store close: no last checkpoint (%s)", exc)
                for pin in self._pins:
                    pin.abort()
                self._pins = []
                self.clog.close()
                self.clog = None
            else:
                self.env.sync(True)
            if self._data_fd >= 0:
                os.close(self._data_fd)
                self._data_fd = -1
            self.env.close()
            self.env = None

    # --------------------------------------------------------------- writes
    def commit(self, *writes: Write) -> asyncio.Future[None]:
        """Queue writes that commit together; the future resolves after the commit."""
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._enqueue((_one(writes), fut))
        return fut

    def post(self, *writes: Write) -> None:
        """Queue writes that commit together, with nobody waiting for them."""
        if writes:
            self._enqueue((_one(writes), None))

    def _enqueue(self, item: tuple[Write, asyncio.Future[None] | None]) -> None:
        """Hand writes to the writer thread at the end of this loop turn, all at once.

        Waking the writer at once (one queue put per write) made it compete for
        the GIL with the loop while the loop still had the turn's work to do:
        in a pair, the replication frame of a lone publish went out about 0.5 ms
        later, behind that GIL hand-off (strace). Deferred by ``call_soon``, the
        turn's callbacks (the replication sender among them) run first, every
        write of the turn wakes the writer once, and group commits stay whole.
        Order is kept: writes reach the writer in the order they were queued."""
        with self._pending_lock:  # close() may flush from another thread
            pending = self._pending
            pending.append(item)
            first = len(pending) == 1
        if first:
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        with self._pending_lock:
            if not self._pending:
                return
            items, self._pending = self._pending, []
        if self._commit_inline(items):
            return
        self._handed += len(items)
        self._q.put(items)

    def _commit_inline(self, batch: list[tuple[Write, asyncio.Future[None] | None]]) -> bool:
        """Commit ``batch`` here, on the loop's thread, if the rules allow (module
        docstring); False: hand it to the writer thread."""
        clog = self.clog
        if (
            clog is None
            or not self.inline_limit
            or self._handed != self._written
            or len(batch) > _INLINE_MAX_WRITES
            or not all(w.small() for w, _f in batch)
            or self.full_reason
            or threading.get_ident() != self._loop_tid
        ):
            return False
        t0 = time.perf_counter()
        if t0 < self._inline_off_until or self._wlock.locked():
            return False  # (the writer may take the lock first: a short wait, not a long one)
        first = clog.commits == 0
        try:
            self._apply_commit(batch, False, [])
        except Exception:
            return False  # nothing committed: the writer redoes it and handles the error
        took = time.perf_counter() - t0
        if took > self.inline_limit:
            self._inline_off_until = t0 + took + _INLINE_PAUSE
            log.warning(
                "a store commit took %.1f ms on the event loop (over --inline-commit-us %d): "
                "commits go to the writer thread for the next %.0f s",
                took * 1e3,
                round(self.inline_limit * 1e6),
                _INLINE_PAUSE,
            )
        self.commits += 1
        self.committed_ops += len(batch)
        self.inline_commits += 1
        if self.on_commit is not None:
            self.on_commit(took, len(batch))
        self._maybe_refresh_usage()
        if first or self._checkpoint_due(time.monotonic()) == 0.0:
            self._q.put([])  # the writer schedules (or starts) the segment's checkpoint
        results: list[tuple[asyncio.Future[None], BaseException | None]] = [
            (f, None) for _w, f in batch if f is not None
        ]
        if results:
            # call_soon, as the writer's call_soon_threadsafe: after the callbacks of
            # every earlier commit, so waiters still hear of commits in their order
            assert self._loop is not None
            self._loop.call_soon(_resolve_all, results)
        return True

    def barrier(self) -> asyncio.Future[None]:
        """A future resolved once every write queued before it has committed."""
        return self.commit(_Puts([]))

    def write_now(self, *writes: Write) -> None:
        """Apply writes synchronously (start-up and tests only: blocks on fsync)."""
        self._apply_commit([(w, None) for w in writes], False, [])

    def _apply_commit(
        self,
        batch: list[tuple[Write, asyncio.Future[None] | None]],
        refuse_appends: bool,
        failed: list[tuple[asyncio.Future[None] | None, BaseException]],
    ) -> None:
        """Apply ``batch`` in one write transaction and commit it; with a commit log,
        its record is written (and durable) before LMDB commits (commitlog.py, rule 1).
        Writes refused while full go to ``failed``. Raises what LMDB or the log raise."""
        clog = self.clog
        with self._wlock:
            txn = self.env.begin(write=True)
            lsn = 0
            try:
                t = Recorder(txn, self._db_index) if clog is not None else txn
                for w, fut in batch:
                    if refuse_appends and w.refused_when_full():
                        failed.append((fut, StoreFullError(self._full_message())))
                        continue
                    w.apply(t, self)
                if clog is not None and t.parts:
                    lsn = clog.append_parts(COMMIT, t.parts)
                    self._after_write()
            except BaseException:
                txn.abort()
                raise
            try:
                txn.commit()
            except BaseException:
                if lsn:
                    assert clog is not None
                    try:
                        clog.void(lsn)
                    except OSError as exc:  # pragma: no cover - the log's disk failed too
                        log.critical("cannot void logged commit %d: %s", lsn, exc)
                        if self.on_fatal is not None:
                            self.on_fatal(exc)
                raise

    # ----------------------------------------------------------- checkpoints
    def _checkpoint_due(self, now: float) -> float | None:
        """Seconds until the next checkpoint is due (0: now); None: none pending."""
        c = self.clog
        if c is None or c.commits == 0 or not self._ckpt_idle.is_set() or self._ckpt_failed:
            return None
        if c.seg_bytes >= self.checkpoint_bytes:
            return 0.0
        return max(0.0, self.checkpoint_interval - (now - self._seg_started))

    def _start_checkpoint(self) -> None:
        """On the writer thread, between commits: pin the last commit, begin the next
        segment at it (its header goes with its first record) and have the
        checkpointer sync the data file (rule 2)."""
        c = self.clog
        assert c is not None
        with self._wlock:
            self._pins.append(self.env.begin())
            # The file about to be reused holds a dead segment; one that a burst grew
            # far beyond a checkpoint's worth gives the room back (a small disk).
            c.trim(1 - c.file, self.checkpoint_bytes)
            c.begin_segment(1 - c.file, self._read_meta(), durable=False, defer=True)
            self._ckpt_idle.clear()
            self._ckpt_synced.clear()
            self._seg_started = time.monotonic()
            base = c.base
        self._ckpt_q.put(base)

    def _checkpointer(self) -> None:
        while True:
            base = self._ckpt_q.get()
            if base is None:
                return
            t0 = time.perf_counter()
            try:
                os.fdatasync(self._data_fd)
            except OSError as exc:
                # The data file's pages may not be on disk: the log must keep the
                # segment before, so no checkpoint follows (and no segment file is
                # reused); the next start redoes the log.
                self._ckpt_failed = exc
                self._ckpt_synced.set()
                self._ckpt_idle.set()
                log.critical("checkpoint of the store failed (%s): it stops taking writes", exc)
                if self.on_fatal is not None:
                    self.on_fatal(exc)
                return
            if self.on_fsync is not None:
                self.on_fsync(time.perf_counter() - t0)
            with self._wlock:
                assert self.clog is not None
                self.clog.pending_durable = base  # written with the writer's next record
                self._ckpt_synced.set()
            self._q.put([])  # wake the writer: it writes the DURABLE record if idle

    def _after_write(self) -> None:
        """After a log write (holding the write lock): once the checkpoint's DURABLE
        record is on disk, the pins of older bases go and the next checkpoint may
        start."""
        c = self.clog
        if c is not None and c.durable_written:
            c.durable_written = False
            for pin in self._pins[:-1]:
                pin.abort()
            del self._pins[:-1]
            self.checkpoints += 1
            self._ckpt_idle.set()

    def _flush_pending(self) -> None:
        """Write what waits for a record that did not come (the writer is idle)."""
        c = self.clog
        if c is None or (c.pending_durable is None and c.pending_header is None):
            return
        with self._wlock:
            try:
                c.flush_pending()
            except OSError as exc:  # pragma: no cover - the log's disk failed
                log.critical("cannot write to the commit log: %s", exc)
                if self.on_fatal is not None:
                    self.on_fatal(exc)
                return
            self._after_write()

    def _checkpoint_now(self) -> None:
        """A checkpoint made on the calling thread (close, before the map grows): sync,
        begin a segment durable from the start, keep one pin at it."""
        c = self.clog
        assert c is not None
        self._ckpt_synced.wait()
        if self._ckpt_failed is not None:
            raise OSError(f"an earlier checkpoint failed: {self._ckpt_failed}")
        with self._wlock:
            # First what the last checkpoint left pending (its header, its DURABLE
            # record): the segment begun below overwrites the other file.
            c.flush_pending()
            self._after_write()
            os.fdatasync(self._data_fd)
            c.begin_segment(1 - c.file, self._read_meta(), durable=True)
            for pin in self._pins:
                pin.abort()
            self._pins = [self.env.begin()]
            self._seg_started = time.monotonic()
            self.checkpoints += 1

    # ---------------------------------------------------------------- reads
    def _get(self, db: int, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            v = txn.get(key, db=self.dbs[db])
            return bytes(v) if v is not None else None

    def _scan(self, db: int, prefix: bytes, limit: int = 1 << 62) -> list[tuple[bytes, bytes]]:
        """Keys (and values) starting with ``prefix``, in order, at most ``limit``."""
        out: list[tuple[bytes, bytes]] = []
        with self.env.begin(buffers=False) as txn:
            cur = txn.cursor(db=self.dbs[db])
            if not cur.set_range(prefix):
                return out
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                out.append((k, v))
                if len(out) >= limit:
                    break
        return out

    # -------------------------------------------------------------- writer
    def _run(self) -> None:
        q = self._q
        last_sync = time.monotonic()
        periodic = self.sync_mode != "always"
        stop = False
        while not stop:
            try:
                timeout = self.sync_interval if periodic else self._checkpoint_due(time.monotonic())
                first = q.get(timeout=timeout)
            except queue.Empty:
                first = None
            batch: list[Any] = []
            if first is _STOP:
                stop = True
            elif first is not None:
                batch.extend(first)
            while len(batch) < self.max_commit_batch:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    continue
                batch.extend(item)
            if batch:
                t0 = time.perf_counter()
                self._commit(batch)
                if self.on_commit is not None:
                    self.on_commit(time.perf_counter() - t0, len(batch))
                self._written += len(batch)  # after the waiters' callbacks were queued
            self._flush_pending()
            if not stop and self._checkpoint_due(time.monotonic()) == 0.0:
                self._start_checkpoint()
            if periodic and (stop or time.monotonic() - last_sync >= self.sync_interval):
                try:
                    t0 = time.perf_counter()
                    self.env.sync(True)
                    if self.on_fsync is not None:
                        self.on_fsync(time.perf_counter() - t0)
                except lmdb.Error as exc:  # pragma: no cover - disk failure
                    log.error("periodic fsync failed: %s", exc)
                last_sync = time.monotonic()

    def _commit(self, batch: list[tuple[Write, asyncio.Future[None] | None]]) -> None:
        refuse_appends = bool(self.full_reason)
        results: list[tuple[asyncio.Future[None], BaseException | None]] = []
        while True:
            failed: list[tuple[asyncio.Future[None] | None, BaseException]] = []
            try:
                self._apply_commit(batch, refuse_appends, failed)
            except _FATAL_OR_WRAPPED as exc:
                # py-lmdb sometimes wraps an LMDB error from a cursor call in a
                # SystemError ("returned a result with an exception set"): the same.
                if isinstance(exc, SystemError) and not isinstance(exc.__cause__, lmdb.Error):
                    self._write_failed(batch, results, exc)
                    break
                log.critical("store commit failed: LMDB reports its structure corrupt: %s", exc)
                for _w, fut in batch:
                    if fut is not None:
                        results.append((fut, StoreFullError(f"store is corrupt: {exc}")))
                if self.on_fatal is not None:
                    self.on_fatal(exc)
                break
            except lmdb.MapFullError as exc:
                if self.map_bytes < self.max_bytes and self._grow_map():
                    continue  # retry the same batch in the larger map
                if not self._on_full(exc, refuse_appends, batch, results):
                    break
                refuse_appends = True
                continue
            except (lmdb.DiskError, OSError, lmdb.Error) as exc:
                if not self._on_full(exc, refuse_appends, batch, results):
                    break
                refuse_appends = True
                continue
            except Exception as exc:
                # Not LMDB's: a bug in a write. The writer must outlive it (a dead
                # writer thread wedges every later commit): this batch fails, loudly.
                self._write_failed(batch, results, exc)
                break
            for _w, fut in batch:
                if fut is None:
                    continue
                bad = next((e for f, e in failed if f is fut), None)
                results.append((fut, bad))
            self.commits += 1
            self.committed_ops += len(batch)
            break
        self._maybe_refresh_usage()
        if results and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(_resolve_all, results)
            except RuntimeError:  # loop closed during shutdown
                pass

    def _write_failed(
        self,
        batch: list[tuple[Write, asyncio.Future[None] | None]],
        results: list[tuple[asyncio.Future[None], BaseException | None]],
        exc: BaseException,
    ) -> None:
        log.error(
            "store commit failed (%s: %s); its writes are refused",
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        for _w, fut in batch:
            if fut is not None:
                results.append((fut, StoreFullError(f"store write failed: {exc}")))

    def _on_full(
        self,
        exc: BaseException,
        already_refusing: bool,
        batch: list[tuple[Write, asyncio.Future[None] | None]],
        results: list[tuple[asyncio.Future[None], BaseException | None]],
    ) -> bool:
        """A commit failed for want of room: True to retry without appends, False when
        even that failed (every waiter then hears the error; serving goes on)."""
        if already_refusing:
            log.error("store commit failed even without appends: %s", exc)
            for _w, fut in batch:
                if fut is not None:
                    results.append((fut, StoreFullError(f"store write failed: {exc}")))
            return False
        self.full_reason = f"{type(exc).__name__}: {exc}"
        log.warning("store full (%s); refusing publishes, delivery continues", exc)
        return True

    def _grow_map(self) -> bool:
        """Double the map (up to ``max_bytes``) on the loop's thread; True once done."""
        new = min(self.max_bytes, self.map_bytes * 2)
        loop = self._loop
        done = threading.Event()
        outcome: list[BaseException | None] = []

        def resize() -> None:
            try:
                self.env.set_mapsize(new)
                outcome.append(None)
            except lmdb.Error as exc:  # pragma: no cover - the kernel refused the mapping
                outcome.append(exc)
            done.set()

        if loop is None or loop.is_closed():
            return False
        if self.clog is not None:
            # No transaction may be open while LMDB remaps: checkpoint, so the pins
            # can go (no commit happens until the map has grown), and pin again after.
            try:
                self._checkpoint_now()
            except OSError as exc:
                log.error("cannot grow the store's map: no checkpoint before it (%s)", exc)
                return False
            for pin in self._pins:
                pin.abort()
            self._pins = []
        try:
            loop.call_soon_threadsafe(resize)
        except RuntimeError:  # loop closed during shutdown
            return False
        ok = done.wait(_RESIZE_WAIT)
        if self.clog is not None:
            self._pins = [self.env.begin()]
        if not ok or outcome[0] is not None:
            log.error("cannot grow the store's map to %d bytes: %s", new, outcome or "timeout")
            return False
        log.info("store map grown from %d to %d bytes", self.map_bytes, new)
        self.map_bytes = new
        self.map_grows += 1
        return True

    def _full_message(self) -> str:
        return (
            f"store is full ({self.full_reason}); publishes are refused until consumers "
            "finish messages, or restart with a larger --max-store-bytes, a smaller "
            "--store-reserve-bytes, or more free disk"
        )

    def _maybe_refresh_usage(self) -> None:
        now = time.monotonic()
        # Far from full, a check every 50 ms is enough; near it (less than
        # _CLOSE_MARGIN left above the reserve) every commit is checked, since a fast
        # disk can write more than the reserve in 50 ms.
        if (
            now - self._last_space_check < 0.05
            and not self.full_reason
            and self._margin > _CLOSE_MARGIN
        ):
            return
        self._last_space_check = now
        try:
            self._refresh_usage()
        except STRUCTURE_ERRORS as exc:  # from the writer thread: the store's end
            log.critical("LMDB reports its structure corrupt: %s", exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)

    def _refresh_usage(self) -> None:
        with self.env.begin() as txn:
            pages = 0
            for db in self.dbs:
                st = txn.stat(db)
                pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        main = self.env.stat()
        psize = main["psize"]
        pages += main["branch_pages"] + main["leaf_pages"] + main["overflow_pages"]
        file_pages = self.env.info()["last_pgno"] + 1
        if pages > file_pages:
            # LMDB keeps these counts in each tree's record and checks none of them: a
            # flipped bit there (make chaos, bitflip seed 2: 2^60 pages) made the store
            # look full for good, refusing every publish and the partner's batches.
            raise lmdb.CorruptedError(
                f"the trees' page counts add up to {pages} pages, more than the "
                f"{file_pages} of the data file"
            )
        self.used_bytes = pages * psize
        try:
            st = os.statvfs(self.path)
            disk_free: int | None = st.f_bavail * st.f_frsize
        except OSError:
            disk_free = None
        reusable = reusable_bytes(file_pages, pages, psize)
        margin = self.max_bytes - self.reserve_bytes - self.used_bytes
        if disk_free is not None:
            margin = min(margin, disk_free + reusable - self.reserve_bytes)
        self._margin = margin
        reason = full_reason(
            used_pages=pages,
            file_pages=file_pages,
            page_size=psize,
            max_bytes=self.max_bytes,
            reserve_bytes=self.reserve_bytes,
            disk_free=disk_free,
        )
        if reason and not self.full_reason:
            log.warning("store full: %s; refusing publishes", reason)
        elif not reason and self.full_reason:
            log.info("store has room again; accepting publishes")
        self.full_reason = reason


def _meta_psize(meta: bytes) -> int:
    return len(meta) // 2


def _write_meta(data: Path, meta: bytes) -> None:
    """Write a checkpoint's copy of LMDB's two meta pages back (durably)."""
    fd = os.open(data, os.O_WRONLY)
    try:
        if os.pwrite(fd, meta, 0) != len(meta):  # pragma: no cover - a regular file
            raise OSError(f"short write of the meta pages to {data}")
        os.fsync(fd)
    finally:
        os.close(fd)


def reusable_bytes(file_pages: int, used_pages: int, page_size: int) -> int:
    """LMDB's free list in bytes: the data file's pages less the live ones and the two
    meta pages (reused before the file grows)."""
    return max(0, file_pages - 2 - used_pages) * page_size


def full_reason(
    *,
    used_pages: int,
    file_pages: int,
    page_size: int,
    max_bytes: int,
    reserve_bytes: int,
    disk_free: int | None,
) -> str:
    """Why appends must be refused ("" when there is room): a pure rule on LMDB's numbers.

    * ``used_pages``: pages the databases hold (every named one plus the main one);
      ``file_pages``: pages the data file has (``env.info()["last_pgno"] + 1``); the
      difference, less the two meta pages, is LMDB's free list: pages it reuses before
      it grows the file. Finishing messages frees pages, never file bytes (an LMDB
      file does not shrink), so those pages are room, also after a restart.
    * The cap: live pages above ``max_bytes - reserve_bytes`` are full
      (``--max-store-bytes``).
    * The disk: room is the disk's free space (``disk_free``; None if unknown: not
      checked) plus the free list; below ``reserve_bytes`` is full
      (``--store-reserve-bytes``, kept for FINs and cleanup, which still commit).
    """
    used = used_pages * page_size
    if used > max_bytes - reserve_bytes:
        return (
            f"store holds {used} bytes of its {max_bytes}-byte cap (--max-store-bytes) "
            f"less the {reserve_bytes}-byte reserve (--store-reserve-bytes)"
        )
    if disk_free is None:
        return ""
    reusable = reusable_bytes(file_pages, used_pages, page_size)
    room = disk_free + reusable
    if room < reserve_bytes:
        return (
            f"disk has {disk_free} bytes free and the store file {reusable} reusable, "
            f"under the {reserve_bytes}-byte reserve (--store-reserve-bytes)"
        )
    return ""


def _resolve_all(results: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for fut, exc in results:
        if fut.done():
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)


# ============================================================ typed views
@dataclass
class LogRead:
    """What a checked read returns: the good records (seq, record) with their
    crc32c, and the seqs whose stored copy failed its checksum (never returned)."""

    rows: list[tuple[int, bytes]] = field(default_factory=list)
    crcs: list[int] = field(default_factory=list)
    corrupt: list[int] = field(default_factory=list)


@dataclass
class Integrity:
    """Checksum failures seen (each bad key counted once), repairs and quarantines."""

    failures: int = 0
    repairs: int = 0
    quarantined: int = 0
    missing: int = 0  # records reads expected and the log no longer had (mark_missing)
    bad: set[tuple[int, bytes]] = field(default_factory=set)

    def saw_bad(self, db: int, key: bytes) -> None:
        if (db, key) not in self.bad:
            self.bad.add((db, key))
            self.failures += 1
            log.error(
                "checksum failure in %s at key %s: this copy is never delivered, replicated or "
                "counted; repairing it from the partner",
                sc.DB_NAMES[db],
                key.hex(),
            )


# How many records failing their check ``_good_edge`` passes over before it gives up.
_EDGE_SCAN = 1000


def _good_edge(
    s: Store, db: int, cur: Any, ok: bool, prefix: bytes, *, forward: bool
) -> bytes | None:
    """From the cursor's record on (``ok``: it is on one), the key of the first record
    under ``prefix`` whose check holds, moving forward or back; records failing it are
    logged and passed over (not marked bad here: the seq may be written again, and a
    read or the scrub that meets a bad record reports it). None: no good record
    under ``prefix``.
    A key that does not even decode raises (``MALFORMED``: at start-up, a corrupt
    store, re-silvered from the partner): the copy it held cannot be named."""
    decode = sc.unpack_seq_key if db == sc.MSGS else sc.split_sb_msg_key
    for _ in range(_EDGE_SCAN):
        if not ok:
            return None
        key = bytes(cur.key())
        if not key.startswith(prefix):
            return None
        decode(key)
        if _holds(key, bytes(cur.value())):
            return key
        log.warning(
            "passed over the record at %s key %s at the end of a range: it fails its check",
            sc.DB_NAMES[db],
            key.hex(),
        )
        ok = cur.next() if forward else cur.prev()
    return None


def _stored_name(raw: bytes) -> str:
    """A topic or channel name read back from the store; ``ValueError`` (``MALFORMED``:
    at start-up a corrupt store) when a flipped bit made it one no client could have
    created, which the partner would refuse in every batch naming it."""
    name = raw.decode()
    if not is_valid_name(name):
        raise ValueError(f"the store holds an invalid topic or channel name {name[:80]!r}")
    return name


def _holds(key: bytes, value: bytes) -> bool:
    """Whether a stored record (``msgs``, ``sb_msgs``) passes its check at ``key``."""
    if len(value) < 4:
        return False
    c, rec = sc.split_record(value)
    return bool(crc32c(rec) == sc.keyed(c, key))


def _checked_rows(
    s: Store, db: int, items: list[tuple[int, bytes, bytes]], stop_at_corrupt: bool
) -> LogRead:
    """(seq, key, stored value) -> LogRead, verifying every value's crc32c (the
    batch's checks in two calls: ``checksum``)."""
    out = LogRead()
    if not items:
        return out
    crc_of = sc.crc_of_value
    # A value too short to hold its check fails it (-1, never a crc32c).
    stored = [crc_of(v)[0] if len(v) >= 4 else -1 for _, _, v in items]
    recs = [bytes(v[4:]) for _, _, v in items]
    own = checksum.keyed_many([c & 0xFFFFFFFF for c in stored], [k for _, k, _ in items])
    got = checksum.crcs(recs)
    if own == got and -1 not in stored:  # the common case: all good
        out.rows = [(q, r) for (q, _, _), r in zip(items, recs, strict=True)]
        out.crcs = got
        return out
    rows, checks = out.rows, out.crcs
    for (seq, key, _), rec, c, g, raw in zip(items, recs, own, got, stored, strict=True):
        if raw < 0 or g != c:
            s.integrity.saw_bad(db, key)
            out.corrupt.append(seq)
            if stop_at_corrupt:
                break
            continue
        rows.append((seq, rec))
        checks.append(c)
    return out


class MessageLog:
    """A topic's records by seq (``msgs``) and the idempotency index (``ids_0/1``).
    Every record is stored with its crc32c and checked on every read."""

    def __init__(self, store: Store) -> None:
        self._s = store

    def append(self, topic_id: int, seq: int, records: list[bytes], crcs: list[int]) -> Write:
        """Records at seqs ``seq``, ``seq + 1``, ... (their ids indexed); refused when full."""
        return _Append(topic_id, seq, records, crcs)

    def rewrite(self, topic_id: int, seq: int, record: bytes, crc: int) -> Write:
        """A good copy in place of a stored record that failed its checksum."""
        key = sc.seq_key(topic_id, seq)
        return _put(sc.MSGS, key, sc.pack_record(key, crc, record))

    def mark_missing(self, topic_id: int, seqs: list[int]) -> list[int]:
        """Seqs a read expected and the log no longer has (no failed append explains
        them): bad, like a record failing its checksum, until repaired or confirmed
        absent on both brokers; returns those not already known to be."""
        integ, db = self._s.integrity, sc.MSGS
        new = [q for q in seqs if (db, sc.seq_key(topic_id, q)) not in integ.bad]
        for q in new:
            integ.bad.add((db, sc.seq_key(topic_id, q)))
        integ.missing += len(new)
        return new

    def forget_bad(self, topic_id: int, seq: int) -> None:
        self._s.integrity.bad.discard((sc.MSGS, sc.seq_key(topic_id, seq)))

    def quarantine(self, topic: str, topic_id: int, seq: int) -> Write:
        """Move a record with no good copy anywhere aside (the seq then reads as a gap)."""
        return _Quarantine(sc.MSGS, sc.seq_key(topic_id, seq), sc.quarantine_key(True, topic, seq))

    def delete_range(self, topic_id: int, lo: int, hi: int) -> Write:
        """Delete the records with lo <= seq < hi (cleanup below every channel's floor)."""
        return _DeleteRange(sc.MSGS, sc.seq_key(topic_id, lo), sc.seq_key(topic_id, hi))

    def drop_topic(self, topic_id: int) -> Write:
        return _drop(sc.MSGS, sc.id_prefix(topic_id))

    def read(
        self,
        topic_id: int,
        from_seq: int,
        to_seq: int,
        limit: int,
        max_bytes: int = 0,
        *,
        stop_at_corrupt: bool = True,
    ) -> LogRead:
        """Up to ``limit`` good records with from_seq <= seq < to_seq; with ``max_bytes``,
        stop once that many record bytes are read (always at least one record). A
        record failing its checksum ends the read (``corrupt`` names it) unless
        ``stop_at_corrupt`` is False (then it is skipped)."""
        raw: list[tuple[int, bytes, bytes]] = []
        size = 0
        if from_seq >= to_seq or limit <= 0:
            return LogRead()
        s = self._s
        end = sc.seq_key(topic_id, to_seq)
        unpack = sc.unpack_seq_key
        with s.env.begin(buffers=False) as txn:
            cur = txn.cursor(db=s.dbs[sc.MSGS])
            if not cur.set_range(sc.seq_key(topic_id, from_seq)):
                return LogRead()
            for k, v in cur:
                if k >= end:
                    break
                raw.append((unpack(k)[1], k, v))
                size += len(v)
                if len(raw) >= limit or (max_bytes and size >= max_bytes):
                    break
        return _checked_rows(s, sc.MSGS, raw, stop_at_corrupt)

    def get(self, topic_id: int, seq: int) -> tuple[bytes, int] | None:
        """(record, crc32c) of one good record; None if absent or corrupt."""
        res = self.read(topic_id, seq, seq + 1, 1)
        if res.rows and res.rows[0][0] == seq:
            return res.rows[0][1], res.crcs[0]
        return None

    def seq_range(self, topic_id: int) -> tuple[int | None, int | None]:
        """(lowest, highest) seq of a good record held for the topic (None, None when
        it holds none). A record failing its check at either end is passed over
        (``_good_edge``): a flipped bit in a key must not move the topic's head (the
        stored check covers the key, ``schema.keyed``)."""
        s = self._s
        prefix = sc.id_prefix(topic_id)
        first = last = None
        with s.env.begin() as txn:
            cur = txn.cursor(db=s.dbs[sc.MSGS])
            ok = cur.set_range(prefix)
            key = _good_edge(s, sc.MSGS, cur, ok, prefix, forward=True)
            if key is not None:
                first = sc.unpack_seq_key(key)[1]
            ok = cur.prev() if cur.set_range(sc.id_prefix(topic_id + 1)) else cur.last()
            key = _good_edge(s, sc.MSGS, cur, ok, prefix, forward=False)
            if key is not None:
                last = sc.unpack_seq_key(key)[1]
        return first, last

    def known_ids(self, ids: list[bytes]) -> set[bytes]:
        """Which of ``ids`` were stored within the idempotency window."""
        s = self._s
        found: set[bytes] = set()
        with s.env.begin(buffers=False) as txn:
            for db in (s.dbs[sc.IDS0], s.dbs[sc.IDS1]):
                found.update(k for k, _ in txn.cursor(db=db).getmulti(ids))
        return found

    def rotate_ids(self) -> Write:
        """Forget the older idempotency generation (it becomes the current one)."""
        return _RotateIds(1 - self._s.ids_gen)


class Catalog:
    """Durable topics and channels (``catalog``, with ``floors``) and the id allocator."""

    def __init__(self, store: Store) -> None:
        self._s = store

    def put_topic(self, name: str, topic_id: int, paused: bool) -> Write:
        return _put(sc.CATALOG, sc.catalog_topic_key(name), sc.pack_catalog(topic_id, paused))

    def delete_topic(self, name: str, topic_id: int) -> Write:
        """The topic's entry and its channels' entries (their progress: ``ChannelProgress.drop``)."""
        return _Many(
            [
                _delete(sc.CATALOG, sc.catalog_topic_key(name)),
                _drop(sc.CATALOG, sc.catalog_channels_prefix(topic_id)),
            ]
        )

    def put_channel(
        self, topic_id: int, name: str, channel_id: int, paused: bool, created_ns: int
    ) -> Write:
        return _put(
            sc.CATALOG,
            sc.catalog_channel_key(topic_id, name),
            sc.pack_channel(channel_id, paused, created_ns),
        )

    def delete_channel(self, topic_id: int, name: str) -> Write:
        return _delete(sc.CATALOG, sc.catalog_channel_key(topic_id, name))

    def put_tombstone(self, topic: str, channel: str, deleted_ns: int) -> Write:
        """Channel ``topic/channel`` was deleted at ``deleted_ns`` (see pair/catalog.py)."""
        return _put(sc.META, sc.tomb_key(topic, channel), sc.pack_q(deleted_ns))

    def tombstones(self) -> dict[tuple[str, str], int]:
        """(topic, channel) -> when it was deleted (ns)."""
        return {sc.split_tomb_key(k): sc.unpack_q(v) for k, v in self._s._scan(sc.META, sc.TOMB)}

    def put_next_ids(self, next_topic: int, next_channel: int) -> Write:
        """The allocator's state: ids of deleted topics may still own keys, never reuse."""
        return _put(sc.META, sc.NEXT_IDS, sc.pack_ids(next_topic, next_channel))

    def next_ids(self) -> tuple[int, int]:
        """(next free topic id, next free channel id)."""
        top_t = top_c = 0
        for k, v in self._s._scan(sc.CATALOG, b""):
            ident = sc.unpack_catalog(v)[0]
            if k.startswith(b"T"):
                top_t = max(top_t, ident)
            else:
                top_c = max(top_c, ident)
        stored = self._s._get(sc.META, sc.NEXT_IDS)
        if stored:
            st_t, st_c = sc.unpack_ids(stored)
            top_t, top_c = max(top_t, st_t), max(top_c, st_c)
        return top_t + 1, top_c + 1

    def load(self) -> dict[str, TopicMeta]:
        """Every durable topic with its channels, floors and retained seq range."""
        s = self._s
        topics: dict[str, TopicMeta] = {}
        by_id: dict[int, TopicMeta] = {}
        for k, v in s._scan(sc.CATALOG, b"T"):
            tid, paused = sc.unpack_catalog(v)
            t = TopicMeta(id=tid, name=_stored_name(k[1:]), paused=paused)
            topics[t.name] = t
            by_id[tid] = t
        for k, v in s._scan(sc.CATALOG, b"C"):
            tid, name = sc.split_catalog_channel_key(k)
            _stored_name(name.encode())
            cid, paused, created_ns = sc.unpack_channel(v)
            t2 = by_id.get(tid)
            if t2 is None:
                continue
            t2.channels[name] = ChannelMeta(
                id=cid,
                name=name,
                paused=paused,
                floor=s.progress.floor(cid),
                created_ns=created_ns,
            )
        for t in topics.values():
            first, last = s.log.seq_range(t.id)
            floors = [c.floor for c in t.channels.values()]
            t.next_seq = max([last + 1 if last is not None else 0, *floors])
            t.first_seq = first if first is not None else t.next_seq
            t.hwm = s.meta.hwm(t.id)
        return topics


class ProgressBatch:
    """Progress writes of one channel, collected and then committed as one ``Write``."""

    __slots__ = ("_cid", "items")

    def __init__(self, channel_id: int) -> None:
        self._cid = channel_id
        self.items: list[tuple[int, bytes, bytes | None]] = []

    def floor(self, seq: int) -> None:
        self.items.append((sc.FLOORS, sc.floor_key(self._cid), sc.pack_q(seq)))

    def finished(self, seq: int) -> None:
        self.items.append((sc.FINS, sc.seq_key(self._cid, seq), b""))

    def forget_finished(self, seq: int) -> None:
        self.items.append((sc.FINS, sc.seq_key(self._cid, seq), None))

    def state(self, seq: int, attempts: int, due_ns: int) -> None:
        self.items.append((sc.STATES, sc.seq_key(self._cid, seq), sc.pack_state(attempts, due_ns)))

    def forget_state(self, seq: int) -> None:
        self.items.append((sc.STATES, sc.seq_key(self._cid, seq), None))

    def write(self) -> Write | None:
        return _Puts(self.items) if self.items else None


class ChannelProgress:
    """A channel's floor (``floors``), finished seqs above it (``fins``) and requeue
    states (``states``)."""

    def __init__(self, store: Store) -> None:
        self._s = store

    def batch(self, channel_id: int) -> ProgressBatch:
        return ProgressBatch(channel_id)

    def floor(self, channel_id: int) -> int:
        raw = self._s._get(sc.FLOORS, sc.floor_key(channel_id))
        return sc.unpack_q(raw) if raw else 0

    def finished(self, channel_id: int) -> list[int]:
        return [
            sc.unpack_seq_key(k)[1] for k, _ in self._s._scan(sc.FINS, sc.id_prefix(channel_id))
        ]

    def states(self, channel_id: int) -> dict[int, tuple[int, int]]:
        return {
            sc.unpack_seq_key(k)[1]: sc.unpack_state(v)
            for k, v in self._s._scan(sc.STATES, sc.id_prefix(channel_id))
        }

    def reset(self, channel_id: int, floor: int) -> Write:
        """Everything below ``floor`` finished, nothing above (a channel emptied)."""
        p = sc.id_prefix(channel_id)
        return _Many(
            [
                _put(sc.FLOORS, sc.floor_key(channel_id), sc.pack_q(floor)),
                _drop(sc.FINS, p),
                _drop(sc.STATES, p),
            ]
        )

    def drop(self, channel_id: int) -> Write:
        """Every progress record of a deleted channel (dead letters included)."""
        p = sc.id_prefix(channel_id)
        return _Many(
            [
                _delete(sc.FLOORS, sc.floor_key(channel_id)),
                _drop(sc.FINS, p),
                _drop(sc.STATES, p),
                _drop(sc.DLQ, p),
            ]
        )


class DeadLetters:
    """A channel's dead letters (``dlq``): (attempts, record) by dead-letter seq, each
    record with its crc32c."""

    def __init__(self, store: Store) -> None:
        self._s = store

    def put(self, channel_id: int, seq: int, attempts: int, record: bytes) -> Write:
        return _put(
            sc.DLQ,
            sc.seq_key(channel_id, seq),
            sc.pack_dlq(sc.seq_key(channel_id, seq), attempts, crc32c(record), record),
        )

    def put_many(self, channel_id: int, items: Iterable[tuple[int, int, bytes]]) -> Write:
        """(seq, attempts, record) of several dead letters."""
        return _Puts(
            [
                (sc.DLQ, k, sc.pack_dlq(k, a, crc32c(r), r))
                for k, a, r in ((sc.seq_key(channel_id, q), a, r) for q, a, r in items)
            ]
        )

    def delete(self, channel_id: int, seq: int) -> Write:
        return _delete(sc.DLQ, sc.seq_key(channel_id, seq))

    def scan(self, channel_id: int) -> tuple[list[tuple[int, int, bytes]], list[int]]:
        """(seq, attempts, record) of every good dead letter, oldest first, and the
        seqs of those that failed their checksum."""
        out = []
        bad = []
        for k, v in self._s._scan(sc.DLQ, sc.id_prefix(channel_id)):
            attempts, c, rec = sc.unpack_dlq(v)
            seq = sc.unpack_seq_key(k)[1]
            if crc32c(rec) != sc.keyed(c, k):
                self._s.integrity.saw_bad(sc.DLQ, k)
                bad.append(seq)
                continue
            out.append((seq, attempts, rec))
        return out, bad

    def quarantine(self, channel_id: int, seq: int) -> Write:
        """Move a dead letter that failed its checksum aside (no other copy exists)."""
        key = sc.seq_key(channel_id, seq)
        return _Quarantine(sc.DLQ, key, b"d" + key)


class _Quarantine(Write):
    """Move one stored value to ``quarantine`` (kept for the operator, never served)."""

    __slots__ = ("db", "key", "qkey")

    def __init__(self, db: int, key: bytes, qkey: bytes) -> None:
        self.db, self.key, self.qkey = db, key, qkey

    def apply(self, txn: Any, s: Store) -> None:
        value = txn.get(self.key, db=s.dbs[self.db])
        if value is None:
            return
        txn.put(self.qkey, value, db=s.dbs[sc.QUARANTINE])
        txn.delete(self.key, db=s.dbs[self.db])
        s.integrity.quarantined += 1
        s.integrity.bad.discard((self.db, bytes(self.key)))
        log.error(
            "quarantined the record at %s key %s: it failed its checksum and no good copy "
            "exists (kept in the store's quarantine, never delivered)",
            sc.DB_NAMES[self.db],
            bytes(self.key).hex(),
        )


@dataclass
class StandbyImage:
    """Everything ``StandbyCopies.load`` finds, for the pair's in-memory index."""

    partner_id: str = ""
    taken: dict[str, int] = field(default_factory=dict)
    held: dict[str, tuple[int, int]] = field(default_factory=dict)  # topic -> (first, last)
    floors: dict[tuple[str, str], int] = field(default_factory=dict)
    finished: list[tuple[str, str, int]] = field(default_factory=list)
    states: list[tuple[str, str, int, tuple[int, int]]] = field(default_factory=list)


class StandbyCopies:
    """The partner's records (``sb_msgs``) and progress (``sb_floors``, ``sb_fins``,
    ``sb_states``) held here, and the pair's bookkeeping (``sb_meta``)."""

    def __init__(self, store: Store) -> None:
        self._s = store

    # writes
    def append(
        self, topic: str, seq: int, records: list[bytes], crcs: list[int], *, index: bool
    ) -> Write:
        return _StandbyAppend(topic, seq, records, crcs, index)

    def rewrite(self, topic: str, seq: int, record: bytes, crc: int) -> Write:
        """A good copy in place of a standby copy that failed its checksum."""
        key = sc.sb_msg_key(topic, seq)
        return _put(sc.SB_MSGS, key, sc.pack_record(key, crc, record))

    def quarantine(self, topic: str, seq: int) -> Write:
        """Move a standby copy with no good copy anywhere aside."""
        return _Quarantine(
            sc.SB_MSGS, sc.sb_msg_key(topic, seq), sc.quarantine_key(False, topic, seq)
        )

    def index_ids(self, ids: list[bytes]) -> Write:
        """Copies the owner confirmed: their ids count as stored (idempotency)."""
        return _IndexIds(ids)

    def put_floor(self, topic: str, channel: str, floor: int) -> Write:
        return _put(sc.SB_FLOORS, sc.sb_channel_key(topic, channel), sc.pack_q(floor))

    def put_finished(self, topic: str, channel: str, seq: int) -> Write:
        return _put(sc.SB_FINS, sc.sb_fin_key(topic, channel, seq), b"")

    def forget_finished(self, topic: str, channel: str, seq: int) -> Write:
        return _delete(sc.SB_FINS, sc.sb_fin_key(topic, channel, seq))

    def put_state(self, topic: str, channel: str, seq: int, attempts: int, due_ns: int) -> Write:
        return _put(
            sc.SB_STATES, sc.sb_fin_key(topic, channel, seq), sc.pack_state(attempts, due_ns)
        )

    def forget_state(self, topic: str, channel: str, seq: int) -> Write:
        return _delete(sc.SB_STATES, sc.sb_fin_key(topic, channel, seq))

    def drop_channel(self, topic: str, channel: str) -> Write:
        key = sc.sb_channel_key(topic, channel)
        return _Many(
            [
                _delete(sc.SB_FLOORS, key),
                _drop(sc.SB_FINS, key + b"\0"),
                _drop(sc.SB_STATES, key + b"\0"),
            ]
        )

    def trim(self, topic: str, lo: int, hi: int) -> Write:
        """Delete the copies with lo <= seq < hi (finished on every partner channel)."""
        return _DeleteRange(sc.SB_MSGS, sc.sb_msg_key(topic, lo), sc.sb_msg_key(topic, hi))

    def drop_topic(self, topic: str) -> Write:
        prefix = sc.sb_topic_prefix(topic)
        return _Many(
            [_drop(db, prefix) for db in (sc.SB_MSGS, sc.SB_FLOORS, sc.SB_FINS, sc.SB_STATES)]
        )

    def drop_all(self) -> Write:
        """Forget every copy (the partner is a new store): keeps only ``partner``."""
        return _Many(
            [_drop(db, b"") for db in (sc.SB_MSGS, sc.SB_FLOORS, sc.SB_FINS, sc.SB_STATES)]
            + [_drop(sc.SB_META, sc.TAKEN)]
        )

    def set_partner(self, partner_id: str) -> Write:
        return _put(sc.SB_META, sc.PARTNER, partner_id.encode())

    def set_taken(self, topic: str, upto: int) -> Write:
        """Every seq of the partner's ``topic`` below ``upto`` was taken over here."""
        return _put(sc.SB_META, sc.taken_key(topic), sc.pack_q(upto))

    # reads
    def read(self, topic: str, lo: int, hi: int, *, stop_at_corrupt: bool = False) -> LogRead:
        """The good copies with lo <= seq < hi (``corrupt``: those failing their checksum)."""
        s = self._s
        prefix = sc.sb_topic_prefix(topic)
        end = sc.sb_msg_key(topic, hi)
        raw: list[tuple[int, bytes, bytes]] = []
        with s.env.begin(buffers=False) as txn:
            cur = txn.cursor(db=s.dbs[sc.SB_MSGS])
            if cur.set_range(sc.sb_msg_key(topic, lo)):
                for k, v in cur:
                    if not k.startswith(prefix) or len(k) != len(prefix) + 8 or k >= end:
                        break
                    raw.append((sc.unpack_q(k[-8:]), k, v))
        return _checked_rows(s, sc.SB_MSGS, raw, stop_at_corrupt)

    def get(self, topic: str, seq: int) -> tuple[bytes, int] | None:
        """(record, crc32c) of one good standby copy; None if absent or corrupt."""
        res = self.read(topic, seq, seq + 1)
        if res.rows:
            return res.rows[0][1], res.crcs[0]
        return None

    def load(self) -> StandbyImage:
        s = self._s
        img = StandbyImage()
        pid = s._get(sc.SB_META, sc.PARTNER)
        img.partner_id = pid.decode() if pid else ""
        for k, v in s._scan(sc.SB_META, sc.TAKEN):
            img.taken[k[len(sc.TAKEN) :].decode()] = sc.unpack_q(v)
        with s.env.begin() as txn:
            # Per topic, the first and last copies whose check holds (a flipped bit in a
            # key fails it: such a copy neither names a topic nor moves one's range).
            cur = txn.cursor(db=s.dbs[sc.SB_MSGS])
            ok = cur.first()
            while ok:
                k = bytes(cur.key())
                base = k[:-8]  # topic + NUL
                good = _good_edge(s, sc.SB_MSGS, cur, ok, base, forward=True)
                if good is not None:
                    name, first = sc.split_sb_msg_key(good)
                    _stored_name(name.encode())
                    if cur.set_range(base + b"\xff" * 8):
                        ok = cur.prev()
                    else:
                        ok = cur.last()
                    end = _good_edge(s, sc.SB_MSGS, cur, ok, base, forward=False)
                    assert end is not None  # at worst ``good`` itself
                    img.held[name] = (first, sc.split_sb_msg_key(end)[1])
                ok = cur.set_range(k[:-9] + b"\x01")
        for k, v in s._scan(sc.SB_FLOORS, b""):
            t, c = sc.split_sb_channel_key(k)
            _stored_name(t.encode())
            _stored_name(c.encode())
            img.floors[(t, c)] = sc.unpack_q(v)
        for k, _v in s._scan(sc.SB_FINS, b""):
            img.finished.append(sc.split_sb_fin_key(k))
        for k, v in s._scan(sc.SB_STATES, b""):
            t, c, q = sc.split_sb_fin_key(k)
            img.states.append((t, c, q, sc.unpack_state(v)))
        return img


class NodeMeta:
    """This data dir's identity and small settings (``meta``)."""

    def __init__(self, store: Store) -> None:
        self._s = store

    def node_id(self) -> str:
        """This node's stable id, created at first start and kept in the store."""
        s = self._s
        value = s._get(sc.META, sc.NODE_ID)
        if value is None:
            value = uuid.uuid4().hex[:16].encode()
            s.write_now(_put(sc.META, sc.NODE_ID, value))
        return bytes(value).decode()

    def epoch(self) -> int:
        raw = self._s._get(sc.META, sc.EPOCH)
        return sc.unpack_q(raw) if raw else 0

    def put_epoch(self, epoch: int) -> Write:
        return _put(sc.META, sc.EPOCH, sc.pack_q(epoch))

    def hwm(self, topic_id: int) -> int:
        raw = self._s._get(sc.META, sc.hwm_key(topic_id))
        return sc.unpack_q(raw) if raw else 0

    def put_hwm(self, topic_id: int, hwm: int) -> Write:
        return _put(sc.META, sc.hwm_key(topic_id), sc.pack_q(hwm))

    def catalog_ready(self) -> bool:
        """Whether this store ever had the pair's catalog (a new or wiped one has not)."""
        return self._s._get(sc.META, sc.CATALOG_READY) is not None

    def put_catalog_ready(self) -> Write:
        return _put(sc.META, sc.CATALOG_READY, b"1")
