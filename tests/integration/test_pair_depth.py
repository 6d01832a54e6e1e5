"""Channel depth stays true when the partner took over a broker's messages while it
was down (real processes).

Found while testing tombstones: B's messages were taken over by A while B was
stopped; B restarted (its seqs skip to the high-water mark, a gap its channels
mark finished), then dropped what A took over, and its channel's floor passed
the read position over that gap: `depth` reported 99,991 messages waiting that
do not exist (A had all 10).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pairq.v1 import broker_pb2 as pb
from tests.integration.test_pair_faults import (
    START_BOUND_S,
    Harness,
    create_channels,
    get_stats,
    start_pair,
    wait_healthy,
)

pytestmark = pytest.mark.asyncio


def _depths(s: pb.GetStatsResponse | None, topic: str) -> dict[str, int]:
    for t in s.topics if s is not None else ():
        if t.name == topic:
            return {c.name: c.depth for c in t.channels}
    return {}


async def test_depth_after_the_partner_took_over_and_a_restart(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        a, b = h.pair()
        await start_pair(h, a, b)
        await create_channels(h, [a], "t", ["c"])
        for _ in range(10):
            r = await h.stub(b.address).Publish(
                pb.PublishRequest(topic="t", message=pb.PublishItem(body=b"b")), timeout=5
            )
            assert r.copies == 2
        await asyncio.to_thread(b.terminate)
        deadline = time.monotonic() + 10  # A takes B's 10 over once B's lease lapsed
        while _depths(await get_stats(h, a.address), "t").get("c") != 10:
            assert time.monotonic() < deadline, _depths(await get_stats(h, a.address), "t")
            await asyncio.sleep(0.05)
        await asyncio.to_thread(b.start)
        problem = await wait_healthy(h, {"a": a, "b": b}, time.monotonic() + START_BOUND_S, "back")
        assert problem is None, problem
        deadline = time.monotonic() + 5
        while True:
            got = (
                _depths(await get_stats(h, a.address), "t"),
                _depths(await get_stats(h, b.address), "t"),
            )
            if got == ({"c": 10}, {"c": 0}):
                break
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
