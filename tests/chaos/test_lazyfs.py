"""The power-loss filesystem honours exactly LMDB's durability calls: a commit with
``sync=True`` (fdatasync + the O_DSYNC meta write) survives a power cut, a commit with
``sync=False`` that was never ``env.sync()``ed does not, and one that was does. A power
cut with ``keep > 0`` leaves each dirty page either durable-old or in one of the states
its pending writes gave it, reproducibly per seed, never losing what was synced.
Needs root, /dev/fuse, libfuse2 and fusepy (the ``chaos`` extra; ``make chaos-deps``)."""

from __future__ import annotations

import ctypes.util
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
import pytest

if TYPE_CHECKING:
    from tests.chaos.lazyfs import LazyFS


def _missing() -> str:
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        return "needs root and /dev/fuse"
    if ctypes.util.find_library("fuse") is None:
        return "needs libfuse2 (make chaos-deps)"
    try:
        import fuse  # type: ignore[import-untyped]  # noqa: F401
    except (ImportError, OSError):
        return "needs fusepy (the chaos extra: make chaos-deps)"
    return ""


pytestmark = pytest.mark.skipif(bool(_missing()), reason=_missing() or "ok")


def _keys(path: Path) -> list[bytes]:
    env = lmdb.open(str(path), map_size=1 << 24)
    try:
        with env.begin() as txn:
            return [k for k, _ in txn.cursor()]
    finally:
        env.close()


def test_power_cut_drops_exactly_what_lmdb_did_not_sync(tmp_path: Path) -> None:
    from tests.chaos.lazyfs import LazyFS

    mp = tmp_path / "pqc-1-t"
    mp.mkdir()
    fs = LazyFS.mount(mp, tmp_path / "lazyfs.log")
    try:
        env = lmdb.open(str(mp), map_size=1 << 24, sync=True, metasync=True, writemap=False)
        with env.begin(write=True) as txn:
            txn.put(b"synced", b"1")
        # a commit with sync=True is durable when it returns: cut the power right away
        fs.power_cut()
        assert _keys(mp) == [b"synced"]
        env = lmdb.open(str(mp), map_size=1 << 24, sync=False, metasync=True, writemap=False)
        with env.begin(write=True) as txn:
            txn.put(b"env-synced", b"2")
        env.sync(True)
        with env.begin(write=True) as txn:
            txn.put(b"unsynced", b"3")
        with env.begin() as txn:  # visible before the cut: it is in the "page cache"
            assert txn.get(b"unsynced") == b"3"
        assert fs.pending_bytes() > 0
        # the process dies with the power: the environment is never closed
        assert "unsynced bytes dropped" in fs.power_cut()
        assert _keys(mp) == [b"env-synced", b"synced"]
    finally:
        fs.unmount()


def test_a_relative_mountpoint_mounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """make chaos's default --out is relative (chaos-runs): the mount must be found."""
    from tests.chaos.lazyfs import LazyFS

    monkeypatch.chdir(tmp_path)
    Path("pqc-1-r").mkdir()
    fs = LazyFS.mount(Path("pqc-1-r"), tmp_path / "lazyfs.log")
    try:
        assert fs.mountpoint == tmp_path / "pqc-1-r" and fs.pending_bytes() == 0
    finally:
        fs.unmount()


# ------------------------------------------------------- partial writeback (keep > 0)
PAGE = 4096
ROUNDS = 3


def _state(page: int, j: int) -> bytes:
    """Page page's content after the j-th round of plain writes (distinct per write)."""
    return bytes([page * 10 + j]) * PAGE


def _base(page: int) -> bytes:
    return bytes([200 + page]) * PAGE


def _pages(data: bytes) -> list[bytes]:
    return [data[i : i + PAGE] for i in range(0, len(data), PAGE)]


def _cut_after_rounds(fs: LazyFS, keep: float, seed: int, npages: int = 8) -> tuple[bytes, str]:
    """A file of npages fsynced base pages, then ROUNDS rounds of plain writes to
    every page, then a power cut; returns the file's content after the remount."""
    f = fs.mountpoint / "f"
    f.unlink(missing_ok=True)  # durable at once: drops the previous round's file
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"".join(_base(i) for i in range(npages)), 0)
        os.fsync(fd)
        for j in range(ROUNDS):
            for i in range(npages):
                os.pwrite(fd, _state(i, j), i * PAGE)
        assert fs.pending_bytes() == ROUNDS * npages * PAGE
    finally:
        os.close(fd)  # close() is not a sync
    report = fs.power_cut(keep=keep, seed=seed)
    return f.read_bytes(), report


def test_a_partial_writeback_mixes_old_pages_with_any_state_of_new_ones(tmp_path: Path) -> None:
    from tests.chaos.lazyfs import LazyFS

    mp = tmp_path / "pqc-1-p"
    mp.mkdir()
    fs = LazyFS.mount(mp, tmp_path / "lazyfs.log")
    try:
        outcomes: dict[int, bytes] = {}
        old = written = 0
        states_seen: set[int] = set()
        for seed in range(6):
            data, report = _cut_after_rounds(fs, keep=0.5, seed=seed)
            assert len(data) == 8 * PAGE  # the fsynced size; no page beyond it
            back = 0
            for i, page in enumerate(_pages(data)):
                if page == _base(i):
                    old += 1
                    continue
                states = [_state(i, j) for j in range(ROUNDS)]
                assert page in states, f"seed {seed}: page {i} is neither old nor a state"
                states_seen.add(states.index(page))
                back += 1
            written += back
            assert report == (
                f"power cut: {ROUNDS * 8 * PAGE} unsynced bytes, {back} of 8 dirty pages"
                f" written back (keep=0.5, seed={seed})"
            )
            outcomes[seed] = data
        assert old and written  # both kinds of page occur across the seeds
        assert states_seen & {0, 1} and 2 in states_seen  # intermediate and final states
        assert len(set(outcomes.values())) > 1  # the seed matters ...
        assert _cut_after_rounds(fs, keep=0.5, seed=3)[0] == outcomes[3]  # ... and decides

        # keep=1.0: every dirty page is written back, each in some state it had
        for seed in range(3):
            data, report = _cut_after_rounds(fs, keep=1.0, seed=seed)
            assert "8 of 8 dirty pages written back" in report
            for i, page in enumerate(_pages(data)):
                assert page in [_state(i, j) for j in range(ROUNDS)]
    finally:
        fs.unmount()


def test_keep_zero_drops_every_pending_write(tmp_path: Path) -> None:
    from tests.chaos.lazyfs import LazyFS

    mp = tmp_path / "pqc-1-z"
    mp.mkdir()
    fs = LazyFS.mount(mp, tmp_path / "lazyfs.log")
    try:
        for explicit in (False, True):  # the default, and keep=0.0 given
            f = mp / "f"
            f.unlink(missing_ok=True)
            fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, b"".join(_base(i) for i in range(4)), 0)
                os.fsync(fd)
                for j in range(ROUNDS):
                    for i in range(6):  # two pages past the fsynced end
                        os.pwrite(fd, _state(i, j), i * PAGE)
                assert f.stat().st_size == 6 * PAGE  # the "page cache" sees them
            finally:
                os.close(fd)
            report = fs.power_cut(keep=0.0, seed=1) if explicit else fs.power_cut()
            assert report == f"power cut: {ROUNDS * 6 * PAGE} unsynced bytes dropped"
            assert f.read_bytes() == b"".join(_base(i) for i in range(4))
    finally:
        fs.unmount()


def test_an_fsynced_prefix_survives_a_partial_writeback(tmp_path: Path) -> None:
    """Pages 0-2 fsynced; then pages 2-5 written 3 times and 100 bytes into page 6,
    unsynced. Pages 0-1 never change, page 2 is old or a newer state, each later page
    a state or a hole, and the size is the end of the last page written back."""
    from tests.chaos.lazyfs import LazyFS

    mp = tmp_path / "pqc-1-s"
    mp.mkdir()
    fs = LazyFS.mount(mp, tmp_path / "lazyfs.log")
    prefix = b"".join(_base(i) for i in range(3))
    tail = b"T" * 100
    try:
        holes = extended = 0
        for seed in range(8):
            f = mp / "f"
            f.unlink(missing_ok=True)
            fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, prefix, 0)
                os.fdatasync(fd)
                for j in range(ROUNDS):
                    for i in range(2, 6):
                        os.pwrite(fd, _state(i, j), i * PAGE)
                os.pwrite(fd, tail, 6 * PAGE + 50)
            finally:
                os.close(fd)
            report = fs.power_cut(keep=0.5, seed=seed)
            data = f.read_bytes()
            assert data[: 2 * PAGE] == prefix[: 2 * PAGE], f"seed {seed}: synced data changed"
            pages = _pages(data)
            assert pages[2] in [_base(2)] + [_state(2, j) for j in range(ROUNDS)]
            back = [2] if pages[2] != _base(2) else []
            for i in range(3, min(len(pages), 6)):
                if pages[i] == b"\0" * PAGE:
                    holes += 1
                    continue
                assert pages[i] in [_state(i, j) for j in range(ROUNDS)], f"seed {seed}: {i}"
                back.append(i)
            if len(pages) == 7:
                assert pages[6] == b"\0" * 50 + tail
                back.append(6)
            ends = [3 * PAGE] + [6 * PAGE + 150 if i == 6 else (i + 1) * PAGE for i in back]
            assert len(data) == max(ends), f"seed {seed}: size {len(data)}, pages {back}"
            assert f"{len(back)} of 5 dirty pages written back" in report
            extended += len(data) > 3 * PAGE
        assert holes and extended  # a gap below a stored page, and a file that grew
    finally:
        fs.unmount()


def test_an_o_dsync_write_is_never_undone_by_a_writeback(tmp_path: Path) -> None:
    from tests.chaos.lazyfs import LazyFS

    mp = tmp_path / "pqc-1-d"
    mp.mkdir()
    fs = LazyFS.mount(mp, tmp_path / "lazyfs.log")
    try:
        contents = set()
        for seed in range(6):
            f = mp / "f"
            f.unlink(missing_ok=True)
            fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
            sfd = os.open(f, os.O_RDWR | os.O_DSYNC)
            try:
                os.pwrite(fd, b"a" * PAGE, 0)
                os.pwrite(sfd, b"b" * 100, 0)  # durable, and the kernel fsyncs the file
                os.pwrite(fd, b"c" * PAGE, 0)
            finally:
                os.close(sfd)
                os.close(fd)
            fs.power_cut(keep=0.5, seed=seed)
            data = f.read_bytes()
            assert data in (b"b" * 100 + b"a" * (PAGE - 100), b"c" * PAGE), f"seed {seed}"
            contents.add(data)
        assert len(contents) == 2  # the pending write was both dropped and written back
    finally:
        fs.unmount()


class _Script(random.Random):
    """Draws scripted per dirty page, in page order: 0 = not written back, k = written
    back in the state after its k-th pending write."""

    def __init__(self, picks: list[int]) -> None:
        super().__init__(0)
        self.picks = picks

    def random(self) -> float:
        if self.picks[0] == 0:
            self.picks.pop(0)
            return 0.99
        return 0.0

    def randint(self, a: int, b: int) -> int:
        k = self.picks.pop(0)
        assert a <= k <= b
        return k


def test_write_back_replays_up_to_the_chosen_write_then_the_durable_ones(
    tmp_path: Path,
) -> None:
    """write_back itself, on a hand-made pending list: an O_DSYNC write after the chosen
    moment stays on top, and the size is the one the file had at that moment."""
    from tests.chaos.lazyfs import write_back

    writes = [
        (0, b"a" * 200, False),
        (0, b"b" * 50, True),  # O_DSYNC: in the backing file already
        (150, b"c" * 100, False),
        (PAGE + 10, b"d" * 10, False),
    ]
    expected = {
        (1, 0): b"b" * 50 + b"a" * 150,  # written back before the O_DSYNC write
        (2, 0): b"b" * 50 + b"a" * 150,
        (3, 0): b"b" * 50 + b"a" * 100 + b"c" * 100,
        (0, 1): b"b" * 50 + b"x" * 50 + b"\0" * (PAGE + 10 - 100) + b"d" * 10,
        (0, 0): b"b" * 50 + b"x" * 50,
    }
    for picks, content in expected.items():
        f = tmp_path / f"f{picks}"
        f.write_bytes(b"b" * 50 + b"x" * 50)
        rng = _Script(list(picks))
        assert write_back(str(f), writes, 0.5, rng) == (sum(map(bool, picks)), 2)
        assert not rng.picks
        assert f.read_bytes() == content, picks
    # a page only O_DSYNC writes touched is clean: nothing to draw, nothing written
    f = tmp_path / "g"
    f.write_bytes(b"e" * 10)
    assert write_back(str(f), [(0, b"e" * 10, True)], 1.0, _Script([])) == (0, 0)
    assert f.read_bytes() == b"e" * 10


def test_a_renamed_directory_takes_its_files_pending_writes_along(tmp_path: Path) -> None:
    """A broker moves a corrupt store directory aside and starts a new one at the same
    path: the new file must not read the old one's unsynced pages, and the moved file
    must still show them (until a power cut drops them)."""
    from tests.chaos.lazyfs import LazyFS

    mp = tmp_path / "pqc-1-r"
    mp.mkdir()
    fs = LazyFS.mount(mp, tmp_path / "lazyfs.log")
    try:
        (mp / "store").mkdir()
        old = mp / "store" / "data"
        fd = os.open(old, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, b"x" * PAGE, 0)  # unsynced
        finally:
            os.close(fd)
        (mp / "store").rename(mp / "store.aside")
        (mp / "store").mkdir()
        new = mp / "store" / "data"
        fd = os.open(new, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            assert os.fstat(fd).st_size == 0
            assert os.pread(fd, PAGE, 0) == b""
            os.pwrite(fd, b"y" * 10, 0)
        finally:
            os.close(fd)
        assert new.read_bytes() == b"y" * 10
        assert (mp / "store.aside" / "data").read_bytes() == b"x" * PAGE
        fs.power_cut()
        assert (mp / "store.aside" / "data").read_bytes() == b""
        assert new.read_bytes() == b""
    finally:
        fs.unmount()
