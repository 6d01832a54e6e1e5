"""Producer logic over real loopback gRPC against an in-memory fake broker.

The fake counts RPCs and injects failures, which the real broker cannot do on
demand; the same features are also tested against the real broker in
tests/integration/test_client.py.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from fakebroker import run_fake_broker

from pairq.client import InvalidError, PairqError, Producer, SyncProducer, UnavailableError
from pairq.testing import eventually, free_port


async def test_lone_publish_goes_at_once_and_concurrent_ones_coalesce() -> None:
    async with (
        run_fake_broker() as fake,
        Producer([fake.address], max_batch_size=1000, max_batches_in_flight=1) as p,
    ):
        ack = await p.publish("t", b"one")
        assert len(ack.id) == 16 and ack.copies == 1
        assert fake.broker.batch_sizes == [1]
        acks = await asyncio.gather(*(p.publish("t", b"m%d" % i) for i in range(2000)))
        assert len({a.id for a in acks}) == 2000
        # 2000 publishes in far fewer RPCs; none bigger than the max batch size.
        assert len(fake.broker.batch_sizes) <= 1 + 10
        assert sum(fake.broker.batch_sizes) == 2001
        assert max(fake.broker.batch_sizes) <= 1000
        stored = [m.body for m in fake.broker.stored["t"]]
        assert stored[1:] == [b"m%d" % i for i in range(2000)]  # order kept


async def test_batch_bounded_by_bytes() -> None:
    async with run_fake_broker() as fake:
        async with Producer(
            [fake.address], max_batch_bytes=10_000, max_message_bytes=2000, max_batches_in_flight=1
        ) as p:
            await asyncio.gather(*(p.publish("t", b"x" * 1000) for i in range(50)))
        assert all(n <= 10 for n in fake.broker.batch_sizes)


async def test_retry_reuses_ids() -> None:
    async with run_fake_broker() as fake, Producer([fake.address], retry_backoff=0.01) as p:
        fake.broker.fail_next = 3
        ack = await p.publish("t", b"x")
        assert fake.broker.attempted_ids == [ack.id] * 4
        assert [m.id for m in fake.broker.stored["t"]] == [ack.id]


async def test_fails_over_to_next_broker() -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with run_fake_broker() as fake, Producer([dead, fake.address], retry_backoff=0.01) as p:
        ack = await p.publish("t", b"x")
        assert fake.broker.attempted_ids == [ack.id]
        assert p.brokers[1] == fake.address
        await p.publish("t", b"y")  # sticks with the broker that works
        assert fake.broker.calls["PublishBatch"] == 2


@pytest.mark.parametrize("streams", [True, False])
async def test_a_refusal_naming_the_partner_skips_the_partner(streams: bool) -> None:
    """A broker refusing because its partner cannot hold the copy (metadata "partner")
    sends the retry to another pair at once, not to that partner (which, silent, would
    cost an RPC timeout)."""
    async with (
        run_fake_broker() as refusing,
        run_fake_broker() as partner,
        run_fake_broker() as other,
    ):
        for f in (refusing, partner, other):
            f.broker.streams = streams
        refusing.broker.partner_down = partner.address
        brokers = [refusing.address, partner.address, other.address]
        async with Producer(brokers, retry_backoff=0.01) as p:
            ack = await p.publish("t", b"x")
            assert refusing.broker.attempted_ids == [ack.id]
            assert other.broker.attempted_ids == [ack.id]
            assert partner.broker.attempted_ids == []
            ack2 = await p.publish("t", b"y")  # stays on the broker that took it
            assert other.broker.attempted_ids == [ack.id, ack2.id]
            assert partner.broker.attempted_ids == [] and len(refusing.broker.attempted_ids) == 1


async def test_a_failover_moves_the_route_a_refresh_made_during_the_attempt() -> None:
    """A placement refresh that completes while an attempt is in flight keeps the
    broker in use (the one being tried) in a new route object; when that attempt
    fails, the new route must move off it, or the retry goes to the same silent
    broker (one more RPC timeout: chaos pause-long, issue 13)."""
    from pairq.client.producer import _Route

    async with Producer(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]) as p:
        a, b, c, d = (p._conn(f"127.0.0.1:{i}") for i in (1, 2, 3, 4))
        used = _Route([a, b, c, d], groups=["p0", "p0", "p1", "p1"])
        used.current = 2  # the attempt went to c
        refreshed = _Route([a, b, c, d], groups=["p0", "p0", "p1", "p1"])
        refreshed.current = 2  # the refresh stayed on c
        p._routes["t"] = refreshed
        p._fail_over("t", used, c, UnavailableError("c did not answer"))
        # The other pair next: without c, its partner d cannot make the second copy
        # either (make chaos, mixed: trying d cost its ack timeout on top of c's).
        assert refreshed.current == 0
        assert p._penalized([a, b, c, d]) == {2, 3}  # both of p1, for a while
        # d refuses too, naming c as the partner that cannot hold the copy: still p1
        refreshed.current = 3
        p._fail_over("t", used, d, UnavailableError("no copy", partner="127.0.0.1:3"))
        assert refreshed.current == 0
        assert p._penalized([a, b, c, d]) == {2, 3}


async def test_a_failover_leaves_the_partner_a_refresh_moved_to_while_the_attempt_hung() -> None:
    """make chaos (mixed, seed 1, session 8; isolate-broker p0b): while the publish to
    the isolated p0b waited out its RPC timeout, a placement refresh no longer listed
    p0b (gossip had declared it dead) and, the broker in use gone, moved the route to
    the placement's first broker: p0b's partner p0a. The failover then penalized
    p0a and p0b but left the route on p0a, because it was not the broker that failed,
    and p0a waited out its own ack timeout before refusing: 3.69 s without an ack. The
    route must leave any penalized broker, not only the one that failed."""
    from pairq.client.producer import _Route

    async with Producer(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]) as p:
        a, b, c, d = (p._conn(f"127.0.0.1:{i}") for i in (1, 2, 3, 4))
        used = _Route([a, b, c, d], groups=["p0", "p0", "p1", "p1"])
        used.current = 1  # the attempt went to b (p0b)
        refreshed = _Route([a, c, d], groups=["p0", "p1", "p1"])  # b no longer listed
        refreshed.current = 0  # the refresh moved to a (p0a), b's partner
        p._routes["t"] = refreshed
        p._fail_over("t", used, b, UnavailableError("b did not answer"))
        assert refreshed.conns[refreshed.current] is c  # the other pair, not p0a
        assert p._penalized([a, b, c, d]) == {0, 1}


async def test_with_every_broker_penalized_the_failover_takes_the_oldest_penalty() -> None:
    """make chaos (mixed, seed 1, 90 s; logs/producers.log): a resilver-loss of p1b at
    t=76.3 s penalized p1 for 10 s; p1 healed, and the producers stayed on p0a. At
    t=81.9 s isolate-broker cut p0b off: p0a refused after its ack timeout (1.63 s,
    naming p0b), which penalized p0 too, so every broker was penalized, and the route
    went on in route order to p0b, the isolated partner: a 2 s RPC timeout, then p1a
    at once, 3.70 s without an ack. With every broker penalized, the route must go to
    the one that failed longest ago (p1), never to the partner just penalized."""
    from pairq.client.producer import _Route

    async with Producer(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]) as p:
        a, b, c, d = (p._conn(f"127.0.0.1:{i}") for i in (1, 2, 3, 4))
        route = _Route([a, b, c, d], groups=["p0", "p0", "p1", "p1"])
        p._routes["t"] = route
        now = asyncio.get_running_loop().time()
        p._penalties.add([c.address, d.address], now - 7.0)  # p1's fault, 7 s ago
        p._fail_over("t", route, a, UnavailableError("no copy", partner="127.0.0.1:2"), 1.63)
        assert p._penalized([a, b, c, d]) == {0, 1, 2, 3}
        assert route.conns[route.current] is c  # not b, the silent partner


async def test_a_new_placement_with_every_broker_penalized_starts_at_the_oldest_penalty() -> None:
    """A placement refresh that no longer lists the broker in use picks the route's
    first broker that is not penalized; with all of them penalized, the one that failed
    longest ago, not the placement's first (here p0a, the partner of a broker that just
    failed)."""
    from pairq.client.discovery import BrokerState, PairState
    from pairq.client.producer import _Route

    class Placement:
        async def placement(self, topic: str) -> list[PairState]:
            return [
                PairState("p0", [BrokerState("127.0.0.1:1", True, False)]),
                PairState("p1", [BrokerState(f"127.0.0.1:{i}", True, False) for i in (3, 4)]),
            ]

        async def close(self) -> None:
            pass

    async with Producer(lookups=["127.0.0.1:9"]) as p:
        await p._discovery.close()  # type: ignore[union-attr]
        p._discovery = Placement()  # type: ignore[assignment]
        a, b, c, d = (p._conn(f"127.0.0.1:{i}") for i in (1, 2, 3, 4))
        now = asyncio.get_running_loop().time()
        p._penalties.add([c.address, d.address], now - 7.0)
        p._penalties.add([a.address, b.address], now)
        old = _Route([a, b], groups=["p0", "p0"])
        old.current = 1  # on b, which the placement no longer lists
        route = await p._refresh_route("t", old)
        assert route.conns == [a, c, d]
        assert route.conns[route.current] is c


async def test_a_failover_is_logged_with_what_failed_and_where_the_route_goes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator sees each broker going bad once (WARNING: the broker, the error, how
    long the attempt took, the brokers penalized, the broker the route moves to); the
    failovers from it that follow within ``FAILOVER_LOG_S`` go to DEBUG, counted in the
    next WARNING."""
    from pairq.client.producer import _Route

    caplog.set_level(logging.DEBUG, logger="pairq.client.producer")
    async with Producer(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]) as p:
        a, b, c, d = (p._conn(f"127.0.0.1:{i}") for i in (1, 2, 3, 4))
        route = _Route([a, b, c, d], groups=["p0", "p0", "p1", "p1"])
        p._routes["t"] = route
        p._fail_over("t", route, a, UnavailableError("no copy", partner="127.0.0.1:2"), 1.61)
        (rec,) = caplog.records
        assert rec.levelno == logging.WARNING
        msg = rec.getMessage()
        for part in (
            "'t' to 127.0.0.1:1 failed after 1.61s (UnavailableError: no copy)",
            "penalized for 10s: 127.0.0.1:1, 127.0.0.1:2",
            "route moves to 127.0.0.1:3 (pair p1)",
        ):
            assert part in msg, msg
        caplog.clear()
        route.current = 0
        p._fail_over("t", route, a, UnavailableError("again"), 0.01)
        (rec,) = caplog.records
        assert rec.levelno == logging.DEBUG and "failed after 0.01s" in rec.getMessage()


async def test_a_retry_on_the_same_broker_is_no_failover_and_logs_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With one broker the route cannot move: the caller gets the error if every
    attempt fails (`pairq pub` prints it as its one line), so nothing at WARNING."""
    from pairq.client.producer import _Route

    caplog.set_level(logging.DEBUG, logger="pairq.client.producer")
    async with Producer(["127.0.0.1:1"]) as p:
        a = p._conn("127.0.0.1:1")
        route = _Route([a], groups=[""])
        p._routes["t"] = route
        for _ in range(2):
            p._fail_over("t", route, a, UnavailableError("refused"), 0.0)
        assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.DEBUG]
        assert "route stays on 127.0.0.1:1" in caplog.records[0].getMessage()


async def test_gives_up_after_retry_timeout() -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with Producer([dead], retry_timeout=0.3, retry_backoff=0.01) as p:
        with pytest.raises(UnavailableError, match="no broker accepted"):
            await p.publish("t", b"x")


async def test_invalid_input_raised_without_rpc() -> None:
    async with run_fake_broker() as fake, Producer([fake.address], max_message_bytes=100) as p:
        with pytest.raises(InvalidError):
            await p.publish("t", b"")
        with pytest.raises(InvalidError):
            await p.publish("t", b"x" * 101)
        with pytest.raises(InvalidError):
            await p.publish("bad topic!", b"x")
        with pytest.raises(InvalidError):
            await p.publish("t", b"x", id=b"short")
        with pytest.raises(InvalidError):
            await p.publish("t", b"x", headers={"k": 1})  # type: ignore[dict-item]
        with pytest.raises(TypeError):
            await p.publish("t", "text")  # type: ignore[arg-type]
        assert fake.broker.calls["PublishBatch"] == 0


async def test_broker_rejection_fails_only_the_bad_publish() -> None:
    async with run_fake_broker() as fake, Producer([fake.address], max_batches_in_flight=1) as p:
        await p.publish("t", b"warm")
        results = await asyncio.gather(
            *(
                p.publish("t", fake.broker.reject_body if i == 5 else b"ok%d" % i)
                for i in range(20)
            ),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(results[5], InvalidError)
        assert fake.broker.calls["PublishBatch"] > 2  # the batch was split to isolate it
        assert len(fake.broker.stored["t"]) == 20


async def test_publish_batch_explicit_and_split() -> None:
    async with run_fake_broker() as fake, Producer([fake.address], max_batch_size=10) as p:
        acks = await p.publish_batch("t", [b"a%d" % i for i in range(25)], headers={"k": "v"})
        assert len(acks) == 25 and len({a.id for a in acks}) == 25
        assert fake.broker.batch_sizes == [10, 10, 5]
        assert dict(fake.broker.stored["t"][0].headers) == {"k": "v"}
        with pytest.raises(InvalidError):
            await p.publish_batch("t", [])
        mine = [bytes([i]) * 16 for i in range(3)]
        acks = await p.publish_batch("t", [b"x", b"y", b"z"], ids=mine)
        assert [a.id for a in acks] == mine
        with pytest.raises(InvalidError):
            await p.publish_batch("t", [b"x"], ids=mine)


async def test_close_waits_for_outstanding() -> None:
    async with run_fake_broker() as fake:
        p = Producer([fake.address])
        tasks = [asyncio.ensure_future(p.publish("t", b"x")) for _ in range(100)]
        await asyncio.sleep(0)
        await p.close()
        assert all(t.done() for t in tasks)
        assert len(fake.broker.stored["t"]) == 100
        with pytest.raises(UnavailableError):
            await p.publish("t", b"late")


async def test_sync_producer() -> None:
    async with run_fake_broker() as fake:

        def work() -> tuple[int, int]:
            with SyncProducer([fake.address]) as p:
                ack = p.publish("t", b"x", headers={"a": "b"})
                acks = p.publish_batch("t", [b"1", b"2"])
                return len(ack.id), len(acks)

        assert await asyncio.to_thread(work) == (16, 2)
        assert len(fake.broker.stored["t"]) == 3


def _contiguous(stored: list[bytes], calls: list[list[bytes]]) -> bool:
    """Each call's bodies appear in ``stored`` in order with nothing in between."""
    where = {b: i for i, b in enumerate(stored)}
    return all(
        [where[b] for b in bodies] == list(range(where[bodies[0]], where[bodies[0]] + len(bodies)))
        for bodies in calls
    )


async def test_concurrent_publish_batches_coalesce_contiguously() -> None:
    async with (
        run_fake_broker() as fake,
        Producer([fake.address], max_batches_in_flight=1, max_batch_size=5000) as p,
    ):
        await p.publish_batch("t", [b"warm"])
        assert fake.broker.batch_sizes == [1]
        calls = [[b"c%d-%d" % (c, i) for i in range(50)] for c in range(30)]
        first = asyncio.ensure_future(p.publish_batch("t", calls[0]))
        await eventually(lambda: p.rpc_count == 2)  # nothing in flight: it went out at once
        results = [
            await first,
            *await asyncio.gather(
                *(p.publish_batch("t", bodies) for bodies in calls[1:]),
                *(p.publish("t", b"single%d" % i) for i in range(5)),
            ),
        ]
        # The calls made while it was in flight shared one RPC.
        assert fake.broker.batch_sizes == [1, 50, 29 * 50 + 5]
        stored = [m for m in fake.broker.stored["t"]]
        by_body = {m.body: m.id for m in stored}
        for bodies, acks in zip(calls, results[:30], strict=True):
            assert [by_body[b] for b in bodies] == [a.id for a in acks]
            assert all(a.copies == 1 for a in acks)
        assert len({m.id for m in stored}) == len(stored)
        assert _contiguous([m.body for m in stored], calls)


async def test_coalesced_batches_respect_size_and_bytes_limits() -> None:
    async with run_fake_broker() as fake:
        async with Producer(
            [fake.address],
            max_batch_size=120,
            max_batch_bytes=20_000,
            max_message_bytes=1000,
            max_batches_in_flight=1,
        ) as p:
            await p.publish("t", b"warm")
            calls = [[b"%d-%d" % (c, i) + b"x" * 200 for i in range(40)] for c in range(20)]
            big = [b"big%d" % i for i in range(300)]  # larger than one RPC: split in order
            acks = await asyncio.gather(
                *(p.publish_batch("t", bodies) for bodies in calls), p.publish_batch("t", big)
            )
        assert [len(a) for a in acks] == [40] * 20 + [300]
        assert max(fake.broker.batch_sizes) <= 120
        stored = [m.body for m in fake.broker.stored["t"]]
        assert len(stored) == 1 + 20 * 40 + 300
        assert _contiguous(stored, calls)  # never split across RPCs
        assert [b for b in stored if b.startswith(b"big")] == big
        # One RPC at a time, so the store order shows each RPC's bytes: within the limit.
        start = 0
        for n in fake.broker.batch_sizes:
            assert sum(len(b) + 24 for b in stored[start : start + n]) <= 20_000
            start += n


async def test_invalid_batch_call_does_not_fail_calls_sharing_its_rpc() -> None:
    async with run_fake_broker() as fake, Producer([fake.address], max_batches_in_flight=1) as p:
        await p.publish("t", b"warm")
        calls = [[b"c%d-%d" % (c, i) for i in range(20)] for c in range(9)]
        calls[4][7] = fake.broker.reject_body
        results = await asyncio.gather(
            *(p.publish_batch("t", bodies) for bodies in calls),
            p.publish("t", b"single"),
            return_exceptions=True,
        )
        assert isinstance(results[4], InvalidError)
        assert all(
            isinstance(r, list) and len(r) == 20 for i, r in enumerate(results[:9]) if i != 4
        )
        assert not isinstance(results[9], BaseException)
        assert fake.broker.batch_sizes[1] == 9 * 20 + 1  # they did share an RPC first
        stored = [m.body for m in fake.broker.stored["t"]]
        assert not set(calls[4]) & set(stored)  # the bad call stored nothing
        good = [c for i, c in enumerate(calls) if i != 4]
        assert len(stored) == 1 + 8 * 20 + 1 and _contiguous(stored, good)
        # Halving finds the bad call in O(log n) RPCs, not one per call.
        assert fake.broker.calls["PublishBatch"] <= 2 + 2 * 4


async def test_coalesced_batch_retry_reuses_ids() -> None:
    async with run_fake_broker() as fake, Producer([fake.address], retry_backoff=0.01) as p:
        fake.broker.fail_next = 2
        mine = [bytes([7, i]) * 8 for i in range(3)]
        results = await asyncio.gather(
            p.publish_batch("t", [b"a%d" % i for i in range(10)]),
            p.publish_batch("t", [b"x", b"y", b"z"], ids=mine),
            p.publish("t", b"s"),
        )
        ids = [a.id for a in results[0]] + [a.id for a in results[1]] + [results[2].id]
        assert [a.id for a in results[1]] == mine
        assert len(set(ids)) == 14
        # Every attempt carried the same ids; each message was stored once.
        assert len(fake.broker.attempted_ids) == 3 * 14
        assert set(fake.broker.attempted_ids) == set(ids)
        assert sorted(m.id for m in fake.broker.stored["t"]) == sorted(ids)


async def test_failed_rpc_fails_every_call_it_carried() -> None:
    async with run_fake_broker() as fake:
        async with Producer([fake.address], max_batches_in_flight=1) as p:
            await p.publish("t", b"warm")
            fake.broker.fail_next = 1
            fake.broker.fail_code = grpc.StatusCode.RESOURCE_EXHAUSTED
            results = await asyncio.gather(
                *(p.publish_batch("t", [b"%d" % i] * 5) for i in range(4)),
                return_exceptions=True,
            )
        assert all(isinstance(r, PairqError) for r in results)
        assert fake.broker.batch_sizes == [1, 20]  # one RPC, no retry
        assert len(fake.broker.stored["t"]) == 1


async def test_cancelled_batch_call_is_not_sent() -> None:
    async with run_fake_broker() as fake, Producer([fake.address], max_batches_in_flight=1) as p:
        first = asyncio.ensure_future(p.publish_batch("t", [b"a", b"b"]))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(p.publish_batch("t", [b"gone"]))
        kept = asyncio.ensure_future(p.publish_batch("t", [b"kept"]))
        await asyncio.sleep(0)
        gone.cancel()
        await first
        assert len(await kept) == 1
        assert [m.body for m in fake.broker.stored["t"]] == [b"a", b"b", b"kept"]


async def test_trace_context_injected_only_when_a_context_is_active() -> None:
    from opentelemetry import context, propagate

    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with run_fake_broker() as fake, Producer([fake.address]) as p:
        await p.publish("t", b"plain")
        await p.publish_batch("t", [b"plain2"])
        # An extracted remote parent propagates even without a tracer provider (SDK).
        token = context.attach(propagate.extract({"traceparent": parent}))
        try:
            await p.publish("t", b"traced", headers={"k": "v"})
            await p.publish_batch("t", [b"traced2"])
        finally:
            context.detach(token)
    headers = [dict(m.headers) for m in fake.broker.stored["t"]]
    assert headers[:2] == [{}, {}]
    assert headers[2]["k"] == "v"
    assert [h["traceparent"].split("-")[1] for h in headers[2:]] == [parent.split("-")[1]] * 2


async def test_publishes_travel_on_one_stream_and_fall_back_to_unary_batches() -> None:
    async with run_fake_broker() as fake:
        async with Producer([fake.address]) as p:
            for i in range(3):
                await p.publish("t", b"m%d" % i)
            # Three requests, one stream.
            assert fake.broker.calls["PublishStream"] == 1
            assert fake.broker.calls["PublishBatch"] == 3
        fake.broker.streams = False  # an older broker without PublishStream
        fake.broker.calls.clear()
        async with Producer([fake.address]) as p:
            acks = [await p.publish("t", b"n%d" % i) for i in range(3)]
            assert [len(a.id) for a in acks] == [16, 16, 16]
            assert fake.broker.calls["PublishBatch"] == 3
        assert [m.body for m in fake.broker.stored["t"]][-3:] == [b"n0", b"n1", b"n2"]


async def test_a_bad_request_on_the_stream_fails_alone() -> None:
    async with run_fake_broker() as fake, Producer([fake.address]) as p:
        with pytest.raises(InvalidError):
            await p.publish_batch("t", [fake.broker.reject_body])
        ack = await p.publish("t", b"fine")  # the stream survived the error
        assert ack.copies == 1
        assert fake.broker.calls["PublishStream"] == 1


async def test_new_ids_is_claimed_only_for_first_attempts_of_our_own_ids() -> None:
    async with run_fake_broker() as fake, Producer([fake.address], retry_backoff=0.01) as p:
        await p.publish("t", b"ours")
        await p.publish_batch("t", [b"a", b"b"])
        await p.publish("t", b"chosen", id=b"\x01" * 16)
        await p.publish_batch("t", [b"c"], ids=[b"\x02" * 16])
        assert fake.broker.new_ids == [True, True, False, False]
        fake.broker.fail_next = 1  # the first attempt fails: the retry must not claim new ids
        await p.publish("t", b"retried")
        assert fake.broker.new_ids[-1] is False
        assert p._supplied == set()  # nothing left behind
