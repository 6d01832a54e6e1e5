"""The commit log's format and its recovery plan (pairq/broker/commitlog.py): records
that are torn or stale end a segment, recovery starts at the newest durable base, a
gap is corruption, voided commits are not redone; and a Store redoes what a crash
left only in the log."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import lmdb
import pytest

from pairq.broker import schema as sc
from pairq.broker.commitlog import (
    COMMIT,
    DURABLE,
    FILES,
    CommitLog,
    CommitLogError,
    Recorder,
    apply_record,
    encode_header,
    encode_record,
    meta_txnid,
    plan_recovery,
    read_segment,
)
from pairq.broker.store import _STOP, CorruptStoreError, Store, _put

META = b"\x01" * 8192


def _seg(gen: int, base: int, records: list[tuple[int, int, bytes]], flags: int = 0) -> bytes:
    raw = encode_header(gen, base, flags, META)
    for lsn, kind, payload in records:
        raw += encode_record(lsn, kind, payload)
    return raw


def test_records_are_read_back_in_order_until_a_torn_one() -> None:
    raw = _seg(3, 10, [(11, COMMIT, b"a"), (12, COMMIT, b"bb"), (13, COMMIT, b"ccc")])
    seg = read_segment(raw, 0)
    assert seg is not None and seg.gen == 3 and seg.base == 10 and seg.meta == META
    assert [r[0] for r in seg.records] == [11, 12, 13] and seg.last == 13
    # Tear the last record: one byte of its payload lost.
    torn = read_segment(raw[:-1], 0)
    assert torn is not None and [r[0] for r in torn.records] == [11, 12]
    # A flipped bit in a payload ends the segment there.
    bad = bytearray(raw)
    bad[-2] ^= 0x10
    flipped = read_segment(bytes(bad), 0)
    assert flipped is not None and [r[0] for r in flipped.records] == [11, 12]


def test_stale_records_of_an_older_generation_are_not_read() -> None:
    # A reused file: a new header, one record, then the old segment's records.
    old = _seg(1, 0, [(1, COMMIT, b"x" * 50), (2, COMMIT, b"y" * 50), (3, COMMIT, b"z")])
    new = _seg(3, 7, [(8, COMMIT, b"n")])
    raw = new + old[len(new) :]
    seg = read_segment(raw, 0)
    assert seg is not None and [r[0] for r in seg.records] == [8]


def test_a_bad_header_is_no_segment() -> None:
    raw = bytearray(_seg(1, 0, [(1, COMMIT, b"a")]))
    assert read_segment(bytes(raw), 0) is not None
    raw[20] ^= 1
    assert read_segment(bytes(raw), 0) is None
    assert read_segment(b"", 0) is None
    assert read_segment(b"\0" * 9000, 0) is None


def test_recovery_starts_at_the_newest_durable_base() -> None:
    q = struct.Struct("<Q").pack
    older = read_segment(
        _seg(4, 10, [(11, DURABLE, q(10)), (12, COMMIT, b"a"), (13, COMMIT, b"b")]), 0
    )
    newer = read_segment(_seg(5, 13, [(14, COMMIT, b"c")]), 1)
    assert older is not None and newer is not None
    # The newer segment's base (13) was never synced: start from the older one.
    plan = plan_recovery([newer, older])
    assert plan.start is older and [lsn for lsn, _ in plan.replay] == [12, 13, 14]
    assert plan.last_lsn == 14 and plan.next_gen == 6 and plan.restore
    # Once the newer one holds its DURABLE record it is the start.
    newer2 = read_segment(_seg(5, 13, [(14, COMMIT, b"c"), (15, DURABLE, q(13))]), 1)
    assert newer2 is not None
    plan = plan_recovery([older, newer2])
    assert plan.start is newer2 and [lsn for lsn, _ in plan.replay] == [14]


def test_a_segment_durable_from_the_start_with_nothing_after_needs_no_restore() -> None:
    seg = read_segment(_seg(2, 40, [], flags=1), 0)
    assert seg is not None
    plan = plan_recovery([seg])
    assert plan.start is seg and not plan.replay and not plan.restore and plan.last_lsn == 40


def test_a_gap_between_segments_is_corruption() -> None:
    older = read_segment(_seg(1, 0, [(1, COMMIT, b"a")], flags=1), 0)
    newer = read_segment(_seg(2, 5, [(6, COMMIT, b"b")]), 1)
    assert older is not None and newer is not None
    with pytest.raises(CommitLogError, match="gap"):
        plan_recovery([older, newer])


def test_no_durable_base_is_corruption() -> None:
    seg = read_segment(_seg(1, 0, [(1, COMMIT, b"a")]), 0)
    assert seg is not None
    with pytest.raises(CommitLogError, match="durable base"):
        plan_recovery([seg])


def test_a_voided_commit_is_not_redone() -> None:
    seg = read_segment(
        _seg(1, 0, [(1, COMMIT, b"a"), (2, 2, struct.pack("<Q", 1)), (3, COMMIT, b"b")], 1), 0
    )
    assert seg is not None
    assert [lsn for lsn, _ in plan_recovery([seg]).replay] == [3]


def test_a_recorded_transaction_redoes_to_the_same_state(tmp_path: Path) -> None:
    """Puts, cursor puts, deletes, cursor deletes and drops, recorded in one
    environment and redone in another, leave both with the same contents."""
    envs = [lmdb.open(str(tmp_path / n), max_dbs=4, map_size=1 << 24) for n in "ab"]
    dbs = [[e.open_db(n) for n in (b"x", b"y")] for e in envs]
    with envs[0].begin(write=True) as txn:
        for db in dbs[0]:
            for i in range(20):
                txn.put(b"k%02d" % i, b"v%d" % i, db=db)
    with envs[1].begin(write=True) as txn:
        for db in dbs[1]:
            for i in range(20):
                txn.put(b"k%02d" % i, b"v%d" % i, db=db)
    index = {id(h): i for i, h in enumerate(dbs[0])}
    with envs[0].begin(write=True) as txn:
        rec = Recorder(txn, index)
        rec.put(b"new", b"1", db=dbs[0][0])
        rec.cursor(db=dbs[0][1]).putmulti([(b"m1", b"a"), (b"m2", b"b" * 3000)])
        rec.delete(b"k03", db=dbs[0][0])
        cur = rec.cursor(db=dbs[0][0])
        assert cur.set_range(b"k10")
        while cur.key() and cur.key() < b"k15":
            assert cur.delete()
        rec.drop(dbs[0][1], delete=False)
        rec.put(b"after-drop", b"2", db=dbs[0][1])
        payload = rec.payload()
    with envs[1].begin(write=True) as txn:
        assert apply_record(txn, dbs[1], payload) == 1 + 2 + 1 + 5 + 1 + 1

    def contents(i: int) -> list[list[tuple[bytes, bytes]]]:
        with envs[i].begin() as txn:
            return [list(txn.cursor(db=db)) for db in dbs[i]]

    assert contents(0) == contents(1)
    assert contents(1)[1] == [(b"after-drop", b"2")]
    with pytest.raises(CommitLogError):
        with envs[1].begin(write=True) as txn:
            apply_record(txn, dbs[1], b"\x50\x00\xff\xff")  # a put cut short
    for e in envs:
        e.close()


def test_meta_txnid_reads_lmdbs_transaction_id(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path), map_size=1 << 24)
    for i in range(5):
        with env.begin(write=True) as txn:
            txn.put(b"k%d" % i, b"v")
    psize = env.stat()["psize"]
    with (tmp_path / "data.mdb").open("rb") as fh:
        meta = fh.read(2 * psize)
    assert meta_txnid(meta, psize) == env.info()["last_txnid"] == 5
    env.close()


# ------------------------------------------------------------------ Store
async def _fill(s: Store, keys: range) -> None:
    for i in keys:
        await s.commit(_put(sc.META, b"key%05d" % i, b"value%d" % i))


def _crash(s: Store) -> None:
    """Leave the store as kill -9 would: no checkpoint, nothing synced (its unsynced
    pages stay in the page cache, as a killed process's do). The environment is
    closed only so that this process may open the store again."""
    assert s._thread is not None
    s._q.put(_STOP)
    s._thread.join()
    if s._ckpt_thread is not None:
        s._ckpt_q.put(None)
        s._ckpt_thread.join()
    for pin in s._pins:
        pin.abort()
    assert s.clog is not None
    s.clog.close()
    os.close(s._data_fd)
    s.env.close()
    s._thread = s._ckpt_thread = s.clog = s.env = None
    s._pins = []
    s._data_fd = -1


def test_a_store_redoes_what_only_its_log_holds(tmp_path: Path) -> None:
    async def main() -> None:
        s = Store(tmp_path / "s", checkpoint_interval_ms=60_000)
        s.open()
        assert s.clog is not None
        s.start(asyncio.get_running_loop())
        await _fill(s, range(100))
        assert s.clog.commits == 100 and s.checkpoints == 0
        # Damage the data file the way a power cut may: its meta pages are back at
        # the last checkpoint's (here, the open's) and pages after it are garbage.
        # The log's copy of the meta pages and its records make it whole again.
        meta = CommitLog(s.path).read()
        assert len(meta) == 1
        data = s.path / "data.mdb"
        with data.open("r+b") as fh:
            fh.write(b"\xee" * 8192)  # both meta pages gone
        _crash(s)

    asyncio.run(main())
    s2 = Store(tmp_path / "s")
    s2.open()
    try:
        assert s2.replayed == 100
        assert all(s2._get(sc.META, b"key%05d" % i) == b"value%d" % i for i in range(100))
    finally:
        s2.close()
    s3 = Store(tmp_path / "s")
    s3.open()  # closed cleanly: nothing to redo
    assert s3.replayed == 0 and s3._get(sc.META, b"key00099") == b"value99"
    s3.close()


def test_checkpoints_keep_the_log_short_and_the_data_whole(tmp_path: Path) -> None:
    async def main() -> None:
        s = Store(tmp_path / "s", checkpoint_interval_ms=10, commit_log_bytes=65536)
        s.open()
        s.start(asyncio.get_running_loop())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        i = 0
        while s.checkpoints < 5:
            assert loop.time() < deadline, s.checkpoints
            await _fill(s, range(i, i + 20))
            i += 20
        n = i
        _crash(s)
        s2 = Store(tmp_path / "s")
        s2.open()
        try:
            assert s2.replayed < n  # the checkpoints covered the rest
            assert all(s2._get(sc.META, b"key%05d" % k) is not None for k in range(n))
        finally:
            s2.close()

    asyncio.run(main())


def test_a_log_without_its_data_file_is_a_corrupt_store(tmp_path: Path) -> None:
    async def main() -> None:
        s = Store(tmp_path / "s", checkpoint_interval_ms=60_000)
        s.open()
        s.start(asyncio.get_running_loop())
        await _fill(s, range(3))
        _crash(s)

    asyncio.run(main())
    os.unlink(tmp_path / "s" / "data.mdb")
    with pytest.raises(CorruptStoreError, match=r"data\.mdb is missing"):
        Store(tmp_path / "s").open()


def test_a_data_file_older_than_its_log_is_refused(tmp_path: Path) -> None:
    s = Store(tmp_path / "old")
    s.open()
    s.close()
    old = (tmp_path / "old" / "data.mdb").read_bytes()

    async def main() -> None:
        s = Store(tmp_path / "s", checkpoint_interval_ms=60_000)
        s.open()
        s.start(asyncio.get_running_loop())
        await _fill(s, range(30))
        s._checkpoint_now()
        await _fill(s, range(30, 40))
        _crash(s)

    asyncio.run(main())
    (tmp_path / "s" / "data.mdb").write_bytes(old)
    with pytest.raises(CorruptStoreError, match="older than its log"):
        Store(tmp_path / "s").open()


def test_without_a_log_the_store_still_redoes_one_left_behind(tmp_path: Path) -> None:
    """--commit-log-bytes 0 after a crash with the log on: the log is redone, then
    removed."""

    async def main() -> None:
        s = Store(tmp_path / "s", checkpoint_interval_ms=60_000)
        s.open()
        s.start(asyncio.get_running_loop())
        await _fill(s, range(10))
        _crash(s)

    asyncio.run(main())
    s2 = Store(tmp_path / "s", commit_log_bytes=0)
    s2.open()
    assert s2.clog is None and s2.replayed == 10
    assert not any((tmp_path / "s" / f).exists() for f in FILES)
    assert s2._get(sc.META, b"key00009") == b"value9"
    s2.close()


def test_a_deferred_header_and_a_durable_record_ride_with_the_next_record(tmp_path: Path) -> None:
    c = CommitLog(tmp_path)
    c.open(0, 1)
    c.begin_segment(0, META, durable=True)
    assert c.append(COMMIT, b"one") == 1
    c.begin_segment(1, META, durable=False, defer=True)  # a checkpoint at LSN 1
    assert (tmp_path / FILES[1]).stat().st_size == 0  # nothing written yet
    assert c.append(COMMIT, b"two") == 2  # the header went with it
    c.pending_durable = 1  # the checkpointer synced the data file at LSN 1
    assert c.append(COMMIT, b"three") == 4 and c.durable_written
    segs = {s.gen: s for s in c.read()}
    assert segs[2].base == 1 and [(r[0], r[1]) for r in segs[2].records] == [
        (2, COMMIT),
        (3, DURABLE),
        (4, COMMIT),
    ]
    plan = plan_recovery(list(segs.values()))
    assert plan.start is not None and plan.start.gen == 2
    assert [lsn for lsn, _ in plan.replay] == [2, 4]
    # Idle: a header and a DURABLE record with nothing to carry them are written alone.
    c.begin_segment(0, META, durable=False, defer=True)
    c.pending_durable = 4
    assert c.flush_pending() and c.lsn == 5
    seg = next(s for s in c.read() if s.gen == 3)
    assert seg.base == 4 and seg.durable_base() and [r[0] for r in seg.records] == [5]
    assert not c.flush_pending()  # nothing left
    c.close()
