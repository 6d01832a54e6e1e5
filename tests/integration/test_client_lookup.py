"""Producer and Consumer finding brokers through lookups (real lookups and brokers on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pairq.broker.registration import LookupRegistrar
from pairq.client import Consumer, Message, Producer
from pairq.client.discovery import Discovery
from pairq.lookup import Lookup, LookupOptions
from pairq.testing import eventually, free_port, run_broker, run_pair


async def pairs_healthy(lookup: str, n: int) -> None:
    """Wait until the lookup answers ``n`` healthy named pairs (placement prefers them)."""
    deadline = time.monotonic() + 10
    async with Discovery([lookup]) as d:
        while sum(1 for p in await d.all_pairs() if p.pair and p.healthy) < n:
            assert time.monotonic() < deadline, "pairs not healthy at the lookup"
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def lookups(n: int) -> AsyncIterator[list[str]]:
    started = []
    try:
        for _ in range(n):
            lk = Lookup(LookupOptions(address="127.0.0.1:0"))
            await lk.start()
            started.append(lk)
        # plus one address where no lookup runs: it must not stop anything
        yield [lk.address for lk in started] + [f"127.0.0.1:{free_port()}"]
    finally:
        for lk in started:
            await lk.stop()


@contextlib.asynccontextmanager
async def registered(brokers: list[Any], addrs: list[str]) -> AsyncIterator[None]:
    regs = [
        LookupRegistrar(b, addrs, poll_interval=0.05, initial_backoff=0.05, max_backoff=0.2)
        for b in brokers
    ]
    for r in regs:
        r.start()
    try:
        yield
    finally:
        for r in regs:
            await r.stop()


async def test_consumer_and_producer_use_lookups(tmp_path: Path) -> None:
    async with (
        lookups(2) as addrs,
        run_pair(tmp_path / "p") as (a, b),
        run_broker(tmp_path / "single") as c,
        registered([a, b, c], addrs),
    ):
        await (await a.get_topic("orders")).get_channel("billing")
        got: list[Message] = []
        async with Consumer(
            "orders", "billing", lookups=addrs, lookup_poll_interval=0.1, handler=got.append
        ) as cons:
            await eventually(lambda: sorted(cons.brokers) == sorted([a.address, b.address]))
            async with Producer(lookups=addrs, lookup_poll_interval=0.1) as prod:
                acks = await asyncio.gather(*(prod.publish("orders", b"%d" % i) for i in range(20)))
                # the pair that holds the topic is placed first (both its brokers)
                assert sorted(prod.brokers_for("orders")[:2]) == sorted([a.address, b.address])
                assert all(ack.copies == 2 for ack in acks)
            await eventually(lambda: len(got) == 20)

            # The topic appears on another broker later: picked up within a poll.
            async with Producer([c.address]) as direct:
                await direct.publish("orders", b"on-c")
            await eventually(lambda: c.address in cons.brokers, timeout=5)
            await eventually(lambda: b"on-c" in [m.body for m in got], timeout=5)
            await cons.wait_idle(timeout=5)
            assert cons.stats.finished == 21


async def test_producer_follows_the_placement_order(tmp_path: Path) -> None:
    lk = Lookup(LookupOptions(address="127.0.0.1:0"))
    await lk.start()
    try:
        async with (
            run_pair(tmp_path / "p") as (a, b),
            run_broker(tmp_path / "single") as c,
            registered([a, b, c], [lk.address]),
        ):
            await eventually(lambda: len(lk.registry.nodes(time.monotonic())) == 3)
            await pairs_healthy(lk.address, 1)
            async with Discovery([lk.address]) as d:
                order = await d.placement("fresh")
            async with Producer(lookups=[lk.address]) as prod:
                ack = await prod.publish("fresh", b"x")
                # The producer follows the placement rule (rendezvous among healthy
                # pairs and single brokers), trying all of them in that order.
                assert prod.brokers_for("fresh") == [x for p in order for x in p.addresses()]
                assert ack.copies == (2 if order[0].pair else 1)
                assert sorted(prod.brokers_for("fresh")) == sorted(
                    [a.address, b.address, c.address]
                )
    finally:
        await lk.stop()


async def test_producer_without_any_lookup_answer_fails_clearly() -> None:
    async with Producer(lookups=[f"127.0.0.1:{free_port()}"], retry_timeout=0.5) as prod:
        try:
            await prod.publish("t", b"x")
        except Exception as exc:
            assert "no lookup answered" in str(exc) or "cannot place" in str(exc)
        else:
            raise AssertionError("publish should fail without lookups")


async def test_producer_fails_over_to_another_pair(tmp_path: Path) -> None:
    lk = Lookup(LookupOptions(address="127.0.0.1:0"))
    await lk.start()
    try:
        async with (
            run_pair(tmp_path / "p1", pair="p1") as (a1, b1),
            run_pair(tmp_path / "p2", pair="p2") as (a2, b2),
            registered([a1, b1, a2, b2], [lk.address]),
        ):
            await eventually(lambda: len(lk.registry.nodes(time.monotonic())) == 4)
            await pairs_healthy(lk.address, 2)
            async with Producer(lookups=[lk.address], retry_backoff=0.02) as prod:
                first = await prod.publish("orders", b"1")
                assert first.copies == 2
                holders = prod.brokers_for("orders")[:2]
                (a, b) = (a1, b1) if a1.address in holders else (a2, b2)
                await b.stop(grace=0.1)  # the pair holding the topic loses a broker
                ack = await prod.publish("orders", b"2")
                assert ack.copies == 2  # stored on the other pair
                other = (a2, b2) if a is a1 else (a1, b1)
                assert "orders" in other[0].topics or "orders" in other[1].topics
    finally:
        await lk.stop()


async def test_cli_tools_with_lookup(tmp_path: Path, capsys: Any) -> None:
    from pairq import cli

    async def run_cli(*argv: str) -> int:
        return await asyncio.to_thread(cli.main, list(argv))

    lookup = Lookup(LookupOptions(address="127.0.0.1:0"))
    await lookup.start()
    try:
        async with run_broker(tmp_path) as b, registered([b], [lookup.address]):
            await eventually(lambda: len(lookup.registry.nodes(time.monotonic())) == 1)
            lk = ["--lookup", lookup.address, "--lookup", f"127.0.0.1:{free_port()}"]
            assert await run_cli("pub", "t", "hello", *lk) == 0
            assert "published 1 message" in capsys.readouterr().out
            await eventually(lambda: "t" in lookup.registry.topics(time.monotonic()))
            assert await run_cli("tail", "t", "-n", "1", "--channel", "c", *lk) == 0
            assert capsys.readouterr().out == "hello\n"
            assert await run_cli("stat", "--count", "1", *lk) == 0
            assert "t " in capsys.readouterr().out
    finally:
        await lookup.stop()
    dead = f"127.0.0.1:{free_port()}"
    assert await run_cli("tail", "t", "--lookup", dead, "--timeout", "0.3") == 1
    assert await run_cli("stat", "--count", "1", "--lookup", dead, "--timeout", "0.3") == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("no lookup answered" in e for e in err)


async def test_consumer_stops_using_a_tombstoned_broker(tmp_path: Path) -> None:
    lk = Lookup(LookupOptions(address="127.0.0.1:0"))
    await lk.start()
    try:
        async with run_pair(tmp_path) as (a, b), registered([a, b], [lk.address]):
            await (await a.get_topic("orders")).get_channel("c")
            await (await b.get_topic("orders")).get_channel("c")
            await pairs_healthy(lk.address, 1)
            async with Consumer(
                "orders",
                "c",
                lookups=[lk.address],
                lookup_poll_interval=0.1,
                handler=lambda m: None,
            ) as cons:
                await eventually(lambda: sorted(cons.brokers) == sorted([a.address, b.address]))
                await eventually(lambda: cons.connected == 2)
                async with Discovery([lk.address]) as d:
                    await d.tombstone_topic("orders", b.node_id)
                await eventually(lambda: cons.brokers == [a.address], timeout=5)
    finally:
        await lk.stop()


async def test_consumer_started_before_the_topic_exists_finds_it_without_a_full_poll(
    tmp_path: Path,
) -> None:
    async with lookups(1) as addrs, run_broker(tmp_path) as b, registered([b], addrs):
        got: list[Message] = []
        # The default 15 s poll: the first broker holding the topic must still be
        # found within a few seconds of its first publish.
        async with Consumer("late", "c", lookups=addrs, handler=got.append) as cons:
            await asyncio.sleep(0.5)  # a real gap before the topic exists (not a synchronisation)
            assert cons.brokers == []
            async with Producer([b.address]) as prod:
                await prod.publish("late", b"first")
            t0 = time.monotonic()
            await eventually(lambda: len(got) == 1, timeout=5)
            assert time.monotonic() - t0 < 5  # the old behaviour waited out the 15 s poll


async def test_a_silent_lookup_does_not_stall_publishing_at_a_refresh(tmp_path: Path) -> None:
    """Regression (chaos harness, isolate-lookup): a lookup that accepts connections but
    never answers held every publish for its 2 s timeout at each placement refresh."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (the kernel does), never answers
    try:
        lk = Lookup(LookupOptions(address="127.0.0.1:0"))
        await lk.start()
        try:
            addrs = [lk.address, f"127.0.0.1:{silent.getsockname()[1]}"]
            async with run_broker(tmp_path / "b") as b, registered([b], [lk.address]):
                await eventually(lambda: len(lk.registry.nodes(time.monotonic())) == 1)
                async with Producer(lookups=addrs, lookup_poll_interval=0.05) as prod:
                    await prod.publish("t", b"first")  # the first placement waits once
                    for _ in range(2000):  # until the route expires and a refresh starts
                        if "t" in prod._refreshing:
                            break
                        await prod.publish("t", b"more")
                    refresh = prod._refreshing["t"]  # held by the silent lookup
                    for i in range(20):
                        ack = await prod.publish("t", b"%d" % i)
                        assert ack.copies == 1
                    assert not refresh.done(), "publishes waited for the refresh"
        finally:
            await lk.stop()
    finally:
        silent.close()
