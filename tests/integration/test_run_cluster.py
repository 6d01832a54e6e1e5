"""pairq.testing.run_cluster: the in-process cluster fixture users test against."""

from __future__ import annotations

from pathlib import Path

from pairq.client import Consumer, Producer
from pairq.testing import eventually, run_cluster


async def test_run_cluster_two_pairs_discovered_through_the_lookup(tmp_path: Path) -> None:
    async with run_cluster(tmp_path, pairs=2) as cluster:
        assert len(cluster.brokers) == 4
        lookup = cluster.lookups[0]
        await eventually(lambda: all(b.registrar is not None for b in cluster.brokers))
        got: list[bytes] = []
        async with Producer(lookups=cluster.lookup_addresses) as producer:
            for i in range(20):
                ack = await producer.publish(f"topic{i % 4}", b"%d" % i)
                assert ack.copies == 2
        for t in range(4):
            async with Consumer(
                f"topic{t}",
                "c",
                lookups=cluster.lookup_addresses,
                handler=lambda m: got.append(m.body),
                lookup_poll_interval=0.5,
            ) as c:
                await eventually(lambda: c.stats.finished >= 5, timeout=15)
        assert sorted(got) == sorted(b"%d" % i for i in range(20))
        assert lookup.address
