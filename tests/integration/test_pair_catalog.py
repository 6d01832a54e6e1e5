"""Channels are pair state, deletions included: a channel deleted while the partner is
away stays deleted when it returns (real processes).

Before tombstones the catalog exchange was a union: the returning partner's catalog
brought the deleted channel back on the broker that deleted it.
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


def _channels(s: pb.GetStatsResponse | None, topic: str) -> set[str] | None:
    for t in s.topics if s is not None else ():
        if t.name == topic:
            return {c.name for c in t.channels}
    return None


async def _channel_sets(h: Harness, *procs: object) -> list[set[str] | None]:
    return [_channels(await get_stats(h, p.address), "t") for p in procs]  # type: ignore[attr-defined]


async def test_a_channel_deleted_while_the_partner_is_down_stays_deleted(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        a, b = h.pair()
        await start_pair(h, a, b)
        await create_channels(h, [a], "t", ["gone", "kept", "again"])
        deadline = time.monotonic() + 10
        while await _channel_sets(h, a, b) != [{"gone", "kept", "again"}] * 2:
            assert time.monotonic() < deadline, await _channel_sets(h, a, b)
            await asyncio.sleep(0.05)
        # B goes away; A deletes two channels, then creates one of them again.
        await asyncio.to_thread(b.terminate)
        stub = h.stub(a.address)
        await stub.DeleteChannel(pb.DeleteChannelRequest(topic="t", channel="gone"), timeout=5)
        await stub.DeleteChannel(pb.DeleteChannelRequest(topic="t", channel="again"), timeout=5)
        await stub.CreateChannel(pb.CreateChannelRequest(topic="t", channel="again"), timeout=5)
        # B returns with its old catalog (all three channels).
        await asyncio.to_thread(b.start)
        problem = await wait_healthy(h, {"a": a, "b": b}, time.monotonic() + START_BOUND_S, "back")
        assert problem is None, problem
        # Both catalogs have crossed once healthy; nothing may bring "gone" back, on
        # either broker, and "again" (created after its deletion) is on both.
        deadline = time.monotonic() + 10
        while (got := await _channel_sets(h, a, b)) != [{"kept", "again"}] * 2:
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
        # It stays so across another restart of each (the tombstone is durable).
        for p in (a, b):
            await asyncio.to_thread(p.terminate)
            await asyncio.to_thread(p.start)
            problem = await wait_healthy(
                h, {"a": a, "b": b}, time.monotonic() + START_BOUND_S, "restart"
            )
            assert problem is None, problem
        assert await _channel_sets(h, a, b) == [{"kept", "again"}] * 2
        # Publishing still reaches two copies.
        r = await stub.Publish(
            pb.PublishRequest(topic="t", message=pb.PublishItem(body=b"x")), timeout=5
        )
        assert r.copies == 2
