"""The pure rule behind the broker's gRPC health status (pairq.broker.health)."""

from __future__ import annotations

import asyncio

from pairq.broker.health import HealthWatcher, PublishHealth, publish_health


def test_serving_when_publishes_can_succeed() -> None:
    assert publish_health("", False, 2, False) == PublishHealth(True, "")  # no partner
    assert publish_health("", True, 2, True).serving
    assert publish_health("", True, 1, False).serving  # one copy is enough


def test_not_serving_reasons_in_order() -> None:
    full = publish_health("disk has 1 MiB", True, 2, False, catalog_ready=False)
    assert not full.serving and full.reason == "store full: disk has 1 MiB"
    catalog = publish_health("", True, 2, False, catalog_ready=False)
    assert not catalog.serving and "catalog" in catalog.reason
    partner = publish_health("", True, 2, False)
    assert not partner.serving and "partner unreachable" in partner.reason
    # a broker without a partner has no catalog to wait for
    assert publish_health("", False, 2, False, catalog_ready=False).serving


def test_watcher_publishes_each_change_once() -> None:
    states = [PublishHealth(True, ""), PublishHealth(True, ""), PublishHealth(False, "x")]
    states += [PublishHealth(False, "y"), PublishHealth(True, "")]
    seen: list[bool] = []

    async def publish(serving: bool) -> None:
        seen.append(serving)

    async def main() -> None:
        w = HealthWatcher(lambda: states.pop(0), publish)
        for _ in range(5):
            await w.check()

    asyncio.run(main())
    assert seen == [True, False, True]
