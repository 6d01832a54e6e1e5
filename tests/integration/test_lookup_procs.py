"""Helpers (no tests) for the lookup tests: lookups and brokers as child processes (killable with -9)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import grpc

from pairq.testing import free_port
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
                sys.executable, *self.argv,
                stdout=asyncio.subprocess.PIPE if ready_prefix else log, stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        if ready_prefix:
            assert self.proc.stdout is not None
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            self.ready_line = line.decode().strip()
            assert self.ready_line.startswith(ready_prefix), f"unexpected {self.ready_line!r}; see {self.log_path}"
        if port:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    return
                except OSError:
                    if self.proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
                        raise RuntimeError(f"process did not listen on {port}; see {self.log_path}") from None
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
    def __init__(self, tmp: Path, name: str, *, port: int = 0, gossip_port: int = 0,
                 join: list[str] | None = None, extra: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.gossip_port = gossip_port
        argv = ["-m", "pairq.lookup.cli", "lookup", "--address", self.address, "--node-name", name]
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


class BrokerHarness(Proc):
    """``pairq.lookup._harness``: a broker + registrar (+ gossip) in one child process."""

    def __init__(self, tmp: Path, name: str, lookups: list[str], *, gossip: bool = False,
                 join: list[str] | None = None, pair: str = "", partner: str = "", port: int = 0,
                 topics: list[str] | None = None) -> None:
        self.port = port or free_port()
        argv = ["-m", "pairq.lookup._harness", "--address", self.address, "--data-dir", str(tmp / name)]
        for lk in lookups:
            argv += ["--lookup", lk]
        if gossip:
            argv += ["--gossip-address", "127.0.0.1:0"]
            for j in join or []:
                argv += ["--join", j]
        if pair:
            argv += ["--pair", pair, "--partner", partner]
        for t in topics or []:
            argv += ["--topic", t]
        super().__init__(argv, tmp / f"{name}.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def node_id(self) -> str:
        return self.ready_line.split()[1]

    async def start(self, *, ready_prefix: str = "ready", port: int = 0, timeout: float = 20.0) -> None:
        await super().start(ready_prefix="ready", timeout=timeout)


async def liveness(lookup: str, node_id: str, timeout: float = 1.0) -> str:
    """What ``lookup`` answers for ``node_id``: alive/suspect/dead, "absent", or "down"."""
    async with grpc.aio.insecure_channel(lookup) as ch:
        rpc = ch.unary_unary("/pairq.v1.LookupService/ListNodes",
                             request_serializer=pb.ListNodesRequest.SerializeToString,
                             response_deserializer=pb.ListNodesResponse.FromString)
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
