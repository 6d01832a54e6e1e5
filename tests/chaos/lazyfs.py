"""A FUSE filesystem that loses what was not fsynced when the power is cut (like Jepsen's
lazyfs), on fusepy. A broker's data dir is mounted on it; its durable state is a
backing directory, its volatile state (the "page cache") is this process's memory.

    fs = LazyFS.mount(mountpoint, log)   # a child process serving mountpoint
    fs.power_cut()                       # the broker is already kill -9'd: every write not
                                         # fsynced is gone; the mount comes back at once
    fs.unmount()

Durability rules, exactly the calls pairq's LMDB environment makes
(``pairq/broker/store.py`` opens it with ``sync`` = ``--sync=always``,
``metasync=True``, ``writemap=False``: data pages are ``pwrite``n, the commit calls
``fdatasync``, the meta page is written through a second descriptor opened with
``O_DSYNC``; with ``--sync=periodic`` nothing is synced until ``env.sync(True)``,
which is ``fdatasync``; no ``msync``, as there is no writable map):

- ``write`` on a descriptor opened without ``O_SYNC``/``O_DSYNC`` goes to the file's
  pending list (in memory, in order); reads and sizes see it.
- ``write`` through an ``O_SYNC``/``O_DSYNC`` descriptor is durable when it returns
  (written to the backing file as well as the pending list, which keeps the order of
  later replays right).
- ``fsync`` / ``fdatasync`` of any descriptor of a file replay its pending list onto
  the backing file, in order, and empty it.
- Namespace operations (create, unlink, rename, mkdir, truncate, chmod) are durable at
  once (a simplification: pairq creates its two LMDB files once; ``truncate`` also
  clips the pending writes).
- ``power_cut``: this process is killed (its memory, the pending lists, is gone), the
  mount is detached (the kernel's page cache of it goes with it) and a new server
  mounts the backing directory again. Reported: the bytes that were pending.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["LazyFS"]


class LazyFS:
    """The harness's handle on one mounted lazyfs server (a child process)."""

    def __init__(self, mountpoint: Path, log: Path) -> None:
        # Absolute: /proc/mounts lists absolute paths (a relative one, such as make
        # chaos's default --out chaos-runs, never matched, so every power-loss
        # scenario failed to start).
        self.mountpoint = mp = mountpoint.resolve()
        self.backing = mp.with_name(mp.name + ".backing")
        self.control = mp.with_name(mp.name + ".ctl")
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def mount(cls, mountpoint: Path, log: Path) -> LazyFS:
        fs = cls(mountpoint, log)
        fs.backing.mkdir(parents=True, exist_ok=True)
        fs._start()
        return fs

    def _mounted(self) -> bool:
        with open("/proc/mounts") as f:
            return any(line.split()[1] == str(self.mountpoint) for line in f if line.strip())

    def _start(self) -> None:
        self.control.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "tests.chaos.lazyfs"]
        cmd += [str(self.backing), str(self.mountpoint), str(self.control)]
        with self.log.open("ab") as log:
            # From the checkout's root, whatever the caller's directory (-m tests.chaos...).
            root = Path(__file__).resolve().parents[2]
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        deadline = time.monotonic() + 15
        while not (self._mounted() and self.control.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lazyfs did not mount {self.mountpoint}; see {self.log}")
            time.sleep(0.02)

    def _ask(self, what: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.control))
            s.sendall(what)
            return s.recv(100)

    def pending_bytes(self) -> int:
        return int(self._ask(b"pending"))

    def power_cut(self) -> str:
        """Drop every unsynced write (the broker must be dead already) and remount."""
        try:
            pending = self.pending_bytes()
        except OSError:
            pending = -1
        self._stop()
        self._start()
        return f"power cut: {pending} unsynced bytes dropped"

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, check=False)

    def unmount(self) -> None:
        self._stop()


# ----------------------------------------------------------------- the server
def serve(backing: str, mountpoint: str, control: str) -> None:  # pragma: no cover - child
    from fuse import FUSE, FuseOSError, Operations

    lock = threading.Lock()
    pending: dict[str, list[tuple[int, bytes]]] = {}  # backing path -> writes in order
    sync_fh: set[int] = set()

    def real(path: str) -> str:
        return os.path.join(backing, path.lstrip("/"))

    def size_of(p: str) -> int:
        size = os.path.getsize(p)
        for off, data in pending.get(p, ()):
            size = max(size, off + len(data))
        return size

    class Lazy(Operations):  # type: ignore[misc]
        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            p = real(path)
            try:
                st = os.lstat(p)
            except OSError as exc:
                raise FuseOSError(exc.errno) from None
            out = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid")}
            out.update(st_atime=st.st_atime, st_mtime=st.st_mtime, st_ctime=st.st_ctime)
            with lock:
                out["st_size"] = size_of(p) if os.path.isfile(p) else st.st_size
            return out

        def readdir(self, path: str, fh: Any) -> list[str]:
            return [".", "..", *os.listdir(real(path))]

        def statfs(self, path: str) -> dict[str, Any]:
            st = os.statvfs(real(path))
            keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree")
            keys += ("f_files", "f_flag", "f_frsize", "f_namemax")
            return {k: getattr(st, k) for k in keys}

        def mkdir(self, path: str, mode: int) -> None:
            os.mkdir(real(path), mode)

        def rmdir(self, path: str) -> None:
            os.rmdir(real(path))

        def unlink(self, path: str) -> None:
            with lock:
                pending.pop(real(path), None)
            os.unlink(real(path))

        def rename(self, old: str, new: str) -> None:
            with lock:
                if real(old) in pending:
                    pending[real(new)] = pending.pop(real(old))
            os.rename(real(old), real(new))

        def chmod(self, path: str, mode: int) -> None:
            os.chmod(real(path), mode)

        def chown(self, path: str, uid: int, gid: int) -> None:
            os.chown(real(path), uid, gid)

        def utimens(self, path: str, times: Any = None) -> None:
            os.utime(real(path), times)

        def open(self, path: str, flags: int, mode: int = 0o644) -> int:
            # every descriptor reads and writes (the kernel reads through any of them for
            # a map); O_SYNC / O_DSYNC are honoured here, not by the backing file
            keep = flags & ~(os.O_ACCMODE | os.O_SYNC | os.O_DSYNC | os.O_APPEND | os.O_TRUNC)
            fh = os.open(real(path), keep | os.O_RDWR, mode)
            if flags & os.O_TRUNC:
                self.truncate(path, 0)
            if flags & (os.O_SYNC | os.O_DSYNC):
                sync_fh.add(fh)
            return fh

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            flags = fi.flags if fi is not None else os.O_WRONLY
            return self.open(path, flags | os.O_CREAT, mode)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            p = real(path)
            with lock:
                end = min(offset + size, size_of(p))  # a short read means EOF to the kernel
                buf = bytearray(os.pread(fh, max(0, end - offset), offset))
                if len(buf) < end - offset:
                    buf.extend(b"\0" * (end - offset - len(buf)))
                writes = pending.get(p, ())
                for off, data in writes:
                    lo, hi = max(off, offset), min(off + len(data), end)
                    if lo >= hi:
                        continue
                    buf[lo - offset : hi - offset] = data[lo - off : hi - off]
                return bytes(buf)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            with lock:
                pending.setdefault(real(path), []).append((offset, bytes(data)))
                if fh in sync_fh:
                    os.pwrite(fh, data, offset)
            return len(data)

        def truncate(self, path: str, length: int, fh: Any = None) -> None:
            p = real(path)
            with lock:
                os.truncate(p, length)
                writes = pending.get(p)
                if writes:
                    pending[p] = [(o, d[: max(0, length - o)]) for o, d in writes if o < length]

        def _flush_pending(self, path: str) -> None:
            p = real(path)
            with lock:
                writes = pending.pop(p, [])
                if writes:
                    fd = os.open(p, os.O_WRONLY)
                    try:
                        for off, data in writes:
                            os.pwrite(fd, data, off)
                    finally:
                        os.close(fd)

        def fsync(self, path: str, datasync: int, fh: int) -> None:
            self._flush_pending(path)

        def flush(self, path: str, fh: int) -> None:
            return None  # close() is not a sync

        def release(self, path: str, fh: int) -> None:
            sync_fh.discard(fh)
            os.close(fh)

    def control_loop() -> None:
        with socket.socket(socket.AF_UNIX) as srv:
            srv.bind(control)
            srv.listen()
            while True:
                conn, _ = srv.accept()
                with conn:
                    conn.recv(100)
                    with lock:
                        n = sum(len(d) for w in pending.values() for _o, d in w)
                    conn.sendall(str(n).encode())

    threading.Thread(target=control_loop, daemon=True).start()
    try:
        FUSE(Lazy(), mountpoint, foreground=True, nothreads=False, big_writes=True)
    except RuntimeError as exc:
        raise SystemExit(f"lazyfs: {exc}") from None


if __name__ == "__main__":  # pragma: no cover
    serve(sys.argv[1], sys.argv[2], sys.argv[3])
