"""Deterministic whole-cluster simulations on the mock network (seeded, no sockets)."""

from __future__ import annotations

import random

import pytest

from pairq.gossip.config import GossipConfig, lan
from pairq.gossip.events import EventKind
from pairq.gossip.messages import Dead, MemberState
from pairq.gossip.meta import NodeMeta
from pairq.gossip.mock import MockNetwork

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)


def cluster(
    n: int, seed: int = 1, config: GossipConfig | None = None, paired: bool = False, **net_kw: float
) -> tuple[MockNetwork, list[str]]:
    net = MockNetwork(seed=seed, **net_kw)
    cfg = config or lan()
    names = [f"n{i:02d}" for i in range(n)]
    for i, name in enumerate(names):
        meta = NodeMeta(role="broker", node_id=name, pair=f"p{i // 2}" if paired else "")
        net.add(name, cfg, meta, join=names[:1] if i else [])
    assert net.wait_for(net.converged, timeout=10.0) is not None, "cluster did not converge"
    return net, names


def dead_events(net: MockNetwork, victim: str) -> int:
    return sum(
        1
        for node in net.nodes.values()
        for e in node.events
        if e.kind == EventKind.DEAD and e.member.name == victim
    )


def test_join_converges_quickly() -> None:
    net, names = cluster(12)
    assert net.converged()
    joins = [e for e in net.nodes["n05"].events if e.kind == EventKind.JOIN]
    assert {e.member.name for e in joins} == set(names) - {"n05"}


def test_failure_is_detected_suspected_first_then_dead_everywhere() -> None:
    net, names = cluster(10, config=lan(watchers=0))  # plain SWIM + Lifeguard, no watch
    net.kill("n03")
    took = net.wait_for(lambda: net.all_see("n03", DEAD), timeout=20.0)
    assert took is not None
    # Suspicion came first (SWIM), with the N=10 minimum of 4 * 1 * 0.5 s = 2 s at least.
    assert took >= 2.0
    suspects = [
        e for n in names if n != "n03" for e in net.nodes[n].events if e.kind == EventKind.SUSPECT
    ]
    assert suspects and all(e.member.name == "n03" for e in suspects)
    # No one else was ever declared dead.
    assert all(dead_events(net, n) == 0 for n in names if n != "n03")


@pytest.mark.parametrize("seed", range(5))
def test_pair_partner_kill_detected_fast(seed: int) -> None:
    net, _ = cluster(8, seed=seed, paired=True)
    net.run_for(random.Random(seed).random())
    net.kill("n05")  # partner of n04
    took = net.wait_for(lambda: net.view("n04", "n05") == DEAD, timeout=5.0, step=0.005)
    assert took is not None and took <= 0.8
    assert net.wait_for(lambda: net.all_see("n05", DEAD), timeout=3.0) is not None


def test_pair_partner_kill_with_only_the_pair_and_a_lookup() -> None:
    net = MockNetwork(seed=3)
    cfg = lan()
    net.add("a", cfg, NodeMeta(role="broker", node_id="a", pair="p"))
    net.add("b", cfg, NodeMeta(role="broker", node_id="b", pair="p"), join=["a"])
    net.add("l", cfg, NodeMeta(role="lookup", node_id="l"), join=["a"])
    assert net.wait_for(net.converged, 5.0) is not None
    net.kill("b")
    took = net.wait_for(lambda: net.view("a", "b") == DEAD, timeout=5.0, step=0.005)
    assert took is not None and took <= 0.8


@pytest.mark.parametrize("seed", range(10))
def test_pair_partner_paused_half_a_second_is_never_dead(seed: int) -> None:
    net, _names = cluster(6, seed=seed, paired=True)
    rng = random.Random(seed)
    for _ in range(5):
        net.run_for(rng.uniform(0.1, 1.0))
        net.pause("n03", 0.5)
        net.run_for(2.0)
    assert dead_events(net, "n03") == 0
    assert net.converged()


def test_long_pause_is_declared_dead_then_refuted() -> None:
    net, _names = cluster(6, paired=True)
    before = net.nodes["n03"].core.incarnation
    net.pause("n03", 2.0)
    assert net.wait_for(lambda: net.view("n02", "n03") == DEAD, 2.0) is not None
    # On resume n03 hears of its death and refutes with a higher incarnation.
    assert net.wait_for(lambda: net.all_see("n03", ALIVE), 5.0) is not None
    assert net.nodes["n03"].core.incarnation > before
    assert net.nodes["n03"].core.stats.refutations >= 1
    alive_events = [
        e for e in net.nodes["n02"].events if e.kind == EventKind.ALIVE and e.member.name == "n03"
    ]
    assert alive_events


def test_suspect_member_refutes_before_timeout() -> None:
    net, names = cluster(8, config=lan(watchers=0))
    # 1.2 s pause: probes fail and n04 becomes suspect, but suspicion (>= 2 s) has not run out.
    net.pause("n04", 1.2)
    assert (
        net.wait_for(lambda: any(net.view(n, "n04") == SUSPECT for n in names if n != "n04"), 3.0)
        is not None
    )
    assert net.wait_for(lambda: net.all_see("n04", ALIVE), 5.0) is not None
    assert dead_events(net, "n04") == 0
    assert net.nodes["n04"].core.stats.refutations >= 1


@pytest.mark.parametrize("seed", range(3))
def test_no_false_deaths_under_ten_percent_loss(seed: int) -> None:
    net, names = cluster(10, seed=seed, loss=0.10)
    net.run_for(60.0)
    assert sum(dead_events(net, n) for n in names) == 0
    assert net.converged()


def test_convergence_after_join_under_loss() -> None:
    net, _names = cluster(10, seed=9, loss=0.2)
    assert net.converged()


def test_partition_declares_other_side_dead_and_heals() -> None:
    cfg = lan(push_pull_interval=5.0)
    net, names = cluster(8, config=cfg)
    left, right = names[:4], names[4:]
    net.partition(left, right)
    assert (
        net.wait_for(lambda: all(net.view(a, b) == DEAD for a in left for b in right), 30.0)
        is not None
    )
    # Each side stays healthy internally.
    assert net.converged(left) and net.converged(right)
    net.heal()
    assert net.wait_for(net.converged, 30.0) is not None


def test_graceful_leave_is_left_not_dead() -> None:
    net, _names = cluster(6)
    net.nodes["n02"].core.leave(net.now)
    net.flush("n02")
    assert net.wait_for(lambda: net.all_see("n02", LEFT), 3.0) is not None
    net.kill("n02")
    net.run_for(10.0)
    assert net.all_see("n02", LEFT)
    assert dead_events(net, "n02") == 0
    assert any(e.kind == EventKind.LEFT for e in net.nodes["n00"].events)


def test_restart_with_same_name_reclaims_membership() -> None:
    net, _names = cluster(6)
    net.kill("n04")
    assert net.wait_for(lambda: net.all_see("n04", DEAD), 20.0) is not None
    node = net.restart(
        "n04", join=["n00"], meta=NodeMeta(role="broker", node_id="n04", start_epoch_ms=2)
    )
    assert net.wait_for(lambda: net.all_see("n04", ALIVE), 5.0) is not None
    # It learnt of its own death in the join push-pull and outbid it.
    assert node.core.incarnation >= 1
    assert net.nodes["n01"].core.member("n04").meta.start_epoch_ms == 2  # type: ignore[union-attr]


def test_stale_accusation_is_refuted_without_push_pull() -> None:
    """memberlist's hole: a member that missed a refutation keeps a live node dead.

    M (n01) is told X (n02) is dead at incarnation 0 while M cannot send; X then
    moves to incarnation 1 while M cannot hear; every broadcast runs out. Push-pull
    is effectively off. X must still get M to see it alive.
    """
    cfg = lan(push_pull_interval=10_000.0)
    net, names = cluster(5, config=cfg)
    m, x = "n01", "n02"
    net.run_for(3.5)  # past the one early push-pull every member does after start
    others = [n for n in names if n != m]
    for o in others:
        net.link_loss[(m, o)] = 1.0
    net.nodes[m].core.receive(net.now, ("10.9.9.9", 1), [Dead(0, x, "ghost")])
    net.flush(m)
    assert net.view(m, x) == DEAD
    net.run_for(0.3)
    for o in others:
        net.link_loss[(o, m)] = 1.0
    net.nodes[x].core.update_meta(net.now, NodeMeta(role="broker", node_id=x, start_epoch_ms=5))
    net.flush(x)
    net.run_for(1.5)  # all broadcasts of the alive (inc 1) run out; M heard none
    assert net.view(m, x) == DEAD
    assert all(net.view(o, x) == ALIVE for o in others if o != x)
    net.link_loss.clear()
    assert net.wait_for(lambda: net.view(m, x) == ALIVE, 5.0) is not None
    assert net.nodes[x].core.stats.stale_refutes >= 1
    assert net.nodes[x].core.incarnation == 1  # answered with its current alive: no bump needed


def test_metadata_update_reaches_everyone() -> None:
    net, names = cluster(6)
    net.nodes["n01"].core.update_meta(
        net.now, NodeMeta(role="broker", node_id="n01", grpc_address="h:1")
    )
    net.flush("n01")
    ok = net.wait_for(
        lambda: all(net.nodes[n].core.member("n01").meta.grpc_address == "h:1" for n in names),  # type: ignore[union-attr]
        3.0,
    )
    assert ok is not None
    assert any(e.kind == EventKind.UPDATE for e in net.nodes["n04"].events)


@pytest.mark.parametrize("lifeguard", [True, False])
def test_sick_members_never_get_healthy_ones_declared_dead(lifeguard: bool) -> None:
    net, names = cluster(10, seed=4, config=lan(lifeguard=lifeguard))
    sick = {"n08", "n09"}
    rng = random.Random(4)
    due = dict.fromkeys(sick, net.now)
    end = net.now + 60.0
    while net.now < end:
        for s in sick:
            if net.now >= due[s]:
                d = rng.uniform(0.2, 3.0)
                net.pause(s, d)
                due[s] = net.now + 2 * d  # 50 % duty
        net.run_for(0.05)
    assert sum(dead_events(net, n) for n in names if n not in sick) == 0
    # The test really stressed something: the sick members were suspected.
    assert sum(net.nodes[n].core.stats.suspects for n in names if n not in sick) > 0


def test_dissemination_traffic_is_small_at_n50() -> None:
    """24 broker pairs + 2 lookups, like the benchmark; pair heartbeats excluded."""
    from pairq.gossip.codec import encode_packet
    from pairq.gossip.messages import PairHeartbeat

    net = MockNetwork(seed=2)
    names = [f"b{i:02d}" for i in range(48)] + ["l0", "l1"]
    for i, name in enumerate(names):
        pair = f"p{i // 2}" if name.startswith("b") else ""
        net.add(
            name, lan(), NodeMeta(role="x", node_id=name, pair=pair), join=names[:1] if i else []
        )
    assert net.wait_for(net.converged, 20.0) is not None
    net.run_for(5.0)

    def hb_bytes(n: str) -> int:
        count = net.nodes[n].core.stats.extra.get("pair_heartbeats", 0)
        return count * len(encode_packet([PairHeartbeat(0, n, 0)]))

    before = {n: net.nodes[n].bytes_sent - hb_bytes(n) for n in names}
    net.run_for(60.0)
    rates = {n: (net.nodes[n].bytes_sent - hb_bytes(n) - before[n]) / 60.0 for n in names}
    assert sum(rates.values()) / len(rates) < 500, rates
    assert max(rates.values()) < 500, rates  # the watched lookups too


def test_crash_with_refused_tcp_takes_the_fast_branch() -> None:
    net, _ = cluster(8, seed=11, paired=True)
    net.kill("n03")  # partner of n02; nothing listens any more, so TCP is refused
    took = net.wait_for(lambda: net.view("n02", "n03") == DEAD, timeout=5.0, step=0.005)
    assert took is not None and took <= 0.65
    assert net.nodes["n02"].core.stats.extra.get("pair_deaths_refused") == 1


def test_pair_link_cut_but_partner_reachable_by_others_is_not_dead() -> None:
    net, names = cluster(8, seed=12, paired=True)
    net.set_loss("n02", "n03", 1.0)  # the pair cannot hear each other over UDP ...
    net.partition([n for n in names if n != "n03"], [n for n in names if n != "n02"])  # ... nor TCP
    net.run_for(5.0)
    # The helpers still reach n03 and relay its acks, so n02 never declares it dead.
    assert dead_events(net, "n03") == 0 and dead_events(net, "n02") == 0
    assert net.nodes["n02"].core.stats.pair_deaths == 0
    assert sum(net.nodes[n].core.stats.indirect_probes for n in names) > 10  # helpers were used


def test_joining_a_pair_later_via_metadata_update_starts_the_fast_path() -> None:
    net, _ = cluster(4, seed=13)
    for n in ("n00", "n01"):
        net.nodes[n].core.update_meta(net.now, NodeMeta(role="broker", node_id=n, pair="late"))
        net.flush(n)
    net.run_for(1.0)
    net.kill("n01")
    took = net.wait_for(lambda: net.view("n00", "n01") == DEAD, timeout=5.0, step=0.005)
    assert took is not None and took <= 0.8
    assert net.nodes["n00"].core.stats.pair_deaths == 1


def test_unpaired_member_is_caught_by_its_watchers() -> None:
    net, names = cluster(12, seed=21)  # nobody has a pair: every member is watched
    net.kill("n07")
    took = net.wait_for(lambda: net.all_see("n07", DEAD), timeout=10.0, step=0.01)
    assert took is not None and took <= 1.5
    watch_deaths = sum(net.nodes[n].core.stats.extra.get("watch_deaths", 0) for n in names)
    assert watch_deaths >= 1


@pytest.mark.parametrize("seed", range(5))
def test_watched_member_paused_half_a_second_is_never_dead(seed: int) -> None:
    net, _ = cluster(6, seed=seed)
    rng = random.Random(seed)
    for _ in range(5):
        net.run_for(rng.uniform(0.1, 1.0))
        net.pause("n03", 0.5)
        net.run_for(2.0)
    assert dead_events(net, "n03") == 0


def test_watchers_that_disagree_never_kill_a_live_member() -> None:
    """A member that moved to other watchers is probed by the old one, answers, and is dropped."""
    net, names = cluster(8, seed=22)
    net.run_for(2.0)
    # Make n03 believe it has watchers that nobody else would pick, by shrinking its view.
    victim = net.nodes["n03"].core
    victim.config = victim.config.replace(watchers=1)
    net.run_for(10.0)
    assert dead_events(net, "n03") == 0
    watching = [n for n in names if n != "n03" and "n03" in net.nodes[n].core._pair]
    assert len(watching) == 1


def test_death_reported_at_a_stale_incarnation_is_verified_quickly() -> None:
    """n05 is dead; the news carries an incarnation n01 has seen outbid. n01 probes at once."""
    net, names = cluster(10, seed=31, config=lan(watchers=0))
    net.nodes["n05"].core.update_meta(
        net.now, NodeMeta(role="broker", node_id="n05", start_epoch_ms=9)
    )
    net.flush("n05")
    assert net.wait_for(
        lambda: all(net.nodes[n].core.member("n05").incarnation == 1 for n in names), 3.0
    )  # type: ignore[union-attr]
    net.kill("n05")
    net.nodes["n01"].core.receive(net.now, ("h", 1), [Dead(0, "n05", "n02")])
    net.flush("n01")
    assert net.nodes["n01"].core.stats.extra.get("verify_probes") == 1
    # The verify probe fails, so n01 suspects n05 well before its round-robin turn.
    took = net.wait_for(lambda: net.view("n01", "n05") in (SUSPECT, DEAD), 1.0)
    assert took is not None and took <= 0.6


def test_long_partition_merges_back_after_the_broadcasts_ran_out() -> None:
    net, names = cluster(8, seed=41)
    left, right = names[:4], names[4:]
    net.partition(left, right)
    assert (
        net.wait_for(lambda: all(net.view(a, b) == DEAD for a in left for b in right), 30.0)
        is not None
    )
    net.run_for(60.0)  # long after every dead broadcast was spent
    assert all(net.nodes[n].core.pending_broadcasts() == 0 for n in names)
    net.heal()
    took = net.wait_for(net.converged, 30.0)
    assert took is not None and took <= 12.0  # reconnect_interval 5 s, jittered


def test_join_retried_while_alone() -> None:
    net, names = cluster(4, seed=42)
    net.partition(["n00"], [*names[1:], "late"])
    late = net.add(
        "late", lan(), NodeMeta(node_id="late"), join=["n00"]
    )  # the only seed is cut off
    net.run_for(3.0)
    assert [m.name for m in late.core.members()] == ["late"]
    net.heal()
    assert net.wait_for(net.converged, 15.0) is not None
