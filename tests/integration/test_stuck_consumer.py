"""Regression test (issue 14): a consumer that stops reading its Subscribe stream made broker
memory grow about 12.5 MB/s without limit and was never disconnected.

A real broker process, a producer publishing 10 kB messages without pause, a healthy consumer
and a stuck one on the same channel. The stuck consumer opens its stream, grants RDY and never
reads a byte of what comes back. Its deliveries stop once its stream's buffer is full
(``--max-subscriber-buffer-bytes``), so the broker's anonymous memory stays within
``GROWTH_BOUND_MB`` of what it was with the stuck consumer just connected; once it has been
silent for two heartbeat intervals it is disconnected, and the healthy consumer gets every
message published (none lost to the stuck one).

The default suite runs it for 14 s (the stuck consumer sends NOPs for the first part, so it is
"alive but not reading" and must be held, not disconnected, then goes silent); the 2-minute
run, silent throughout with a 41 s heartbeat interval, is disconnected after about 123 s (the
broker checks once per interval, and the first check after two silent intervals is the third),
and is behind the ``slow`` marker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from rawclient import RawSub

from pairq.testing import BrokerProcess, eventually
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg

BODY = b"m" * 10_000
BUFFER = 1024 * 1024  # --max-subscriber-buffer-bytes
STUCK_RDY = 1000  # one RDY window: 10 MB
# Broker RssAnon growth allowed while the stuck consumer is connected: its buffer (1 MiB),
# one pump's deliveries (its RDY window, 10 MB), gRPC's flow-control window, and heap slack.
# Before the fix the same run grew by about 5 MB every second.
GROWTH_BOUND_MB = 40.0


def read_text(path: str | Path) -> str:
    return Path(path).read_text()


def rss_anon_mb(pid: int) -> float:
    for line in read_text(f"/proc/{pid}/status").splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc status")


class StuckConsumer:
    """Opens a Subscribe stream, grants RDY, never reads the responses; sends NOPs while
    ``alive`` (a client whose reader is stuck but whose process is up)."""

    def __init__(self, stub: pbg.BrokerServiceStub, hb_ms: int, alive: bool) -> None:
        self.alive = alive
        self.gone = asyncio.Event()

        async def reqs() -> AsyncIterator[pb.SubscribeRequest]:
            yield pb.SubscribeRequest(
                identify=pb.SubscribeIdentify(
                    topic="t", channel="c", client_id="stuck", heartbeat_interval_ms=hb_ms
                )
            )
            yield pb.SubscribeRequest(ready=pb.SubscribeReady(count=STUCK_RDY))
            while not self.gone.is_set():
                await asyncio.sleep(hb_ms / 4000)
                if self.alive:
                    yield pb.SubscribeRequest(nop=True)

        self.call = stub.Subscribe(reqs())  # never iterated: nothing is read

    def cancel(self) -> None:
        self.gone.set()
        self.call.cancel()


async def _clients(stub: pbg.BrokerServiceStub) -> list[str]:
    st = await stub.GetStats(pb.GetStatsRequest(topic="t", channel="c"))
    return [c.client_id for t in st.topics for ch in t.channels for c in ch.clients]


async def run_stuck_consumer(
    tmp_path: Path, *, seconds: float, hb_ms: int, alive_for: float
) -> None:
    bp = BrokerProcess(
        tmp_path / "b",
        args=[
            "--max-subscriber-buffer-bytes",
            str(BUFFER),
            "--msg-timeout-ms",
            "1000",
            "--max-rdy-count",
            str(STUCK_RDY),
        ],
    )
    bp.start()
    assert bp.proc is not None
    pid = bp.proc.pid
    ch = grpc.aio.insecure_channel(bp.address)
    stub = pbg.BrokerServiceStub(ch)
    published: set[bytes] = set()
    received: set[bytes] = set()
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            r = await stub.PublishBatch(
                pb.PublishBatchRequest(topic="t", messages=[pb.PublishItem(body=BODY)] * 20)
            )
            published.update(r.ids)
            await asyncio.sleep(0.01)

    async def consume(sub: RawSub) -> None:
        while True:
            await asyncio.sleep(0.02)
            batch = sub.take()
            if batch:
                received.update(m.id for m in batch)
                sub.fin([m.id for m in batch])

    try:
        await stub.CreateChannel(pb.CreateChannelRequest(topic="t", channel="c"))
        healthy = RawSub(stub, "t", "c", client_id="healthy")
        healthy.rdy(200)
        consumer = asyncio.create_task(consume(healthy))
        producer = asyncio.create_task(produce())
        start = time.monotonic()  # the stuck consumer's time: it connects now
        stuck = StuckConsumer(stub, hb_ms, alive=alive_for > 0)
        await eventually(lambda: len(published) > 2000, timeout=30)
        baseline = rss_anon_mb(pid)
        peak = baseline
        disconnected_at: float | None = None
        while time.monotonic() - start < seconds:
            await asyncio.sleep(0.5)
            peak = max(peak, rss_anon_mb(pid))
            if stuck.alive and time.monotonic() - start >= alive_for:
                stuck.alive = False
            if disconnected_at is None and "stuck" not in await _clients(stub):
                disconnected_at = time.monotonic() - start
        assert peak - baseline <= GROWTH_BOUND_MB, (baseline, peak)
        # Silent for two heartbeat intervals: disconnected (checked once per interval,
        # plus the grace for a stream stuck in a write).
        if disconnected_at is None:
            deadline = alive_for + 3 * hb_ms / 1000 + 2 - (time.monotonic() - start)
            t0 = time.monotonic()
            while time.monotonic() - t0 < max(deadline, 0.5):
                if "stuck" not in await _clients(stub):
                    disconnected_at = time.monotonic() - start
                    break
                await asyncio.sleep(0.2)
        assert disconnected_at is not None, "the silent consumer was never disconnected"
        assert disconnected_at >= alive_for + 2 * hb_ms / 1000 - 0.5, disconnected_at
        assert "healthy" in await _clients(stub)
        stop.set()
        await producer
        # Nothing was lost to the stuck consumer: the healthy one gets every message.
        await eventually(lambda: published <= received, timeout=60)
        stuck.cancel()
        consumer.cancel()
        await healthy.cancel()
    finally:
        stop.set()
        await ch.close()
        bp.stop()
    log = read_text(bp.log_path)
    assert "Traceback" not in log, log[-3000:]


async def test_stuck_consumer_is_held_then_disconnected_and_memory_stays_bounded(
    tmp_path: Path,
) -> None:
    await run_stuck_consumer(tmp_path, seconds=14, hb_ms=2000, alive_for=5)


@pytest.mark.slow
async def test_stuck_consumer_for_two_minutes(tmp_path: Path) -> None:
    await run_stuck_consumer(tmp_path, seconds=130, hb_ms=41_000, alive_for=0)
