"""Regression tests (issue 14) on a real 64 MiB disk (a tmpfs; needs root to mount):
the store's room is what LMDB can still allocate, so a disk that filled up accepts
publishes again after consumers finish messages, also after a restart; and the
full-store message names --store-reserve-bytes, the flag that made a small disk "full"."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from rawclient import RawSub

from pairq.testing import eventually, run_broker, run_pair
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg

DISK = 64 * 1024 * 1024
BODY = b"d" * 60_000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _mount(tmp_path / "disk")


def _mount(mnt: Path) -> Iterator[Path]:
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a 64 MiB tmpfs needs root")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def _fill(stub: pbg.BrokerServiceStub) -> tuple[int, str]:
    """Publish until refused; (messages accepted, the refusal's details)."""
    published = 0
    for _ in range(10_000):
        try:
            await stub.PublishBatch(
                pb.PublishBatchRequest(topic="t", messages=[pb.PublishItem(body=BODY)] * 10)
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
            return published, exc.details() or ""
        published += 10
    raise AssertionError("a 64 MiB disk never filled up")


async def _drain(stub: pbg.BrokerServiceStub, count: int) -> None:
    sub = RawSub(stub, "t", "c")
    sub.rdy(500)
    finished = 0

    def step() -> bool:
        nonlocal finished
        batch = sub.take()
        if batch:
            sub.fin([m.id for m in batch])
            finished += len(batch)
        return finished >= count

    await eventually(step, timeout=60)
    await sub.cancel()


async def test_full_disk_accepts_publishes_again_after_consumers_finish(small_disk: Path) -> None:
    data = small_disk / "data"
    opts = {"store_reserve_bytes": 8 * 1024 * 1024, "max_msg_size": 65536}
    async with run_broker(data, **opts) as b:
        stub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(b.address))
        await stub.CreateChannel(pb.CreateChannelRequest(topic="t", channel="c"))
        published, details = await _fill(stub)
        assert published > 100
        assert "--store-reserve-bytes" in details and "disk has" in details
        # Consumers finish everything: the LMDB file does not shrink, but its free
        # pages are room, so publishes are accepted again.
        await _drain(stub, published)
        await eventually(lambda: not b.store.full_reason, timeout=30)
        r = await stub.Publish(pb.PublishRequest(topic="t", message=pb.PublishItem(body=BODY)))
        assert len(r.id) == 16
        # It fills up again to about the same point: the freed pages really were reused.
        again, _ = await _fill(stub)
        assert again >= published // 2
        await _drain(stub, again + 1)
        await eventually(lambda: not b.store.full_reason, timeout=30)
    # ... and after a restart, with the disk as full as the file left it (the check
    # before the fix looked at the disk alone and refused every publish).
    assert os.statvfs(data).f_bavail * os.statvfs(data).f_frsize < opts["store_reserve_bytes"]
    async with run_broker(data, **opts) as b:
        assert not b.store.full_reason
        stub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(b.address))
        r = await stub.Publish(pb.PublishRequest(topic="t", message=pb.PublishItem(body=BODY)))
        assert len(r.id) == 16


async def test_default_reserve_on_a_small_disk_names_the_flag(small_disk: Path) -> None:
    async with run_broker(small_disk / "data") as b:  # default reserve: 64 MiB
        stub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(b.address))
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.Publish(pb.PublishRequest(topic="t", message=pb.PublishItem(body=b"x")))
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = ei.value.details() or ""
        assert "--store-reserve-bytes" in details and str(64 * 1024 * 1024) in details


@pytest.fixture
def pair_dir(tmp_path: Path) -> Iterator[Path]:
    """A pair's data directory whose broker B (``b/``) is on a 64 MiB disk."""
    yield from (tmp_path for _ in _mount(tmp_path / "b"))


async def test_partner_disk_full_is_resource_exhausted_naming_the_partner(pair_dir: Path) -> None:
    """In a pair whose partner's disk is full, the owner answered UNAVAILABLE "partner is
    unreachable"; now it is RESOURCE_EXHAUSTED naming the partner's store and disk."""
    async with run_pair(pair_dir, store_reserve_bytes=8 * 1024 * 1024, max_msg_size=65536) as (
        a,
        b,
    ):
        stub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(a.address))
        details = ""
        for _ in range(3000):
            try:
                await stub.PublishBatch(
                    pb.PublishBatchRequest(topic="t", messages=[pb.PublishItem(body=BODY)] * 10),
                    timeout=10,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    details = exc.details() or ""
                    break
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
        assert b.store.full_reason and not a.store.full_reason
        assert f"partner {b.address}" in details and "store is full" in details, details
        assert "disk has" in details and "--store-reserve-bytes" in details
