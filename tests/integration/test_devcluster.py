"""``pairq dev`` (what ``make run`` starts) as a real process: it survives a broker's
kill -9, restarts it on request, and refuses ports another process holds."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

from pairq.testing import free_port
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg

HEAL_BOUND_S = 15  # a broker's restart (a few seconds on a loaded 2-core host) plus re-sync


def dev_args(data: Path) -> list[str]:
    # Each port and the one after it (pairs, gossip of the lookup) must be free.
    def two() -> int:
        while True:
            p = free_port()
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p + 1))
                except OSError:
                    continue
            return p

    return [
        "--data-dir",
        str(data),
        "--broker-port",
        str(two()),
        "--lookup-port",
        str(two()),
        "--gossip-port",
        str(two()),
        "--metrics-port",
        str(two()),
        "--admin-port",
        str(free_port()),
    ]


def pairq(*args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pairq.cli", *args],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )  # type: ignore[call-overload]


async def stats(addr: str) -> pb.GetStatsResponse | None:
    try:
        async with grpc.aio.insecure_channel(addr) as ch:
            return await pbg.BrokerServiceStub(ch).GetStats(pb.GetStatsRequest(), timeout=1)
    except grpc.aio.AioRpcError:
        return None


async def until(cond, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = await cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        await asyncio.sleep(0.1)


async def admin_nodes(port: int) -> dict | None:  # type: ignore[type-arg]
    """The dev admin console's /api/nodes once it lists both brokers alive."""
    import json
    import urllib.request

    def get() -> dict | None:  # type: ignore[type-arg]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/nodes", timeout=2) as r:
                got = json.load(r)
        except OSError:
            return None
        alive = [n for n in got["nodes"] if n["state"] == "alive"]
        return got if len(alive) == 2 else None

    return await asyncio.to_thread(get)


async def healthy(a: str, b: str) -> bool:
    sa, sb = await stats(a), await stats(b)
    return all(
        s is not None
        and s.pair.connected
        and s.pair.partner_connected
        and not s.pair.solo
        and s.pair.lease_remaining_ms > 0
        for s in (sa, sb)
    )


async def test_dev_survives_a_broker_kill9_and_restarts_it_on_request(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = dev_args(data)
    port = int(args[args.index("--broker-port") + 1])
    a, b = f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"
    dev = pairq("dev", *args)
    try:
        await until(lambda: healthy(a, b), 40, "the dev pair healthy")
        admin_port = int(args[args.index("--admin-port") + 1])
        admin = await until(lambda: admin_nodes(admin_port), 20, "the dev admin console answering")
        assert {n["address"] for n in admin["nodes"]} == {a, b}
        async with grpc.aio.insecure_channel(a) as ch:
            r = await pbg.BrokerServiceStub(ch).PublishBatch(
                pb.PublishBatchRequest(
                    topic="orders", messages=[pb.PublishItem(body=b"%d" % i) for i in range(50)]
                ),
                timeout=5,
            )
        assert r.copies == 2
        before = await stats(b)
        assert before is not None and before.pair.takeovers == 0  # a clean start takes nothing over
        os.kill(int((data / "broker-a.pid").read_text()), signal.SIGKILL)

        async def took_over() -> bool:
            s = await stats(b)
            return s is not None and s.pair.takeovers == 1

        await until(took_over, 10, "broker-b took over broker-a's messages")
        assert dev.poll() is None, "pairq dev stopped when one broker died"
        restart = pairq("dev", "restart", "broker-a", "--data-dir", str(data))
        out, err = restart.communicate(timeout=20)
        assert restart.returncode == 0, err
        assert "restart broker-a" in out
        await until(lambda: healthy(a, b), HEAL_BOUND_S, "the pair healthy again after the restart")
        dev.send_signal(signal.SIGTERM)
        _, err = dev.communicate(timeout=30)
        assert dev.returncode == 0, err
        assert "broker-a exited with -9; the rest keeps running" in err
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()


def test_dev_refuses_a_port_another_process_holds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = dev_args(data)
    with socket.socket() as s:
        s.bind(("127.0.0.1", int(args[args.index("--lookup-port") + 1])))
        s.listen()
        dev = pairq("dev", *args)
        out, err = dev.communicate(timeout=30)
    assert dev.returncode == 2, (out, err)
    assert "already in use by another process" in err
    assert "cluster is up" not in out
