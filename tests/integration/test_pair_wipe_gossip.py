"""A wiped broker's previous incarnation dying in gossip is no verdict on anyone's partner
(real processes: a pair in two network namespaces and a lookup, one gossip cluster).

Chaos ``mixed`` seed 3 (tests/chaos/README.md, session 9): a broker whose data dir is
wiped comes back under a new node id (its store makes it; no ``--node-name``) at the
same addresses, while gossip still holds its previous incarnation; when gossip then
declares the old incarnation dead, the wiped broker took that for its partner's
death (the member is of its pair and not its node id), and so did the partner (the
death of an earlier incarnation of its partner). The verdict stuck, and the next lapse
of the lease on the pair link took a live partner over.

Both tests make the order of events certain by stopping (SIGSTOP) the member whose
evidence would otherwise settle the old incarnation's death before the new one is
known, then cut the pair link alone for five leases: with the stale verdict, a broker
took its live partner over; now neither does, and the pair heals within
HEAL_BOUND_S of each fault.

1. The wiped broker's side: the lookup is stopped across A's wipe, so A's new run
   joins through B, learns its old incarnation alive there and sees it die. B starts
   before A, so the old incarnation is also the newest member of the pair besides B
   in A's new view: only the address rule (an earlier run of me) stops A.
2. The partner's side: B is stopped across A's wipe, so A's new run joins through
   the lookup and the old incarnation's death (witnessed) waits in B's socket behind
   the new run's first messages: B learns A's new run, then the old one's death.

Nothing sleeps to synchronise except for the length of a fault.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns import PairNet
from test_pair_faults import (
    HEAL_BOUND_S,
    START_BOUND_S,
    TOPIC,
    Findings,
    NsBrokerProcess,
    create_channels,
    get_stats,
    heal_check,
    wait_for,
    wait_healthy,
)
from test_pair_witness import (
    LOOKUP_NAME,
    WITNESS_LINE,
    BridgeLookup,
    WitnessHarness,
    gossip_view,
    print_gossip_lines,
    watch_takeovers,
)

from pairq.gossip import MemberState
from pairq.testing import free_port

FAULT_S = 4.0  # the pair-link partition: five leases
CONVERGE_BOUND_S = 15  # gossip: every member alive in every view, witness rule armed
DEATH_BOUND_S = 15  # the old incarnation declared dead on both brokers after the restart


def log_text(p: NsBrokerProcess) -> str:
    return Path(p.log_path).read_text(errors="replace")


def died(p: NsBrokerProcess, node_id: str) -> bool:
    """``p``'s log says gossip declared ``node_id`` dead (as a partner, before the fix;
    as an earlier incarnation, after it)."""
    return re.search(rf"gossip: (partner )?{node_id} \(.*\).* is dead", log_text(p)) is not None


async def stats_ids(h: WitnessHarness, procs: dict[str, NsBrokerProcess]) -> dict[str, str]:
    got = {label: await get_stats(h, p.address) for label, p in procs.items()}
    assert None not in got.values(), f"stats unavailable: {got}"
    return {label: s.broker_id for label, s in got.items() if s is not None}


async def takeovers(h: WitnessHarness, procs: dict[str, NsBrokerProcess]) -> dict[str, int]:
    got = {label: await get_stats(h, p.address) for label, p in procs.items()}
    assert None not in got.values(), f"stats unavailable: {got}"
    return {label: s.pair.takeovers for label, s in got.items() if s is not None}


async def converge(
    h: WitnessHarness, net: PairNet, procs: dict[str, NsBrokerProcess], gossip: dict[str, str]
) -> None:
    """Until every broker's and the lookup's gossip view has the current brokers and the
    lookup alive, and both brokers logged that takeover needs a witness."""
    t0 = time.monotonic()
    while True:
        ids = await stats_ids(h, procs)
        names = {*ids.values(), LOOKUP_NAME}
        views = {label: await gossip_view(addr, net.ip_bridge) for label, addr in gossip.items()}
        missing = {
            label: sorted(
                n
                for n in names - {ids.get(label, LOOKUP_NAME)}
                if v is None or v.get(n) != MemberState.ALIVE
            )
            for label, v in views.items()
        }
        logged = {label: WITNESS_LINE in log_text(p) for label, p in procs.items()}
        if not any(missing.values()) and all(logged.values()):
            print(f"gossip converged {time.monotonic() - t0:.2f} s after the start")
            return
        assert time.monotonic() < t0 + CONVERGE_BOUND_S, (
            f"gossip did not converge within {CONVERGE_BOUND_S} s: not alive in a view: "
            f"{missing}; witness line logged: {logged}"
        )
        await asyncio.sleep(0.1)


@dataclass
class Topology:
    net: PairNet
    lookup: BridgeLookup
    a: NsBrokerProcess
    b: NsBrokerProcess
    gossip: dict[str, str]  # label -> gossip address, the lookup's too

    @property
    def procs(self) -> dict[str, NsBrokerProcess]:
        return {"a": self.a, "b": self.b}


def sig(proc: subprocess.Popen[bytes] | None, signum: int) -> None:
    """Send ``signum`` to a child we started, if it still runs."""
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signum)


async def start_topology(h: WitnessHarness, tmp: Path) -> Topology:
    """Network, lookup, then B and A (no --node-name, store-made node ids) gossiping;
    returns once the pair is healthy and gossip converged."""
    net = h.network()
    lookup = BridgeLookup(tmp, net.ip_bridge)
    h.closers.append(lookup.kill)
    await asyncio.to_thread(lookup.start)
    h.closers.append(lambda: sig(lookup.proc, signal.SIGCONT))  # closers run in reverse
    pa, pb_ = free_port(), free_port()
    gossip = {"a": f"{net.ip_a}:{free_port()}", "b": f"{net.ip_b}:{free_port()}"}
    common = ["--pair", "p", "--gossip-profile", "local", "--lookup", lookup.address]
    # No --node-name: the node id is the store's, so a wiped store is a new member.
    a = NsBrokerProcess(
        tmp / "a",
        host=net.ip_a,
        prefix=net.exec_prefix("a"),
        port=pa,
        log_path=str(tmp / "a.log"),
        args=[
            *common,
            *("--partner", f"{net.ip_b}:{pb_}", "--gossip-address", gossip["a"]),
            # Either seed may be stopped when A's new run joins: the other answers.
            *("--join", gossip["b"], "--join", lookup.gossip_address),
        ],
    )
    b = NsBrokerProcess(
        tmp / "b",
        host=net.ip_b,
        prefix=net.exec_prefix("b"),
        port=pb_,
        log_path=str(tmp / "b.log"),
        args=[
            *common,
            *("--partner", f"{net.ip_a}:{pa}", "--gossip-address", gossip["b"]),
            *("--join", lookup.gossip_address),
        ],
    )
    h.procs += [a, b]
    await asyncio.to_thread(b.start)  # B first: A's old run is newer than B
    await asyncio.to_thread(a.start)
    t = Topology(net, lookup, a, b, {**gossip, LOOKUP_NAME: lookup.gossip_address})
    problem = await wait_healthy(h, t.procs, time.monotonic() + START_BOUND_S, "start")
    assert problem is None, problem
    await converge(h, net, t.procs, t.gossip)
    await create_channels(h, [a, b], TOPIC, ["work"])
    return t


WIPE_ATTEMPTS = 4  # a wipe whose premise did not arise is redone, at most this often
MISSED_S = 3.0  # B's verdict on the old run, and A still unaware this long after: missed


def b_knew_the_new_run_first(b: NsBrokerProcess, old: str) -> bool:
    """B learned A's new run before it processed the old one's death: it logged that
    death as an earlier incarnation's, not as its partner's."""
    return re.search(rf"gossip: partner {old} \(", log_text(b)) is None


async def wipe_a(
    h: WitnessHarness,
    t: Topology,
    stopped: subprocess.Popen[bytes] | None,
    *,
    b_knows_new_first: bool = False,
) -> str:
    """kill -9 A, delete its data dir, start it again (a new node id) while ``stopped``
    is SIGSTOPped; resume it once A's new run logged its old incarnation's death, and
    return once B logged it too. The old node id.

    The premise is a race the test cannot order: A's new run must learn its old
    incarnation (from B, as alive or suspect) before B declares it dead, since gossip
    never learns a member from a death. About one wipe in three loses it (B's verdict
    comes first and A never hears of the old run): such a wipe proves nothing either
    way, so it is redone, on a healthy pair, up to WIPE_ATTEMPTS times.

    ``b_knows_new_first``: B (stopped meanwhile) must also meet A's new run before the
    old one's death once it resumes. Both reach it in the same burst of queued
    packets, in an order the test cannot set either; when the death comes first, B
    takes it for its partner's (it knows no newer incarnation yet) until the new
    run's JOIN a moment later replaces the verdict, so that wipe is redone too."""
    a, b = t.a, t.b
    for attempt in range(1, WIPE_ATTEMPTS + 1):
        old = (await stats_ids(h, t.procs))["a"]
        sig(stopped, signal.SIGSTOP)
        t_wipe = time.monotonic()
        b_saw: list[float] = []

        def settled(old: str = old, b_saw: list[float] = b_saw) -> bool:
            if died(a, old):
                return True
            if not b_saw and died(b, old):
                b_saw.append(time.monotonic())
            return bool(b_saw) and time.monotonic() - b_saw[0] > MISSED_S

        try:
            a.kill()
            shutil.rmtree(a.data_dir)
            await asyncio.to_thread(a.start)
            t_restart = time.monotonic()
            await wait_for(settled, DEATH_BOUND_S)
        finally:
            sig(stopped, signal.SIGCONT)
        if died(a, old):
            if not b_knows_new_first:
                break
            assert await wait_for(lambda old=old: died(b, old), DEATH_BOUND_S), (
                f"B did not see A's old incarnation {old} die within {DEATH_BOUND_S} s"
            )
            if b_knew_the_new_run_first(b, old):
                break
            print(f"wipe {attempt}: B met {old}'s death before A's new run; again")
        else:
            print(f"wipe {attempt}: A's new run never heard of {old} before B's verdict; again")
        problem = await wait_healthy(h, t.procs, time.monotonic() + START_BOUND_S, "re-wipe")
        assert problem is None, problem
        await converge(h, t.net, t.procs, t.gossip)
    else:
        raise AssertionError(
            f"in {WIPE_ATTEMPTS} wipes A's new run never saw its old incarnation die within "
            f"{DEATH_BOUND_S} s of its restart (or B always met that death before the new "
            "run): the test's premise failed"
        )
    assert await wait_for(lambda: died(b, old), DEATH_BOUND_S), (
        f"B did not see A's old incarnation {old} die within {DEATH_BOUND_S} s: "
        "the test's premise failed"
    )
    print(
        f"A restarted {t_restart - t_wipe:.2f} s after the kill; its old incarnation dead on "
        f"both {time.monotonic() - t_restart:.2f} s after the restart (wipe {attempt})"
    )
    return old


async def partition_takes_nobody_over(
    h: WitnessHarness, t: Topology, f: Findings, old: str, case: str
) -> None:
    """After the wipe: healed within the bound, then the pair link alone cut for
    FAULT_S: no takeover by either broker, healed within the bound again."""
    procs = t.procs
    f.add(await heal_check(h, procs, time.monotonic(), f"after A's wipe ({case})"))
    new = await stats_ids(h, procs)
    assert new["a"] != old, f"A must come back under a new node id: {old} -> {new}"
    await converge(h, t.net, procs, t.gossip)
    before = await takeovers(h, procs)
    t_cut = time.monotonic()
    t.net.partition()
    try:
        took, unhealthy, _ = await watch_takeovers(h, procs, before, t_cut + FAULT_S)
    finally:
        t.net.heal()
    t_heal = time.monotonic()
    f.check(bool(unhealthy), "neither broker's stats showed the pair-link partition")
    f.check(not took, lambda: f"{case}: a live partner was taken over: {took}")
    f.add(await heal_check(h, procs, t_heal, "after the pair-link partition"))
    after = await takeovers(h, procs)
    f.check(after == before, f"takeovers changed across the partition: {before} -> {after}")
    got = await asyncio.gather(*(get_stats(h, p.address) for p in procs.values()))
    f.check(
        all(s is not None and not s.pair.solo for s in got), "a broker is still solo after the heal"
    )
    print(
        f"partition {t_heal - t_cut:.2f} s; A {old} -> {new['a']}; takeovers {before} -> "
        f"{after}; heal bound {HEAL_BOUND_S} s"
    )
    print_gossip_lines(h.tmp)


# Who is stopped during A's wipe decides who sees the old incarnation die after the new
# one is known: the lookup (then A sees its own earlier run die) or B (then B sees its
# partner's earlier incarnation die); the case's text, and what that broker must log.
WIPE_CASES = {
    "own-earlier-run": (
        "lookup",
        "A saw its own earlier run die",
        "a",
        "an earlier run of this broker, is dead",
    ),
    "partners-earlier-incarnation": (
        "b",
        "B saw its partner's earlier incarnation die",
        "b",
        "an earlier incarnation of the partner, is dead",
    ),
}


@pytest.mark.parametrize("which", list(WIPE_CASES))
async def test_an_earlier_incarnation_dying_takes_no_live_partner_over(
    tmp_path: Path, which: str
) -> None:
    stopped, case, logger, line = WIPE_CASES[which]
    f = Findings()
    async with WitnessHarness(tmp_path) as h:
        t = await start_topology(h, tmp_path)
        old = await wipe_a(
            h,
            t,
            t.lookup.proc if stopped == "lookup" else t.b.proc,
            b_knows_new_first=logger == "b",
        )
        await partition_takes_nobody_over(h, t, f, old, case)
        f.check(
            line in log_text(t.a if logger == "a" else t.b),
            f"{logger.upper()} never logged {line!r}",
        )
        f.assert_none()
