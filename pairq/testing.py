"""Test fixtures as product: run real brokers in-process for your own tests.

    from pairq.testing import run_broker

    async with run_broker() as broker:          # port 0, temporary data dir
        async with Producer(brokers=[broker.address]) as p:
            await p.publish("orders", b"x")

``run_broker(data_dir=..., **options)`` accepts any ``BrokerOptions`` field.
``BrokerProcess`` runs a broker as a separate OS process (for crash tests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pairq.broker.broker import Broker
from pairq.broker.options import BrokerOptions

__all__ = [
    "BrokerProcess",
    "Cluster",
    "eventually",
    "free_port",
    "run_broker",
    "run_cluster",
    "run_pair",
    "wait_for_port",
]


@contextlib.asynccontextmanager
async def run_broker(
    data_dir: str | os.PathLike[str] | None = None, **options: Any
) -> AsyncIterator[Broker]:
    """A started broker on 127.0.0.1 (port 0 unless ``address`` is given); stopped on exit."""
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pairq-test-")
        data_dir = tmp.name
    options.setdefault("address", "127.0.0.1:0")
    broker = Broker(BrokerOptions(data_dir=str(data_dir), **options))
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop(grace=1.0)
        if tmp is not None:
            tmp.cleanup()


@contextlib.asynccontextmanager
async def run_pair(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    pair: str = "p1",
    gossip: bool = False,
    **options: Any,
) -> AsyncIterator[tuple[Broker, Broker]]:
    """Two started brokers forming a redundant pair (A, B), in-process on loopback.

    With ``gossip=True`` both run gossip (local profile, port 0) and B joins A.
    """
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pairq-pair-")
        data_dir = tmp.name
    g: dict[str, Any] = (
        {"gossip_address": "127.0.0.1:0", "gossip_profile": "local"} if gossip else {}
    )
    try:
        async with _pair(Path(data_dir), pair, {**g, **options}, b_joins_a=gossip) as brokers:
            yield brokers
    finally:
        if tmp is not None:
            tmp.cleanup()


@dataclasses.dataclass
class Cluster:
    """What ``run_cluster`` started: lookups and pairs, all in this process."""

    lookups: list[Any]
    pairs: list[tuple[Broker, Broker]]

    @property
    def lookup_addresses(self) -> list[str]:
        return [lk.address for lk in self.lookups]

    @property
    def brokers(self) -> list[Broker]:
        return [b for pair in self.pairs for b in pair]


@contextlib.asynccontextmanager
async def run_cluster(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    pairs: int = 1,
    lookups: int = 1,
    **options: Any,
) -> AsyncIterator[Cluster]:
    """Lookups + broker pairs on loopback, gossiping and registered (what ``pairq dev``
    runs, in-process): ``async with run_cluster(pairs=2) as c: c.lookup_addresses``."""
    from pairq.lookup.lookup import Lookup
    from pairq.lookup.options import LookupOptions

    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pairq-cluster-")
        data_dir = tmp.name
    started_lookups: list[Any] = []
    stack = contextlib.AsyncExitStack()
    try:
        for _ in range(lookups):
            join = tuple(lk.gossip_address for lk in started_lookups[:1])
            lk = Lookup(
                LookupOptions(
                    address="127.0.0.1:0",
                    gossip_address="127.0.0.1:0",
                    gossip_profile="local",
                    join=join,
                )
            )
            await lk.start()
            started_lookups.append(lk)
        common = {
            "lookup": tuple(lk.address for lk in started_lookups),
            "gossip_address": "127.0.0.1:0",
            "gossip_profile": "local",
            "join": tuple(lk.gossip_address for lk in started_lookups),
            **options,
        }
        started_pairs = []
        for i in range(pairs):
            pair = await stack.enter_async_context(
                _pair(Path(data_dir) / f"pair{i}", f"p{i}", common)
            )
            started_pairs.append(pair)
        yield Cluster(started_lookups, started_pairs)
    finally:
        await stack.aclose()
        for lk in started_lookups:
            await lk.stop(grace=0.5)
        if tmp is not None:
            tmp.cleanup()


@contextlib.asynccontextmanager
async def _pair(
    data_dir: Path, name: str, options: dict[str, Any], *, b_joins_a: bool = False
) -> AsyncIterator[tuple[Broker, Broker]]:
    """Start A then B as a pair; stop both on exit. ``b_joins_a``: B joins A's gossip."""
    pa, pb_ = free_port(), free_port()
    a = Broker(
        BrokerOptions(
            data_dir=str(data_dir / "a"),
            address=f"127.0.0.1:{pa}",
            pair=name,
            partner=f"127.0.0.1:{pb_}",
            **options,
        )
    )
    await a.start()
    try:
        b_options = dict(options)
        if b_joins_a and a.membership is not None:
            b_options["join"] = (a.membership.address,)
        b = Broker(
            BrokerOptions(
                data_dir=str(data_dir / "b"),
                address=f"127.0.0.1:{pb_}",
                pair=name,
                partner=f"127.0.0.1:{pa}",
                **b_options,
            )
        )
        await b.start()
        try:
            deadline = time.monotonic() + 10
            while not (
                a.pair
                and b.pair
                and a.pair.connected
                and b.pair.connected
                and a.may_deliver()
                and b.may_deliver()
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pair {name} did not connect within 10 s")
                import asyncio

                await asyncio.sleep(0.01)
            yield a, b
        finally:
            await b.stop(grace=0.5)
    finally:
        await a.stop(grace=0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


class BrokerProcess:
    """``pairq broker`` as a child process; ``kill()`` is a real SIGKILL.

    ``host``: the address it binds (loopback by default); ``prefix``: a command
    to run it under, e.g. ``["ip", "netns", "exec", NAME]`` for a network namespace;
    ``env``: variables set for the broker on top of this process's environment.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        args: list[str] | None = None,
        log_path: str | None = None,
        host: str = "127.0.0.1",
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = str(data_dir)
        self.host = host
        self.prefix = list(prefix or [])
        self.env = dict(env or {})
        self.port = port or free_port()
        self.args = args or []
        self.log_path = log_path or str(Path(self.data_dir).with_suffix(".log"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        cmd = [
            *self.prefix,
            sys.executable,
            "-m",
            "pairq.cli",
            "broker",
            "--address",
            self.address,
            "--data-dir",
            self.data_dir,
            *self.args,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env} if self.env else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"broker exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                wait_for_port(self.port, timeout=0.2, host=self.host)
                return
            except TimeoutError:
                continue
        raise TimeoutError(f"broker did not listen on {self.address} in {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


async def eventually(cond: Any, timeout: float = 10.0, interval: float = 0.01) -> None:
    """Wait until ``cond()`` is truthy (polling), failing after ``timeout`` seconds.
    ``cond`` may be a coroutine function: its result is awaited (a coroutine object
    is never taken for "true").

    For tests: wait on a condition with a deadline instead of sleeping.
    """
    import asyncio
    import inspect

    deadline = time.monotonic() + timeout
    while True:
        ok = cond()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
