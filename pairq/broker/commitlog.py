"""The store's commit log: one flush per durable commit, in front of LMDB.

LMDB makes a commit durable with two flushes in a row: its data pages
(``fdatasync``), then its meta page (an ``O_DSYNC`` write), so that the meta page
never points at pages the disk does not hold yet. Two brokers of a pair on one disk
then wait for four flushes per publish. With this log, a commit's changes (its puts,
deletes and drops, as ``Recorder`` saw them) are written to a log segment with one
``O_DSYNC`` write; LMDB itself commits without syncing and is made durable by a
checkpoint now and then. The rules, which are the recovery argument:

1. **Log first.** A write transaction's record is written (``O_DSYNC``) before LMDB
   commits it, and nobody hears of a commit before both. So every commit anyone was
   told about is in the log, and no LMDB commit exists that the log does not hold
   (a commit that failed after its record was written gets a VOID record).
2. **Checkpoint.** At a commit C the writer opens a read transaction at C (the *pin*:
   LMDB reuses no page that a reader can still see, so C's pages stay as they are in
   the file), copies the two meta pages as they are at C, and starts a new segment
   whose header holds C's LSN and that copy. A second thread then ``fdatasync``s the
   data file; once it returns, C's pages and meta are on disk, and a DURABLE record
   naming C is written. Only then is the previous pin let go. A new checkpoint starts
   only after the previous one is DURABLE, so at most two segments matter and the
   older one's base is always durable.
3. **Recovery** starts from the newest segment whose base is durable (its header
   says so, or it holds the DURABLE record of its base). If records follow that
   base, the base's meta pages are written back into the data file, which returns
   LMDB to exactly C whatever the kernel wrote back after it (C's pages were pinned,
   so none of them was overwritten), and every record after C is redone in LSN
   order, in one transaction; then the data file is synced and a fresh segment, durable
   from the start, is begun. If nothing follows the base, LMDB's file is C already
   (rule 1) and is opened as it is.
4. **Records** carry an LSN, one more than the record before, and a crc32c. A record
   that is torn (bad crc, short) or stale (an LSN that does not follow: segment files
   are reused) ends the segment. A gap between segments is corruption.

This module is the log's format and its file handling; ``Store`` (store.py) drives
it from its writer thread.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c

from pairq.broker.checksum import crc as crc32c

__all__ = [
    "CommitLog",
    "CommitLogError",
    "Recorder",
    "Segment",
    "apply_record",
    "plan_recovery",
    "read_segment",
]

MAGIC = b"PAIRQCL1"
FILES = ("commit-a.log", "commit-b.log")
# A segment header: magic, generation, base LSN, flags, meta length, crc; then the
# meta pages. Records start at the first 4 KiB boundary after it.
_HDR = struct.Struct("<8sQQII")
_HDR_CRC = struct.Struct("<I")
FLAG_DURABLE = 1  # the base was synced before the header was written
# A record: payload length, crc32c (of the LSN, kind and payload), LSN, kind.
_REC = struct.Struct("<IIQB")
_REC_CRC = struct.Struct("<QB")
COMMIT, VOID, DURABLE = 1, 2, 3
# Ops inside a COMMIT payload.
_PUT = struct.Struct("<BBII")  # op, db, key length, value length; then key, value
_DEL = struct.Struct("<BBI")  # op, db, key length; then key
_DROP = struct.Struct("<BB")  # op, db
OP_PUT, OP_DEL, OP_DROP = 0x50, 0x44, 0x58  # P, D, X
_Q = struct.Struct("<Q")
_MAX_IOV = 1000  # below Linux's IOV_MAX (1024), with room for the record's header
_extend = google_crc32c.extend


class CommitLogError(Exception):
    """The log cannot be trusted (a gap between segments, an op that does not decode):
    the store is handled as corrupt."""


def header_size(meta_len: int) -> int:
    need = _HDR.size + _HDR_CRC.size + meta_len
    return (need + 4095) // 4096 * 4096


def encode_header(gen: int, base: int, flags: int, meta: bytes) -> bytes:
    fixed = _HDR.pack(MAGIC, gen, base, flags, len(meta))
    raw = fixed + _HDR_CRC.pack(crc32c(fixed + meta)) + meta
    return raw + b"\0" * (header_size(len(meta)) - len(raw))


def encode_record(lsn: int, kind: int, payload: bytes) -> bytes:
    crc = crc32c(_REC_CRC.pack(lsn, kind) + payload)
    return _REC.pack(len(payload), crc, lsn, kind) + payload


# ------------------------------------------------------------------ reading
@dataclass
class Segment:
    """One segment as read back: its header and its valid records, in order."""

    file: int  # index into FILES
    gen: int
    base: int  # LSN of the last record the base state holds
    flags: int
    meta: bytes
    records: list[tuple[int, int, bytes]] = field(default_factory=list)  # (lsn, kind, payload)
    end: int = 0  # offset after the last valid record
    torn: int = 0  # bytes after ``end`` that held something (a torn tail, or stale data)

    @property
    def last(self) -> int:
        return self.records[-1][0] if self.records else self.base

    def durable_base(self) -> bool:
        return bool(self.flags & FLAG_DURABLE) or any(
            kind == DURABLE and _Q.unpack(p)[0] == self.base for _lsn, kind, p in self.records
        )


def read_segment(raw: bytes, file: int) -> Segment | None:
    """The segment in a file's bytes, or None when its header is not valid."""
    if len(raw) < _HDR.size + _HDR_CRC.size:
        return None
    magic, gen, base, flags, meta_len = _HDR.unpack_from(raw, 0)
    if magic != MAGIC:
        return None
    start = _HDR.size + _HDR_CRC.size
    meta = raw[start : start + meta_len]
    if len(meta) != meta_len:
        return None
    (crc,) = _HDR_CRC.unpack_from(raw, _HDR.size)
    if crc != crc32c(raw[: _HDR.size] + meta):
        return None
    seg = Segment(file, gen, base, flags, bytes(meta))
    off = header_size(meta_len)
    want = base + 1
    n = len(raw)
    while off + _REC.size <= n:
        length, crc, lsn, kind = _REC.unpack_from(raw, off)
        end = off + _REC.size + length
        if lsn != want or end > n or kind not in (COMMIT, VOID, DURABLE):
            break
        payload = raw[off + _REC.size : end]
        if crc32c(_REC_CRC.pack(lsn, kind) + payload) != crc:
            break
        seg.records.append((lsn, kind, bytes(payload)))
        want += 1
        off = end
    seg.end = off
    seg.torn = len(raw[off : off + 4096].rstrip(b"\0"))
    return seg


@dataclass
class Recovery:
    """What ``plan_recovery`` decided."""

    start: Segment | None  # the segment recovery starts from (None: no log)
    replay: list[tuple[int, bytes]]  # (lsn, payload) of COMMIT records to redo, in order
    last_lsn: int  # the last LSN the log holds (the next record gets one more)
    next_gen: int

    @property
    def restore(self) -> bool:
        """The base's meta pages must be written back before LMDB is opened."""
        return bool(self.replay)


def plan_recovery(segments: list[Segment]) -> Recovery:
    """Where to start and what to redo, from the valid segments (any order)."""
    if not segments:
        return Recovery(None, [], 0, 1)
    segs = sorted(segments, key=lambda s: s.gen)
    next_gen = segs[-1].gen + 1
    durable = [s for s in segs if s.durable_base()]
    if not durable:
        raise CommitLogError(
            "no segment of the commit log has a durable base (gens "
            + ", ".join(str(s.gen) for s in segs)
            + ")"
        )
    start = durable[-1]
    chain = [start] + [s for s in segs if s.gen > start.gen]
    last = start.base
    records: list[tuple[int, int, bytes]] = []
    for s in chain:
        if s.base != last:
            raise CommitLogError(
                f"the commit log has a gap: segment {s.gen} starts after LSN {s.base}, but "
                f"the segment before it ends at LSN {last}"
            )
        records.extend(s.records)
        last = s.last
    voided = {_Q.unpack(p)[0] for _lsn, kind, p in records if kind == VOID}
    replay = [(lsn, p) for lsn, kind, p in records if kind == COMMIT and lsn not in voided]
    return Recovery(start, replay, last, next_gen)


# ------------------------------------------------------------------ ops
class _RecCursor:
    """A cursor that records what it writes (the subset of py-lmdb's Cursor that the
    store's writes use)."""

    __slots__ = ("_cur", "_db", "_parts")

    def __init__(self, cur: Any, db: int, parts: list[bytes]) -> None:
        self._cur, self._db, self._parts = cur, db, parts

    def putmulti(self, items: list[tuple[bytes, bytes]]) -> Any:
        parts, db, pack = self._parts, self._db, _PUT.pack
        for k, v in items:
            parts.append(pack(OP_PUT, db, len(k), len(v)))
            parts.append(k)
            parts.append(v)
        return self._cur.putmulti(items)

    def put(self, key: bytes, value: bytes) -> bool:
        self._parts += (_PUT.pack(OP_PUT, self._db, len(key), len(value)), key, value)
        return bool(self._cur.put(key, value))

    def delete(self) -> bool:
        key = bytes(self._cur.key())
        ok = bool(self._cur.delete())
        if ok:
            self._parts += (_DEL.pack(OP_DEL, self._db, len(key)), key)
        return ok

    def __getattr__(self, name: str) -> Any:  # reads: set_range, key, value, next, first
        return getattr(self._cur, name)


class Recorder:
    """A write transaction that records its puts, deletes and drops as a COMMIT
    payload (the subset of py-lmdb's Transaction that the store's writes use)."""

    __slots__ = ("_index", "_parts", "txn")

    def __init__(self, txn: Any, index: dict[int, int]) -> None:
        self.txn = txn
        self._index = index  # id(db handle) -> its index in Store.dbs
        self._parts: list[bytes] = []

    def put(self, key: bytes, value: bytes, db: Any) -> bool:
        self._parts += (_PUT.pack(OP_PUT, self._index[id(db)], len(key), len(value)), key, value)
        return bool(self.txn.put(key, value, db=db))

    def delete(self, key: bytes, db: Any) -> bool:
        key = bytes(key)
        self._parts += (_DEL.pack(OP_DEL, self._index[id(db)], len(key)), key)
        return bool(self.txn.delete(key, db=db))

    def drop(self, db: Any, delete: bool = True) -> None:
        if delete:
            raise ValueError("the store never deletes a database")
        self._parts.append(_DROP.pack(OP_DROP, self._index[id(db)]))
        self.txn.drop(db, delete=False)

    def get(self, key: bytes, db: Any) -> Any:
        return self.txn.get(key, db=db)

    def cursor(self, db: Any) -> _RecCursor:
        return _RecCursor(self.txn.cursor(db=db), self._index[id(db)], self._parts)

    def stat(self, db: Any) -> Any:
        return self.txn.stat(db)

    @property
    def parts(self) -> list[bytes]:
        """The COMMIT payload, in pieces; empty when nothing was written."""
        return self._parts

    def payload(self) -> bytes:
        return b"".join(self._parts)


def apply_record(txn: Any, dbs: list[Any], payload: bytes) -> int:
    """Redo one COMMIT payload in ``txn``; the number of ops."""
    off, n, end = 0, 0, len(payload)
    mv = memoryview(payload)
    try:
        while off < end:
            op = payload[off]
            if op == OP_PUT:
                _op, db, kl, vl = _PUT.unpack_from(payload, off)
                off += _PUT.size
                key = bytes(mv[off : off + kl])
                off += kl
                value = bytes(mv[off : off + vl])
                off += vl
                if off > end:
                    raise CommitLogError("a put runs past its record")
                txn.put(key, value, db=dbs[db])
            elif op == OP_DEL:
                _op, db, kl = _DEL.unpack_from(payload, off)
                off += _DEL.size
                key = bytes(mv[off : off + kl])
                off += kl
                if off > end:
                    raise CommitLogError("a delete runs past its record")
                txn.delete(key, db=dbs[db])
            elif op == OP_DROP:
                _op, db = _DROP.unpack_from(payload, off)
                off += _DROP.size
                txn.drop(dbs[db], delete=False)
            else:
                raise CommitLogError(f"unknown op {op:#x} at byte {off} of a record")
            n += 1
    except (struct.error, IndexError) as exc:
        raise CommitLogError(f"a record does not decode: {exc}") from exc
    return n


# ------------------------------------------------------------------ files
class CommitLog:
    """The two segment files of one store directory, and the current segment.

    Not thread-safe: ``Store`` calls it under its write lock."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.fds: list[int] = []
        self.file = 0  # the current segment's file
        self.gen = 0
        self.base = 0
        self.offset = 0  # where the next record goes
        self.lsn = 0  # the last LSN written
        self.seg_bytes = 0  # record bytes in the current segment
        self.commits = 0  # COMMIT records in the current segment
        # Written with the next record (begin_segment(defer=True), and the base of the
        # current segment once the checkpointer has synced it).
        self.pending_header: bytes | None = None
        self.pending_durable: int | None = None
        self.durable_written = False  # the last write carried the DURABLE record

    def paths(self) -> list[Path]:
        return [self.dir / f for f in FILES]

    def read(self) -> list[Segment]:
        """The valid segments on disk."""
        out = []
        for i, p in enumerate(self.paths()):
            try:
                raw = p.read_bytes()
            except FileNotFoundError:
                continue
            seg = read_segment(raw, i)
            if seg is not None:
                out.append(seg)
        return out

    def open(self, last_lsn: int, next_gen: int) -> None:
        self.fds = [
            os.open(p, os.O_RDWR | os.O_CREAT | os.O_DSYNC | getattr(os, "O_CLOEXEC", 0), 0o644)
            for p in self.paths()
        ]
        self.lsn = last_lsn
        self.gen = next_gen - 1
        _fsync_dir(self.dir)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def begin_segment(self, file: int, meta: bytes, durable: bool, defer: bool = False) -> None:
        """Start a new segment in ``file`` whose base is the last LSN written. With
        ``defer`` its header is written with the segment's first record, in the same
        ``pwritev`` (the header ends where the records begin), so a checkpoint adds no
        flush to the writer's path; a torn write of the two loses only that record,
        whose commit nobody heard of."""
        self.gen += 1
        hdr = encode_header(self.gen, self.lsn, FLAG_DURABLE if durable else 0, meta)
        self.file, self.base, self.offset = file, self.lsn, len(hdr)
        self.seg_bytes = self.commits = 0
        if defer:
            self.pending_header = hdr
        else:
            self.pending_header = None
            os.pwrite(self.fds[file], hdr, 0)

    def trim(self, file: int, keep: int) -> None:
        """Cut a dead segment's file back to ``keep`` bytes if it is more than twice
        that (its first ``keep`` bytes stay written: appends there need no metadata)."""
        fd = self.fds[file]
        if os.fstat(fd).st_size > 2 * keep:
            os.ftruncate(fd, keep)

    def append(self, kind: int, payload: bytes) -> int:
        """Write one record (durable when this returns); its LSN."""
        return self.append_parts(kind, [payload])

    def append_parts(self, kind: int, parts: list[bytes]) -> int:
        """Write one record whose payload is ``parts`` joined, in one ``pwritev``
        (durable when this returns: the descriptor is ``O_DSYNC``); its LSN. A deferred
        header and a pending DURABLE record go in the same write, before it. The parts
        are not copied (a 60 MiB batch's bodies go to the kernel as they are) unless
        there are more than the kernel takes in one call."""
        if len(parts) > _MAX_IOV:
            parts = [b"".join(parts)]
        bufs = self._pending_bufs()
        lsn = self.lsn + len(bufs) - (self.pending_header is not None) + 1
        crc = crc32c(_REC_CRC.pack(lsn, kind))
        length = 0
        for part in parts:
            crc = _extend(crc, part)
            length += len(part)
        bufs.append(_REC.pack(length, crc, lsn, kind))
        bufs.extend(parts)
        self._write(bufs, lsn)
        if kind == COMMIT:
            self.commits += 1
        return lsn

    def flush_pending(self) -> bool:
        """Write a deferred header and a pending DURABLE record on their own (nothing
        to carry them came); True when a DURABLE record was written."""
        bufs = self._pending_bufs()
        if not bufs:
            return False
        self._write(bufs, self.lsn + (self.pending_durable is not None))
        return self.durable_written

    def _pending_bufs(self) -> list[bytes]:
        bufs = []
        if self.pending_header is not None:
            bufs.append(self.pending_header)
        if self.pending_durable is not None:
            bufs.append(encode_record(self.lsn + 1, DURABLE, _Q.pack(self.pending_durable)))
        return bufs

    def _write(self, bufs: list[bytes], lsn: int) -> None:
        start = 0 if self.pending_header is not None else self.offset
        total = sum(len(b) for b in bufs)
        n = os.pwritev(self.fds[self.file], bufs, start)
        if n != total:  # pragma: no cover - a short write on a regular file: no room
            raise OSError(28, f"short write to the commit log ({n} of {total} bytes)")
        self.durable_written = self.pending_durable is not None
        self.pending_header = self.pending_durable = None
        self.lsn = lsn
        self.offset = start + total
        self.seg_bytes += total

    def void(self, lsn: int) -> None:
        self.append(VOID, _Q.pack(lsn))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def meta_txnid(meta: bytes, psize: int) -> int:
    """The larger transaction id of LMDB's two meta pages (``MDB_meta.mm_txnid``, on
    a 64-bit build: page header 16 bytes, then magic, version, address, map size, two
    ``MDB_db`` of 48 bytes and the last page number, 128 bytes in all)."""
    off = 16 + 128
    ids = [_Q.unpack_from(meta, p * psize + off)[0] for p in (0, 1) if len(meta) >= (p + 1) * psize]
    return max(ids) if ids else 0
