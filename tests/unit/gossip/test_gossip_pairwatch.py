"""The pair fast path's rules (pairq.gossip.pairwatch), pure: a fake clock, no sockets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pairq.gossip.pairwatch import SEQ_TTL, PairWatches, Step, Thresholds, Watch, keep

LIMITS = Thresholds(suspect_after=0.35, dead_after=0.75)
PROBE_EVERY = 0.1


def assess(w: Watch, now: float, helpers: int = 3, tcp: bool = True, probing: bool = False) -> Step:
    return PairWatches.assess(
        w,
        now,
        LIMITS,
        probe_interval=PROBE_EVERY,
        helpers_available=helpers,
        tcp_fallback=tcp,
        probing=probing,
    )


def probe_round(t: PairWatches, name: str, seq: int, now: float, helpers: list[str]) -> None:
    t.probe_sent(name, seq, now)
    for h in helpers:
        t.helper_asked(name, h)
    t.tcp_probe_sent(name)


def test_quiet_until_suspect_after_then_probe_then_wait() -> None:
    t = PairWatches()
    t.watch_partner("b", 0.0)
    w = t.get("b")
    assert w is not None
    assert assess(w, 0.34) is Step.QUIET and w.probing_since is None
    assert assess(w, 0.35) is Step.PROBE and w.probing_since == 0.35
    probe_round(t, "b", 1, 0.35, ["h1", "h2"])
    assert assess(w, 0.35, probing=True) is Step.WAIT
    assert assess(w, 0.40) is Step.WAIT  # the next round is due only after PROBE_EVERY
    assert assess(w, 0.45) is Step.PROBE


def test_slow_verdict_needs_the_silence_helpers_tcp_and_a_witness() -> None:
    t = PairWatches()
    t.watch_partner("b", 0.0)
    w = t.get("b")
    assert w is not None
    assert assess(w, 0.4) is Step.PROBE
    probe_round(t, "b", 7, 0.4, ["h1"])
    assert assess(w, 0.8, probing=True) is Step.WAIT  # one helper asked, two exist
    t.helper_asked("b", "h2")
    assert assess(w, 0.8, probing=True) is Step.WAIT  # no witness yet
    t.nacked(7, "h1")
    assert w.nackers == {"h1"}
    assert assess(w, 0.74, probing=True) is Step.WAIT  # not silent for dead_after yet
    assert assess(w, 0.75, probing=True) is Step.DEAD


def test_without_a_witness_only_after_four_times_dead_after() -> None:
    t = PairWatches()
    t.watch_partner("b", 0.0)
    w = t.get("b")
    assert w is not None
    assess(w, 0.4)
    probe_round(t, "b", 1, 0.4, ["h1", "h2"])
    assert assess(w, 2.99, probing=True) is Step.WAIT  # cut off from everyone: no nack
    assert assess(w, 3.0, probing=True) is Step.DEAD


def test_alone_with_the_partner_the_tcp_probe_is_enough() -> None:
    t = PairWatches()
    t.watch_partner("b", 0.0)
    w = t.get("b")
    assert w is not None
    assess(w, 0.4, helpers=0)
    assert assess(w, 0.8, helpers=0, probing=True) is Step.WAIT  # TCP not tried yet
    t.tcp_probe_sent("b")
    assert assess(w, 0.8, helpers=0, probing=True) is Step.DEAD
    w2 = Watch(last_heard=0.0)
    assert assess(w2, 0.8, helpers=0, tcp=False) is Step.PROBE


def test_fast_verdict_on_a_refused_tcp_probe_and_two_nacks() -> None:
    t = PairWatches()
    t.watch_partner("b", 0.0)
    w = t.get("b")
    assert w is not None
    assess(w, 0.35)
    probe_round(t, "b", 3, 0.35, ["h1", "h2"])
    t.refused(3)
    t.nacked(3, "h1")
    assert assess(w, 0.36, probing=True) is Step.WAIT  # one nack, two helpers exist
    t.nacked(3, "h2")
    assert assess(w, 0.36, probing=True) is Step.DEAD_REFUSED  # long before dead_after


def test_hearing_from_the_member_drops_the_evidence() -> None:
    t = PairWatches()
    t.watch_partner("b", 0.0)
    w = t.get("b")
    assert w is not None
    assess(w, 0.4)
    probe_round(t, "b", 5, 0.4, ["h1", "h2"])
    t.nacked(5, "h1")
    t.refused(5)
    assert t.acked(5) == "b" and t.acked(5) is None  # an ack is counted once
    t.heard_from("b", 0.5)
    assert (w.last_heard, w.probing_since, w.nackers, w.helpers_asked) == (0.5, None, set(), set())
    assert not w.refused and not w.tcp_tried
    assert assess(w, 0.8) is Step.QUIET
    t.nacked(5, "h2")  # late evidence for a member we are not probing is ignored
    assert w.nackers == set()
    t.check_invariants(1.0)


def test_probe_seqs_expire_and_unknown_seqs_are_ignored() -> None:
    t = PairWatches()
    t.watch_partner("b", 0.0)
    t.probe_sent("b", 9, 1.0)
    assert t.owner(9) == "b" and t.owner(10) is None
    t.nacked(10, "h")
    t.refused(10)
    t.expire(1.0 + SEQ_TTL)
    assert t.owner(9) == "b"
    t.expire(1.0 + SEQ_TTL + 0.01)
    assert t.owner(9) is None and t.acked(9) is None


def test_a_stall_shifts_every_clock() -> None:
    t = PairWatches()
    t.watch_partner("b", 0.0)
    w = t.get("b")
    assert w is not None
    assess(w, 0.4)
    t.shift(2.0)
    assert (w.last_heard, w.probing_since) == (2.0, 2.4)
    assert assess(w, 2.3) is Step.QUIET  # the stall is no evidence


def test_heartbeats_start_a_watch_only_of_an_unpaired_member() -> None:
    t = PairWatches()
    assert t.heartbeat("lookup", 1.0, may_watch=False) is None and "lookup" not in t
    w = t.heartbeat("lookup", 1.0, may_watch=True)
    assert w is not None and w.watched and w.last_hb == 1.0 and "lookup" in t
    t.ensure_partner("lookup", 2.0)  # an existing watch is kept as it is
    assert t.get("lookup") is w and len(t) == 1


def test_keep() -> None:
    partner = Watch(last_heard=0.0)
    watch = Watch(last_heard=0.0, watched=True, last_hb=10.0)
    kw = {"watch_expire": 3.0}
    assert keep(partner, 100.0, live=True, partner=True, unpaired=False, **kw)
    assert not keep(partner, 0.0, live=False, partner=True, unpaired=False, **kw)
    assert not keep(partner, 0.0, live=True, partner=False, unpaired=False, **kw)
    assert keep(watch, 12.9, live=True, partner=False, unpaired=True, **kw)
    assert not keep(watch, 13.0, live=True, partner=False, unpaired=True, **kw)  # chose others
    assert not keep(watch, 11.0, live=True, partner=False, unpaired=False, **kw)  # paired up


ops = st.lists(
    st.tuples(
        st.sampled_from(["tick", "heard", "nack", "refuse", "ack", "stall"]),
        st.floats(min_value=0.0, max_value=0.5),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_never_dead_while_heard_within_suspect_after(steps: list[tuple[str, float]]) -> None:
    t = PairWatches()
    t.watch_partner("b", 0.0)
    now, seq = 0.0, 0
    for op, dt in steps:
        now += dt
        w = t.get("b")
        assert w is not None
        if op == "tick":
            step = assess(w, now)
            if step is Step.PROBE:
                seq += 1
                probe_round(t, "b", seq, now, ["h1", "h2", "h3"])
                step = assess(w, now, probing=True)
            silence = now - w.last_heard
            if step in (Step.DEAD, Step.DEAD_REFUSED):
                assert silence >= LIMITS.suspect_after
                assert step is Step.DEAD_REFUSED or silence >= LIMITS.dead_after
                assert step is Step.DEAD_REFUSED or w.nackers or silence >= 4 * LIMITS.dead_after
                assert step is not Step.DEAD_REFUSED or (w.refused and len(w.nackers) >= 2)
                return
        elif op == "heard":
            t.heard_from("b", now)
        elif op == "nack":
            t.nacked(seq, f"h{int(dt * 10) % 3 + 1}")
        elif op == "refuse":
            t.refused(seq)
        elif op == "ack" and t.acked(seq) == "b":
            t.heard_from("b", now)
        elif op == "stall":
            t.shift(dt)
            now += dt
        t.check_invariants(now)


def test_driven_by_the_core_in_a_simulated_cluster() -> None:
    """The core drives these rules: a killed partner is found dead by its watch, the
    verdict names helpers that nacked, and every table stays consistent meanwhile."""
    from pairq.gossip import EventKind, MockNetwork, NodeMeta, lan

    net = MockNetwork(seed=7)
    cfg = lan()
    net.add("a", cfg, NodeMeta(role="broker", node_id="a", pair="p"))
    net.add("b", cfg, NodeMeta(role="broker", node_id="b", pair="p"), join=["a"])
    for h in ("l1", "l2", "l3"):
        net.add(h, cfg, NodeMeta(role="lookup", node_id=h), join=["a"])
    assert net.wait_for(net.converged, 5.0) is not None
    watches = net.nodes["a"].core._pair
    assert "b" in watches and "l1" not in watches  # the partner, not the lookups
    net.kill("b")
    killed = net.now
    while not any(e.kind is EventKind.DEAD for e in net.nodes["a"].events):
        net.run_for(0.01)
        for n in ("a", "l1", "l2", "l3"):
            net.nodes[n].core._pair.check_invariants(net.now)
        assert net.now - killed < 2.0, "the partner's death was not found"
    dead = next(e for e in net.nodes["a"].events if e.kind is EventKind.DEAD)
    assert dead.member.name == "b" and dead.witnesses <= {"l1", "l2", "l3"} and dead.witnesses
    assert net.now - killed <= 0.8 and "b" not in watches
