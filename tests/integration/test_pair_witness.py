"""Witnessed takeover on real processes: a pair in two network namespaces plus one
lookup in the root namespace, all in one gossip cluster.

With gossip members besides the pair, a broker takes over its partner only when its
lease lapsed AND gossip declared the partner dead on another member's evidence:

1. the pair link alone partitioned for 10 s (both brokers still reach the lookup):
   neither broker takes over; after the heal the pair is healthy, both brokers ack
   copies=2, nothing acked is lost;
2. broker B cut off from everyone for 10 s: A takes over (the lookup witnesses B's
   death), B does not; after the heal the same checks.

Processes, findings, log tails on failure: test_pair_faults. Nothing sleeps to
synchronise except for the length of a fault; everything else polls with a deadline.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from netns import PairNet
from test_lookup_procs import LookupProcess
from test_pair_faults import (
    DRAIN_BOUND_S,
    KEY_LINE,
    TOPIC,
    Findings,
    Harness,
    Ledger,
    NsBrokerProcess,
    Publisher,
    _collapse,
    counting_consumer,
    create_channels,
    get_stats,
    heal_check,
    lost_report,
    pair_problems,
    start_pair,
    wait_for,
)

from pairq.client import Consumer
from pairq.gossip import Gossip, MemberState, NodeMeta, local
from pairq.testing import BrokerProcess, free_port, wait_for_port
from pairq.v1 import lookup_pb2 as lpb

FAULT_S = 10.0
CONVERGE_BOUND_S = 15  # gossip: every member alive in every view, witness rule armed
WITNESS_LINE = "gossip knows members besides the pair: takeover needs their witness"
LOOKUP_NAME = "lookup"


class BridgeLookup(LookupProcess):
    """``pairq lookup`` in the root namespace, bound to the bridge address."""

    def __init__(self, tmp: Path, host: str) -> None:
        super().__init__(tmp, LOOKUP_NAME)
        self.host = host

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def gossip_address(self) -> str:
        return f"{self.host}:{self.gossip_port}"

    def start(self, timeout: float = 20.0) -> None:
        argv = [
            sys.executable,
            "-m",
            "pairq.cli",
            "lookup",
            "--address",
            self.address,
            "--node-name",
            self.name,
            "--gossip-address",
            self.gossip_address,
            "--gossip-profile",
            "local",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout=timeout, host=self.host)
        if self.proc.poll() is not None:
            raise RuntimeError(f"lookup exited with {self.proc.returncode}; see {self.log_path}")


class WitnessHarness(Harness):
    """test_pair_faults' Harness; on failure it also prints the lookup's log."""

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await super().__aexit__(et, ev, tb)
        path = self.tmp / f"{LOOKUP_NAME}.log"
        if et is not None and path.exists():
            lines = path.read_text(errors="replace").splitlines()
            key = [ln for ln in lines if KEY_LINE.search(ln) or "gossip" in ln]
            print(f"======== {path}: {len(lines)} lines; pair/gossip/warning lines (last 15):")
            print("\n".join(_collapse(key)[-15:]))
            print(f"======== {path}: last 15 lines:")
            print("\n".join(_collapse(lines)[-15:]))


@dataclass
class Topology:
    net: PairNet
    lookup: BridgeLookup
    a: NsBrokerProcess
    b: NsBrokerProcess

    @property
    def brokers(self) -> dict[str, BrokerProcess]:
        return {"a": self.a, "b": self.b}


async def gossip_view(address: str, bind_host: str) -> dict[str, MemberState] | None:
    """One push-pull with the member at ``address`` as a short-lived observer that is
    seen as LEFT (as ``pairq members`` does, but bound to ``bind_host``): its view, by
    member name, or None if it did not answer."""
    cfg = local(bind_host=bind_host, bind_port=0, push_pull_interval=3600.0)
    name = f"pqw-observer-{uuid.uuid4().hex[:8]}"
    g = Gossip(cfg, NodeMeta(role="cli", node_id=name))
    await g.start()
    try:
        g.core.leave(asyncio.get_running_loop().time())
        g.core.drain_actions()
        if not await g.join([address], within=2.0):
            return None
        return {m.name: m.state for m in g.members() if m.name != name}
    finally:
        await g.stop(leave=False)


async def lookup_gossip_states(h: Harness, lookup: BridgeLookup) -> dict[str, str] | None:
    ch = h._channels.get("lookup")
    if ch is None:
        ch = h._channels["lookup"] = grpc.aio.insecure_channel(lookup.address)
    rpc = ch.unary_unary(
        "/pairq.v1.LookupService/ListNodes",
        request_serializer=lpb.ListNodesRequest.SerializeToString,
        response_deserializer=lpb.ListNodesResponse.FromString,
    )
    try:
        resp = await rpc(lpb.ListNodesRequest(), timeout=1.0)
    except grpc.aio.AioRpcError:
        return None
    return {n.status.broker.node_id: n.status.gossip_state for n in resp.nodes}


async def start_topology(h: Harness, tmp: Path) -> Topology:
    """Network, lookup, pair with gossip; returns once the pair is healthy and gossip
    has converged (every member alive in A's, B's and the lookup's view, and both
    brokers logged that takeover now needs a witness)."""
    net = h.network()
    print(f"drop method: {net.partition_method}; stale removed: {net.stale_removed}")
    lookup = BridgeLookup(tmp, net.ip_bridge)
    h.closers.append(lookup.kill)  # SIGKILL of the pid we started, if it still runs
    await asyncio.to_thread(lookup.start)
    a, b = h.ns_pair(
        net,
        "--gossip-profile",
        "local",
        "--join",
        lookup.gossip_address,
        "--lookup",
        lookup.address,
    )
    a.args += ["--gossip-address", f"{net.ip_a}:{free_port()}"]
    b.args += ["--gossip-address", f"{net.ip_b}:{free_port()}"]
    gossip = {"broker-a": a.args[-1], "broker-b": b.args[-1]}
    t0 = time.monotonic()
    await start_pair(h, a, b)
    names = {"broker-a", "broker-b", LOOKUP_NAME}
    deadline = t0 + CONVERGE_BOUND_S
    while True:
        views = {n: await gossip_view(addr, net.ip_bridge) for n, addr in gossip.items()}
        views[LOOKUP_NAME] = await gossip_view(lookup.gossip_address, net.ip_bridge)
        registered = await lookup_gossip_states(h, lookup)
        logged = {
            label: WITNESS_LINE
            in await asyncio.to_thread(Path(p.log_path).read_text, errors="replace")
            for label, p in (("a", a), ("b", b))
        }
        missing = {
            n: sorted(m for m in names - {n} if v is None or v.get(m) != MemberState.ALIVE)
            for n, v in views.items()
        }
        ok = (
            not any(missing.values())
            and all(logged.values())
            and registered is not None
            and all(registered.get(n) == "alive" for n in ("broker-a", "broker-b"))
        )
        if ok:
            print(f"gossip converged {time.monotonic() - t0:.2f} s after the start")
            return Topology(net, lookup, a, b)
        assert time.monotonic() < deadline, (
            f"gossip did not converge within {CONVERGE_BOUND_S} s: not alive in a view: {missing}; "
            f"witness line logged: {logged}; the lookup's gossip states: {registered}"
        )
        await asyncio.sleep(0.1)


def start_load(
    h: Harness, tmp: Path, t: Topology, ledger: Ledger, handled: dict[bytes, int]
) -> tuple[Consumer, list[Publisher]]:
    consumer = counting_consumer(h, tmp, [t.a, t.b], handled)
    pubs = [Publisher(h, t.a, "a", ledger).start(), Publisher(h, t.b, "b", ledger).start()]
    return consumer, pubs


async def takeovers(h: Harness, t: Topology) -> dict[str, int | None]:
    got = await asyncio.gather(*(get_stats(h, p.address) for p in t.brokers.values()))
    return {
        label: (s.pair.takeovers if s is not None else None)
        for label, s in zip(t.brokers, got, strict=True)
    }


async def finish(
    h: Harness,
    f: Findings,
    consumer: Consumer,
    pubs: list[Publisher],
    ledger: Ledger,
    handled: dict[bytes, int],
    marks: list[tuple[str, float]],
) -> None:
    """Stop publishing; every acked id handled (once) by the consumer with dedupe."""
    for p in pubs:
        await p.stop()
    acked = dict(ledger.acked)
    await wait_for(lambda: all(i in handled for i in acked), DRAIN_BOUND_S)
    f.add(lost_report("consumer with dedupe", acked, set(handled), marks))
    twice = [i for i, n in handled.items() if n > 1]
    f.check(not twice, lambda: f"the handler ran more than once for {len(twice)} id(s)")
    f.check(not ledger.bad_copies, lambda: f"acks with copies != 2: {ledger.bad_copies[:5]}")
    print(
        f"acked={len(acked)} handled={len(handled)} (of which never acked: {len(set(handled) - set(acked))}; "
        f"publishes that failed but were stored) dup_absorbed={consumer.stats.duplicates} "
        f"publish_errors={ {p.label: p.errors for p in pubs} } "
        f"last_errors={ {p.label: p.last_error[:80] for p in pubs} }"
    )


async def watch_takeovers(
    h: Harness, brokers: Mapping[str, BrokerProcess], before: Mapping[str, int | None], until: float
) -> tuple[dict[str, str], set[str], dict[str, int]]:
    """Every broker's stats, polled until ``until`` (a ``time.monotonic()``): the first
    takeover each made (its counts and when, after ``before``), the brokers whose stats
    showed the pair unhealthy, and the polls each left unanswered."""
    t0 = time.monotonic()
    took: dict[str, str] = {}
    unhealthy: set[str] = set()
    unanswered = dict.fromkeys(brokers, 0)
    while (left := until - time.monotonic()) > 0:
        got = await asyncio.gather(
            *(get_stats(h, p.address, timeout=max(0.05, min(1.0, left))) for p in brokers.values())
        )
        for label, s in zip(brokers, got, strict=True):
            if s is None:
                unanswered[label] += 1
                continue
            if pair_problems(s):
                unhealthy.add(label)
            if s.pair.takeovers != before[label] and label not in took:
                took[label] = (
                    f"takeovers {before[label]} -> {s.pair.takeovers} "
                    f"{time.monotonic() - t0:.2f} s into the fault"
                )
        await asyncio.sleep(max(0.0, min(0.1, until - time.monotonic())))
    return took, unhealthy, unanswered


def print_gossip_lines(tmp: Path) -> None:
    pat = re.compile(r"gossip|took over|takeover|witness", re.IGNORECASE)
    for name in ("a.log", "b.log"):
        lines = [
            ln for ln in (tmp / name).read_text(errors="replace").splitlines() if pat.search(ln)
        ]
        print(f"-- {name}: " + ("\n   ".join(_collapse(lines)[-8:]) or "(none)"))


# ----------------------------------------------------------------------------- 1. pair link
async def test_pair_link_partition_with_witness_no_takeover(tmp_path: Path) -> None:
    f = Findings()
    async with WitnessHarness(tmp_path) as h:
        t = await start_topology(h, tmp_path)
        net, brokers = t.net, t.brokers
        await create_channels(h, [t.a, t.b], TOPIC, ["work"])
        ledger, handled = Ledger(), {}
        consumer, pubs = start_load(h, tmp_path, t, ledger, handled)
        await consumer.start()
        assert await wait_for(lambda: len(ledger.acked) >= 200, 20), "publishers made no progress"
        before = await takeovers(h, t)
        assert None not in before.values(), f"stats unavailable before the partition: {before}"
        errors_before = {p.label: p.errors for p in pubs}
        t_cut = time.monotonic()
        net.partition()
        # The premise, checked meanwhile in threads: A cannot reach B, both reach the lookup.
        probes = {
            what: asyncio.ensure_future(asyncio.to_thread(net.can_connect, side, host, port))
            for what, side, host, port in (
                ("a->b", "a", net.ip_b, t.b.port),
                ("a->lookup", "a", net.ip_bridge, t.lookup.port),
                ("b->lookup", "b", net.ip_bridge, t.lookup.port),
            )
        }
        try:
            took, unhealthy_seen, unanswered = await watch_takeovers(
                h, brokers, before, t_cut + FAULT_S
            )
        finally:
            net.heal()
        t_heal = time.monotonic()
        reach = {what: await p for what, p in probes.items()}
        assert reach == {"a->b": False, "a->lookup": True, "b->lookup": True}, (
            f"test network during the partition: {reach} (want a->b False, both reach the lookup)"
        )
        f.check(bool(unhealthy_seen), "neither broker's stats showed the 10 s partition")
        f.check(not took, lambda: f"a takeover during the pair-link partition: {took}")
        errors_during = {p.label: p.errors - errors_before[p.label] for p in pubs}
        print(
            f"partition {t_heal - t_cut:.2f} s: takeovers before {before}; stats unanswered {unanswered}; "
            f"unhealthy seen {sorted(unhealthy_seen)}; failed publishes during it {errors_during} "
            f"(last: { {p.label: p.last_error[:60] for p in pubs} })"
        )
        f.add(
            await heal_check(
                h, brokers, t_heal, "after the 10 s pair-link partition", TOPIC, ledger
            )
        )
        after = await takeovers(h, t)
        f.check(after == before, f"takeovers changed across the partition: {before} -> {after}")
        await finish(
            h, f, consumer, pubs, ledger, handled, [("the partition", t_cut), ("the heal", t_heal)]
        )
        print_gossip_lines(tmp_path)
        f.assert_none()


# ----------------------------------------------------------------------------- 2. B isolated
async def test_isolated_broker_partner_takes_over_it_does_not(tmp_path: Path) -> None:
    f = Findings()
    async with WitnessHarness(tmp_path) as h:
        t = await start_topology(h, tmp_path)
        net, brokers = t.net, t.brokers
        await create_channels(h, [t.a, t.b], TOPIC, ["work"])
        ledger, handled = Ledger(), {}
        consumer, pubs = start_load(h, tmp_path, t, ledger, handled)
        await consumer.start()
        owners = lambda: [o for o, _ in ledger.acked.values()]  # noqa: E731
        assert await wait_for(lambda: min(owners().count("a"), owners().count("b")) >= 100, 20), (
            "publishers made no progress"
        )
        before = await takeovers(h, t)
        assert None not in before.values(), f"stats unavailable before the isolation: {before}"
        t_iso = time.monotonic()
        net.isolate("b")
        probes = {
            what: asyncio.ensure_future(asyncio.to_thread(net.can_connect, side, host, port))
            for what, side, host, port in (
                ("a->b", "a", net.ip_b, t.b.port),
                ("b->lookup", "b", net.ip_bridge, t.lookup.port),
                ("a->lookup", "a", net.ip_bridge, t.lookup.port),
            )
        }
        t_take: float | None = None
        a_during: int | None = None
        try:
            while (left := t_iso + FAULT_S - time.monotonic()) > 0:
                if t_take is None:
                    s = await get_stats(h, t.a.address, timeout=max(0.05, min(1.0, left)))
                    if s is not None and s.pair.takeovers > (before["a"] or 0):
                        t_take, a_during = time.monotonic(), s.pair.takeovers
                await asyncio.sleep(max(0.0, min(0.05, t_iso + FAULT_S - time.monotonic())))
        finally:
            net.unisolate("b")
        t_heal = time.monotonic()
        reach = {what: await p for what, p in probes.items()}
        assert reach == {"a->b": False, "b->lookup": False, "a->lookup": True}, (
            f"test network during the isolation: {reach} (want B unreachable, A reaching the lookup)"
        )
        print(
            f"isolation {t_heal - t_iso:.2f} s; A takeover seen "
            + (
                f"{t_take - t_iso:.2f} s after the isolation started (takeovers {before['a']} -> {a_during})"
                if t_take is not None
                else "never"
            )
        )
        f.check(
            t_take is not None,
            f"A did not take over during the {FAULT_S:.0f} s isolation of B "
            f"(takeovers before {before})",
        )
        f.add(await heal_check(h, brokers, t_heal, "after the 10 s isolation of B", TOPIC, ledger))
        after = await takeovers(h, t)
        f.check(
            after["a"] is not None and after["a"] > (before["a"] or 0),
            f"A's takeovers did not increase: {before} -> {after}",
        )
        f.check(
            after["b"] == before["b"],
            f"B's takeovers changed (the isolated broker took over, or stats failed): {before} -> {after}",
        )
        await finish(
            h, f, consumer, pubs, ledger, handled, [("the isolation", t_iso), ("the heal", t_heal)]
        )
        print_gossip_lines(tmp_path)
        f.assert_none()
