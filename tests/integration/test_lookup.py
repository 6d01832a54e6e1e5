"""Lookup with real brokers and lookups on loopback: registration, discovery, restarts,
tombstones, inactivity expiry, and liveness from gossip (child processes for kill -9)."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest
from test_lookup_procs import (
    LookupProc,
    Lookups,
    all_registered,
    cluster,
    liveness,
    stopping,
    until,
)

from pairq.broker.registration import LookupRegistrar
from pairq.client import Consumer, Message, Producer
from pairq.client.discovery import Discovery
from pairq.errors import NotFoundError
from pairq.lookup import Lookup, LookupOptions
from pairq.testing import eventually, free_port, run_pair
from pairq.v1 import lookup_pb2 as pb


async def _lookups(n: int, **opts: object) -> list[Lookup]:
    out = []
    for _ in range(n):
        lk = Lookup(LookupOptions(address="127.0.0.1:0", **opts))  # type: ignore[arg-type]
        await lk.start()
        out.append(lk)
    return out


def _registrar(broker: object, lookups: list[str]) -> LookupRegistrar:
    return LookupRegistrar(
        broker,
        lookups,
        poll_interval=0.1,  # type: ignore[arg-type]
        initial_backoff=0.05,
        max_backoff=0.3,
    )


async def _stop(*things: Lookup | LookupRegistrar) -> None:
    for t in things:
        await t.stop()


async def test_registration_visible_on_both_lookups_and_merged_by_discovery() -> None:
    l1, l2 = await _lookups(2, tombstone_lifetime_s=1.0)
    addrs = [l1.address, l2.address]
    async with run_pair(pair="p1") as (a, b):
        await (await a.get_topic("orders")).get_channel("billing")
        ra, rb = _registrar(a, addrs), _registrar(b, addrs)
        ra.start()
        rb.start()
        try:
            for lk in (l1, l2):
                await eventually(
                    lambda lk=lk: (
                        [
                            (p.pair, [x.status.identity.node_id for x in p.brokers])
                            for p in lk.registry.lookup_topic("orders", time.monotonic()).pairs
                        ]
                        == [("p1", sorted([a.node_id, b.node_id]))]
                    ),
                    timeout=5,
                )
            async with Discovery([*addrs, f"127.0.0.1:{free_port()}"], timeout=1.0) as d:
                pairs = await d.brokers_for_topic("orders")
                assert [p.pair for p in pairs] == ["p1"]
                assert sorted(x.address for x in pairs[0].brokers) == sorted([a.address, b.address])
                assert all(
                    x.alive and x.liveness == "alive" and not x.tombstoned for x in pairs[0].brokers
                )
                assert await d.channels("orders") == ["billing"]
                assert sorted(await d.consumer_addresses("orders")) == sorted(
                    [a.address, b.address]
                )
                (p1,) = await d.all_pairs()
                assert p1.healthy and "orders" in p1.topics
                assert [p.pair for p in await d.placement("brand-new")] == ["p1"]
                assert len(d.errors) == 1  # the address where no lookup runs

                # a topic created later is registered within the registrar's poll
                await b.get_topic("later")
                await eventually(
                    lambda: all("later" in lk.registry.topics(time.monotonic()) for lk in (l1, l2)),
                    timeout=3,
                )

                # tombstone the topic on b: consumers stop using b for it, until it expires
                assert await d.tombstone_topic("orders", b.node_id) == addrs
                assert await d.consumer_addresses("orders") == [a.address]
                nodes = {n.node_id: n for n in await d.nodes()}
                assert nodes[b.node_id].tombstones == ["orders"]
                assert nodes[b.node_id].seen_by == addrs
                with pytest.raises(NotFoundError):
                    await d.tombstone_topic("orders", "no-such-node")
                t0 = time.monotonic()
                while await d.consumer_addresses("orders") != sorted([a.address, b.address]):
                    assert time.monotonic() - t0 < 5, "tombstone did not expire"
                    await asyncio.sleep(0.05)
                assert time.monotonic() - t0 > 0.5  # it held for (most of) its 1 s lifetime
        finally:
            await _stop(ra, rb, l1, l2)


async def test_nodes_command_lists_every_broker_from_every_lookup(tmp_path: Path) -> None:
    l1, l2 = await _lookups(2)
    addrs = [l1.address, l2.address]
    async with run_pair(pair="px") as (a, b):
        await a.get_topic("t1")
        ra, rb = _registrar(a, addrs), _registrar(b, addrs)
        ra.start()
        rb.start()
        try:
            await eventually(
                lambda: all(len(lk.registry.nodes(time.monotonic())) == 2 for lk in (l1, l2))
            )
            args = [
                "-m",
                "pairq.cli",
                "nodes",
                "--lookup",
                l1.address,
                "--lookup",
                l2.address,
            ]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *args, "--json", stdout=asyncio.subprocess.PIPE
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0
            doc = json.loads(out)
            assert sorted(n["node_id"] for n in doc["nodes"]) == sorted([a.node_id, b.node_id])
            assert all(
                n["pair"] == "px" and n["liveness"] == "alive" and len(n["seen_by"]) == 2
                for n in doc["nodes"]
            )
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *args, stdout=asyncio.subprocess.PIPE
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            table = out.decode().splitlines()
            assert table[0].split()[:3] == ["NODE", "PAIR", "ADDRESS"]
            assert any(a.node_id in row and "t1(0)" in row and "2/2" in row for row in table[1:])
        finally:
            await _stop(ra, rb, l1, l2)


async def test_lookup_kill9_does_not_affect_brokers_and_restart_reregisters(tmp_path: Path) -> None:
    """Two lookup processes; kill -9 one during publish + consume: nothing notices;
    restart it on the same port: complete again as soon as the brokers re-register."""
    l1, l2 = LookupProc(tmp_path, "l1"), LookupProc(tmp_path, "l2")
    await asyncio.gather(l1.start(), l2.start())
    addrs = [l1.address, l2.address]
    got: set[bytes] = set()

    async def handle(msg: Message) -> None:
        got.add(bytes(msg.body))

    async with stopping(l1, l2), run_pair(pair="p1") as (a, b):
        await (await a.get_topic("orders")).get_channel("c")
        ra, rb = _registrar(a, addrs), _registrar(b, addrs)
        ra.start()
        rb.start()
        try:
            await eventually(
                lambda: all(r.connected[x] for r in (ra, rb) for x in addrs), timeout=10
            )
            async with (
                Producer([a.address, b.address]) as prod,
                Consumer("orders", "c", [a.address, b.address], handler=handle) as cons,
            ):
                for i in range(100):
                    ack = await prod.publish("orders", b"m%d" % i)
                    assert ack.copies == 2
                    if i == 30:
                        await l1.kill9()
                await eventually(lambda: len(got) == 100, timeout=10)
                await cons.wait_idle(timeout=5)
            assert not ra.connected[l1.address] and ra.connected[l2.address]
            # the surviving lookup still answers everything
            async with Discovery(addrs, timeout=0.5) as d:
                assert sorted(await d.consumer_addresses("orders")) == sorted(
                    [a.address, b.address]
                )

            before = (ra.registrations[l1.address], rb.registrations[l1.address])
            l1b = LookupProc(tmp_path, "l1-restarted", port=l1.port)
            await l1b.start()
            async with stopping(l1b):
                await eventually(
                    lambda: (
                        (ra.registrations[l1.address], rb.registrations[l1.address])
                        == (before[0] + 1, before[1] + 1)
                    ),
                    timeout=10,
                )
                async with Discovery([l1b.address], timeout=1.0) as d:
                    pairs = await d.brokers_for_topic("orders")
                    assert [(p.pair, len(p.brokers)) for p in pairs] == [("p1", 2)]
                    assert await d.channels("orders") == ["c"]
        finally:
            await _stop(ra, rb)


async def test_inactivity_expiry_of_a_silent_registration_with_its_stream_open() -> None:
    """A registration silent for the inactivity timeout is dropped although its stream is
    open; a heartbeat arriving later on that stream ends it (FAILED_PRECONDITION), so the
    broker opens a new stream with a full hello instead of heartbeating into the void."""
    (lk,) = await _lookups(1, heartbeat_interval_ms=100, inactivity_timeout_s=0.6)
    try:
        async with grpc.aio.insecure_channel(lk.address) as ch:
            call = ch.stream_stream(
                "/pairq.v1.LookupService/Register",
                request_serializer=pb.RegisterRequest.SerializeToString,
                response_deserializer=pb.RegisterResponse.FromString,
            )()
            await call.write(
                pb.RegisterRequest(
                    seq=7,
                    hello=pb.RegisterHello(
                        broker=pb.BrokerIdentity(
                            node_id="silent", grpc_address="127.0.0.1:1", pair="q"
                        ),
                        topics=[pb.TopicRegistration(name="t", channels=["c"])],
                    ),
                )
            )
            ack = await call.read()
            assert (ack.seq, ack.heartbeat_interval_ms, ack.inactivity_timeout_ms) == (7, 100, 600)
            assert await liveness(lk.address, "silent") == "alive"
            await eventually(lambda: lk.registry.topics(time.monotonic()) == [], timeout=3)
            assert await liveness(lk.address, "silent") == "absent"
            await eventually(lambda: lk.registry._regs == {}, timeout=3)  # the sweep dropped it
            await call.write(pb.RegisterRequest(seq=8, heartbeat=pb.RegisterHeartbeat()))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call.read()
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "expired" in (info.value.details() or "")
            assert await liveness(lk.address, "silent") == "absent"
    finally:
        await lk.stop()


async def test_register_rejects_bad_input() -> None:
    (lk,) = await _lookups(1)
    try:
        async with grpc.aio.insecure_channel(lk.address) as ch:
            reg = ch.stream_stream(
                "/pairq.v1.LookupService/Register",
                request_serializer=pb.RegisterRequest.SerializeToString,
                response_deserializer=pb.RegisterResponse.FromString,
            )
            for bad in (
                pb.RegisterRequest(heartbeat=pb.RegisterHeartbeat()),
                pb.RegisterRequest(hello=pb.RegisterHello(broker=pb.BrokerIdentity(node_id="x"))),
                pb.RegisterRequest(
                    hello=pb.RegisterHello(
                        broker=pb.BrokerIdentity(node_id="x", grpc_address="127.0.0.1:1"),
                        topics=[pb.TopicRegistration(name="bad name!")],
                    )
                ),
            ):
                call = reg()
                await call.write(bad)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call.read()
                assert info.value.code() in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.FAILED_PRECONDITION,
                )
            lookup_topic = ch.unary_unary(
                "/pairq.v1.LookupService/LookupTopic",
                request_serializer=pb.LookupTopicRequest.SerializeToString,
                response_deserializer=pb.LookupTopicResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await lookup_topic(pb.LookupTopicRequest(topic=""))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert not (await lookup_topic(pb.LookupTopicRequest(topic="unknown"))).known
        assert lk.registry.nodes(time.monotonic()) == []
    finally:
        await lk.stop()


async def test_gossip_declares_a_paused_broker_dead_on_both_lookups(tmp_path: Path) -> None:
    """Real broker processes. SIGSTOP keeps a broker's registration streams open and its
    port listening: only gossip (with heartbeat silence) can tell, and both lookups do.
    (kill -9 of a broker: tests/integration/test_cluster.py.)"""
    async with cluster(tmp_path) as c:
        await c.start_lookups(2)
        a, _b = await c.start_brokers(pairs=["p1"])
        async with Lookups(c.lookup_addresses) as lk:
            await all_registered(c, lk)
            a.signal(signal.SIGSTOP)
            took = await until(
                functools.partial(lk.liveness, a.name),
                lambda s: s == ["dead", "dead"],
                15,
                "paused broker dead on both lookups",
            )
            for i in range(2):
                nodes = await lk.nodes(i)
                assert nodes is not None
                status = nodes[a.name].status
                # the stream is still open and the port listens: gossip said so
                assert status.connected
                assert status.gossip_state in ("suspect", "dead")
            print(f"paused broker dead on both lookups after {took:.2f} s")
            # Not asserted: that `a` is answered alive again after SIGCONT. That needs gossip to
            # refute the suspicion, which the gossip layer did not do reliably at the time of writing.
            a.signal(signal.SIGCONT)


async def test_watch_yields_new_brokers_within_the_poll_interval() -> None:
    """Two single brokers (no pair): the consumer's watch picks up a broker that gets
    the topic later, within one poll, and drops one whose registration goes dead."""
    from pairq.testing import run_broker

    (lk,) = await _lookups(1, heartbeat_interval_ms=100)
    async with run_broker() as b1, run_broker() as b2:
        r1, r2 = _registrar(b1, [lk.address]), _registrar(b2, [lk.address])
        r1.start()
        r2.start()
        await b1.get_topic("w")
        async with Discovery([lk.address], poll_interval=0.1) as d:
            watch = d.watch("w")
            try:
                first = await asyncio.wait_for(anext(watch), 5)
                while first != [b1.address]:  # b1's state may not be registered yet
                    first = await asyncio.wait_for(anext(watch), 5)
                await b2.get_topic("w")
                assert await asyncio.wait_for(anext(watch), 5) == sorted([b1.address, b2.address])
                pairs = await d.brokers_for_topic("w")
                assert [p.pair for p in pairs] == ["", ""]  # each single broker is its own group
                await r2.stop()  # stream closes; b2's port still listens: suspect, dead after 0.3 s
                assert await asyncio.wait_for(anext(watch), 5) == [b1.address]
            finally:
                await watch.aclose()
                await _stop(r1, r2, lk)
