"""A producer publishing through the lookups to 2 pairs, one broker SIGSTOPped: how long
it goes without an ack (issue 13, found by the chaos harness's pause-long scenario).

Real processes: 1 lookup and 2 pairs (``pairq broker --min-copies 2``, the default),
gossiping on loopback. The producer is the harness's (``tests/chaos/workload.py``):
batches of 10 with its own ids every 0.05 s, ``rpc_timeout=2.0``, lookups polled every
second. The bound follows from the design: a producer waits at most its RPC timeout
(its own broker silent) or the pair's ack timeout (``2 * lease`` = 1.6 s: its broker
waits that long for the silent partner's copy, then refuses naming the partner), then
fails over once, at once, to the other pair. So the longest gap between acks is under
``RPC_TIMEOUT + FAILOVER_SLACK`` = 2.5 s.

Before the fix, with the partner of the producer's broker stopped, the producer went
from the refusing broker to the stopped partner (a 2 s timeout), and once more when a
placement refresh during that attempt had kept the partner as the broker in use:
gaps of 3.6-5.7 s (3.7 and 5.7 s in the chaos run, 3.6+ here).

The same with the other pair's fault a few seconds before (make chaos, mixed, seed 1):
that pair was still penalized, so with the refusal every broker was, and the failover
went on in route order to the stopped partner: 3.69 s here, as in the chaos run; it must
go to the pair that failed longest ago.

After SIGCONT both pairs heal (the lookups see them healthy, each broker acks a
publish with copies=2), and a consumer receives every acknowledged message.

Every process here is one this module started; only those pids are signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from pathlib import Path

import pytest
from test_lookup_procs import Cluster, Lookups, Node, all_registered, cluster, pairs_healthy, until

from pairq.client import Consumer, Producer
from pairq.client.message import Message
from pairq.errors import PairqError

RPC_TIMEOUT = 2.0
FAILOVER_SLACK = 0.5  # one refusal or failed attempt answered at once, plus one good publish
BOUND = RPC_TIMEOUT + FAILOVER_SLACK
PAUSE = 5.0  # longer than the ack timeout plus an RPC timeout: the old path shows in full
TOPIC = "failover"


class Publisher:
    """The chaos workload's producer: every ack's time and ids, every failure."""

    def __init__(self, lookups: list[str]) -> None:
        self.producer = Producer(
            lookups=lookups,
            lookup_poll_interval=1.0,
            retry_timeout=8.0,
            rpc_timeout=RPC_TIMEOUT,
            retry_backoff_max=0.3,
            trace_context=False,
        )
        self.acks: list[float] = []
        self.acked: set[bytes] = set()
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.producer.close()

    async def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            ids = [f"F{seq + i:015d}".encode() for i in range(10)]
            seq += 10
            try:
                acks = await self.producer.publish_batch(TOPIC, [b"x" * 64] * 10, ids=ids)
            except PairqError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            assert all(a.copies == 2 for a in acks), [a.copies for a in acks]
            self.acks.append(time.monotonic())
            self.acked.update(a.id for a in acks)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.05)

    def broker_in_use(self) -> str:
        route = self.producer._routes[TOPIC]
        return route.conns[route.current].address

    def longest_gap(self, since: float, until: float = float("inf")) -> float:
        times = [t for t in self.acks if since <= t <= until]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


async def acks_resume(pub: Publisher) -> None:
    """At least 5 acks within the last half second, within 10 s."""
    await until(
        lambda: len([t for t in pub.acks if t > time.monotonic() - 0.5]),
        lambda k: k >= 5,
        10,
        "acks after healing",
    )


async def heal(c: Cluster) -> None:
    """Both pairs healthy at the lookups and every broker acking with 2 copies."""
    await pairs_healthy(c.lookup_addresses, {"p1", "p2"}, timeout=20)
    for n in c.nodes:
        async with Producer(brokers=[n.address], rpc_timeout=1.0, retry_timeout=1.0) as p:

            async def two_copies(p: Producer = p) -> bool:
                try:
                    return (await p.publish("failover-probe", b"probe")).copies == 2
                except PairqError:
                    return False

            await until(two_copies, bool, 20, f"{n.name} acks with 2 copies")


@pytest.mark.parametrize("victim", ["partner", "own"])
async def test_a_stopped_broker_costs_a_producer_at_most_one_rpc_timeout(
    tmp_path: Path, victim: str
) -> None:
    async with cluster(tmp_path) as c:
        await c.start_lookups(1)
        await c.start_brokers(pairs=["p1", "p2"])
        async with Lookups(c.lookup_addresses) as lk:
            await all_registered(c, lk)
        await pairs_healthy(c.lookup_addresses, {"p1", "p2"})
        got: set[bytes] = set()

        def handler(msg: Message) -> None:
            got.add(bytes(msg.id))

        async with Consumer(
            TOPIC, "c", lookups=c.lookup_addresses, lookup_poll_interval=1.0, handler=handler
        ):
            pub = Publisher(c.lookup_addresses)
            pub.start()
            try:
                await until(lambda: len(pub.acks), lambda k: k >= 20, 10, "publishing")
                in_use = next(n for n in c.nodes if n.address == pub.broker_in_use())
                stopped: Node = (
                    in_use
                    if victim == "own"
                    else next(n for n in c.pair(in_use.pair) if n is not in_use)
                )
                t0 = time.monotonic()
                stopped.signal(signal.SIGSTOP)
                try:
                    # publishing goes on during the pause, on the other pair
                    await until(
                        lambda: len([t for t in pub.acks if t > t0 + RPC_TIMEOUT + 1]),
                        lambda k: k >= 20,
                        PAUSE + 5,
                        "acks on the other pair",
                    )
                    assert pub.broker_in_use() not in {n.address for n in c.pair(in_use.pair)}
                    await asyncio.sleep(max(0.0, t0 + PAUSE - time.monotonic()))  # the fault
                finally:
                    stopped.signal(signal.SIGCONT)
                await heal(c)
                await acks_resume(pub)
            finally:
                await pub.stop()
            gap = pub.longest_gap(t0 - 1)
            print(f"{victim} of the broker in use stopped: longest gap between acks {gap:.3f} s")
            assert gap < BOUND, (
                f"{gap:.2f} s without an ack ({victim} broker {stopped.name} stopped; bound "
                f"{BOUND} s): {pub.failures[:3]}"
            )
            assert not pub.failures, pub.failures[:3]
            # nothing acknowledged is lost
            await until(
                lambda: pub.acked - got, lambda missing: not missing, 30, "acked ids consumed"
            )


async def test_a_pair_failure_soon_after_the_other_pairs_goes_to_the_other_pair(
    tmp_path: Path,
) -> None:
    """make chaos (mixed, seed 1): a fault on the other pair a few seconds earlier, healed
    since, leaves that pair penalized (10 s) in the producer. Then the partner of the
    producer's broker is stopped: the broker refuses after its ack timeout naming the
    partner, every broker is penalized, and the failover must go to the pair that failed
    longest ago (healthy again), not on in route order to the stopped partner (its RPC
    timeout on top of the ack timeout: 3.7 s without an ack, above the bound)."""
    async with cluster(tmp_path) as c:
        await c.start_lookups(1)
        await c.start_brokers(pairs=["p1", "p2"])
        async with Lookups(c.lookup_addresses) as lk:
            await all_registered(c, lk)
        await pairs_healthy(c.lookup_addresses, {"p1", "p2"})
        pub = Publisher(c.lookup_addresses)
        pub.start()
        try:
            await until(lambda: len(pub.acks), lambda k: k >= 20, 10, "publishing")

            def node_in_use() -> Node:
                return next(n for n in c.nodes if n.address == pub.broker_in_use())

            async def stop_partner_of_the_broker_in_use() -> tuple[float, Node]:
                in_use = node_in_use()
                partner = next(n for n in c.pair(in_use.pair) if n is not in_use)
                t0 = time.monotonic()
                partner.signal(signal.SIGSTOP)
                try:
                    await until(
                        lambda: (
                            pub.broker_in_use() not in {n.address for n in c.pair(in_use.pair)}
                            and len([t for t in pub.acks if t > t0]) >= 5
                        ),
                        bool,
                        PAUSE + 5,
                        f"acks on the other pair with {partner.name} stopped",
                    )
                finally:
                    partner.signal(signal.SIGCONT)
                await heal(c)
                return t0, in_use

            t_first, first = await stop_partner_of_the_broker_in_use()
            # The situation of the chaos run: the first pair still penalized, the producer
            # on the other one, and its broker's partner next in route order.
            now = asyncio.get_running_loop().time()
            penalized = pub.producer._penalties.active(now)
            assert {n.address for n in c.pair(first.pair)} <= penalized, (
                f"healing took too long for this test: the penalty of {first.pair} is over "
                f"({time.monotonic() - t_first:.1f} s after the first fault)"
            )
            route = pub.producer._routes[TOPIC]
            second = node_in_use()
            nxt = route.conns[(route.current + 1) % len(route.conns)].address
            assert nxt in {n.address for n in c.pair(second.pair)}, "the partner is next"
            t_second, _ = await stop_partner_of_the_broker_in_use()
            await acks_resume(pub)
        finally:
            await pub.stop()
        gaps = (pub.longest_gap(t_first - 1, t_second), pub.longest_gap(t_second - 1))
        print(f"longest gap between acks: first fault {gaps[0]:.3f} s, second {gaps[1]:.3f} s")
        assert max(gaps) < BOUND, (
            f"{max(gaps):.2f} s without an ack (partner of {second.name} stopped "
            f"{t_second - t_first:.1f} s after the first fault; bound {BOUND} s): "
            f"{pub.failures[:3]}"
        )
        assert not pub.failures, pub.failures[:3]
