"""A cluster of real processes: lookups (``pairq lookup``) and brokers (``pairq broker
--lookup ... --gossip-address ... --join ...``), all on loopback, all gossiping.

Issue 5's acceptance list, end to end:

- 2 lookups + 2 pairs: a consumer given only the lookups receives everything published
  to topics on both pairs, and picks up a topic created later within its poll interval;
- kill -9 of a lookup during publish + consume: no error, no loss, no stall beyond a poll;
  the lookup restarted on its address is complete again once the brokers re-register;
- kill -9 of a broker: both lookups answer it dead within 2 s (p99 over >= 20 trials in
  the ``slow`` variant: ``pytest -m slow -s tests/integration/test_cluster.py``);
- tombstones and inactivity expiry with real brokers.

Every process here is one this module started; only those pids are ever signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from test_lookup_procs import (
    Cluster,
    Lookups,
    Node,
    Received,
    all_registered,
    cluster,
    p99,
    pairs_healthy,
    until,
)

from pairq.client import Consumer, Producer
from pairq.client.discovery import Discovery

POLL = 1.0  # the clients' lookup poll interval in these tests
# The broker's registrar sends a changed topic set at its next poll (1 s), so a topic
# created on a broker reaches a consumer after at most that plus the consumer's own poll.
REGISTRAR_POLL = 1.0


# ---------------------------------------------------------------- 1. two lookups, two pairs


async def test_two_lookups_two_pairs_consumer_gets_everything_and_later_topics(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path) as c:
        await c.start_lookups(2)
        await c.start_brokers(pairs=["p1", "p2"])
        lookups = c.lookup_addresses
        async with Lookups(lookups) as lk:
            await all_registered(c, lk)
            await pairs_healthy(lookups, {"p1", "p2"})

            # 'orders' on both pairs, published directly to each pair.
            want: set[bytes] = set()
            for p in ("p1", "p2"):
                async with Producer([n.address for n in c.pair(p)]) as prod:
                    bodies = [f"{p}-{i}".encode() for i in range(50)]
                    acks = await asyncio.gather(*(prod.publish("orders", b) for b in bodies))
                    assert all(a.copies == 2 for a in acks)
                    want |= set(bodies)
            got = Received()
            async with Consumer(
                "orders", "c", lookups=lookups, lookup_poll_interval=POLL, handler=got
            ) as cons:
                await got.wait_for(want, 15)
                assert sorted(cons.brokers) == sorted(n.address for n in c.nodes)

                # A producer given only the lookups: 'orders' stays on a pair holding it,
                # a new topic is placed on one pair; both reach lookup-only consumers.
                fresh = Received()
                async with (
                    Producer(lookups=lookups, lookup_poll_interval=POLL) as prod,
                    Consumer(
                        "fresh", "c", lookups=lookups, lookup_poll_interval=POLL, handler=fresh
                    ) as fcons,
                ):
                    more = {b"via-lookup-%d" % i for i in range(50)}
                    acks = await asyncio.gather(*(prod.publish("orders", b) for b in sorted(more)))
                    assert all(a.copies == 2 for a in acks)
                    want |= more
                    fresh_bodies = {b"fresh-%d" % i for i in range(20)}
                    acks = await asyncio.gather(
                        *(prod.publish("fresh", b) for b in sorted(fresh_bodies))
                    )
                    assert all(a.copies == 2 for a in acks)
                    holders = set(prod.brokers_for("fresh")[:2])
                    assert holders in (
                        {n.address for n in c.pair("p1")},
                        {n.address for n in c.pair("p2")},
                    )
                    await fresh.wait_for(fresh_bodies, 10)
                    assert set(fcons.brokers) == holders
                await got.wait_for(want, 10)
                await cons.wait_idle(timeout=5)
                assert len(set(got.bodies)) == 150

            # A topic created later on either pair: consumers started before it exists
            # anywhere pick it up within one poll (plus the broker's registration poll).
            late = {p: Received() for p in ("p1", "p2")}
            async with contextlib.AsyncExitStack() as stack:
                for p, rec in late.items():
                    await stack.enter_async_context(
                        Consumer(
                            f"late-{p}",
                            "c",
                            lookups=lookups,
                            lookup_poll_interval=POLL,
                            handler=rec,
                        )
                    )
                for p, rec in late.items():
                    async with Producer([c.pair(p)[0].address]) as prod:
                        t0 = time.monotonic()
                        await prod.publish(f"late-{p}", b"first")
                        took = await rec.wait_for({b"first"}, 10)
                    print(
                        f"topic created later on {p}: consumed after {took:.2f} s "
                        f"(poll {POLL} s + registrar poll {REGISTRAR_POLL} s)"
                    )
                    assert rec.times[0] - t0 <= POLL + REGISTRAR_POLL + 0.75


# ---------------------------------------------------------------- 2. kill -9 a lookup


async def test_kill9_lookup_during_publish_and_consume_then_restart(tmp_path: Path) -> None:
    """No error, no loss, no stall beyond one poll; the restarted lookup is complete
    again once the brokers re-register, and answers a crash from gossip at once."""
    async with cluster(tmp_path) as c:
        await c.start_lookups(2)
        await c.start_brokers(pairs=["p1", "p2"])
        lookups = c.lookup_addresses
        async with Lookups(lookups) as lk:
            await all_registered(c, lk)
            await pairs_healthy(lookups, {"p1", "p2"})
            got = Received()
            sent: list[bytes] = []
            killed_at = 0.0
            stop_at = 0.0
            publish_latency: list[tuple[float, float]] = []  # (sent at, seconds to ack)
            async with (
                Producer(lookups=lookups, lookup_poll_interval=POLL) as prod,
                Consumer(
                    "traffic", "c", lookups=lookups, lookup_poll_interval=POLL, handler=got
                ) as cons,
            ):
                await prod.publish("traffic", b"warmup")
                sent.append(b"warmup")
                await got.wait_for({b"warmup"}, 10)
                t_start = time.monotonic()
                i = 0
                # Steady traffic: ~0.7 s before the kill, then 2.5 polls with the lookup dead.
                while not stop_at or time.monotonic() < stop_at:
                    if not killed_at and time.monotonic() - t_start > 0.7:
                        c.lookups[0].kill()
                        killed_at = time.monotonic()
                        stop_at = killed_at + 2.5 * POLL
                    body = b"m%d" % i
                    t0 = time.monotonic()
                    ack = await prod.publish("traffic", body)  # any error fails the test
                    publish_latency.append((t0, time.monotonic() - t0))
                    assert ack.copies == 2
                    sent.append(body)
                    i += 1
                    await asyncio.sleep(0.005)  # pacing the load, not synchronisation
                placed = prod.brokers_for("traffic")[:2]
                await got.wait_for(set(sent), 10)
                await cons.wait_idle(timeout=5)
                assert cons.stats.handler_errors == 0
                assert sorted(cons.brokers) == sorted(placed)  # the pair the topic was placed on
            assert len(set(got.bodies)) == len(sent) > 200
            during = [t for t in got.times if killed_at <= t]
            gaps = [b - a for a, b in zip([killed_at, *during], during, strict=False)]
            max_gap = max(gaps)
            worst_publish = max(lat for t0, lat in publish_latency if t0 >= killed_at)
            print(
                f"lookup killed: {len(sent)} sent, none lost; largest delivery gap while it was "
                f"dead {max_gap * 1000:.0f} ms, slowest publish {worst_publish * 1000:.0f} ms "
                f"(poll {POLL} s)"
            )
            assert max_gap < POLL
            assert worst_publish < POLL
            assert await lk.nodes(0) is None

            # Restart it on the same addresses: complete again (every broker, its topics and
            # channels) as soon as the brokers re-register (their backoff is at most 5 s).
            c.lookups[0] = c.lookups[0].restarted("l1-restarted")
            t0 = time.monotonic()
            await asyncio.to_thread(c.lookups[0].start)
            names = [n.name for n in c.nodes]
            holders = {n.name: {"traffic"} for n in c.nodes if n.address in placed}
            took = await until(
                lambda: lk.complete(0, names, holders), bool, 15, "restarted lookup complete"
            )
            print(f"restarted lookup complete after {took:.2f} s (from its process start)")
            async with Discovery([lookups[0]]) as d:
                assert sorted(await d.consumer_addresses("traffic")) == sorted(
                    n.address for n in c.nodes if n.name in holders
                )
                assert await d.channels("traffic") == ["c"]
            # ...and it is a gossip member again: a broker killed now is dead on both at once.
            victim = c.nodes[0]
            victim.proc.kill()
            took = await until(
                lambda: lk.liveness(victim.name),
                lambda s: s == ["dead", "dead"],
                5,
                f"{victim.name} dead on both lookups",
            )
            assert took < 2.0


# ---------------------------------------------------------------- 3. kill -9 a broker


async def kill9_detection(
    c: Cluster, lk: Lookups, nodes: Sequence[Node], reaped: list[float] | None = None
) -> list[float]:
    """kill -9 each node in turn; seconds until *both* lookups answer it dead. ``reaped``
    collects how long the kernel took to end each process (SIGKILL to ``wait()``): a
    process stuck in an fsync under heavy I/O keeps its sockets open until it is gone."""
    out = []
    for n in nodes:
        await until(
            functools.partial(lk.liveness, n.name),
            lambda s: s == ["alive"] * len(c.lookups),
            15,
            f"{n.name} alive on every lookup",
        )
        t0 = time.monotonic()
        n.proc.kill()  # SIGKILL, then wait() for the exit
        if reaped is not None:
            reaped.append(time.monotonic() - t0)
        await until(
            functools.partial(lk.liveness, n.name),
            lambda s: s == ["dead"] * len(c.lookups),
            20,
            f"{n.name} dead on every lookup",
            interval=0.005,
        )
        out.append(time.monotonic() - t0)
    return out


def report(name: str, xs: Sequence[float]) -> str:
    s = sorted(xs)
    return (
        f"{name}: n={len(s)} p50={s[len(s) // 2] * 1000:.0f} ms p99={p99(s) * 1000:.0f} ms "
        f"max={s[-1] * 1000:.0f} ms"
    )


async def test_kill9_broker_dead_on_both_lookups_within_2s(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_lookups(2)
        new = await c.start_brokers(pairs=["p1"], singles=["s1"])
        async with Lookups(c.lookup_addresses) as lk:
            await all_registered(c, lk)
            xs = await kill9_detection(c, lk, new)
            print(report("kill -9 broker -> dead on both lookups", xs))
            assert p99(xs) <= 2.0


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_kill9_broker_dead_on_both_lookups_p99(tmp_path: Path) -> None:
    """``pytest -m slow -s tests/integration/test_cluster.py -k p99`` (PAIRQ_CLUSTER_TRIALS, default 24)."""
    trials = int(os.environ.get("PAIRQ_CLUSTER_TRIALS", "24"))
    xs: list[float] = []
    reaped: list[float] = []
    async with cluster(tmp_path) as c:
        await c.start_lookups(2)
        witness = await c.start_brokers(singles=["witness"])
        async with Lookups(c.lookup_addresses) as lk:
            await all_registered(c, lk)
            rnd = 0
            while len(xs) < trials:
                rnd += 1
                new = await c.start_brokers(pairs=[f"r{rnd}x", f"r{rnd}y"])  # 4 brokers a round
                new = new[: trials - len(xs)]
                xs += await kill9_detection(c, lk, new, reaped)
                for n in c.nodes:
                    if n not in witness:
                        n.proc.kill()
            assert await lk.liveness("witness") == ["alive", "alive"]
    print(report("kill -9 broker -> dead on both lookups", xs))
    print(report("kill -9 broker -> process reaped (SIGKILL to wait())", reaped))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    assert len(xs) >= 20
    assert p99(xs) <= 2.0


# ---------------------------------------------------------------- 4. tombstones, expiry


async def test_tombstone_with_real_brokers(tmp_path: Path) -> None:
    """A topic tombstoned on one broker of a pair: a lookup-only consumer stops using that
    broker within a poll, loses nothing meanwhile, and uses it again once it expires."""
    lifetime = 2.0
    async with cluster(tmp_path) as c:
        await c.start_lookups(2, extra=["--tombstone-lifetime-s", str(lifetime)])
        a, b = await c.start_brokers(pairs=["p1"])
        lookups = c.lookup_addresses
        async with Lookups(lookups) as lk:
            await all_registered(c, lk)
            got = Received()
            async with (
                Producer([a.address, b.address]) as prod,
                Consumer(
                    "orders", "c", lookups=lookups, lookup_poll_interval=0.2, handler=got
                ) as cons,
            ):
                await prod.publish("orders", b"before")
                await got.wait_for({b"before"}, 10)
                await until(
                    lambda: cons.brokers,
                    lambda x: sorted(x) == sorted([a.address, b.address]),
                    10,
                    "consumer uses both brokers",
                )
                async with Discovery(lookups) as d:
                    assert await d.tombstone_topic("orders", b.name) == lookups
                    t0 = time.monotonic()
                    for i in range(2):
                        nodes = await lk.nodes(i)
                        assert nodes is not None
                        assert [t.topic for t in nodes[b.name].tombstones] == ["orders"]
                        assert not nodes[a.name].tombstones
                    await until(
                        lambda: cons.brokers,
                        lambda x: x == [a.address],
                        2,
                        "consumer dropped the tombstoned broker",
                    )
                    during = {b"during-%d" % i for i in range(20)}
                    await asyncio.gather(*(prod.publish("orders", m) for m in sorted(during)))
                    await got.wait_for(during, 10)
                    await until(
                        lambda: sorted(cons.brokers),
                        lambda x: x == sorted([a.address, b.address]),
                        lifetime + 3,
                        "consumer uses the broker again after the tombstone expired",
                    )
                    held = time.monotonic() - t0
                    assert held >= lifetime - 0.5, f"tombstone held only {held:.2f} s"
                    assert await d.consumer_addresses("orders") == sorted([a.address, b.address])


async def test_inactivity_expiry_with_real_brokers(tmp_path: Path) -> None:
    """A broker killed (stream gone) or paused (stream open, silent) is dropped from every
    answer after the inactivity timeout; a live broker heartbeating is never dropped; and
    a paused broker that resumes after it was dropped registers again."""
    timeout = 1.5
    async with cluster(tmp_path) as c:
        await c.start_lookups(
            1, extra=["--heartbeat-interval-ms", "100", "--inactivity-timeout-s", str(timeout)]
        )
        live, killed, paused = await c.start_brokers(singles=["live", "killed", "paused"])
        lookups = c.lookup_addresses
        for n in (live, killed, paused):
            async with Producer([n.address]) as prod:
                await prod.publish(f"t-{n.name}", b"x")
        async with Lookups(lookups) as lk, Discovery(lookups) as d:
            await until(
                d.topics,
                lambda ts: {"t-live", "t-killed", "t-paused"} <= set(ts),
                10,
                "every broker's topic registered",
            )
            killed.proc.kill()
            paused.signal(signal.SIGSTOP)
            try:
                gone = await until(
                    lambda: lk.nodes(0),
                    lambda ns: ns is not None and "killed" not in ns and "paused" not in ns,
                    timeout + 5,
                    "silent registrations dropped",
                )
                assert gone >= timeout - 0.2, (
                    f"dropped after {gone:.2f} s, before the {timeout} s timeout"
                )
                print(f"silent registrations dropped after {gone:.2f} s (timeout {timeout} s)")
                assert await lk.liveness("live") == ["alive"]  # heartbeats kept it
                assert await d.topics() == ["t-live"]
                # and the lookup's sweep forgot them (not just left them out of answers)
                log = c.lookups[0].log_path
                await until(
                    log.read_text,
                    lambda text: all(
                        f"registration of broker {n} expired" in text for n in ("killed", "paused")
                    ),
                    5,
                    "the sweep dropped both registrations",
                )
            finally:
                paused.signal(signal.SIGCONT)
            # The resumed broker's old stream is one the lookup has forgotten: it must
            # register again (with its topics), not heartbeat into the void.
            await until(
                lambda: lk.liveness("paused"),
                lambda s: s == ["alive"],
                10,
                "resumed broker registered again",
            )
            await until(d.topics, lambda ts: "t-paused" in ts, 5, "resumed broker's topics")


async def test_a_broker_dying_after_a_lookup_died_is_dropped(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.start_lookups(2)
        a, b = await c.start_brokers(pairs=["p1"])
        lookups = c.lookup_addresses
        async with Lookups(lookups) as lk:
            await all_registered(c, lk)
            async with Producer([a.address, b.address]) as prod:
                await prod.publish("orders", b"x")
            async with (
                Consumer(
                    "orders", "c", lookups=lookups, lookup_poll_interval=0.2, handler=Received()
                ) as cons,
                Discovery(lookups) as d,
            ):
                await until(
                    lambda: sorted(cons.brokers),
                    lambda x: x == sorted([a.address, b.address]),
                    10,
                    "consumer uses both brokers",
                )
                assert await d.consumer_addresses("orders") == sorted([a.address, b.address])
                c.lookups[0].kill()
                b.proc.kill()
                await until(
                    functools.partial(lk.liveness, b.name),
                    lambda s: s == ["down", "dead"],
                    5,
                    "the live lookup answers the broker dead",
                )
                # The only lookup that answers says dead: the client must not keep it.
                await until(
                    functools.partial(d.consumer_addresses, "orders"),
                    lambda x: x == [a.address],
                    3,
                    "discovery drops the dead broker",
                )
                await until(
                    lambda: cons.brokers,
                    lambda x: x == [a.address],
                    3,
                    "consumer drops the dead broker",
                )
