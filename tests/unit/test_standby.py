"""StandbyStore's bookkeeping of copies the owner has not confirmed yet (real LMDB)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pairq.broker import checksum, wire
from pairq.broker import store as st
from pairq.broker.pair.standby import StandbyStore, validate_batch
from pairq.v1 import replication_pb2 as rpb


def _batch(
    topic: str, seq: int, ids: list[bytes], *, uncommitted: bool = True, **kw: object
) -> rpb.ReplicaBatch:
    recs = [wire.encode_record(i, b"body", time.time_ns()) for i in ids]
    return rpb.ReplicaBatch(
        batch_id=1,
        appends=[
            rpb.ReplicaAppend(topic=topic, first_seq=seq, records=recs, uncommitted=uncommitted)
        ],
        **kw,  # type: ignore[arg-type]
    )


async def test_uncommitted_ids_are_indexed_only_when_confirmed(tmp_path: Path) -> None:
    store = st.Store(tmp_path)
    store.open()
    store.start(asyncio.get_running_loop())
    try:
        sb = StandbyStore(store)
        ids = [os.urandom(16) for _ in range(3)]
        ops, confirmed = sb.apply_batch(_batch("t", 10, ids))
        assert confirmed == []
        await store.commit(*ops)
        # Stored as standby copies, but their ids are not indexed yet.
        assert [seq for seq, _ in store.standby.read("t", 0, 100).rows] == [10, 11, 12]
        assert store.log.known_ids(ids) == set()
        assert sb.unconfirmed_ids == set(ids)
        # Confirming two of them indexes exactly those, once their batch commits.
        ops, confirmed = sb.apply_batch(
            rpb.ReplicaBatch(
                batch_id=2, committed=[rpb.ReplicaRange(topic="t", first_seq=10, count=2)]
            )
        )
        assert confirmed == ids[:2]
        waiter = asyncio.ensure_future(sb.wait_confirmed(ids[:2], timeout=5))
        await asyncio.sleep(0)
        fut = store.commit(*ops)
        sb.confirm_after(fut, confirmed)
        assert await waiter == set(ids[:2])
        assert store.log.known_ids(ids) == set(ids[:2])
        assert sb.unconfirmed_ids == {ids[2]}
        # Committed appends (catch-up) are indexed at once.
        done = [os.urandom(16)]
        ops, _ = sb.apply_batch(_batch("t", 13, done, uncommitted=False))
        await store.commit(*ops)
        assert store.log.known_ids(done) == set(done)
    finally:
        store.close()


async def test_unconfirmed_fates_new_stream_floor_takeover_timeout(tmp_path: Path) -> None:
    store = st.Store(tmp_path)
    store.open()
    store.start(asyncio.get_running_loop())
    try:
        sb = StandbyStore(store)
        a, b, c, d = (os.urandom(16) for _ in range(4))
        sb.apply_batch(_batch("t", 0, [a, b]))
        sb.apply_batch(_batch("u", 0, [c]))
        sb.apply_batch(_batch("v", 0, [d]))
        # The owner's floor passed seq 0 of "t" without confirming it: its commit failed.
        w = asyncio.ensure_future(sb.wait_confirmed([a, b], timeout=5))
        await asyncio.sleep(0)
        sb.apply_batch(
            rpb.ReplicaBatch(
                batch_id=2, progress=[rpb.ReplicaProgress(topic="t", channel="c", floor=1)]
            )
        )
        assert a not in sb.unconfirmed_ids and b in sb.unconfirmed_ids
        # Taken over: owned here now, so "stored".
        w2 = asyncio.ensure_future(sb.wait_confirmed([c], timeout=5))
        await asyncio.sleep(0)
        sb.forget_unconfirmed("u", taken_over=True)
        assert await w2 == {c}
        # A new stream: unknown fate, so "not stored" (a retry is stored afresh).
        sb.forget_unconfirmed()
        assert await w == set()
        assert sb.unconfirmed_ids == set()
        # Nobody confirms: the wait ends at its timeout with nothing stored.
        sb.apply_batch(_batch("v", 1, [d]))
        t0 = time.monotonic()
        assert await sb.wait_confirmed([d], timeout=0.05) == set()
        assert time.monotonic() - t0 < 2
        assert sb._waiters == {}
    finally:
        store.close()


def test_committed_ranges_are_validated() -> None:
    ok = rpb.ReplicaBatch(committed=[rpb.ReplicaRange(topic="t", first_seq=5, count=10)])
    assert validate_batch(ok, 1024) == ""
    assert "topic" in validate_batch(
        rpb.ReplicaBatch(committed=[rpb.ReplicaRange(topic="a\0b", count=1)]), 1024
    )
    assert validate_batch(
        rpb.ReplicaBatch(committed=[rpb.ReplicaRange(topic="t", count=10**6)]), 1024
    )


def test_confirmations_and_floors_split_runs_of_unconfirmed_copies(tmp_path: Path) -> None:
    sb = StandbyStore(st.Store(tmp_path))
    ids = [os.urandom(16) for _ in range(5)]  # seqs 10..14
    sb.apply_batch(_batch("t", 10, ids))
    _, confirmed = sb.apply_batch(
        rpb.ReplicaBatch(batch_id=2, committed=[rpb.ReplicaRange(topic="t", first_seq=11, count=2)])
    )
    assert confirmed == ids[1:3]
    sb._resolve(confirmed, True)
    assert sb.unconfirmed_ids == {ids[0], ids[3], ids[4]}
    assert sb.unconfirmed["t"] == {10: [ids[0]], 13: ids[3:]}
    # The owner's floor passed 10 and 13 unconfirmed: those commits failed.
    sb.apply_batch(
        rpb.ReplicaBatch(
            batch_id=3, progress=[rpb.ReplicaProgress(topic="t", channel="c", floor=14)]
        )
    )
    assert sb.unconfirmed_ids == {ids[4]} and sb.unconfirmed["t"] == {14: [ids[4]]}
    _, confirmed = sb.apply_batch(
        rpb.ReplicaBatch(
            batch_id=4, committed=[rpb.ReplicaRange(topic="t", first_seq=0, count=100)]
        )
    )
    assert confirmed == [ids[4]] and "t" not in sb.unconfirmed


# -- validate_batch: what the partner refuses before it touches its store ------------


def _rec(body: bytes = b"x" * 200) -> bytes:
    return wire.encode_plain_record(os.urandom(16), body, wire.timestamp_field(1))


def test_validate_batch_accepts_a_good_batch_and_names_what_is_wrong() -> None:
    r1, r2 = _rec(), _rec()
    good = rpb.ReplicaBatch(
        batch_id=1,
        appends=[
            rpb.ReplicaAppend(
                topic="t", first_seq=5, records=[r1, r2], crcs=checksum.crcs([r1, r2])
            )
        ],
        committed=[rpb.ReplicaRange(topic="t", first_seq=3, count=2)],
        progress=[rpb.ReplicaProgress(topic="t", channel="c", floor=2, finished=[4])],
        deleted_topics=["gone"],
    )
    assert validate_batch(good, 1 << 20) == ""
    # the same batch again (names now cached as valid) is still fine
    assert validate_batch(good, 1 << 20) == ""

    def bad(**kw: object) -> str:
        b = rpb.ReplicaBatch()
        b.CopyFrom(good)
        for k, v in kw.items():
            b.ClearField(k)
            getattr(b, k).extend(v)  # type: ignore[arg-type]
        return validate_batch(b, 1 << 20)

    assert "invalid topic name" in bad(
        appends=[rpb.ReplicaAppend(topic="t\x00", first_seq=1, records=[r1])]
    )
    assert "out of range" in bad(
        appends=[rpb.ReplicaAppend(topic="t", first_seq=2**63, records=[r1])]
    )
    assert "size out of range" in bad(
        appends=[rpb.ReplicaAppend(topic="t", first_seq=1, records=[b"short"])]
    )
    assert "size out of range" in validate_batch(
        rpb.ReplicaBatch(
            appends=[rpb.ReplicaAppend(topic="t", first_seq=1, records=[_rec(b"y" * 70_000)])]
        ),
        1000,
    )
    assert "1 checksums for 2 records" in bad(
        appends=[
            rpb.ReplicaAppend(topic="t", first_seq=1, records=[r1, r2], crcs=[checksum.crc(r1)])
        ]
    )
    flipped = checksum.crc(r2) ^ 1
    msg = bad(
        appends=[
            rpb.ReplicaAppend(
                topic="t", first_seq=7, records=[r1, r2], crcs=[checksum.crc(r1), flipped]
            )
        ]
    )
    assert "record 8 of topic 't' failed its checksum in transit" in msg
    assert "invalid name" in bad(progress=[rpb.ReplicaProgress(topic="t", channel="", floor=1)])
    assert "seq out of range" in bad(
        progress=[rpb.ReplicaProgress(topic="t", channel="c", finished=[2**63])]
    )
    assert "invalid topic name" in bad(deleted_topics=["bad name"])
    assert "invalid topic name" in bad(
        committed=[rpb.ReplicaRange(topic="#", first_seq=1, count=1)]
    )
    assert "out of bounds" in bad(committed=[rpb.ReplicaRange(topic="t", first_seq=1, count=10**9)])
