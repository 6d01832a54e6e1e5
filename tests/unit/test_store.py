"""The store's typed views and its map growth, on real LMDB files."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import lmdb
import pytest

from pairq.broker import schema, wire
from pairq.broker.checksum import crcs
from pairq.broker.store import Store
from pairq.errors import StoreFullError

MiB = 1024 * 1024


def _records(n: int, size: int) -> list[bytes]:
    return [wire.encode_plain_record(os.urandom(16), os.urandom(size), b"") for _ in range(n)]


def _append(s: Store, tid: int, seq: int, recs: list[bytes]):  # type: ignore[no-untyped-def]
    return s.log.append(tid, seq, recs, crcs(recs))


def _flip(path: Path, db: str, key: bytes) -> None:
    """Flip one bit of a stored value, as a bad disk would (through LMDB, so only the
    value changes)."""
    env = lmdb.open(str(path), max_dbs=32)
    with env.begin(write=True) as txn:
        d = env.open_db(db.encode(), txn=txn)
        v = bytearray(txn.get(key, db=d))
        v[-3] ^= 0x10
        txn.put(key, bytes(v), db=d)
    env.close()


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "s", max_bytes=256 * MiB, reserve_bytes=MiB)
    s.open()
    s.start(asyncio.get_running_loop())
    try:
        yield s
    finally:
        s.close()


async def test_catalog_progress_and_dead_letters_round_trip(opened: Store) -> None:
    s = opened
    await s.commit(
        s.catalog.put_topic("orders", 3, False),
        s.catalog.put_channel(3, "billing", 7, True, 1_700_000_000_000_000_000),
        s.catalog.put_tombstone("orders", "old", 1_600_000_000_000_000_000),
        s.catalog.put_next_ids(4, 8),
        _append(s, 3, 10, _records(5, 100)),
    )
    batch = s.progress.batch(7)
    batch.floor(12)
    batch.finished(14)
    batch.state(13, 2, 123)
    w = batch.write()
    assert w is not None
    await s.commit(w, s.dead.put(7, 11, 5, b"r" * 40))
    topics = s.catalog.load()
    t = topics["orders"]
    assert (t.id, t.first_seq, t.next_seq) == (3, 10, 15)
    ch = t.channels["billing"]
    assert (ch.id, ch.paused, ch.floor, ch.created_ns) == (7, True, 12, 1_700_000_000_000_000_000)
    assert s.catalog.tombstones() == {("orders", "old"): 1_600_000_000_000_000_000}
    assert s.progress.finished(7) == [14]
    assert s.progress.states(7) == {13: (2, 123)}
    assert s.dead.scan(7) == ([(11, 5, b"r" * 40)], [])
    next_topic, next_channel = s.catalog.next_ids()
    assert next_topic >= 4 and next_channel >= 8  # never an id in use or recorded
    # Emptying the channel and deleting the topic leave nothing behind.
    await s.commit(s.progress.reset(7, 15))
    assert s.progress.finished(7) == [] and s.progress.states(7) == {}
    assert s.progress.floor(7) == 15
    await s.commit(s.catalog.delete_topic("orders", 3), s.log.drop_topic(3), s.progress.drop(7))
    assert s.catalog.load() == {}
    assert s.log.read(3, 0, 100, 100).rows == [] and s.dead.scan(7) == ([], [])


async def test_standby_copies_load_back_as_written(opened: Store) -> None:
    s = opened
    sb = s.standby
    recs = _records(4, 50)
    await s.commit(
        sb.set_partner("abc"),
        sb.append("t", 20, recs, crcs(recs), index=False),
        sb.put_floor("t", "c", 21),
        sb.put_finished("t", "c", 22),
        sb.put_state("t", "c", 23, 3, 99),
        sb.set_taken("u", 7),
    )
    img = sb.load()
    assert img.partner_id == "abc"
    assert img.held == {"t": (20, 23)} and img.taken == {"u": 7}
    assert img.floors == {("t", "c"): 21}
    assert img.finished == [("t", "c", 22)]
    assert img.states == [("t", "c", 23, (3, 99))]
    assert [q for q, _ in sb.read("t", 21, 23).rows] == [21, 22]
    # Unconfirmed copies are not indexed until confirmed.
    ids = [r[:16] for r in recs]
    assert s.log.known_ids(ids) == set()
    await s.commit(sb.index_ids(ids[:1]))
    assert s.log.known_ids(ids) == {ids[0]}
    await s.commit(sb.trim("t", 0, 22), sb.drop_channel("t", "c"))
    img = sb.load()
    assert img.held == {"t": (22, 23)} and img.floors == {} and img.finished == []
    await s.commit(sb.drop_all())
    img = sb.load()
    assert img.held == {} and img.taken == {} and img.partner_id == "abc"


async def test_the_map_grows_on_map_full_up_to_the_cap(tmp_path: Path) -> None:
    s = Store(tmp_path / "s", max_bytes=256 * MiB, reserve_bytes=MiB, initial_map_bytes=MiB)
    s.open()
    s.start(asyncio.get_running_loop())
    try:
        assert s.map_bytes == MiB
        seq = 0
        for _ in range(12):  # 12 MiB of records into a 1 MiB map
            recs = _records(64, 16 * 1024)
            await s.commit(_append(s, 1, seq, recs))
            seq += len(recs)
        assert s.map_grows >= 3 and s.map_bytes >= 16 * MiB
        assert not s.full_reason
        assert len(s.log.read(1, 0, seq, 10_000).rows) == seq
    finally:
        s.close()
    # Reopened with the same small initial map: it maps at least what the file holds.
    s2 = Store(tmp_path / "s", max_bytes=256 * MiB, reserve_bytes=MiB, initial_map_bytes=MiB)
    s2.open()
    s2.start(asyncio.get_running_loop())
    try:
        assert s2.map_bytes >= 16 * MiB
        assert len(s2.log.read(1, 0, seq, 10_000).rows) == seq
    finally:
        s2.close()


async def test_at_the_cap_appends_fail_and_other_writes_commit(tmp_path: Path) -> None:
    s = Store(tmp_path / "s", max_bytes=8 * MiB, reserve_bytes=MiB, initial_map_bytes=MiB)
    s.open()
    s.start(asyncio.get_running_loop())
    seq = 0
    try:
        with pytest.raises(StoreFullError, match="store is full"):
            for _ in range(40):
                recs = _records(32, 16 * 1024)
                await s.commit(_append(s, 1, seq, recs))
                seq += len(recs)
        assert s.map_bytes == 8 * MiB and s.full_reason
        # Progress still commits in the reserve (delivery goes on).
        batch = s.progress.batch(1)
        batch.floor(seq)
        w = batch.write()
        assert w is not None
        await s.commit(w)
        assert s.progress.floor(1) == seq
    finally:
        s.close()
    s2 = Store(tmp_path / "s", max_bytes=8 * MiB, reserve_bytes=MiB)
    s2.open()  # not corrupted: every acknowledged record reads back
    try:
        assert len(s2.log.read(1, 0, seq, 10_000).rows) == seq
    finally:
        s2.close()


async def _six_records_owned_and_standby(path: Path) -> list[bytes]:
    """A closed store at ``path`` holding six records in topic 1's log and the same as
    standby copies of topic "t"; the records."""
    s = Store(path, max_bytes=256 * MiB, reserve_bytes=MiB)
    s.open()
    s.start(asyncio.get_running_loop())
    recs = _records(6, 100)
    await s.commit(_append(s, 1, 0, recs), s.standby.append("t", 0, recs, crcs(recs), index=True))
    s.close()
    return recs


async def test_a_record_failing_its_checksum_is_never_returned(tmp_path: Path) -> None:
    path = tmp_path / "s"
    recs = await _six_records_owned_and_standby(path)
    _flip(path, "msgs", schema.seq_key(1, 3))
    _flip(path, "sb_msgs", schema.sb_msg_key("t", 4))
    s = Store(path, max_bytes=256 * MiB, reserve_bytes=MiB)
    s.open()
    s.start(asyncio.get_running_loop())
    try:
        got = s.log.read(1, 0, 10, 100)
        assert [q for q, _ in got.rows] == [0, 1, 2] and got.corrupt == [3]  # stops there
        got = s.log.read(1, 0, 10, 100, stop_at_corrupt=False)
        assert [q for q, _ in got.rows] == [0, 1, 2, 4, 5] and got.corrupt == [3]
        assert got.rows[3][1] == recs[4] and got.crcs == crcs([recs[i] for i in (0, 1, 2, 4, 5)])
        sb = s.standby.read("t", 0, 10)
        assert [q for q, _ in sb.rows] == [0, 1, 2, 3, 5] and sb.corrupt == [4]
        assert s.log.get(1, 3) is None and s.standby.get("t", 4) is None
        assert s.integrity.failures == 2
        # A repair rewrites it; a quarantine moves it aside (then it reads as a gap).
        await s.commit(s.log.rewrite(1, 3, recs[3], crcs([recs[3]])[0]))
        assert s.log.get(1, 3) == (recs[3], crcs([recs[3]])[0])
        await s.commit(s.standby.quarantine("t", 4))
        assert s.standby.read("t", 0, 10).corrupt == [] and s.integrity.quarantined == 1
        assert len(s.quarantined()) == 1
        # The scrub finds what reads have not met.
        _flip_live = s.scrub_chunk(schema.MSGS, None, 100)
        assert _flip_live[0] == 6 and _flip_live[2] == []
    finally:
        s.close()


async def test_a_format_1_store_is_upgraded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "s"
    recs = _records(3, 50)
    env = lmdb.open(str(path), max_dbs=32, map_size=64 * MiB)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        msgs = env.open_db(b"msgs", txn=txn)
        txn.put(b"format", b"1", db=meta)
        for i, r in enumerate(recs):
            txn.put(schema.seq_key(1, i), r, db=msgs)
    env.close()
    s = Store(path, max_bytes=256 * MiB, reserve_bytes=MiB)
    s.open()
    try:
        got = s.log.read(1, 0, 10, 10)
        assert [r for _, r in got.rows] == recs and got.corrupt == []
    finally:
        s.close()


def _move_key(path: Path, db: str, key: bytes, to: bytes) -> None:
    """A stored record found at another key, value unchanged: a flipped bit in a key."""
    env = lmdb.open(str(path), max_dbs=32)
    with env.begin(write=True) as txn:
        d = env.open_db(db.encode(), txn=txn)
        v = txn.get(key, db=d)
        txn.delete(key, db=d)
        txn.put(to, v, db=d)
    env.close()


async def test_a_record_whose_key_flipped_fails_its_check_and_moves_no_range(
    tmp_path: Path,
) -> None:
    """make chaos (bitflip, seeds 3 and 4, session 8): the top bit of a record's seq
    flipped in the file; the record still passed its crc32c (which covered only the
    value), became the topic's last record, and the topic's next seq jumped past 2^63:
    nothing published after the next restart reached a channel. The stored check now
    covers the key: such a record fails it wherever it is read, and neither the log's
    range nor a standby topic's range counts it (the seq it left is missing, and a
    missing seq is fetched from the partner, Channel._explained)."""
    path = tmp_path / "s"
    await _six_records_owned_and_standby(path)
    huge = (1 << 63) | 5
    _move_key(path, "msgs", schema.seq_key(1, 5), schema.seq_key(1, huge))
    _move_key(path, "msgs", schema.seq_key(1, 1), schema.seq_key(1, 9))
    _move_key(path, "sb_msgs", schema.sb_msg_key("t", 5), schema.sb_msg_key("t", huge))
    _move_key(path, "sb_msgs", schema.sb_msg_key("t", 0), schema.sb_msg_key("u", 0))
    s = Store(path, max_bytes=256 * MiB, reserve_bytes=MiB)
    s.open()
    s.start(asyncio.get_running_loop())
    try:
        assert s.log.seq_range(1) == (0, 4)
        got = s.log.read(1, 0, huge + 1, 100, stop_at_corrupt=False)
        assert [q for q, _ in got.rows] == [0, 2, 3, 4] and got.corrupt == [9, huge]
        img = s.standby.load()
        assert img.held == {"t": (1, 4)}  # "u" is no topic: its one copy fails the check
        sb = s.standby.read("t", 0, huge + 1)
        assert [q for q, _ in sb.rows] == [1, 2, 3, 4] and sb.corrupt == [huge]
        bad = s.scrub_chunk(schema.MSGS, None, 100)[2]
        assert bad == [schema.seq_key(1, 9), schema.seq_key(1, huge)]
        assert s.scrub_chunk(schema.SB_MSGS, None, 100)[2] == [
            schema.sb_msg_key("t", huge),
            schema.sb_msg_key("u", 0),
        ]
    finally:
        s.close()


async def test_a_format_2_store_is_upgraded_on_open_and_its_bad_records_stay_bad(
    tmp_path: Path,
) -> None:
    from pairq.broker.checksum import crc

    path = tmp_path / "s"
    recs = _records(4, 50)
    env = lmdb.open(str(path), max_dbs=32, map_size=64 * MiB)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        msgs = env.open_db(b"msgs", txn=txn)
        sb = env.open_db(b"sb_msgs", txn=txn)
        dlq = env.open_db(b"dlq", txn=txn)
        txn.put(b"format", b"2", db=meta)
        for i, r in enumerate(recs):  # format 2: the crc32c of the value alone
            c = crc(r) ^ (1 if i == 2 else 0)  # record 2 already failed its checksum
            txn.put(schema.seq_key(1, i), c.to_bytes(4, "big") + r, db=msgs)
            txn.put(schema.sb_msg_key("t", i), crc(r).to_bytes(4, "big") + r, db=sb)
        txn.put(
            schema.seq_key(7, 0),
            (3).to_bytes(4, "big") + crc(recs[0]).to_bytes(4, "big") + recs[0],
            db=dlq,
        )
    env.close()
    s = Store(path, max_bytes=256 * MiB, reserve_bytes=MiB)
    s.open()
    try:
        got = s.log.read(1, 0, 10, 10, stop_at_corrupt=False)
        assert [q for q, _ in got.rows] == [0, 1, 3] and got.corrupt == [2]
        assert got.crcs == [crc(recs[i]) for i in (0, 1, 3)]  # the record's own crc32c
        assert [r for _, r in s.standby.read("t", 0, 10).rows] == recs
        assert s.dead.scan(7) == ([(0, 3, recs[0])], [])
    finally:
        s.close()


# ------------------------------------------------------------ room (issue 14)
def test_full_reason_counts_lmdb_free_pages_as_room() -> None:
    from pairq.broker.store import full_reason

    mib = 1024 * 1024
    kw = {"page_size": 4096, "max_bytes": 1024 * mib, "reserve_bytes": 8 * mib}
    # A file of 40 MiB that holds 2 MiB of live pages on a disk with 1 MiB free: the
    # 38 MiB of free pages are room (finishing messages never shrinks the file).
    assert full_reason(used_pages=512, file_pages=10240, disk_free=mib, **kw) == ""
    # The same live data in a file with no free pages: the disk is what is left.
    reason = full_reason(used_pages=10238, file_pages=10240, disk_free=mib, **kw)
    assert "--store-reserve-bytes" in reason and "disk has 1048576 bytes free" in reason
    # The cap counts live pages only, and names both flags.
    reason = full_reason(used_pages=1020 * 256, file_pages=1021 * 256, disk_free=None, **kw)
    assert "--max-store-bytes" in reason and "--store-reserve-bytes" in reason
    assert full_reason(used_pages=100, file_pages=102, disk_free=None, **kw) == ""


def test_crash_record_check(tmp_path: Path) -> None:
    from pairq.broker.store import CrashedStoreError, CrashRecord

    rec = CrashRecord(tmp_path)
    rec.check()  # no record: nothing to say
    rec.path.write_text("")  # what a kill -9 or a clean exit leaves
    rec.check()
    assert not rec.path.exists()
    rec.path.write_text("\nFatal Python error: Bus error\n\nThread 0x1 (most recent call first):\n")
    with pytest.raises(CrashedStoreError, match="'Fatal Python error: Bus error'"):
        rec.check()
    assert rec.path.exists()  # kept: it moves aside with the store


async def test_the_writer_outlives_a_failing_write(opened: Store) -> None:
    """The chaos harness's bitflip found a writer thread killed by a SystemError that
    py-lmdb raised around MDB_BAD_TXN: every later commit then hung (replication lag
    stuck, never healed). A write that raises fails its own batch only; one that
    raises LMDB's structure error (also wrapped) stops the store as corrupt."""
    from pairq.broker.store import Write

    fatal: list[BaseException] = []
    opened.on_fatal = fatal.append

    class Boom(Write):
        __slots__ = ("exc",)

        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        def apply(self, txn: object, s: Store) -> None:
            raise self.exc

    with pytest.raises(StoreFullError, match="store write failed: a bug"):
        await opened.commit(Boom(ValueError("a bug")))
    assert not fatal
    await opened.commit(_append(opened, 1, 1, _records(3, 50)))  # the writer is alive
    assert opened.log.get(1, 3) is not None
    wrapped = SystemError("<method 'delete' of 'Cursor' objects> returned a result")
    wrapped.__cause__ = lmdb.BadTxnError("MDB_BAD_TXN")
    with pytest.raises(StoreFullError, match="store is corrupt"):
        await opened.commit(Boom(wrapped))
    assert fatal == [wrapped]
    await opened.commit(_append(opened, 1, 4, _records(1, 50)))  # still alive to drain


async def test_writes_of_one_loop_turn_reach_the_writer_together_in_order(opened: Store) -> None:
    """Store._enqueue hands a loop turn's writes to the writer thread at the end of the
    turn, as one group (one commit), in the order they were queued; a write queued
    after the turn's group commits in a later commit."""
    recs = _records(6, 40)
    before = opened.commits
    futs = [opened.commit(_append(opened, 1, seq, [recs[seq]])) for seq in range(5)]
    assert opened.commits == before  # nothing handed over before the turn ends
    await asyncio.gather(*futs)
    assert opened.commits == before + 1
    assert [opened.log.get(1, seq) for seq in range(5)] == [
        (r, c) for r, c in zip(recs[:5], crcs(recs[:5]), strict=True)
    ]
    late = opened.commit(_append(opened, 1, 5, [recs[5]]))
    await late
    assert opened.commits == before + 2 and opened.log.get(1, 5) == (recs[5], crcs(recs[5:])[0])


async def test_close_commits_what_a_loop_turn_left_pending(tmp_path: Path) -> None:
    """close() (run in a thread at shutdown) hands over writes still waiting for the end
    of their loop turn before it stops the writer: they are durable after a reopen."""
    s = Store(tmp_path / "s", max_bytes=256 * MiB, reserve_bytes=MiB)
    s.open()
    s.start(asyncio.get_running_loop())
    recs = _records(3, 40)
    s.post(_append(s, 7, 0, recs))  # no await: still pending when close() runs
    await asyncio.to_thread(s.close)
    again = Store(tmp_path / "s", max_bytes=256 * MiB, reserve_bytes=MiB)
    again.open()
    try:
        assert [again.log.get(7, seq) for seq in range(3)] == list(
            zip(recs, crcs(recs), strict=True)
        )
    finally:
        again.close()


async def test_a_name_no_client_could_have_created_is_malformed_store_data(
    tmp_path: Path,
) -> None:
    """make chaos (bitflip, seed 2, session 8): a standby topic named 'ch`os' (one bit
    from 'chaos') became a topic of the owner, which then replicated it in every
    batch and the partner refused every one of them: a wedged pair. A name read back
    from the store that is not a valid name is malformed data (at start-up a corrupt
    store, re-silvered from the partner), never a topic."""
    from pairq.broker.store import MALFORMED

    path = tmp_path / "s"
    s = Store(path, max_bytes=256 * MiB, reserve_bytes=MiB)
    s.open()
    s.start(asyncio.get_running_loop())
    recs = _records(2, 50)
    await s.commit(
        s.catalog.put_topic("chaos", 1, False),
        _append(s, 1, 0, recs),
        s.standby.append("chaos", 0, recs, crcs(recs), index=True),
    )
    s.close()
    for db, key, bad in (
        ("catalog", schema.catalog_topic_key("chaos"), schema.catalog_topic_key("ch`os")),
        ("sb_msgs", schema.sb_msg_key("chaos", 0), None),
    ):
        env = lmdb.open(str(path), max_dbs=32)
        with env.begin(write=True) as txn:
            d = env.open_db(db.encode(), txn=txn)
            if bad is None:  # a valid copy, re-checked at its new key: only the name is wrong
                from pairq.broker.checksum import crc

                bad = schema.sb_msg_key("ch`os", 0)
                txn.put(bad, schema.pack_record(bad, crc(recs[0]), recs[0]), db=d)
            else:
                txn.put(bad, txn.get(key, db=d), db=d)
            txn.delete(key, db=d)
        env.close()
        s = Store(path, max_bytes=256 * MiB, reserve_bytes=MiB)
        s.open()
        try:
            with pytest.raises(MALFORMED, match="invalid topic or channel name 'ch`os'"):
                if db == "catalog":
                    s.catalog.load()
                else:
                    s.standby.load()
        finally:
            s.close()


async def test_page_counts_larger_than_the_file_are_a_corrupt_store(tmp_path: Path) -> None:
    """make chaos (bitflip, seed 2, session 8): a flipped bit in the page count LMDB
    keeps in a tree's record (2^60 pages) made the store look full for good: every
    publish and every batch from the partner refused, GetStats failing. LMDB checks
    no such count, so the store does: more pages than the file holds is a corrupt
    structure (at start-up: re-silvered from the partner)."""
    path = tmp_path / "s"
    s = Store(path, max_bytes=256 * MiB, reserve_bytes=MiB)
    s.open()
    s.start(asyncio.get_running_loop())
    await s.commit(_append(s, 1, 0, _records(50, 100)))
    s.close()
    env = lmdb.open(str(path), max_dbs=32, readonly=True, lock=False)
    with env.begin() as txn:
        record = bytes(txn.get(b"msgs"))  # its MDB_db: leaf pages at bytes 16..24
    env.close()
    raw = bytearray((path / "data.mdb").read_bytes())
    damaged = record[:23] + bytes([record[23] ^ 0x10]) + record[24:]
    at = raw.find(record)
    assert at >= 0
    while at >= 0:
        raw[at : at + len(record)] = damaged
        at = raw.find(record, at + 1)
    (path / "data.mdb").write_bytes(bytes(raw))
    s = Store(path, max_bytes=256 * MiB, reserve_bytes=MiB)
    with pytest.raises(lmdb.CorruptedError, match="page counts add up to"):
        s.open()
    with contextlib.suppress(Exception):
        s.close()


async def test_a_tree_whose_flags_changed_is_a_corrupt_structure(tmp_path: Path) -> None:
    """make chaos (bitflip, seed 3, session 8): after a flipped bit in a tree's record,
    every cleanup failed with MDB_INCOMPATIBLE ("Operation and DB incompatible, or DB
    flags changed"), an error the writer did not count as damage: it failed each
    batch, the takeover retried for ever and 1,680 acknowledged messages were never
    delivered. That damage cannot be aimed at from here (which page LMDB reads the
    flags from depends on the file), so a real store's write raises what LMDB raised
    there; the writer must report it as the store's end (``on_fatal``)."""
    from pairq.broker.store import Write

    class Incompatible(Write):
        def apply(self, txn: object, s: Store) -> None:
            raise lmdb.IncompatibleError(
                "mdb_cursor_del: MDB_INCOMPATIBLE: Operation and DB incompatible, or DB flags changed"
            )

    s = Store(tmp_path / "s", max_bytes=256 * MiB, reserve_bytes=MiB)
    s.open()
    fatal: list[BaseException] = []
    s.on_fatal = fatal.append
    s.start(asyncio.get_running_loop())
    try:
        with pytest.raises(StoreFullError, match="store is corrupt"):
            await s.commit(Incompatible())
        assert len(fatal) == 1 and isinstance(fatal[0], lmdb.IncompatibleError)
    finally:
        s.close()


async def test_a_value_too_short_to_hold_its_check_reads_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s"
    await _six_records_owned_and_standby(path)
    env = lmdb.open(str(path), max_dbs=32)
    with env.begin(write=True) as txn:
        txn.put(schema.seq_key(1, 2), b"\x01\x02", db=env.open_db(b"msgs", txn=txn))
    env.close()
    s = Store(path, max_bytes=256 * MiB, reserve_bytes=MiB)
    s.open()
    s.start(asyncio.get_running_loop())
    try:
        got = s.log.read(1, 0, 10, 100, stop_at_corrupt=False)
        assert [q for q, _ in got.rows] == [0, 1, 3, 4, 5] and got.corrupt == [2]
        assert len(got.crcs) == 5 and s.integrity.failures == 1
    finally:
        s.close()


def test_a_corrupt_store_is_moved_to_a_name_not_taken(tmp_path: Path) -> None:
    """A store found corrupt while running is moved aside; the restart may find the
    next one corrupt within the same second: the second move must not collide."""
    from pairq.broker.broker import aside_name

    store = tmp_path / "store"
    store.mkdir()
    first = aside_name(store)
    assert first.parent == tmp_path and first.name.startswith("store.corrupt-")
    store.rename(first)
    store.mkdir()
    second = aside_name(store)
    assert second != first and not second.exists()
    store.rename(second)
    assert first.is_dir() and second.is_dir()
