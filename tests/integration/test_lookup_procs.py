"""Helpers (no tests) for the lookup and cluster tests: lookups and brokers as child
processes (killable with -9), and polling what each lookup answers.

Only processes these helpers started are ever signalled, by their own pid."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from pairq.client import Message
from pairq.client.discovery import Discovery
from pairq.testing import BrokerProcess, free_port, wait_for_port
from pairq.v1 import lookup_pb2 as pb

LIVENESS = {pb.LIVENESS_ALIVE: "alive", pb.LIVENESS_SUSPECT: "suspect", pb.LIVENESS_DEAD: "dead"}


class Proc:
    """A child process we started; ``kill9`` / ``stop`` only ever signal its own pid."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.ready_line = ""

    async def start(self, *, ready_prefix: str = "", port: int = 0, timeout: float = 20.0) -> None:
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *self.argv,
                stdout=asyncio.subprocess.PIPE if ready_prefix else log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        if ready_prefix:
            assert self.proc.stdout is not None
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            self.ready_line = line.decode().strip()
            assert self.ready_line.startswith(ready_prefix), (
                f"unexpected {self.ready_line!r}; see {self.log_path}"
            )
        if port:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    return
                except OSError:
                    if (
                        self.proc.returncode is not None
                        or asyncio.get_running_loop().time() > deadline
                    ):
                        raise RuntimeError(
                            f"process did not listen on {port}; see {self.log_path}"
                        ) from None
                    await asyncio.sleep(0.05)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def kill9(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            await self.kill9()


class LookupProc(Proc):
    def __init__(
        self,
        tmp: Path,
        name: str,
        *,
        port: int = 0,
        gossip_port: int = 0,
        join: list[str] | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.gossip_port = gossip_port
        argv = ["-m", "pairq.cli", "lookup", "--address", self.address, "--node-name", name]
        if gossip_port:
            argv += ["--gossip-address", f"127.0.0.1:{gossip_port}", "--gossip-profile", "local"]
            for j in join or []:
                argv += ["--join", j]
        super().__init__(argv + (extra or []), tmp / f"{name}.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, *, ready_prefix: str = "", port: int = 0, timeout: float = 20.0) -> None:
        await super().start(port=self.port, timeout=timeout)


async def liveness(lookup: str, node_id: str, timeout: float = 1.0) -> str:
    """What ``lookup`` answers for ``node_id``: alive/suspect/dead, "absent", or "down"."""
    async with grpc.aio.insecure_channel(lookup) as ch:
        rpc = ch.unary_unary(
            "/pairq.v1.LookupService/ListNodes",
            request_serializer=pb.ListNodesRequest.SerializeToString,
            response_deserializer=pb.ListNodesResponse.FromString,
        )
        try:
            resp = await rpc(pb.ListNodesRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return "down"
    for n in resp.nodes:
        if n.status.broker.node_id == node_id:
            return LIVENESS[n.status.liveness]
    return "absent"


@contextlib.asynccontextmanager
async def stopping(*procs: Proc):  # type: ignore[no-untyped-def]
    try:
        yield
    finally:
        for p in procs:
            await p.stop()


# ---------------------------------------------------------------- processes


class LookupProcess:
    """``pairq lookup`` as a child process (gossip on, local profile)."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        *,
        port: int = 0,
        gossip_port: int = 0,
        join: Sequence[str] = (),
        extra: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.gossip_port = gossip_port or free_port()
        self.join = list(join)
        self.extra = list(extra)
        self.log_path = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def gossip_address(self) -> str:
        return f"127.0.0.1:{self.gossip_port}"

    def start(self, timeout: float = 20.0) -> None:
        argv = [
            sys.executable,
            "-m",
            "pairq.cli",
            "lookup",
            "--address",
            self.address,
            "--node-name",
            self.name,
            "--gossip-address",
            self.gossip_address,
            "--gossip-profile",
            "local",
            *self.extra,
        ]
        for j in self.join:
            argv += ["--join", j]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout=timeout)
        if self.proc.poll() is not None:
            raise RuntimeError(f"lookup exited with {self.proc.returncode}; see {self.log_path}")

    def restarted(self, name: str) -> LookupProcess:
        """A new process on the same gRPC and gossip addresses."""
        return LookupProcess(
            self.log_path.parent,
            name,
            port=self.port,
            gossip_port=self.gossip_port,
            join=self.join,
            extra=self.extra,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@dataclass
class Node:
    """A broker process and the name it registers under (``--node-name``)."""

    name: str
    proc: BrokerProcess
    pair: str = ""

    @property
    def address(self) -> str:
        return self.proc.address

    def signal(self, sig: int) -> None:
        p = self.proc.proc
        if p is not None and p.poll() is None:
            p.send_signal(sig)


@dataclass
class Cluster:
    tmp: Path
    lookups: list[LookupProcess] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)

    @property
    def lookup_addresses(self) -> list[str]:
        return [lk.address for lk in self.lookups]

    def node(self, name: str) -> Node:
        (n,) = [n for n in self.nodes if n.name == name]
        return n

    def pair(self, name: str) -> list[Node]:
        return [n for n in self.nodes if n.pair == name]

    async def start_lookups(self, n: int, extra: Sequence[str] = ()) -> None:
        first = LookupProcess(self.tmp, f"l{len(self.lookups) + 1}", extra=extra)
        rest = [
            LookupProcess(
                self.tmp, f"l{len(self.lookups) + 2 + i}", join=[first.gossip_address], extra=extra
            )
            for i in range(n - 1)
        ]
        self.lookups += [first, *rest]
        await asyncio.gather(*(asyncio.to_thread(lk.start) for lk in (first, *rest)))

    async def start_brokers(
        self, pairs: Sequence[str] = (), singles: Sequence[str] = ()
    ) -> list[Node]:
        """Start two brokers per pair name and one per single name, in parallel; each
        registers with every lookup and joins gossip through every lookup."""
        new: list[Node] = []
        for p in pairs:
            pa, pb_ = free_port(), free_port()
            for suffix, port, partner in (("a", pa, pb_), ("b", pb_, pa)):
                new.append(
                    self._node(
                        f"{p}{suffix}", port, ["--pair", p, "--partner", f"127.0.0.1:{partner}"], p
                    )
                )
        for s in singles:
            new.append(self._node(s, free_port(), [], ""))
        self.nodes += new
        await asyncio.gather(*(asyncio.to_thread(n.proc.start) for n in new))
        return new

    def _node(self, name: str, port: int, extra: list[str], pair: str) -> Node:
        args = [
            "--node-name",
            name,
            "--gossip-address",
            f"127.0.0.1:{free_port()}",
            "--gossip-profile",
            "local",
            "--shutdown-grace-s",
            "0.5",
            *extra,
        ]
        for lk in self.lookups:
            args += ["--lookup", lk.address, "--join", lk.gossip_address]
        proc = BrokerProcess(
            self.tmp / name, port=port, args=args, log_path=str(self.tmp / f"{name}.log")
        )
        return Node(name, proc, pair)

    def kill_all(self) -> None:
        for n in self.nodes:
            n.signal(signal.SIGCONT)
            n.proc.kill()
        for lk in self.lookups:
            lk.kill()


@contextlib.asynccontextmanager
async def cluster(tmp: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp)
    try:
        yield c
    finally:
        c.kill_all()


# ---------------------------------------------------------------- asking lookups


class Lookups:
    """Persistent channels to each lookup, for tight polling of what each one answers."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = list(addresses)
        self._channels = [grpc.aio.insecure_channel(a) for a in self.addresses]
        self._list = [
            ch.unary_unary(
                "/pairq.v1.LookupService/ListNodes",
                request_serializer=pb.ListNodesRequest.SerializeToString,
                response_deserializer=pb.ListNodesResponse.FromString,
            )
            for ch in self._channels
        ]

    async def __aenter__(self) -> Lookups:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ch in self._channels:
            await ch.close()

    async def nodes(self, i: int) -> dict[str, pb.NodeInfo] | None:
        """Lookup ``i``'s registrations by node id, or None if it does not answer."""
        try:
            resp = await self._list[i](pb.ListNodesRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return None
        return {n.status.broker.node_id: n for n in resp.nodes}

    async def liveness(self, node_id: str) -> list[str]:
        """What each lookup answers for ``node_id``: alive/suspect/dead, "absent" or "down"."""
        out = []
        for nodes in await asyncio.gather(*(self.nodes(i) for i in range(len(self.addresses)))):
            if nodes is None:
                out.append("down")
            elif node_id not in nodes:
                out.append("absent")
            else:
                out.append(LIVENESS[nodes[node_id].status.liveness])
        return out

    async def complete(
        self, i: int, names: Sequence[str], topics: dict[str, set[str]] | None = None
    ) -> bool:
        """Lookup ``i`` lists every node in ``names`` alive (and, if given, each with those topics)."""
        nodes = await self.nodes(i)
        if nodes is None:
            return False
        for name in names:
            n = nodes.get(name)
            if n is None or n.status.liveness != pb.LIVENESS_ALIVE:
                return False
            if topics is not None and not topics.get(name, set()) <= {t.name for t in n.topics}:
                return False
        return True


async def until(
    fn: Callable[[], Any],
    ok: Callable[[Any], bool],
    timeout: float,
    what: str,
    interval: float = 0.01,
) -> float:
    """Poll ``fn`` (sync or async) until ``ok(result)``; returns the seconds it took
    (fails after ``timeout``)."""
    t0 = time.monotonic()
    last: object = None
    while True:
        got = fn()
        last = await got if inspect.isawaitable(got) else got
        if ok(last):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")
        await asyncio.sleep(interval)


async def all_registered(c: Cluster, lk: Lookups, timeout: float = 15.0) -> None:
    names = [n.name for n in c.nodes]
    for i in range(len(c.lookups)):
        await until(
            functools.partial(lk.complete, i, names),
            bool,
            timeout,
            f"lookup {i} lists {names} alive",
        )


async def pairs_healthy(lookups: Sequence[str], pairs: set[str], timeout: float = 15.0) -> None:
    async with Discovery(lookups) as d:

        async def healthy() -> set[str]:
            return {p.pair for p in await d.all_pairs() if p.pair and p.healthy}

        await until(healthy, lambda got: pairs <= got, timeout, f"pairs {pairs} healthy")


def p99(xs: Sequence[float]) -> float:
    """Nearest-rank 99th percentile (the maximum for fewer than 100 samples)."""
    return sorted(xs)[math.ceil(0.99 * len(xs)) - 1]


class Received:
    """A consumer handler recording bodies and arrival times."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.times: list[float] = []
        self.event = asyncio.Event()

    def __call__(self, msg: Message) -> None:
        self.bodies.append(bytes(msg.body))
        self.times.append(time.monotonic())
        self.event.set()

    def has(self, want: set[bytes]) -> bool:
        return want <= set(self.bodies)

    async def wait_for(self, want: set[bytes], timeout: float) -> float:
        async def snapshot() -> bool:
            return self.has(want)

        return await until(
            snapshot, bool, timeout, f"{len(want - set(self.bodies))} of {len(want)} not received"
        )
