"""Prometheus metrics of a broker pair, scraped over HTTP."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc

from pairq.telemetry import start_metrics
from pairq.testing import free_port, run_pair
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg


async def test_metrics_endpoint_serves_channel_and_pair_metrics(tmp_path: Path) -> None:
    port = free_port()
    async with run_pair(tmp_path) as (a, _b):
        # What `--metrics-address` starts (one Prometheus endpoint per process).
        handle = start_metrics(f"127.0.0.1:{port}", a)
        stub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(a.address))
        await stub.CreateChannel(pb.CreateChannelRequest(topic="orders", channel="billing"))
        await stub.PublishBatch(
            pb.PublishBatchRequest(topic="orders", messages=[pb.PublishItem(body=b"x")] * 3)
        )
        import asyncio

        text = await asyncio.to_thread(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                .read()
                .decode()
            )
        )
        depth = [line for line in text.splitlines() if line.startswith("pairq_channel_depth{")]
        assert depth and 'channel="billing"' in depth[0] and depth[0].endswith(" 3.0")
        assert "pairq_pair_lease_remaining" in text
        assert "pairq_topic_published_total" in text or "pairq_topic_published" in text
        handle.shutdown()
