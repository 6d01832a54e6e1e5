"""The lookup registry core, deterministically with a fake clock (no sockets)."""

from __future__ import annotations

import pytest

from pairq.lookup.registry import BrokerIdentity, Liveness, Registry, UnknownNodeError


def ident(node: str, pair: str = "p1", port: int = 1) -> BrokerIdentity:
    return BrokerIdentity(node_id=node, grpc_address=f"127.0.0.1:{port}", pair=pair)


def reg(**kw: float) -> Registry:
    kw.setdefault("inactivity_timeout", 30.0)
    kw.setdefault("tombstone_lifetime", 45.0)
    kw.setdefault("heartbeat_interval", 1.0)
    return Registry(**kw)


def test_lookup_topic_groups_by_pair_and_includes_partner_without_topic() -> None:
    r = reg()
    r.connect(ident("a", "p1", 1), {"orders": ["billing"]}, 0.0)
    r.connect(ident("b", "p1", 2), {}, 0.0)
    r.connect(ident("c", "p2", 3), {"other": []}, 0.0)
    r.connect(ident("s", "", 4), {"orders": ["audit"]}, 0.0)
    ans = r.lookup_topic("orders", 0.5)
    assert ans.known
    assert ans.channels == ("audit", "billing")
    assert [p.pair for p in ans.pairs] == ["", "p1"]  # by pair name; single brokers have none
    p1 = ans.pairs[1]
    assert [b.status.identity.node_id for b in p1.brokers] == ["a", "b"]
    assert [b.has_topic for b in p1.brokers] == [True, False]
    assert all(b.status.liveness is Liveness.ALIVE for b in p1.brokers)
    assert [b.status.identity.node_id for b in ans.pairs[0].brokers] == ["s"]
    assert not r.lookup_topic("nope", 0.5).known
    assert r.topics(0.5) == ["orders", "other"]


def test_update_replaces_state_and_stale_stream_is_ignored() -> None:
    r = reg()
    old = r.connect(ident("a"), {"t1": ["c1"]}, 0.0)
    new = r.connect(ident("a"), {"t2": []}, 1.0)  # reconnected before the old stream's end was seen
    assert not r.update("a", old, {"t3": []}, 1.5)
    r.disconnect("a", old, 1.6)  # the old stream ending must not degrade the new one
    assert r.liveness("a", 10.0 - 8.0) is Liveness.ALIVE
    assert r.update("a", new, {"t4": ["x", "y"]}, 2.0)
    assert r.topics(2.0) == ["t4"]
    assert r.channels("t4", 2.0) == ["x", "y"]


def test_gossip_dead_is_dead_at_once_and_overrides_an_open_stream() -> None:
    r = reg()
    tok = r.connect(ident("a"), {"t": []}, 0.0)
    r.heartbeat("a", tok, 1.0)
    r.gossip("a", "suspect", 1.1)
    assert r.liveness("a", 1.1) is Liveness.SUSPECT
    assert r.liveness("a", 4.0) is Liveness.SUSPECT
    assert r.liveness("a", 4.1) is Liveness.DEAD  # suspected and silent for 3 intervals
    r.gossip("a", "dead", 1.2)
    assert r.liveness("a", 1.2) is Liveness.DEAD
    ans = r.lookup_topic("t", 1.2)
    assert ans.pairs[0].brokers[0].status.liveness is Liveness.DEAD
    assert ans.pairs[0].brokers[0].status.gossip_state == "dead"
    r.gossip("a", "alive", 1.5)  # refuted
    assert r.liveness("a", 1.5) is Liveness.ALIVE


def test_gossip_death_older_than_a_new_registration_is_about_an_earlier_life() -> None:
    r = reg()
    r.connect(ident("a"), {}, 0.0)
    r.gossip("a", "dead", 1.0)
    assert r.liveness("a", 1.0) is Liveness.DEAD
    r.connect(ident("a"), {}, 2.0)  # restarted and registered again before gossip saw it alive
    assert r.liveness("a", 2.0) is Liveness.ALIVE
    r.gossip("a", "left", 3.0)
    assert r.liveness("a", 3.0) is Liveness.DEAD


def test_without_gossip_liveness_follows_the_registration() -> None:
    r = reg(heartbeat_interval=1.0)  # dead_after = 3 s
    tok = r.connect(ident("a"), {}, 0.0)
    assert r.liveness("a", 3.0) is Liveness.ALIVE
    assert r.liveness("a", 3.5) is Liveness.SUSPECT  # heartbeats late
    r.heartbeat("a", tok, 3.6)
    assert r.liveness("a", 3.6) is Liveness.ALIVE
    r.disconnect("a", tok, 4.0)
    assert r.liveness("a", 4.0) is Liveness.SUSPECT
    assert r.liveness("a", 6.9) is Liveness.SUSPECT
    assert r.liveness("a", 7.0) is Liveness.DEAD
    r.connect(ident("a"), {}, 8.0)
    assert r.liveness("a", 8.0) is Liveness.ALIVE


def test_closed_stream_with_gossip_alive_is_suspect_not_dead() -> None:
    r = reg()
    tok = r.connect(ident("a"), {}, 0.0)
    r.gossip("a", "alive", 0.0)
    r.disconnect("a", tok, 1.0)
    assert r.liveness("a", 20.0) is Liveness.SUSPECT


def test_inactivity_expiry_drops_silent_registrations() -> None:
    r = reg(inactivity_timeout=10.0)
    ta = r.connect(ident("a", "p1", 1), {"t": []}, 0.0)
    r.connect(ident("b", "p1", 2), {"t": []}, 0.0)
    r.heartbeat("a", ta, 5.0)
    assert r.expire(9.9) == []
    # b is silent for 10 s: gone from answers even before the sweep runs
    assert [n.status.identity.node_id for n in r.nodes(10.0)] == ["a"]
    assert r.expire(10.0) == ["b"]
    with pytest.raises(UnknownNodeError):
        r.liveness("b", 10.0)
    assert r.expire(15.0) == ["a"]
    assert r.topics(15.0) == []
    assert r.nodes(15.0) == []


def test_tombstones_mark_one_node_and_expire() -> None:
    r = reg(tombstone_lifetime=45.0)
    r.connect(ident("a", "p1", 1), {"t": []}, 0.0)
    r.connect(ident("b", "p1", 2), {"t": []}, 0.0)
    node_id, expires = r.tombstone("t", "127.0.0.1:2", 1.0)  # by address
    assert (node_id, expires) == ("b", 46.0)
    ans = r.lookup_topic("t", 2.0)
    assert [(b.status.identity.node_id, b.tombstoned) for b in ans.pairs[0].brokers] == [
        ("a", False),
        ("b", True),
    ]
    nodes = {n.status.identity.node_id: n for n in r.nodes(2.0)}
    assert nodes["b"].tombstones == (("t", 44.0),)
    assert nodes["a"].tombstones == ()
    # keep the registrations alive past the tombstone's lifetime
    for t in range(5, 50, 5):
        for n in ("a", "b"):
            r.heartbeat(n, r._regs[n].token, float(t))
    assert not r.lookup_topic("t", 46.0).pairs[0].brokers[1].tombstoned
    r.expire(46.0)
    assert r._tombstones == {}
    with pytest.raises(UnknownNodeError):
        r.tombstone("t", "nobody", 1.0)


def test_operator_registrations() -> None:
    r = reg()
    r.create_topic("admin-made")
    r.create_channel("admin-made", "c1")
    r.create_channel("implicit", "c2")
    assert r.topics(0.0) == ["admin-made", "implicit"]
    ans = r.lookup_topic("admin-made", 0.0)
    assert ans.known and ans.pairs == () and ans.channels == ("c1",)
    tok = r.connect(ident("a"), {"admin-made": ["c3"]}, 0.0)
    assert r.channels("admin-made", 0.0) == ["c1", "c3"]
    r.delete_channel("admin-made", "c3")
    assert r.channels("admin-made", 0.0) == ["c1"]
    r.delete_topic("admin-made")
    assert r.topics(0.0) == ["implicit"]
    assert not r.lookup_topic("admin-made", 0.0).known
    r.update("a", tok, {"admin-made": []}, 1.0)  # the broker still holds it: back
    assert r.lookup_topic("admin-made", 1.0).known


def test_gossip_state_is_validated_and_old_deaths_are_forgotten() -> None:
    r = reg(inactivity_timeout=10.0)
    with pytest.raises(ValueError):
        r.gossip("a", "zombie", 0.0)
    r.gossip("ghost", "dead", 0.0)
    r.expire(10.0)
    assert "ghost" not in r._gossip


def test_closed_stream_plus_second_sign_of_failure_is_dead_at_once() -> None:
    r = reg()
    ta = r.connect(ident("a", "p1", 1), {}, 0.0)
    tb = r.connect(ident("b", "p1", 2), {}, 0.0)
    r.disconnect("a", ta, 1.0)
    assert r.liveness("a", 1.0) is Liveness.SUSPECT
    r.refused("a", ta)  # nobody listens on its port any more
    assert r.liveness("a", 1.0) is Liveness.DEAD
    r.gossip("b", "suspect", 1.0)
    assert r.liveness("b", 1.0) is Liveness.SUSPECT  # stream still open: only suspect
    r.disconnect("b", tb, 1.1)
    assert r.liveness("b", 1.1) is Liveness.DEAD
    # a refusal reported for a stale stream is ignored; a new registration starts clean
    tb2 = r.connect(ident("b", "p1", 2), {}, 2.0)
    r.refused("b", tb)
    r.gossip("b", "alive", 2.0)
    assert r.liveness("b", 2.0) is Liveness.ALIVE
    r.refused("b", tb2)  # stream open: a refusal is not believed
    assert r.liveness("b", 2.0) is Liveness.ALIVE
