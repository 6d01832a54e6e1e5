"""Inline commits (store.py's docstring): with a commit log, a loop turn's writes that
find the writer thread idle commit on the loop's thread; anything else goes to the
writer, in order. Real LMDB files and a real commit log; no mocks."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairq.broker import wire
from pairq.broker.checksum import crcs
from pairq.broker.store import Store, Write

MiB = 1024 * 1024


def _recs(n: int) -> list[bytes]:
    return [wire.encode_plain_record(os.urandom(16), os.urandom(64), b"") for _ in range(n)]


def _sb(s: Store, seq: int, recs: list[bytes]) -> Write:
    """The partner's copy of an owner's records: what a pair commits inline."""
    return s.standby.append("orders", seq, recs, crcs(recs), index=True)


async def _open(path: Path, **kw: int) -> Store:
    s = Store(path, max_bytes=256 * MiB, reserve_bytes=MiB, **kw)
    s.open()
    s.start(asyncio.get_running_loop())
    return s


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await _open(tmp_path / "s")
    try:
        yield s
    finally:
        s.close()


async def _until(cond, seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_an_idle_stores_commit_runs_on_the_loop_and_is_durable(tmp_path: Path) -> None:
    s = await _open(tmp_path / "s", checkpoint_interval_ms=60_000)
    recs = _recs(3)
    await s.commit(_sb(s, 0, recs))
    assert s.inline_commits == 1 and s.commits == 1
    assert s.log.known_ids([r[:16] for r in recs]) == {r[:16] for r in recs}
    # Made durable by the log alone (no checkpoint in a minute): a reopen redoes it.
    s.close()
    s2 = Store(tmp_path / "s")
    s2.open()
    try:
        assert s2.log.known_ids([r[:16] for r in recs]) == {r[:16] for r in recs}
    finally:
        s2.close()


async def test_writes_queued_while_the_writer_is_busy_go_to_it_in_order(store: Store) -> None:
    s = store
    s.inline_limit = 0.0  # the first write goes to the writer thread...
    s._wlock.acquire()  # ...which cannot commit it yet
    try:
        r1 = _recs(1)
        busy = s.commit(_sb(s, 0, r1))
        await asyncio.sleep(0)  # the end of the turn hands it over
        s.inline_limit = 1.0
        order: list[str] = []
        r2 = _recs(1)
        later = s.commit(_sb(s, 1, r2))
        busy.add_done_callback(lambda _f: order.append("busy"))
        later.add_done_callback(lambda _f: order.append("later"))
        await asyncio.sleep(0)  # the writer still has ``busy``: ``later`` queues behind it
        assert not busy.done() and not later.done()
    finally:
        s._wlock.release()
    await asyncio.gather(busy, later)
    assert order == ["busy", "later"]
    assert s.inline_commits == 0 and s.commits >= 1
    # Idle again (once the writer has counted its commit): the next turn's is inline.
    await _until(lambda: s._handed == s._written)
    r3 = _recs(1)
    await s.commit(_sb(s, 2, r3))
    assert s.inline_commits == 1


async def test_a_slow_inline_commit_sends_the_next_ones_to_the_writer(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    s = store
    s.inline_limit = 1e-9  # every commit is "slow"
    with caplog.at_level(logging.WARNING, logger="pairq.store"):
        r1, r2 = _recs(1), _recs(1)
        await s.commit(_sb(s, 0, r1))
        assert s.inline_commits == 1
        await s.commit(_sb(s, 1, r2))
        assert s.inline_commits == 1 and s.commits == 2  # the second went to the writer
    assert any("writer thread for the next" in m for m in caplog.messages)


async def test_a_segment_of_inline_commits_only_is_checkpointed(store: Store) -> None:
    """The writer sleeps without a timeout while its segment holds no commit: the
    first inline commit must wake it to schedule the checkpoint (50 ms here)."""
    s = store
    r = _recs(1)
    await s.commit(_sb(s, 0, r))
    assert s.inline_commits == 1 and s.commits == 1
    await _until(lambda: s.checkpoints >= 1)


async def test_a_failing_inline_commit_is_redone_by_the_writer(store: Store) -> None:
    """A write that raises inline fails the same way on the writer, which handles it
    (the waiter hears the error; the store goes on)."""

    class Boom(Write):
        appends = False

        def apply(self, txn: object, s: Store) -> None:
            raise ValueError("a bug in a write")

    s = store
    with pytest.raises(Exception, match="a bug in a write"):
        await s.commit(Boom())
    assert s.inline_commits == 0
    await _until(lambda: s._handed == s._written)
    r = _recs(1)
    await s.commit(_sb(s, 0, r))
    assert s.inline_commits == 1


async def test_without_a_commit_log_every_commit_goes_to_the_writer(tmp_path: Path) -> None:
    s = await _open(tmp_path / "s", commit_log_bytes=0)
    try:
        r = _recs(1)
        await s.commit(_sb(s, 0, r))
        assert s.inline_commits == 0 and s.commits == 1
    finally:
        s.close()


async def test_an_owners_own_append_is_left_to_the_writer_thread(store: Store) -> None:
    """While the owner's commit runs its loop serves the partner's ack and the next
    requests, so its appends never commit inline; small state writes (a FIN's
    progress) do."""
    s = store
    r = _recs(1)
    await s.commit(s.log.append(1, 0, r, crcs(r)))
    assert s.inline_commits == 0 and s.commits == 1
    await _until(lambda: s._handed == s._written)
    await s.commit(s.standby.put_floor("orders", "billing", 1))
    assert s.inline_commits == 1


async def test_a_batch_is_left_to_the_writer_thread(store: Store) -> None:
    """Many records (a publish batch) or a range delete commit on the writer thread, so
    the loop goes on parsing the next requests meanwhile."""
    s = store
    r = _recs(100)
    await s.commit(_sb(s, 0, r))
    assert s.inline_commits == 0 and s.commits == 1
    await _until(lambda: s._handed == s._written)
    few = _recs(16)
    await s.commit(_sb(s, 100, few))
    assert s.inline_commits == 1
