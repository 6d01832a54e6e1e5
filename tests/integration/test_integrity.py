"""Integrity with real processes: flipped bits in one broker's data file, a truncated
file and corrupt meta pages lose nothing acknowledged, and no corrupted body is ever
delivered (the consumer checks the sha256 each message carries in a header)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_pair import make_pair, stats, wait_healthy

from pairq.client import Consumer, Producer
from pairq.testing import BrokerProcess, eventually

TOPIC = "bits"
N = 240


def _body(i: int, rng: random.Random) -> bytes:
    # Random bytes: every body is unique, so its offset in the file identifies it.
    return b"m%05d-" % i + bytes(rng.getrandbits(8) for _ in range(90))


async def _publish(a: BrokerProcess, b: BrokerProcess, rng: random.Random) -> dict[bytes, bytes]:
    """N messages to ``a`` with their sha256 in a header; (id -> body) of the acked ones."""
    acked: dict[bytes, bytes] = {}
    async with Producer(brokers=[a.address], retry_timeout=20) as p:
        await p.publish(TOPIC, b"warm", headers={"sha256": hashlib.sha256(b"warm").hexdigest()})
        for i in range(N):
            body = _body(i, rng)
            ack = await p.publish(TOPIC, body, headers={"sha256": hashlib.sha256(body).hexdigest()})
            assert ack.copies == 2
            acked[ack.id] = body
    return acked


def _flip_bodies(data_file: Path, bodies: list[bytes], rng: random.Random) -> int:
    """Flip one random bit inside each of ``bodies`` wherever it lies in the file (a
    bad disk; LMDB's copy-on-write may have left stale copies in free pages too);
    returns how many bodies were found and flipped."""
    raw = bytearray(data_file.read_bytes())
    flipped = 0
    for body in bodies:
        offset = rng.randrange(len(body))
        bit = 1 << rng.randrange(8)
        at = raw.find(body)
        if at < 0:
            continue
        while at >= 0:
            raw[at + offset] ^= bit
            at = raw.find(body, at + 1)
        flipped += 1
    with data_file.open("r+b") as fh:  # in place: the same inode, as a disk error would be
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
    return flipped


async def _consume_all(
    a: BrokerProcess, b: BrokerProcess, acked: dict[bytes, bytes]
) -> dict[bytes, int]:
    """Consume from both brokers (de-duplication on); every body checked against its
    header; returns handler runs per id."""
    handled: dict[bytes, int] = {}
    bad: list[bytes] = []

    def handler(msg: Any) -> None:
        if hashlib.sha256(msg.body).hexdigest() != msg.headers.get("sha256"):
            bad.append(msg.id)
        handled[msg.id] = handled.get(msg.id, 0) + 1

    async with Consumer(
        TOPIC,
        "work",
        brokers=[a.address, b.address],
        handler=handler,
        max_in_flight=50,
        reconnect_backoff=0.05,
        reconnect_backoff_max=0.3,
    ) as consumer:
        await eventually(lambda: set(acked) <= set(handled), timeout=60)
        await consumer.wait_idle(timeout=20)
    assert not bad, f"{len(bad)} corrupted bodies were delivered"
    return handled


async def _each_handled_once(a: BrokerProcess, b: BrokerProcess, acked: dict[bytes, bytes]) -> None:
    """Every acked message reaches a handler exactly once (bodies checked)."""
    handled = await _consume_all(a, b, acked)
    assert set(acked) <= set(handled)
    assert all(handled[i] == 1 for i in acked), "a handler ran twice"


async def _start_and_publish(
    a: BrokerProcess, b: BrokerProcess, rng: random.Random
) -> dict[bytes, bytes]:
    """Start the pair, make the channel (so records are kept for it) and publish."""
    a.start()
    b.start()
    await wait_healthy(a, b)
    await _make_channel(a)
    acked = await _publish(a, b, rng)
    await checkpointed(a, b)
    return acked


async def checkpointed(*brokers: BrokerProcess) -> None:
    """Wait until every commit of each broker's store is checkpointed (its commit log
    holds nothing after the last checkpoint). The tests here damage data.mdb while the
    broker is stopped; commits redone from the log at the next start would write over
    the damage (pages written since the last checkpoint are rewritten by the redo)."""
    from pairq.broker.commitlog import CommitLog, plan_recovery

    for p in brokers:
        log = CommitLog(Path(p.data_dir) / "store")
        await eventually(lambda log=log: not plan_recovery(log.read()).replay, timeout=15)


async def _make_channel(a: BrokerProcess) -> None:
    import grpc

    from pairq.v1 import broker_pb2 as pb
    from pairq.v1 import broker_pb2_grpc as pbg

    async with grpc.aio.insecure_channel(a.address) as ch:
        await pbg.BrokerServiceStub(ch).CreateChannel(
            pb.CreateChannelRequest(topic=TOPIC, channel="work"), timeout=10
        )


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_flipped_bits_while_stopped_are_repaired_from_the_partner(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    a, b = make_pair(tmp_path)
    try:
        acked = await _start_and_publish(a, b, rng)
        # Both stopped (kill -9), so neither takes the other's messages over: when they
        # are back the owner reads its own (now bad) records.
        a.stop()
        b.stop()
        victims = rng.sample(sorted(acked.values()), 12)
        flipped = _flip_bodies(Path(a.data_dir) / "store" / "data.mdb", victims, rng)
        assert flipped >= 10
        a.start()
        b.start()
        await wait_healthy(a, b)
        handled = await _consume_all(a, b, acked)
        assert set(acked) <= set(handled)
        assert all(handled[i] == 1 for i in acked), "a handler ran twice"
        st = (await stats(a.address)).integrity
        assert st.checksum_failures >= flipped and st.repairs >= flipped, st
        assert st.quarantined == 0
    finally:
        a.stop()
        b.stop()


async def test_flipped_bits_under_a_running_broker_are_never_delivered(tmp_path: Path) -> None:
    rng = random.Random(7)
    a, b = make_pair(tmp_path)
    try:
        acked = await _start_and_publish(a, b, rng)
        # Nobody consumed yet: the channel reads these back from disk when a consumer
        # comes. Corrupt them under the running broker (its reads see the page cache).
        victims = rng.sample(sorted(acked.values()), 12)
        flipped = _flip_bodies(Path(a.data_dir) / "store" / "data.mdb", victims, rng)
        assert flipped >= 10
        handled = await _consume_all(a, b, acked)
        assert all(handled[i] == 1 for i in acked)
        st = (await stats(a.address)).integrity
        assert st.repairs >= flipped, st
    finally:
        a.stop()
        b.stop()


async def test_scrub_finds_and_repairs_what_no_read_met(tmp_path: Path) -> None:
    rng = random.Random(11)
    a, b = make_pair(tmp_path)
    try:
        acked = await _start_and_publish(a, b, rng)
        # Corrupt the partner's standby copies: nothing reads them until a takeover.
        victims = rng.sample(sorted(acked.values()), 8)
        flipped = _flip_bodies(Path(b.data_dir) / "store" / "data.mdb", victims, rng)
        assert flipped >= 6
        out = await _pairq_scrub(b.address)
        assert out.returncode == 0, out.stderr
        assert "bad" in out.stdout
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            st = (await stats(b.address)).integrity
            if st.repairs >= flipped:
                break
            assert asyncio.get_running_loop().time() < deadline, st
            await asyncio.sleep(0.1)
        assert st.last_scrub_bad >= flipped and st.quarantined == 0
        # Now kill the owner: the partner takes over good copies only.
        a.kill()
        handled = await _consume_all(a, b, acked)
        assert set(acked) <= set(handled)
    finally:
        a.stop()
        b.stop()


async def _pairq_scrub(address: str) -> subprocess.CompletedProcess[str]:
    """``pairq scrub --broker ADDRESS``, as an operator runs it."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pairq", "scrub", "--broker", address],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _text(path: str) -> str:
    return Path(path).read_text()


def _moved_aside(p: BrokerProcess) -> list[str]:
    return [d.name for d in Path(p.data_dir).iterdir() if d.name.startswith("store.corrupt-")]


def _corrupt_meta(data_file: Path) -> None:
    """Garbage over both LMDB meta pages (pages 0 and 1)."""
    with data_file.open("r+b") as fh:
        page = 4096
        fh.write(os.urandom(2 * page))
        fh.flush()
        os.fsync(fh.fileno())


async def test_corrupt_meta_pages_resilver_from_the_partner(tmp_path: Path) -> None:
    rng = random.Random(5)
    a, b = make_pair(tmp_path)
    try:
        acked = await _start_and_publish(a, b, rng)
        a.stop()
        _corrupt_meta(Path(a.data_dir) / "store" / "data.mdb")
        a.start()  # --on-corruption=resilver (the default in a pair)
        await wait_healthy(a, b, timeout=30)
        assert _moved_aside(a), "the corrupt store was not kept aside"
        log = _text(a.log_path)
        assert "is corrupt" in log and "re-fills" in log
        await _each_handled_once(a, b, acked)
    finally:
        a.stop()
        b.stop()


async def test_corrupt_meta_pages_with_on_corruption_exit_refuse_to_start(tmp_path: Path) -> None:
    rng = random.Random(6)
    a, b = make_pair(tmp_path, "--on-corruption", "exit")
    try:
        a.start()
        b.start()
        await wait_healthy(a, b)
        acked = await _publish(a, b, rng)
        await checkpointed(a)
        a.stop()
        data = Path(a.data_dir) / "store" / "data.mdb"
        _corrupt_meta(data)
        with pytest.raises(RuntimeError):
            a.start(timeout=10)
        out = _text(a.log_path)
        assert str(data) in out and "move the directory" in out
        # Nothing acked is lost: the partner takes the owner's messages over.
        handled = await _consume_all(b, b, acked)
        assert set(acked) <= set(handled)
    finally:
        a.stop()
        b.stop()


async def test_a_truncated_data_file_resilvers_from_the_partner(tmp_path: Path) -> None:
    rng = random.Random(8)
    a, b = make_pair(tmp_path)
    try:
        acked = await _start_and_publish(a, b, rng)
        a.stop()
        data = Path(a.data_dir) / "store" / "data.mdb"
        with data.open("r+b") as fh:
            fh.truncate(data.stat().st_size // 3)
        a.start()
        await wait_healthy(a, b, timeout=30)
        await _each_handled_once(a, b, acked)
    finally:
        a.stop()
        b.stop()


async def test_a_store_that_crashed_its_process_resilvers_and_a_kill_does_not(
    tmp_path: Path,
) -> None:
    """A corrupt LMDB page can kill a reader with SIGSEGV/SIGBUS instead of an error
    (the chaos harness's bitflip found one: memcpy past the map). The fault handler
    leaves a crash record in the store; the next start handles the store as corrupt
    (re-silver), so it does not crash on the same page again. A kill -9 leaves an empty
    record and the store is kept."""
    import signal

    rng = random.Random(9)
    a, b = make_pair(tmp_path)
    try:
        acked = await _start_and_publish(a, b, rng)
        a.stop()  # kill -9: not a crash of the store
        a.start()
        await wait_healthy(a, b, timeout=30)
        assert not _moved_aside(a)
        assert a.proc is not None
        a.proc.send_signal(signal.SIGSEGV)  # what a corrupt page does to a reader
        a.proc.wait(timeout=10)
        record = Path(a.data_dir) / "store" / "native-crash.log"
        assert "Segmentation fault" in record.read_text()
        a.start()
        await wait_healthy(a, b, timeout=30)
        aside = _moved_aside(a)
        assert len(aside) == 1, aside
        assert (Path(a.data_dir) / aside[0] / "native-crash.log").exists()  # for forensics
        log = _text(a.log_path)
        assert "died with 'Fatal Python error: Segmentation fault'" in log and "re-fills" in log
        await _each_handled_once(a, b, acked)
    finally:
        a.stop()
        b.stop()


def _mangle_standby_key(data_dir: Path, topic: str) -> int:
    """A flipped bit in the topic name of the standby copies' keys (invalid UTF-8):
    LMDB's structure is fine, only pairq's decoding of the key fails."""
    import lmdb

    env = lmdb.open(str(data_dir / "store"), max_dbs=32)
    moved = 0
    with env.begin(write=True) as txn:
        db = env.open_db(b"sb_msgs", txn=txn)
        prefix = topic.encode() + b"\0"
        items = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db) if bytes(k).startswith(prefix)]
        for k, v in items[:5]:
            txn.delete(k, db=db)
            txn.put(b"\xe1" + k[1:], v, db=db)
            moved += 1
    env.close()
    return moved


async def test_a_key_that_no_longer_decodes_resilvers_instead_of_crash_looping(
    tmp_path: Path,
) -> None:
    """The chaos harness's bitflip (make chaos, seed 1) flipped a bit in a standby key's
    topic name: every start of that broker died decoding it (UnicodeDecodeError), 38
    restarts, the pair never healed. Malformed data at start-up is a corrupt store."""
    rng = random.Random(12)
    a, b = make_pair(tmp_path)
    try:
        acked = await _start_and_publish(a, b, rng)
        b.stop()  # kill -9 the partner: it holds A's messages as standby copies
        assert _mangle_standby_key(Path(b.data_dir), TOPIC) == 5
        b.start()
        await wait_healthy(a, b, timeout=30)
        assert _moved_aside(b), "the store with malformed keys was not moved aside"
        log = _text(b.log_path)
        assert "holds malformed data (UnicodeDecodeError" in log and "re-fills" in log
        await _each_handled_once(a, b, acked)
    finally:
        a.stop()
        b.stop()


def _drop_records(data_dir: Path, topic: str, first: int, count: int) -> list[int]:
    """Make ``count`` of the topic's records vanish from the stopped broker's log, from
    its ``first``-th on, as a damaged B-tree page would (LMDB checksums none of its
    own pages, so such damage shows as records no read returns, not as bad records);
    returns their seqs."""
    import lmdb

    from pairq.broker import schema as sc

    env = lmdb.open(str(data_dir / "store"), max_dbs=32)
    try:
        with env.begin(write=True) as txn:
            cat = env.open_db(b"catalog", txn=txn)
            tid = sc.unpack_catalog(txn.get(sc.catalog_topic_key(topic), db=cat))[0]
            msgs = env.open_db(b"msgs", txn=txn)
            seqs = sorted(
                sc.unpack_seq_key(k)[1]
                for k, _ in txn.cursor(db=msgs)
                if sc.unpack_seq_key(k)[0] == tid
            )
            gone = seqs[first : first + count]
            for q in gone:
                assert txn.delete(sc.seq_key(tid, q), db=msgs)
    finally:
        env.close()
    return gone


async def test_records_that_vanished_from_the_owners_log_are_fetched_from_the_partner(
    tmp_path: Path,
) -> None:
    """make chaos (bitflip): random flips in a broker's file lost acknowledged messages
    with no checksum failure: the channel took every seq missing from a log read for a
    failed append and finished it unseen. A missing seq that no failed append or restart
    explains is now repaired from the partner's copy like a corrupt record."""
    rng = random.Random(7)
    a, b = make_pair(tmp_path)
    try:
        acked = await _start_and_publish(a, b, rng)
        a.stop()  # kill -9 both: neither takes the other's messages over
        b.stop()
        gone = _drop_records(Path(a.data_dir), TOPIC, 40, 60)
        assert len(gone) == 60
        a.start()
        b.start()
        await wait_healthy(a, b)
        await _each_handled_once(a, b, acked)  # 60 were gone from the owner's disk
        st = (await stats(a.address)).integrity
        assert st.repairs >= 60 and st.quarantined == 0 and st.missing_records >= 60, st
        log_a = _text(a.log_path)
        assert "missing from the store" in log_a and "repaired owned record" in log_a
    finally:
        a.stop()
        b.stop()


async def test_lmdb_corruption_found_while_loading_channels_is_a_corrupt_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make chaos (bitflip, seed 2): a flipped bit in a page of the channels' finished
    seqs passed the catalog's walk, and the channel load raised MDB_CORRUPTED: the
    broker exited 1 at every start (crash loop) instead of handling a corrupt store.
    LMDB's own page damage cannot be aimed at one tree here, so the real store's scan
    of that tree is made to raise what LMDB raised there; the rest is real."""
    import lmdb

    from pairq.broker.broker import Broker
    from pairq.broker.options import BrokerOptions
    from pairq.broker.store import ChannelProgress
    from pairq.errors import StoreCorruptError
    from pairq.testing import run_broker

    async with run_broker(tmp_path / "b") as b:
        async with Producer(b.address) as p:
            await p.publish(TOPIC, b"x")
        await b.topics[TOPIC].get_channel("c")  # a durable channel: loaded at start

    def damaged(self: Any, channel_id: int) -> list[int]:
        raise lmdb.CorruptedError("mdb_cursor_get: MDB_CORRUPTED: Located page was wrong type")

    monkeypatch.setattr(ChannelProgress, "finished", damaged)
    broker = Broker(BrokerOptions(data_dir=str(tmp_path / "b"), address="127.0.0.1:0"))
    with pytest.raises(StoreCorruptError, match=r"is corrupt .*Recovery: move the directory"):
        await broker.start()


def _break_tree_root(store: Path, tree: str) -> int:
    """Make the root page of one of the store's B-trees a page of the wrong type, in
    place under a running broker (its reads see the page cache), as a flipped bit in
    a page header does; returns the page number. The sub-database's record in LMDB's
    main tree (its MDB_db) ends with the root's page number."""
    import lmdb

    env = lmdb.open(str(store), max_dbs=64, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            record = txn.get(tree.encode())
        page_size = int(env.stat()["psize"])
    finally:
        env.close()
    assert record is not None and len(record) == 48, record
    root = int.from_bytes(record[40:48], "little")
    with (store / "data.mdb").open("r+b") as fh:
        fh.seek(root * page_size + 10)  # mp_flags, after mp_pgno (8) and mp_pad (2)
        fh.write((0x08).to_bytes(2, "little"))  # P_META: neither branch nor leaf
        fh.flush()
        os.fsync(fh.fileno())
    return root


async def test_a_scrub_that_meets_a_broken_tree_page_resilvers_the_store(tmp_path: Path) -> None:
    """make chaos (bitflip, seed 2, session 8) lost 110 acknowledged messages: bits
    flipped anywhere in p0a's file broke a page of its standby tree; no read met it
    until p0a, 16 s later, tried to take over from its partner (hit by the next
    fault) and had to drop its store, so neither broker held a good copy of the
    partner's damaged records. The scrub checked only the records' checksums, and a
    broken B-tree page raised out of it. Now the scrub walks every tree, and a page
    LMDB finds broken is handled as the corrupt store it is, while the partner still
    has every record: the store is moved aside and re-filled."""
    rng = random.Random(7)
    a, b = make_pair(tmp_path)
    try:
        acked = await _start_and_publish(a, b, rng)
        _break_tree_root(Path(b.data_dir) / "store", "sb_msgs")
        out = await _pairq_scrub(b.address)
        assert out.returncode != 0, out.stdout
        assert "DATA_LOSS" in out.stderr or "corrupt" in out.stderr, out.stderr
        assert b.proc is not None
        await eventually(lambda: b.proc.poll() is not None, timeout=20)
        assert b.proc.returncode == 3, b.proc.returncode
        assert _moved_aside(b), "the corrupt store was not kept aside"
        log = _text(b.log_path)
        assert "scrub: LMDB reports the structure of sb_msgs corrupt" in log, log[-3000:]
        b.start()  # as systemd's Restart=on-failure would
        await wait_healthy(a, b, timeout=30)
        a.kill()  # b must now deliver every message from what the re-fill gave it
        handled = await _consume_all(a, b, acked)
        assert set(acked) <= set(handled)
    finally:
        a.stop()
        b.stop()
