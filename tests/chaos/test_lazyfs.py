"""The power-loss filesystem honours exactly LMDB's durability calls: a commit with
``sync=True`` (fdatasync + the O_DSYNC meta write) survives a power cut, a commit with
``sync=False`` that was never ``env.sync()``ed does not, and one that was does.
Needs root, /dev/fuse, libfuse2 and fusepy (the ``chaos`` extra; ``make chaos-deps``)."""

from __future__ import annotations

import ctypes.util
import os
from pathlib import Path

import lmdb
import pytest


def _missing() -> str:
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        return "needs root and /dev/fuse"
    if ctypes.util.find_library("fuse") is None:
        return "needs libfuse2 (make chaos-deps)"
    try:
        import fuse  # noqa: F401
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
