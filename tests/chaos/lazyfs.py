"""A FUSE filesystem that loses what was not fsynced when the power is cut (like Jepsen's
lazyfs), on fusepy. A broker's data dir is mounted on it; its durable state is a
backing directory, its volatile state (the "page cache") is this process's memory.

    fs = LazyFS.mount(mountpoint, log)   # a child process serving mountpoint
    fs.power_cut()                       # the broker is already kill -9'd: every write not
                                         # fsynced is gone; the mount comes back at once
    fs.power_cut(keep=0.5, seed=3)       # the same, but the kernel had written back a
                                         # random half of the dirty pages, each at a
                                         # random moment
    fs.unmount()

Durability rules. They are those of the calls LMDB makes (``pwrite`` of data pages,
``fdatasync`` at a synced commit or ``env.sync(True)``, the meta page through a second
descriptor opened with ``O_DSYNC`` when meta-syncing; no ``msync``, pairq opens the
environment with ``writemap=False``), but hold for any program:

- ``write`` on a descriptor opened without ``O_SYNC``/``O_DSYNC`` goes to the file's
  pending list (in memory, in order); reads and sizes see it.
- ``write`` through an ``O_SYNC``/``O_DSYNC`` descriptor is durable when it returns
  (written to the backing file as well as the pending list, which keeps the order of
  later replays right). The kernel follows each such write with an ``fsync`` of the
  file (FUSE's carries no range), so in practice the file's earlier pending writes
  become durable with it.
- ``fsync`` / ``fdatasync`` of any descriptor of a file replay its pending list onto
  the backing file, in order, and empty it.
- Namespace operations (create, unlink, rename, mkdir, truncate, chmod) are durable at
  once (a simplification: pairq creates its two LMDB files once; ``truncate`` also
  clips the pending writes).
- ``power_cut(keep=0.0)``: this process is killed (its memory, the pending lists, is
  gone), the mount is detached (the kernel's page cache of it goes with it) and a new
  server mounts the backing directory again. Reported: the bytes that were pending.
- ``power_cut(keep, seed)`` with ``0 < keep <= 1`` models the kernel's writeback, which
  flushes dirty pages in any order at any time before the cut, so that a file comes
  back with some pages new and others old. Before the server dies it persists a random
  subset of the pending state, at the granularity of 4096-byte pages aligned to file
  offsets (``PAGE``):

  * a page is dirty if at least one pending plain (not ``O_DSYNC``) write touches it;
    each dirty page is written back with probability ``keep``, independently of the
    others; one that is not keeps its durable (backing) content;
  * a written-back page gets its content as it was right after the k-th of the n
    pending writes touching it (k uniform in 1..n): it was written back at some
    moment, possibly before later writes to it. ``O_DSYNC`` writes after that moment
    were durable anyway and stay on top;
  * the file's durable size becomes at least the end of each written-back page
    clipped to the file's size at that page's moment (the size the kernel wrote back
    with it): chosen pages past the old end are stored, the gap reads as zeros, and
    the file never grows past its size before the cut.

  ``random.Random(seed)`` draws the outcome, so a seed reproduces it; with
  ``seed=None`` one is drawn and reported. Reported also: how many dirty pages were
  written back, of how many.

Control protocol (a Unix socket at ``<mountpoint>.ctl``, one request per connection):
the client sends one ASCII line, the server answers one ASCII line and closes.

- ``pending`` -> ``<bytes>``: the bytes in every pending list.
- ``cut <keep> <seed>`` -> ``<bytes> <written> <dirty>``: from now on every mutating
  operation fails with EIO (the power is off); the chosen pages are written to the
  backing files as above. The client kills the server next.
- anything else, or a failure -> ``error <message>``.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["PAGE", "LazyFS"]

PAGE = 4096  # the writeback granularity of power_cut(keep > 0)

# One pending write: (offset, data, durable), durable if it came through an
# O_SYNC/O_DSYNC descriptor (then it is in the backing file already).
Write = tuple[int, bytes, bool]


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

    def _ask(self, what: bytes, timeout: float = 5) -> bytes:
        """One request line, one answer line (see the control protocol above)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(self.control))
            s.sendall(what + b"\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        if answer.startswith(b"error"):
            raise OSError(errno.EIO, f"lazyfs control: {answer.decode(errors='replace')}")
        return answer

    def pending_bytes(self) -> int:
        return int(self._ask(b"pending"))

    def power_cut(self, keep: float = 0.0, seed: int | None = None) -> str:
        """Cut the power (the broker must be dead already) and remount.

        keep=0.0 drops every unsynced write. keep > 0 first writes back each dirty page
        with probability keep, in the state after a random one of its pending writes
        (module docstring); seed reproduces the draw (None: one is drawn, and reported).
        """
        if not 0.0 <= keep <= 1.0:
            raise ValueError(f"keep must be within [0, 1], not {keep}")
        if keep == 0.0:
            try:
                pending = self.pending_bytes()
            except OSError:
                pending = -1
            self._stop()
            self._start()
            return f"power cut: {pending} unsynced bytes dropped"
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        try:
            # writing back can take a while with a large backlog
            answer = self._ask(f"cut {keep!r} {seed}".encode(), timeout=120).split()
            pending, written, dirty = (int(x) for x in answer)
            what = f"{pending} unsynced bytes, {written} of {dirty} dirty pages written back"
        except (OSError, ValueError) as exc:
            what = f"control channel failed ({exc}), every unsynced write dropped"
        self._stop()
        self._start()
        return f"power cut: {what} (keep={keep}, seed={seed})"

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, check=False)

    def unmount(self) -> None:
        self._stop()


# ------------------------------------------------------------ partial writeback
def write_back(path: str, writes: list[Write], keep: float, rng: random.Random) -> tuple[int, int]:
    """Persist a random subset of one file's pending pages onto its backing file at
    path (the rules of power_cut(keep > 0) in the module docstring). Returns (pages
    written back, dirty pages). Pure apart from the backing file: runs in the server."""
    touching: dict[int, list[int]] = {}  # page -> indexes of the pending writes on it
    dirty: set[int] = set()
    for i, (off, data, durable) in enumerate(writes):
        if not data:
            continue
        for page in range(off // PAGE, (off + len(data) - 1) // PAGE + 1):
            touching.setdefault(page, []).append(i)
            if not durable:
                dirty.add(page)
    # the file's size right after each write (truncate clipped the list, and is durable)
    base = os.path.getsize(path)
    size_after, size = [], base
    for off, data, _ in writes:
        size = max(size, off + len(data))
        size_after.append(size)
    written = 0
    fd = os.open(path, os.O_RDWR)
    try:
        for page in sorted(dirty):
            if rng.random() >= keep:
                continue
            idx = touching[page]
            k = rng.randint(1, len(idx))
            moment = idx[k - 1]
            lo = page * PAGE
            hi = min(lo + PAGE, max(base, size_after[moment]))
            buf = bytearray(os.pread(fd, hi - lo, lo).ljust(hi - lo, b"\0"))
            # the page as it was at that moment, then the O_DSYNC writes after it
            later_durable = [i for i in idx[k:] if writes[i][2]]
            for i in idx[:k] + later_durable:
                off, data, _ = writes[i]
                a, b = max(off, lo), min(off + len(data), hi)
                if a < b:
                    buf[a - lo : b - lo] = data[a - off : b - off]
            os.pwrite(fd, bytes(buf), lo)
            written += 1
    finally:
        os.close(fd)
    return written, len(dirty)


# ----------------------------------------------------------------- the server
def serve(backing: str, mountpoint: str, control: str) -> None:  # pragma: no cover - child
    from fuse import FUSE, FuseOSError, Operations  # type: ignore[import-untyped]

    lock = threading.Lock()
    pending: dict[str, list[Write]] = {}  # backing path -> writes in order
    sync_fh: set[int] = set()
    power = {"on": True}  # off once a cut has begun: nothing more reaches the disk

    def real(path: str) -> str:
        return os.path.join(backing, path.lstrip("/"))

    def powered() -> None:  # call with the lock held
        if not power["on"]:
            raise FuseOSError(errno.EIO)

    def size_of(p: str) -> int:
        size = os.path.getsize(p)
        for off, data, _ in pending.get(p, ()):
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
            keys: tuple[str, ...] = (
                "f_bavail",
                "f_bfree",
                "f_blocks",
                "f_bsize",
                "f_favail",
                "f_ffree",
            )
            keys += ("f_files", "f_flag", "f_frsize", "f_namemax")
            return {k: getattr(st, k) for k in keys}

        def mkdir(self, path: str, mode: int) -> None:
            with lock:
                powered()
                os.mkdir(real(path), mode)

        def rmdir(self, path: str) -> None:
            with lock:
                powered()
                os.rmdir(real(path))

        def unlink(self, path: str) -> None:
            with lock:
                powered()
                pending.pop(real(path), None)
                os.unlink(real(path))

        def rename(self, old: str, new: str) -> None:
            with lock:
                powered()
                # a file's pending writes follow it, and so do those of every file
                # under a renamed directory (a broker moves a corrupt store aside and
                # starts a new one at the old path, which must not see them)
                src, dst = real(old), real(new)
                for p in [p for p in pending if p == src or p.startswith(src + "/")]:
                    pending[dst + p[len(src) :]] = pending.pop(p)
                os.rename(src, dst)

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
            if keep & os.O_CREAT:
                with lock:
                    powered()
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
                for off, data, _ in writes:
                    lo, hi = max(off, offset), min(off + len(data), end)
                    if lo >= hi:
                        continue
                    buf[lo - offset : hi - offset] = data[lo - off : hi - off]
                return bytes(buf)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            with lock:
                powered()
                durable = fh in sync_fh
                pending.setdefault(real(path), []).append((offset, bytes(data), durable))
                if durable:
                    os.pwrite(fh, data, offset)
            return len(data)

        def truncate(self, path: str, length: int, fh: Any = None) -> None:
            p = real(path)
            with lock:
                powered()
                os.truncate(p, length)
                writes = pending.get(p)
                if writes:
                    pending[p] = [
                        (o, d[: max(0, length - o)], s) for o, d, s in writes if o < length
                    ]

        def _flush_pending(self, path: str) -> None:
            p = real(path)
            with lock:
                powered()
                writes = pending.pop(p, [])
                if writes:
                    fd = os.open(p, os.O_WRONLY)
                    try:
                        for off, data, _ in writes:
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

    def cut(keep: float, seed: int) -> str:
        """The power goes off: nothing mutates the backing directory any more except
        the writeback of the chosen pages, file by file in path order (reproducible)."""
        rng = random.Random(seed)
        with lock:
            power["on"] = False
            n = sum(len(d) for w in pending.values() for _o, d, _s in w)
            written = dirty = 0
            for p in sorted(pending):
                if os.path.isfile(p):
                    w, d = write_back(p, pending[p], keep, rng)
                    written, dirty = written + w, dirty + d
            pending.clear()
        return f"{n} {written} {dirty}"

    def answer(request: str) -> str:
        match request.split():
            case ["pending"]:
                with lock:
                    return str(sum(len(d) for w in pending.values() for _o, d, _s in w))
            case ["cut", keep, seed] if 0.0 < float(keep) <= 1.0:
                return cut(float(keep), int(seed))
            case _:
                return f"error: bad request {request!r}"

    def control_loop() -> None:
        with socket.socket(socket.AF_UNIX) as srv:
            srv.bind(control)
            srv.listen()
            while True:
                conn, _ = srv.accept()
                with conn:
                    try:
                        conn.settimeout(5)
                        request = b""
                        while b"\n" not in request and (chunk := conn.recv(100)):
                            request += chunk
                        reply = answer(request.decode().strip())
                    except Exception as exc:  # the channel must outlive a bad request
                        reply = f"error: {exc!r}"
                    try:
                        conn.sendall(reply.encode())
                    except OSError:
                        pass

    threading.Thread(target=control_loop, daemon=True).start()
    try:
        FUSE(Lazy(), mountpoint, foreground=True, nothreads=False, big_writes=True)
    except RuntimeError as exc:
        raise SystemExit(f"lazyfs: {exc}") from None


if __name__ == "__main__":  # pragma: no cover
    serve(sys.argv[1], sys.argv[2], sys.argv[3])
