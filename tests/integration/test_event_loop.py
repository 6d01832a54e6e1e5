"""``--event-loop``: a real ``pairq broker`` runs on the loop it is told to (uvloop by
default, the standard library's asyncio on request), says which in its start-up line,
stores a publish durably on either and keeps it across a SIGKILL."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from pairq.client import Producer
from pairq.testing import BrokerProcess
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg

LOOPS = {
    None: "uvloop.Loop",  # the default
    "uvloop": "uvloop.Loop",
    "asyncio": "asyncio.unix_events._UnixSelectorEventLoop",
}


@pytest.mark.parametrize("choice", list(LOOPS), ids=lambda c: c or "default")
async def test_the_broker_runs_on_the_chosen_loop(tmp_path: Path, choice: str | None) -> None:
    args = ["--sync", "always"] + (["--event-loop", choice] if choice else [])
    log = tmp_path / "broker.log"
    bp = BrokerProcess(tmp_path / "d", args=args, log_path=str(log))
    bp.start()
    try:
        async with grpc.aio.insecure_channel(bp.address) as ch:
            await pbg.BrokerServiceStub(ch).CreateChannel(
                pb.CreateChannelRequest(topic="loops", channel="c"), timeout=10
            )
        async with Producer(brokers=[bp.address]) as p:
            ack = await p.publish("loops", b"on " + (choice or "default").encode())
        assert ack.copies == 1
        text = log.read_text()
        assert f"event loop {LOOPS[choice]})" in text, text
        bp.kill()  # the publish was acknowledged: it must be on disk
        bp.start()
        async with grpc.aio.insecure_channel(bp.address) as ch:
            stats = await pbg.BrokerServiceStub(ch).GetStats(pb.GetStatsRequest(), timeout=10)
        depths = {(t.name, c.name): c.depth for t in stats.topics for c in t.channels}
        assert depths == {("loops", "c"): 1}
    finally:
        bp.stop()
