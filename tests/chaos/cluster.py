"""The chaos cluster: 2 lookups and 2 pairs as real processes, each in its own namespace.

    cluster = Cluster(run_dir, broker_args=[...], storage="tmpfs")
    cluster.setup()                  # namespaces, data-dir mounts, processes; all healthy
    cluster.kill("p0a"); cluster.start("p0a")
    cluster.pause("p0a"); cluster.resume("p0a")
    await cluster.stats("p0a")       # GetStatsResponse, or None if it does not answer
    cluster.close()                  # processes, mounts, namespaces (also after a crash)

Nodes: ``lk1``, ``lk2`` (lookups) and ``p0a``, ``p0b``, ``p1a``, ``p1b`` (pairs
``p0`` and ``p1``). Each broker's data dir is its own mount: a small ``tmpfs``
(``storage="tmpfs"``, so a full disk is real ENOSPC) or the harness's FUSE
power-loss filesystem (``storage="lazyfs"``, see ``lazyfs.py``). The cluster is
driven only through processes, signals, the CLI and the gRPC API.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from pairq.testing import BrokerProcess, wait_for_port
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pb_grpc

from .net import ChaosNet

__all__ = ["BROKERS", "LOOKUPS", "PAIRS", "Cluster", "partner_of"]

LOOKUPS = ["lk1", "lk2"]
PAIRS = {"p0": ("p0a", "p0b"), "p1": ("p1a", "p1b")}
BROKERS = [b for pair in PAIRS.values() for b in pair]
GRPC, GOSSIP, LOOKUP_PORT, LOOKUP_GOSSIP = 4150, 4170, 4160, 4161


def partner_of(name: str) -> str:
    for a, b in PAIRS.values():
        if name == a:
            return b
        if name == b:
            return a
    raise KeyError(name)


def pair_of(name: str) -> str:
    return name[:2]


def cleanup_stale_mounts() -> list[str]:
    """Lazily unmount data-dir mounts (``.../pqc-<pid>-<node>``) of harnesses that are gone."""
    out = []
    with open("/proc/mounts") as f:
        lines = f.read().splitlines()
    for line in lines:
        parts = line.split()
        if len(parts) < 2:
            continue
        m = re.search(r"/pqc-(\d+)-\w+$", parts[1])
        if m and not Path(f"/proc/{m.group(1)}").exists():
            subprocess.run(["umount", "-l", parts[1]], capture_output=True, check=False)
            out.append(parts[1])
    return out


class LookupProcess:
    def __init__(self, name: str, host: str, prefix: list[str], join: list[str], log: Path):
        self.name, self.host, self.prefix, self.join, self.log = name, host, prefix, join, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{LOOKUP_PORT}"

    def start(self) -> None:
        cmd = [*self.prefix, sys.executable, "-m", "pairq.cli", "lookup"]
        cmd += ["--address", self.address, "--gossip-address", f"{self.host}:{LOOKUP_GOSSIP}"]
        cmd += ["--gossip-profile", "local", "--node-name", self.name]
        for j in self.join:
            cmd += ["--join", j]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(LOOKUP_PORT, timeout=20, host=self.host)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


class Cluster:
    def __init__(
        self,
        run_dir: Path,
        *,
        broker_args: list[str] | None = None,
        storage: str = "tmpfs",
        disk_mb: int = 96,
    ) -> None:
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        self.data = run_dir / "data"
        self.net = ChaosNet([*LOOKUPS, *BROKERS])
        self.storage = storage
        self.disk_mb = disk_mb
        self.extra = list(broker_args or [])
        self.lookups: dict[str, LookupProcess] = {}
        self.brokers: dict[str, BrokerProcess] = {}
        self.paused: set[str] = set()
        # Brokers the harness itself stopped (kill, terminate) and has not started
        # again: the supervisor leaves them alone; any other dead broker died by itself.
        self.down: set[str] = set()
        self.fs: dict[str, Any] = {}  # node -> lazyfs mount (storage="lazyfs")
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.stale: list[str] = []

    # ----------------------------------------------------------------- setup
    def data_dir(self, node: str) -> Path:
        return self.data / f"pqc-{self.net.pid}-{node}"

    @property
    def lookup_addresses(self) -> list[str]:
        return [f"{self.net.ip[n]}:{LOOKUP_PORT}" for n in LOOKUPS]

    def address(self, node: str) -> str:
        return f"{self.net.ip[node]}:{GRPC if node in BROKERS else LOOKUP_PORT}"

    def setup(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        self.stale = cleanup_stale_mounts()
        self.net.setup()
        self.stale += self.net.stale_removed
        for b in BROKERS:
            self._mount(b)
        gossip = [f"{self.net.ip[n]}:{LOOKUP_GOSSIP}" for n in LOOKUPS]
        for i, n in enumerate(LOOKUPS):
            lk = LookupProcess(
                n, self.net.ip[n], self.net.prefix(n), gossip[:i], self.logs / f"{n}.log"
            )
            self.lookups[n] = lk
            lk.start()
        for b in BROKERS:
            ip, pip = self.net.ip[b], self.net.ip[partner_of(b)]
            # no --node-name: the broker id is the store's own (a wiped disk is a new id)
            args = ["--pair", pair_of(b), "--partner", f"{pip}:{GRPC}"]
            for lk in self.lookup_addresses:
                args += ["--lookup", lk]
            args += ["--gossip-address", f"{ip}:{GOSSIP}", "--gossip-profile", "local"]
            for g in gossip:
                args += ["--join", g]
            args += ["--shutdown-grace-s", "1", *self.extra]
            self.brokers[b] = BrokerProcess(
                self.data_dir(b),
                port=GRPC,
                host=ip,
                prefix=self.net.prefix(b),
                args=args,
                log_path=str(self.logs / f"{b}.log"),
            )
        for b in BROKERS:
            self.brokers[b].start(timeout=30)

    def _mount(self, node: str) -> None:
        d = self.data_dir(node)
        d.mkdir(parents=True, exist_ok=True)
        if self.storage == "lazyfs":
            from .lazyfs import LazyFS

            self.fs[node] = LazyFS.mount(d, self.logs / f"{node}-lazyfs.log")
        else:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={self.disk_mb}m", "tmpfs", str(d)],
                check=True,
                capture_output=True,
            )

    # ----------------------------------------------------------------- processes
    def alive(self, node: str) -> bool:
        p = self.brokers[node].proc if node in self.brokers else self.lookups[node].proc
        return p is not None and p.poll() is None

    def start(self, node: str) -> None:
        if node in self.lookups:
            self.lookups[node].start()
        else:
            self.brokers[node].start(timeout=30)
            self.down.discard(node)

    def kill(self, node: str) -> None:
        self.paused.discard(node)
        if node in self.brokers:
            self.down.add(node)
        if node in self.lookups:
            self.lookups[node].kill()
            return
        p = self.brokers[node].proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def terminate(self, node: str, timeout: float = 20.0) -> int:
        self.down.add(node)
        return self.brokers[node].terminate(timeout)

    def _signal(self, node: str, sig: signal.Signals) -> None:
        p = self.brokers[node].proc if node in self.brokers else self.lookups[node].proc
        if p is not None and p.poll() is None:
            p.send_signal(sig)

    def pause(self, node: str) -> None:
        self._signal(node, signal.SIGSTOP)
        self.paused.add(node)

    def resume(self, node: str) -> None:
        self._signal(node, signal.SIGCONT)
        self.paused.discard(node)

    def wipe(self, node: str) -> None:
        """Disk loss: the broker must be down; everything in its data dir goes."""
        assert not self.alive(node)
        d = self.data_dir(node)
        for child in d.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    # ----------------------------------------------------------------- bad disks
    def store_file(self, node: str) -> Path:
        return self.data_dir(node) / "store" / "data.mdb"

    def flip_bits(self, node: str, rng: random.Random, n: int = 16) -> str:
        """A bad disk under a stopped broker: ``n`` random bits flipped anywhere in its
        data file (records, keys, B-tree pages, free pages alike), in place."""
        assert not self.alive(node)
        f = self.store_file(node)
        size = f.stat().st_size
        with f.open("r+b") as fh:
            for _ in range(n):
                at = rng.randrange(size)
                fh.seek(at)
                b = fh.read(1)
                fh.seek(at)
                fh.write(bytes([b[0] ^ (1 << rng.randrange(8))]))
            fh.flush()
            os.fsync(fh.fileno())
        return f"{n} bits flipped in {size} bytes"

    def holds_any(self, node: str, bodies: list[bytes]) -> bool:
        raw = self.store_file(node).read_bytes()
        return any(b in raw for b in bodies)

    def flip_bodies(self, node: str, bodies: list[bytes], rng: random.Random) -> str:
        """A bad disk where the broker's reads meet it: one bit flipped in each of
        ``bodies`` (every copy of it in the file); under a running broker through the
        page cache its map shares."""
        f = self.store_file(node)
        raw = bytearray(f.read_bytes())
        found = 0
        with f.open("r+b") as fh:
            for body in bodies:
                at = raw.find(body)
                if at < 0:
                    continue
                found += 1
                offset, bit = rng.randrange(len(body)), 1 << rng.randrange(8)
                while at >= 0:
                    fh.seek(at + offset)
                    fh.write(bytes([raw[at + offset] ^ bit]))
                    at = raw.find(body, at + 1)
            fh.flush()
            os.fsync(fh.fileno())
        return f"{found} of {len(bodies)} backlog bodies flipped on {node}"

    def truncate_store(self, node: str, rng: random.Random) -> str:
        """A lost tail: the stopped broker's data file cut to 30-90 % of its size."""
        assert not self.alive(node)
        f = self.store_file(node)
        size = f.stat().st_size
        keep = int(size * rng.uniform(0.3, 0.9))
        os.truncate(f, keep)
        return f"data file truncated from {size} to {keep} bytes"

    def corrupt_meta(self, node: str, rng: random.Random) -> str:
        """Both LMDB meta pages (the first two pages) of the stopped broker overwritten."""
        assert not self.alive(node)
        f = self.store_file(node)
        with f.open("r+b") as fh:
            fh.write(rng.randbytes(2 * 4096))
            fh.flush()
            os.fsync(fh.fileno())
        return "both meta pages overwritten with random bytes"

    def fill_disk(self, node: str) -> Path:
        """Fill the broker's data-dir filesystem up to ENOSPC with a filler file."""
        filler = self.data_dir(node) / "chaos-filler"
        chunk = b"\0" * (1 << 20)
        with contextlib.suppress(OSError), filler.open("wb") as f:
            for _ in range(self.disk_mb * 2):  # bounded: never more than twice the size
                f.write(chunk)
                f.flush()
        return filler

    # ----------------------------------------------------------------- gRPC
    def _stub(self, node: str) -> Any:
        ch = self._channels.get(node)
        if ch is None:
            ch = self._channels[node] = grpc.aio.insecure_channel(self.address(node))
        return pb_grpc.BrokerServiceStub(ch)

    async def stats(self, node: str, timeout: float = 0.5) -> Any:
        try:
            return await self._stub(node).GetStats(
                pb.GetStatsRequest(no_clients=True), timeout=timeout
            )
        except grpc.aio.AioRpcError:
            return None

    async def create_channel(self, node: str, topic: str, channel: str) -> None:
        await self._stub(node).CreateChannel(
            pb.CreateChannelRequest(topic=topic, channel=channel), timeout=10
        )

    async def scrub(self, node: str, timeout: float = 30.0) -> str:
        """``BrokerService.Scrub`` on ``node`` to the end (what ``pairq scrub`` does):
        its summary, or the status it ended with (e.g. DATA_LOSS: a broken store)."""
        last = None
        try:
            async for progress in self._stub(node).Scrub(pb.ScrubRequest(), timeout=timeout):
                last = progress
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {(exc.details() or '')[:120]}"
        if last is None or not last.done:
            return "ended before done"
        return f"{last.checked} records, {last.bad} bad"

    async def pause_channel(self, node: str, topic: str, channel: str, pause: bool) -> bool:
        """PauseChannel / UnpauseChannel on ``node``; False if it did not answer."""
        stub = self._stub(node)
        try:
            if pause:
                await stub.PauseChannel(
                    pb.PauseChannelRequest(topic=topic, channel=channel), timeout=5
                )
            else:
                await stub.UnpauseChannel(
                    pb.UnpauseChannelRequest(topic=topic, channel=channel), timeout=5
                )
        except grpc.aio.AioRpcError:
            return False
        return True

    def log_size(self, node: str) -> int:
        return os.path.getsize(self.logs / f"{node}.log")

    def log_since(self, node: str, offset: int) -> str:
        with open(self.logs / f"{node}.log", "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    async def close_channels(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    # ----------------------------------------------------------------- teardown
    def close(self) -> None:
        """Stop every process, unmount every data dir, remove the network (never raises)."""
        for n in list(self.brokers) + list(self.lookups):
            with contextlib.suppress(Exception):
                self._signal(n, signal.SIGCONT)
                self.kill(n)
        keep = os.environ.get("PAIRQ_CHAOS_KEEP_DATA")  # copy the stores out first (forensics)
        for b in BROKERS:
            if keep:
                with contextlib.suppress(Exception):
                    shutil.copytree(self.data_dir(b), self.run_dir / "kept" / b)
            with contextlib.suppress(Exception):
                if b in self.fs:
                    self.fs[b].unmount()
                else:
                    subprocess.run(
                        ["umount", "-l", str(self.data_dir(b))], capture_output=True, check=False
                    )
        with contextlib.suppress(Exception):
            self.net.cleanup()


def free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 2**20


def now() -> float:
    return time.monotonic()
