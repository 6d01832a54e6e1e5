"""The broker's LMDB store: one environment, one writer thread, group commit.

Layout (named databases, big-endian keys so LMDB's order is numeric order):

========  ==========================  ==========================================
db        key                         value
========  ==========================  ==========================================
meta      name                        node id, format version
catalog   b"T" + topic name           >IB topic id, paused
catalog   b"C" + >I topic id + name   >IB channel id, paused
msgs      >I topic id + >Q seq        message record (``wire.encode_record``)
floors    >I channel id               >Q floor: every seq below it is finished
fins      >I channel id + >Q seq      b"" (finished, above the floor)
states    >I channel id + >Q seq      >Iq attempts, due_ns (requeued/deferred)
dlq       >I channel id + >Q seq      >I attempts + record (dead letters)
sb_msgs   topic + 0 + >Q origin seq   the partner's record (standby copy)
sb_floors topic + 0 + channel         >Q the partner channel's floor
sb_fins   topic+0+channel+0+>Q seq    b"" (finished on the partner, above its floor)
sb_states topic+0+channel+0+>Q seq    >Iq attempts, due_ns (partner's requeue state)
sb_meta   b"partner" / b"taken:"+topic  partner node id / >Q seqs taken over
ids_0/1   message id (16 bytes)       b"" (idempotency window, two generations)
========  ==========================  ==========================================

Idempotency: every stored message id (owned or standby) goes into the
current ``ids_N`` generation; ``rotate_ids`` empties the older generation
and makes it current, so an id is remembered for between one and two
rotation periods at the cost of one put per message.

Each body is stored once per topic whatever the channel count; channels only
keep a floor, a sparse set of finished seqs above it and small state records.

All writes go through ``submit``: the writer thread drains its queue, applies
everything in one write transaction, commits (fsync with ``sync="always"``)
and then resolves every waiter with one ``call_soon_threadsafe``. The asyncio
loop never touches a write transaction, so it never blocks on the disk.
Reads use short read transactions on the caller's thread.

When the store reaches its cap (``max_bytes - reserve_bytes``) or the disk
runs out of space, appends fail with ``StoreFullError`` while every other
write (FINs, cleanup) still commits in the reserve, so delivery goes on and
the store is never corrupted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from pairq.errors import StoreFullError

log = logging.getLogger("pairq.store")

_I = struct.Struct(">I")
_Q = struct.Struct(">Q")
_IQ = struct.Struct(">IQ")
_IB = struct.Struct(">IB")
_STATE = struct.Struct(">Iq")

DB_NAMES = (
    "meta",
    "catalog",
    "msgs",
    "floors",
    "fins",
    "states",
    "dlq",
    "sb_msgs",
    "sb_floors",
    "sb_fins",
    "sb_meta",
    "ids_0",
    "ids_1",
    "sb_states",
)
(
    META,
    CATALOG,
    MSGS,
    FLOORS,
    FINS,
    STATES,
    DLQ,
    SB_MSGS,
    SB_FLOORS,
    SB_FINS,
    SB_META,
    IDS0,
    IDS1,
    SB_STATES,
) = range(len(DB_NAMES))
FORMAT_VERSION = b"1"


def seq_key(prefix_id: int, seq: int) -> bytes:
    return _IQ.pack(prefix_id, seq)


def unpack_seq_key(key: bytes) -> tuple[int, int]:
    a, b = _IQ.unpack(key)
    return int(a), int(b)


@dataclass
class ChannelMeta:
    id: int
    name: str
    paused: bool = False
    floor: int = 0


@dataclass
class TopicMeta:
    id: int
    name: str
    paused: bool = False
    next_seq: int = 0
    first_seq: int = 0  # lowest retained seq
    hwm: int = 0  # every seq ever sent to the partner is below this (see pair/sender.py)
    channels: dict[str, ChannelMeta] = field(default_factory=dict)


# Write operations (tuples: cheap to build on the hot path).
#   ("append", topic_id, first_seq, [records])        -> fails when the store is full
#   ("put", db, key, value)  /  ("del", db, key)
#   ("puts", [(db, key, value | None), ...])          -> None value = delete
#   ("gc", topic_id, from_seq, to_seq)                -> delete msgs in [from, to)
#   ("drop", db, prefix)                              -> delete every key with prefix
Op = tuple[Any, ...]

_STOP = object()


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
    ) -> None:
        self.path = Path(path)
        self.sync_mode = sync
        self.sync_interval = sync_interval_ms / 1000.0
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self.max_commit_batch = max_commit_batch
        self.env: Any = None
        self.dbs: list[Any] = []
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.full_reason = ""  # non-empty while appends are refused
        self.commits = 0
        self.committed_ops = 0
        self.used_bytes = 0
        self._last_space_check = 0.0
        self.on_error: Callable[[BaseException], None] | None = None
        self.ids_gen = 0  # current idempotency generation (0 or 1)
        self.index_ids = True

    # ----------------------------------------------------------------- life
    def open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(self.path),
            map_size=self.max_bytes,
            max_dbs=len(DB_NAMES) + 2,
            sync=self.sync_mode == "always",
            metasync=True,
            writemap=False,
            readahead=False,
            max_readers=256,
            lock=True,
        )
        self.env.reader_check()
        with self.env.begin(write=True) as txn:
            self.dbs = [self.env.open_db(n.encode(), txn=txn) for n in DB_NAMES]
            gen = txn.get(b"ids_gen", db=self.dbs[META])
            self.ids_gen = gen[0] & 1 if gen else 0
            version = txn.get(b"format", db=self.dbs[META])
            if version is None:
                txn.put(b"format", FORMAT_VERSION, db=self.dbs[META])
            elif version != FORMAT_VERSION:
                raise RuntimeError(
                    f"{self.path}: store format {version!r} is not supported by this pairq "
                    f"(expects {FORMAT_VERSION!r})"
                )
        self._refresh_usage()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="pairq-store-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Drain every queued write, commit, stop the writer and close the environment."""
        if self._thread is not None:
            self._q.put(_STOP)
            self._thread.join()
            self._thread = None
        if self.env is not None:
            self.env.sync(True)
            self.env.close()
            self.env = None

    # ----------------------------------------------------------------- meta
    def node_id(self) -> str:
        """This node's stable id, created at first start and kept in the store."""
        with self.env.begin(write=True) as txn:
            value = txn.get(b"node_id", db=self.dbs[META])
            if value is None:
                value = uuid.uuid4().hex[:16].encode()
                txn.put(b"node_id", value, db=self.dbs[META])
        return bytes(value).decode()

    def load_catalog(self) -> dict[str, TopicMeta]:
        """Every durable topic with its channels, floors and retained seq range."""
        topics: dict[str, TopicMeta] = {}
        by_id: dict[int, TopicMeta] = {}
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.dbs[CATALOG])
            if cur.set_range(b"T"):
                for k, v in cur:
                    if not k.startswith(b"T"):
                        break
                    tid, paused = _IB.unpack(v)
                    t = TopicMeta(id=tid, name=k[1:].decode(), paused=bool(paused))
                    topics[t.name] = t
                    by_id[tid] = t
            if cur.set_range(b"C"):
                for k, v in cur:
                    if not k.startswith(b"C"):
                        break
                    (tid,) = _I.unpack_from(k, 1)
                    cid, paused = _IB.unpack(v)
                    t2 = by_id.get(tid)
                    if t2 is None:
                        continue
                    fl = txn.get(_I.pack(cid), db=self.dbs[FLOORS])
                    floor = _Q.unpack(fl)[0] if fl else 0
                    t2.channels[k[5:].decode()] = ChannelMeta(
                        id=cid, name=k[5:].decode(), paused=bool(paused), floor=floor
                    )
            mcur = txn.cursor(db=self.dbs[MSGS])
            for t in topics.values():
                first, last = self._seq_range(mcur, t.id)
                floors = [c.floor for c in t.channels.values()]
                t.next_seq = max([last + 1 if last is not None else 0, *floors])
                t.first_seq = first if first is not None else t.next_seq
                hwm = txn.get(hwm_key(t.id), db=self.dbs[META])
                t.hwm = _Q.unpack(hwm)[0] if hwm else 0
        return topics

    @staticmethod
    def _seq_range(cur: Any, prefix_id: int) -> tuple[int | None, int | None]:
        first = last = None
        if cur.set_range(_I.pack(prefix_id)):
            k = cur.key()
            if k[:4] == _I.pack(prefix_id):
                first = _IQ.unpack(k)[1]
        if cur.set_range(_I.pack(prefix_id + 1)):
            ok = cur.prev()
        else:
            ok = cur.last()
        if ok:
            k = cur.key()
            if k[:4] == _I.pack(prefix_id):
                last = _IQ.unpack(k)[1]
        return first, last

    def next_ids(self) -> tuple[int, int]:
        """(next free topic id, next free channel id)."""
        top_t = top_c = 0
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self.dbs[CATALOG]):
                ident = _IB.unpack(v)[0]
                if k.startswith(b"T"):
                    top_t = max(top_t, ident)
                else:
                    top_c = max(top_c, ident)
            # Ids of deleted topics may still own keys being dropped; never reuse.
            stored = txn.get(b"ids", db=self.dbs[META])
            if stored:
                st, sc = struct.unpack(">II", stored)
                top_t, top_c = max(top_t, st), max(top_c, sc)
        return top_t + 1, top_c + 1

    # ---------------------------------------------------------------- reads
    def known_ids(self, ids: list[bytes]) -> set[bytes]:
        """Which of ``ids`` were stored within the idempotency window."""
        found: set[bytes] = set()
        with self.env.begin(buffers=False) as txn:
            for db in (self.dbs[IDS0], self.dbs[IDS1]):
                found.update(k for k, _ in txn.cursor(db=db).getmulti(ids))
        return found

    def read_msgs(
        self, topic_id: int, from_seq: int, to_seq: int, limit: int, max_bytes: int = 0
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` (seq, record) with from_seq <= seq < to_seq; with ``max_bytes``,
        stop once that many record bytes are read (always at least one record)."""
        out: list[tuple[int, bytes]] = []
        size = 0
        if from_seq >= to_seq or limit <= 0:
            return out
        end = _IQ.pack(topic_id, to_seq)
        with self.env.begin(buffers=False) as txn:
            cur = txn.cursor(db=self.dbs[MSGS])
            if not cur.set_range(_IQ.pack(topic_id, from_seq)):
                return out
            for k, v in cur:
                if k >= end:
                    break
                out.append((_IQ.unpack(k)[1], v))
                size += len(v)
                if len(out) >= limit or (max_bytes and size >= max_bytes):
                    break
        return out

    def scan_channel(self, db: int, channel_id: int) -> Iterator[tuple[int, bytes]]:
        """(seq, value) of a channel's keys in ``fins``/``states``/``dlq``."""
        prefix = _I.pack(channel_id)
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.dbs[db])
            if not cur.set_range(prefix):
                return
            for k, v in cur:
                if k[:4] != prefix:
                    break
                yield _IQ.unpack(k)[1], v

    def get(self, db: int, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            v = txn.get(key, db=self.dbs[db])
            return bytes(v) if v is not None else None

    # --------------------------------------------------------------- writes
    def submit(self, op: Op, *, wait: bool = True) -> asyncio.Future[Any] | None:
        """Queue a write; with ``wait`` return a future resolved after its commit."""
        fut: asyncio.Future[Any] | None = None
        if wait:
            assert self._loop is not None
            fut = self._loop.create_future()
        self._q.put((op, fut))
        return fut

    def barrier(self) -> asyncio.Future[Any]:
        """A future resolved once every write queued before it has committed."""
        fut = self.submit(("puts", []))
        assert fut is not None
        return fut

    def submit_many(self, ops: list[Op]) -> asyncio.Future[Any]:
        """Queue several writes that commit together; one future for all."""
        assert self._loop is not None
        fut = self._loop.create_future()
        self._q.put((("multi", ops), fut))
        return fut

    def write_now(self, ops: list[Op]) -> None:
        """Apply writes synchronously (start-up and tests only: blocks on fsync)."""
        with self.env.begin(write=True) as txn:
            for op in ops:
                self._apply(txn, op)

    # -------------------------------------------------------------- writer
    def _run(self) -> None:
        q = self._q
        last_sync = time.monotonic()
        periodic = self.sync_mode != "always"
        stop = False
        while not stop:
            try:
                timeout = self.sync_interval if periodic else None
                first = q.get(timeout=timeout)
            except queue.Empty:
                first = None
            batch: list[Any] = []
            if first is _STOP:
                stop = True
            elif first is not None:
                batch.append(first)
            while len(batch) < self.max_commit_batch:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    continue
                batch.append(item)
            if batch:
                self._commit(batch)
            if periodic and (stop or time.monotonic() - last_sync >= self.sync_interval):
                try:
                    self.env.sync(True)
                except lmdb.Error as exc:  # pragma: no cover - disk failure
                    log.error("periodic fsync failed: %s", exc)
                last_sync = time.monotonic()

    def _commit(self, batch: list[Any]) -> None:
        refuse_appends = bool(self.full_reason)
        results: list[tuple[asyncio.Future[Any], BaseException | None]] = []
        while True:
            failed: list[tuple[asyncio.Future[Any] | None, BaseException]] = []
            try:
                with self.env.begin(write=True) as txn:
                    for op, fut in batch:
                        if refuse_appends and _has_append(op):
                            failed.append((fut, StoreFullError(self._full_message())))
                            continue
                        self._apply(txn, op)
            except (lmdb.MapFullError, lmdb.DiskError, OSError, lmdb.Error) as exc:
                if refuse_appends:
                    # Even non-append writes failed: report them all, keep serving.
                    log.error("store commit failed even without appends: %s", exc)
                    for _op, fut in batch:
                        if fut is not None:
                            results.append((fut, StoreFullError(f"store write failed: {exc}")))
                    break
                self.full_reason = f"{type(exc).__name__}: {exc}"
                log.warning("store full (%s); refusing publishes, delivery continues", exc)
                refuse_appends = True
                continue
            for _op, fut in batch:
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

    def _full_message(self) -> str:
        return (
            f"store is full ({self.full_reason}); publishes are refused until consumers "
            f"finish messages or the cap (--max-store-bytes={self.max_bytes}) / disk grows"
        )

    def _maybe_refresh_usage(self) -> None:
        now = time.monotonic()
        if now - self._last_space_check < 0.05 and not self.full_reason:
            return
        self._last_space_check = now
        self._refresh_usage()

    def _refresh_usage(self) -> None:
        with self.env.begin() as txn:
            pages = 0
            for db in self.dbs:
                st = txn.stat(db)
                pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
            psize = self.env.stat()["psize"]
        self.used_bytes = pages * psize
        reason = ""
        if self.used_bytes > self.max_bytes - self.reserve_bytes:
            reason = f"store uses {self.used_bytes} of its {self.max_bytes}-byte cap"
        else:
            try:
                st = os.statvfs(self.path)
                free = st.f_bavail * st.f_frsize
                if free < self.reserve_bytes:
                    reason = f"disk has only {free} bytes free"
            except OSError:
                pass
        if reason and not self.full_reason:
            log.warning("store full: %s; refusing publishes", reason)
        elif not reason and self.full_reason:
            log.info("store has room again; accepting publishes")
        self.full_reason = reason

    def _apply(self, txn: Any, op: Op) -> None:
        kind = op[0]
        dbs = self.dbs
        if kind == "append":
            _, topic_id, seq, records = op
            pack = _IQ.pack
            txn.cursor(db=dbs[MSGS]).putmulti(
                [(pack(topic_id, s), rec) for s, rec in enumerate(records, seq)]
            )
            if self.index_ids:
                txn.cursor(db=dbs[IDS0 + self.ids_gen]).putmulti(
                    [(rec[:16], b"") for rec in records]
                )
        elif kind == "rotate_ids":
            new = op[1]  # idempotent if the transaction is retried
            txn.drop(dbs[IDS0 + new], delete=False)
            txn.put(b"ids_gen", bytes((new,)), db=dbs[META])
            self.ids_gen = new
        elif kind == "puts":
            for dbi, key, value in op[1]:
                if value is None:
                    txn.delete(key, db=dbs[dbi])
                else:
                    txn.put(key, value, db=dbs[dbi])
        elif kind == "put":
            txn.put(op[2], op[3], db=dbs[op[1]])
        elif kind == "del":
            txn.delete(op[2], db=dbs[op[1]])
        elif kind == "gc":
            _, topic_id, lo, hi = op
            cur = txn.cursor(db=dbs[MSGS])
            end = _IQ.pack(topic_id, hi)
            if cur.set_range(_IQ.pack(topic_id, lo)):
                while cur.key() and cur.key() < end:
                    if not cur.delete():
                        break
        elif kind == "drop":
            _, dbi, prefix = op
            cur = txn.cursor(db=dbs[dbi])
            if cur.set_range(prefix):
                while cur.key() and cur.key().startswith(prefix):
                    if not cur.delete():
                        break
        elif kind == "sb_append":
            # index=False for copies the owner has not confirmed yet (see
            # pair.StandbyStore); "index_ids" follows once it does.
            _, topic, seq, records, index = op
            base = topic.encode() + b"\0"
            pack = _Q.pack
            txn.cursor(db=dbs[SB_MSGS]).putmulti(
                [(base + pack(s), rec) for s, rec in enumerate(records, seq)]
            )
            if self.index_ids and index:
                txn.cursor(db=dbs[IDS0 + self.ids_gen]).putmulti(
                    [(rec[:16], b"") for rec in records]
                )
        elif kind == "index_ids":
            if self.index_ids:
                txn.cursor(db=dbs[IDS0 + self.ids_gen]).putmulti([(i, b"") for i in op[1]])
        elif kind == "range_del":
            _, dbi, lo_key, hi_key = op
            cur = txn.cursor(db=dbs[dbi])
            if cur.set_range(lo_key):
                while cur.key() and cur.key() < hi_key:
                    if not cur.delete():
                        break
        elif kind == "multi":
            for sub in op[1]:
                self._apply(txn, sub)
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown store op {kind!r}")


def _has_append(op: Op) -> bool:
    if op[0] in ("append", "sb_append"):
        return True
    if op[0] == "multi":
        return any(_has_append(o) for o in op[1])
    return False


def _resolve_all(results: list[tuple[asyncio.Future[Any], BaseException | None]]) -> None:
    for fut, exc in results:
        if fut.done():
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)


# Encoders for the small records (used by the channel glue).
def catalog_topic_key(name: str) -> bytes:
    return b"T" + name.encode()


def catalog_channel_key(topic_id: int, name: str) -> bytes:
    return b"C" + _I.pack(topic_id) + name.encode()


def pack_catalog(ident: int, paused: bool) -> bytes:
    return _IB.pack(ident, 1 if paused else 0)


def floor_key(channel_id: int) -> bytes:
    return _I.pack(channel_id)


def pack_floor(seq: int) -> bytes:
    return _Q.pack(seq)


def pack_state(attempts: int, due_ns: int) -> bytes:
    return _STATE.pack(attempts, due_ns)


def unpack_state(value: bytes) -> tuple[int, int]:
    a, d = _STATE.unpack(value)
    return int(a), int(d)


def pack_dlq(attempts: int, record: bytes) -> bytes:
    return _I.pack(attempts) + record


def unpack_dlq(value: bytes) -> tuple[int, bytes]:
    return int(_I.unpack_from(value)[0]), bytes(value[4:])


def prefix(ident: int) -> bytes:
    return _I.pack(ident)


# Standby (partner) keys.
def sb_topic_prefix(topic: str) -> bytes:
    return topic.encode() + b"\0"


def sb_msg_key(topic: str, seq: int) -> bytes:
    return topic.encode() + b"\0" + _Q.pack(seq)


def sb_channel_key(topic: str, channel: str) -> bytes:
    return topic.encode() + b"\0" + channel.encode()


def sb_fin_key(topic: str, channel: str, seq: int) -> bytes:
    return topic.encode() + b"\0" + channel.encode() + b"\0" + _Q.pack(seq)


def unpack_q(value: bytes) -> int:
    return int(_Q.unpack(value)[0])


def pack_q(value: int) -> bytes:
    return _Q.pack(value)


def hwm_key(topic_id: int) -> bytes:
    return b"hwm:" + _I.pack(topic_id)
