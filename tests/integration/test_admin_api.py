"""``pairq admin``'s JSON API in-process against ``run_cluster``: what it serves,
the confirmation rule, the audit log and the cross-site guard."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import grpc

from pairq.admin import Admin, AdminOptions
from pairq.testing import run_cluster
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg


async def test_api_serves_the_cluster_and_actions_need_confirmation(tmp_path: Path) -> None:
    async with run_cluster(tmp_path, pairs=1) as c:
        a, b = c.pairs[0]
        stub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(a.address))
        await stub.CreateChannel(pb.CreateChannelRequest(topic="t", channel="ch"))
        await stub.PublishBatch(
            pb.PublishBatchRequest(topic="t", messages=[pb.PublishItem(body=b"m")] * 3)
        )
        audit = tmp_path / "audit.log"
        admin = Admin(
            AdminOptions(
                address="127.0.0.1:0",
                lookup=tuple(c.lookup_addresses),
                poll_interval=0.2,
                audit_log=str(audit),
            )
        )
        await admin.start()
        try:
            async with aiohttp.ClientSession(admin.url) as http:

                async def get(path: str) -> dict:  # type: ignore[type-arg]
                    async with http.get(path) as r:
                        assert r.status == 200, path
                        return dict(await r.json())

                async def listed() -> bool:
                    n = await get("/api/nodes")
                    return sum(x["state"] == "alive" for x in n["nodes"]) == 2

                deadline = time.monotonic() + 15
                while not await listed():  # the console's first polls
                    assert time.monotonic() < deadline, "both brokers listed alive within 15 s"
                    await asyncio.sleep(0.05)
                nodes = (await get("/api/nodes"))["nodes"]
                assert {n["node_id"] for n in nodes} == {a.node_id, b.node_id}
                pairs = (await get("/api/pairs"))["pairs"]
                assert [p["name"] for p in pairs] == [a.options.pair]
                ch = await get("/api/topics/t/ch")
                assert ch["depth"] == 3 and ch["paused"] is False
                async with http.post(
                    "/api/actions/pause-channel", json={"topic": "t", "channel": "ch"}
                ) as r:
                    assert r.status == 409
                    assert "pause" in (await r.json())["would"].lower()
                assert not a.topics["t"].channels["ch"].core.paused
                async with http.post(
                    "/api/actions/pause-channel",
                    json={"topic": "t", "channel": "ch", "confirm": True},
                    headers={"X-Forwarded-User": "alice"},
                ) as r:
                    assert r.status == 200, await r.text()
                assert a.topics["t"].channels["ch"].core.paused
                assert b.topics["t"].channels["ch"].core.paused
                line = json.loads(audit.read_text().splitlines()[-1])
                assert line["who"].startswith("alice@") and line["action"] == "pause-channel"
                async with http.post(
                    "/action",
                    data={
                        "verb": "unpause-channel",
                        "topic": "t",
                        "channel": "ch",
                        "confirm": "yes",
                    },
                    headers={"Origin": "http://evil.example"},
                ) as r:
                    assert r.status == 403
                assert a.topics["t"].channels["ch"].core.paused
                async with http.post(
                    "/api/actions/peek",
                    json={"topic": "t", "channel": "ch", "limit": 2, "confirm": True},
                ) as r:
                    peek = await r.json()
                assert [m["body"] for m in peek["messages"]] == ["m", "m"]
                async with http.get("/static/admin.js") as r:
                    assert r.status == 200 and "setInterval" in await r.text()
        finally:
            await admin.stop()
