"""The broker's gRPC health status follows whether publishes can succeed
(``pairq.broker.health``), on real ``pairq broker`` processes: a partner killed turns
``pairq.v1.BrokerService`` NOT_SERVING under --min-copies=2 and its restart turns it
SERVING again; a full store (a 64 MiB tmpfs) turns it NOT_SERVING and draining it
turns it SERVING again. The server as a whole (service ``""``) stays SERVING."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_small_disk import BODY, _drain, _fill, _mount

from pairq.testing import BrokerProcess, eventually, free_port
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg

SERVICE = "pairq.v1.BrokerService"
# The documented bound (README, "Health"): the partner's death is seen when the link
# drops (at once for a killed process) or its lease lapses, plus one health poll
# (0.25 s); 3 s leaves room for a loaded test machine.
NOT_SERVING_BOUND_S = 3.0
HEAL_BOUND_S = 15.0  # a restarted partner: process start + reconnect + one poll
S = health_pb2.HealthCheckResponse


def status(address: str, service: str = SERVICE) -> int:
    with grpc.insecure_channel(address) as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return int(r.status)


def wait_status(address: str, want: int, bound: float) -> float:
    """Seconds until the broker at ``address`` reports ``want`` for BrokerService."""
    t0 = time.monotonic()
    while True:
        got = status(address)
        if got == want:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < bound, (
            f"{address}: health {S.ServingStatus.Name(got)}, not {S.ServingStatus.Name(want)} "
            f"within {bound} s"
        )
        time.sleep(0.02)


def _pair(tmp: Path, min_copies: int = 2) -> tuple[BrokerProcess, BrokerProcess]:
    pa, pb_ = free_port(), free_port()
    common = ["--pair", "p", "--min-copies", str(min_copies)]
    a = BrokerProcess(
        tmp / "a",
        port=pa,
        log_path=str(tmp / "a.log"),
        args=[*common, "--partner", f"127.0.0.1:{pb_}", "--node-name", "broker-a"],
    )
    b = BrokerProcess(
        tmp / "b",
        port=pb_,
        log_path=str(tmp / "b.log"),
        args=[*common, "--partner", f"127.0.0.1:{pa}", "--node-name", "broker-b"],
    )
    return a, b


def _logs(tmp: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(tmp.glob("*.log"))
    )


def test_partner_killed_is_not_serving_and_restarted_is_serving(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    a.start()
    b.start()
    try:
        wait_status(a.address, S.SERVING, HEAL_BOUND_S)
        wait_status(b.address, S.SERVING, HEAL_BOUND_S)
        with grpc.insecure_channel(a.address) as ch:
            r = pbg.BrokerServiceStub(ch).Publish(
                pb.PublishRequest(topic="t", message=pb.PublishItem(body=b"x")), timeout=10
            )
            assert r.copies == 2
        b.kill()
        took = wait_status(a.address, S.NOT_SERVING, NOT_SERVING_BOUND_S)
        # ... and it means it: a publish is refused now.
        with grpc.insecure_channel(a.address) as ch, pytest.raises(grpc.RpcError) as ei:
            pbg.BrokerServiceStub(ch).Publish(
                pb.PublishRequest(topic="t", message=pb.PublishItem(body=b"x")), timeout=10
            )
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        assert status(a.address, "") == S.SERVING  # the process still serves
        b.start()
        wait_status(a.address, S.SERVING, HEAL_BOUND_S)
        wait_status(b.address, S.SERVING, HEAL_BOUND_S)
        assert took < NOT_SERVING_BOUND_S
    except BaseException:
        print(_logs(tmp_path))
        raise
    finally:
        a.stop()
        b.stop()


def test_min_copies_1_stays_serving_without_its_partner(tmp_path: Path) -> None:
    a, b = _pair(tmp_path, min_copies=1)
    a.start()
    b.start()
    try:
        wait_status(a.address, S.SERVING, HEAL_BOUND_S)
        b.kill()
        with grpc.insecure_channel(a.address) as ch:
            stub = pbg.BrokerServiceStub(ch)
            deadline = time.monotonic() + NOT_SERVING_BOUND_S
            while True:  # until A has seen the partner go (one copy)
                r = stub.Publish(
                    pb.PublishRequest(topic="t", message=pb.PublishItem(body=b"x")), timeout=10
                )
                if r.copies == 1:
                    break
                assert time.monotonic() < deadline, "partner's death not seen"
        # Publishes get one copy, so publishing is healthy.
        assert status(a.address) == S.SERVING
    except BaseException:
        print(_logs(tmp_path))
        raise
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _mount(tmp_path / "disk")


async def test_full_store_is_not_serving_and_drained_is_serving(
    small_disk: Path, tmp_path: Path
) -> None:
    b = BrokerProcess(
        small_disk / "data",
        log_path=str(tmp_path / "broker.log"),
        args=["--store-reserve-bytes", str(8 * 1024 * 1024), "--max-msg-size", "65536"],
    )
    b.start()
    try:
        wait_status(b.address, S.SERVING, HEAL_BOUND_S)
        async with grpc.aio.insecure_channel(b.address) as ch:
            stub = pbg.BrokerServiceStub(ch)
            await stub.CreateChannel(pb.CreateChannelRequest(topic="t", channel="c"))
            published, _ = await _fill(stub)
            assert published > 100
            wait_status(b.address, S.NOT_SERVING, NOT_SERVING_BOUND_S)
            assert status(b.address, "") == S.SERVING  # consumers can still drain it
            await _drain(stub, published)

            def serving() -> bool:
                return status(b.address) == S.SERVING

            await eventually(serving, timeout=30, interval=0.05)
            r = await stub.Publish(pb.PublishRequest(topic="t", message=pb.PublishItem(body=BODY)))
            assert len(r.id) == 16
    except BaseException:
        print(_logs(tmp_path))
        raise
    finally:
        b.stop()
