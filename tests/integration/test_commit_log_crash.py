"""kill -9 of a process writing through the store's commit log, at random instants,
with checkpoints every few milliseconds: every commit the process was told about is
there when the store opens again, and the store's trees are whole. (Power cuts,
where the kernel's unsynced pages are lost or half written back, are in
tests/chaos/test_lazyfs_store.py.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest

from pairq.broker import schema as sc
from pairq.broker.commitlog import CommitLog, plan_recovery
from pairq.broker.store import Store

# The child: commits puts (small, and large enough for LMDB's overflow pages), deletes
# and range deletes as fast as it can, and prints "i" once commit i is acknowledged.
WRITER = r"""
import asyncio, sys
from pairq.broker import schema as sc
from pairq.broker.commitlog import CommitLog, plan_recovery
from pairq.broker.store import Store, _put, _delete, _drop

def value(i):
    return (b"v%d:" % i) * (1 + (i * 7919) % (3000 if i % 5 == 0 else 20))

async def main(path, interval_ms, log_bytes, sync):
    s = Store(
        path,
        checkpoint_interval_ms=interval_ms,
        commit_log_bytes=log_bytes,
        sync=sync,
        sync_interval_ms=3_600_000,
    )
    s.open()
    s.start(asyncio.get_running_loop())
    start = 0
    raw = s._get(sc.META, b"next")
    if raw is not None:
        start = int(raw)
    i = start
    while True:
        futs = []
        for j in range(i, i + 4):
            writes = [_put(sc.META, b"k%08d" % j, value(j)), _put(sc.META, b"next", b"%d" % (j + 1))]
            if j % 10 == 9:
                writes.append(_delete(sc.META, b"k%08d" % (j - 9)))  # acked as gone
            if j % 50 == 49:
                writes.append(_drop(sc.DLQ, b"t"))
            futs.append(s.commit(*writes))
            s.post(_put(sc.DLQ, b"t%08d" % j, b"x" * 100))
        for j, f in enumerate(futs):
            await f
            print(i + j, flush=True)
        i += 4

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
"""


def value(i: int) -> bytes:
    return (b"v%d:" % i) * (1 + (i * 7919) % (3000 if i % 5 == 0 else 20))


def run_and_kill(
    path: Path,
    min_acked: int,
    rng: random.Random,
    interval_ms: int = 5,
    log_bytes: int = 65536,
    sync: str = "always",
) -> int:
    """Start the writer, kill -9 it at a random instant after ``min_acked`` commits;
    the highest commit it was told about."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(interval_ms), str(log_bytes), sync],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acked = -1
    target = min_acked + rng.randrange(200)
    deadline = time.monotonic() + 60
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= target:
                break
            assert time.monotonic() < deadline, "the writer is too slow"
        # Kill at a random instant a little later: mid-commit, mid-checkpoint, ...
        end = time.monotonic() + rng.random() * 0.05
        while time.monotonic() < end:
            pass
        os.kill(proc.pid, signal.SIGKILL)
        for line in proc.stdout:  # what it printed before it died was acked too
            acked = int(line)
    finally:
        proc.kill()
        proc.wait()
    assert acked >= target, proc.stderr.read() if proc.stderr else ""
    return acked


def check_store(path: Path, acked: int) -> Store:
    """Every acknowledged commit is in the reopened store; every tree walks whole."""
    s = Store(path)
    s.open()
    with s.env.begin() as txn:
        raw = txn.get(b"next", db=s.dbs[sc.META])
        assert raw is not None and int(raw) >= acked + 1, (raw, acked)
        for j in range(acked + 1):
            got = txn.get(b"k%08d" % j, db=s.dbs[sc.META])
            if j % 10 == 0 and j + 9 <= acked:
                assert got is None, f"k{j} was deleted by an acked commit"
            elif j % 10 == 0:  # deleted by a commit that may have landed, unacked
                assert got in (None, value(j)), f"k{j} holds {got!r}"
            else:
                assert got == value(j), f"acked commit {j} lost"
        for db in s.dbs:  # LMDB meets every page of every tree
            for _k, _v in txn.cursor(db=db):
                pass
    return s


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_acked_commit_survives_kill_9_at_random_instants(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "store"
    replayed = 0
    for round_ in range(3):  # the store is killed, reopened and written again
        acked = run_and_kill(path, 200 * (round_ + 1), rng)
        # It checkpointed (and reused its two segment files) before it was killed.
        assert plan_recovery(CommitLog(path).read()).next_gen > 3
        s = check_store(path, acked)
        replayed += s.replayed
        s.close()
    # Kill -9 left commits that only the log held, and the store redid them.
    assert replayed > 0


def test_lmdb_opened_on_its_own_after_a_kill_sees_every_acked_commit(tmp_path: Path) -> None:
    """The data file itself is current after kill -9 (the page cache keeps what LMDB
    wrote): tools that open it with plain LMDB, without the log, see every acked
    commit."""
    rng = random.Random(5)
    path = tmp_path / "store"
    acked = run_and_kill(path, 300, rng)
    env = lmdb.open(str(path), max_dbs=32, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            meta = env.open_db(b"meta", txn=txn)
            raw = txn.get(b"next", db=meta)
            assert raw is not None and int(raw) >= acked + 1
    finally:
        env.close()


# ------------------------------------------------------------------ power cuts
def _lazyfs_missing() -> str:
    from tests.chaos.test_lazyfs import _missing

    return _missing()


lazyfs = pytest.mark.skipif(bool(_lazyfs_missing()), reason=_lazyfs_missing() or "ok")


def _power_cut_run(tmp_path: Path, seed: int, **writer: object) -> tuple[Path, int, object]:
    from tests.chaos.lazyfs import LazyFS

    mp = tmp_path / f"pqc-s{seed}"
    mp.mkdir()
    fs = LazyFS.mount(mp, tmp_path / "lazyfs.log")
    rng = random.Random(seed)
    try:
        acked = run_and_kill(mp / "store", 150, rng, **writer)  # type: ignore[arg-type]
        # The kernel wrote back half the unsynced pages, each in any of its states.
        report = fs.power_cut(keep=0.5, seed=seed)
        assert "dirty pages written back" in report, report
    except BaseException:
        fs.unmount()
        raise
    return mp / "store", acked, fs


@lazyfs
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_every_acked_commit_survives_a_power_cut_that_wrote_back_half_the_pages(
    tmp_path: Path, seed: int
) -> None:
    path, acked, fs = _power_cut_run(tmp_path, seed, interval_ms=20)
    try:
        check_store(path, acked).close()
    finally:
        fs.unmount()  # type: ignore[attr-defined]


@lazyfs
def test_without_the_log_lmdb_flushing_twice_survives_the_same_power_cut(tmp_path: Path) -> None:
    path, acked, fs = _power_cut_run(tmp_path, 1, log_bytes=0)
    try:
        check_store(path, acked).close()
    finally:
        fs.unmount()  # type: ignore[attr-defined]


@lazyfs
def test_the_power_cut_loses_what_nothing_synced(tmp_path: Path) -> None:
    """The control: with --sync=periodic and no sync before the cut, acknowledged
    commits are gone (or the store is damaged), so the tests above can fail."""
    path, acked, fs = _power_cut_run(tmp_path, 2, sync="periodic")
    try:
        with pytest.raises((AssertionError, lmdb.Error)):
            check_store(path, acked).close()
    finally:
        fs.unmount()  # type: ignore[attr-defined]
