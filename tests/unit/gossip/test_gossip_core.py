"""Direct tests of the sans-IO core: feed messages and time, inspect actions."""

from __future__ import annotations

import random

import pytest

from pairq.gossip import Core, MemberState, MetaTooLargeError, NodeMeta, lan
from pairq.gossip.events import EventKind, PushPullRequest, SendPacket, TcpPing
from pairq.gossip.messages import Ack, Alive, Dead, IndirectPing, Message, Nack, Ping, Suspect

T0 = 100.0


def core(name: str = "me", **cfg: object) -> Core:
    c = Core(
        lan(**cfg),
        name,
        ("10.0.0.1", 7946),
        NodeMeta(role="broker", node_id=name),
        T0,
        random.Random(1),
    )
    c.start(T0)
    return c


def add(c: Core, *names: str, inc: int = 0) -> None:
    for i, n in enumerate(names):
        c.receive(
            T0, ("10.0.1.1", 1), [Alive(inc, n, (f"10.0.1.{i + 2}", 7946), NodeMeta(node_id=n))]
        )
    c.drain_actions()
    c.drain_events()


def sent(c: Core) -> list[tuple[tuple[str, int], Message]]:
    return [(a.addr, m) for a in c.drain_actions() if isinstance(a, SendPacket) for m in a.msgs]


def run(c: Core, until: float, step: float = 0.01) -> float:
    t = c._last_tick
    while t < until:
        t = round(t + step, 6)
        c.tick(t)
    return t


def test_meta_too_large_rejected_before_start() -> None:
    meta = NodeMeta(role="x", extra=tuple((f"k{i}", "v" * 200) for i in range(5)))
    with pytest.raises(MetaTooLargeError):
        Core(lan(), "me", ("h", 1), meta, T0)


def test_ping_is_acked_and_misdirected_ping_ignored() -> None:
    c = core()
    c.receive(T0, ("10.0.0.9", 5), [Ping(7, "me", "peer", ("10.0.0.9", 5))])
    out = sent(c)
    assert (("10.0.0.9", 5), Ack(7, "me")) in out
    c.receive(T0, ("10.0.0.9", 5), [Ping(8, "someone-else", "peer", ("10.0.0.9", 5))])
    assert not any(isinstance(m, Ack) and m.seq == 8 for _, m in sent(c))


def test_ping_from_member_we_hold_dead_gets_the_accusation_back() -> None:
    c = core()
    add(c, "x")
    c.receive(T0, ("h", 1), [Dead(0, "x", "z")])
    c.drain_actions()
    c.receive(T0, ("10.0.1.2", 7946), [Ping(3, "me", "x", ("10.0.1.2", 7946))])
    msgs = [m for _, m in sent(c)]
    assert Ack(3, "me") in msgs and Dead(0, "x", "me") in msgs


def test_stale_accusation_answered_directly_and_rate_limited() -> None:
    c = core()
    add(c, "m")
    c.update_meta(T0, NodeMeta(role="broker", node_id="me", pair=""))  # incarnation 1
    c.drain_actions()
    c.receive(T0, ("h", 1), [Dead(0, "me", "m")])
    direct = [(a, m) for a, m in sent(c) if isinstance(m, Alive)]
    assert direct == [(("10.0.1.2", 7946), Alive(1, "me", ("10.0.0.1", 7946), c.meta))]
    assert c.incarnation == 1 and c.stats.stale_refutes == 1
    c.receive(T0 + 0.1, ("h", 1), [Suspect(0, "me", "m")])
    assert not [m for _, m in sent(c) if isinstance(m, Alive)]  # within stale_refute_interval


def test_current_accusation_is_refuted_with_higher_incarnation() -> None:
    c = core()
    c.receive(T0, ("h", 1), [Suspect(0, "me", "m")])
    assert c.incarnation == 1 and c.stats.refutations == 1
    assert c.health == 1  # Lifeguard: being accused hints that we are the slow one


def test_suspicion_timeout_shrinks_with_independent_confirmations() -> None:
    c = core()
    names = [f"n{i}" for i in range(9)]
    add(c, *names)  # N = 10: min = 4 * 1 * 0.5 = 2 s, max = 12 s, k = 2
    c.receive(T0, ("h", 1), [Suspect(0, "n0", "n1")])
    assert c.member("n0").state == MemberState.SUSPECT  # type: ignore[union-attr]
    run(c, T0 + 5.0)
    assert c.member("n0").state == MemberState.SUSPECT  # type: ignore[union-attr]  # max 12 s
    c.receive(c._last_tick, ("h", 1), [Suspect(0, "n0", "n2")])
    c.receive(c._last_tick, ("h", 1), [Suspect(0, "n0", "n2")])  # same confirmer twice: counts once
    c.receive(c._last_tick, ("h", 1), [Suspect(0, "n0", "n3")])  # two confirmations: timeout = min
    run(c, T0 + 5.05)
    assert c.member("n0").state == MemberState.DEAD  # type: ignore[union-attr]
    kinds = [e.kind for e in c.drain_events() if e.member.name == "n0"]
    assert kinds == [EventKind.SUSPECT, EventKind.DEAD]


def test_without_lifeguard_suspicion_is_fixed_at_minimum() -> None:
    c = core(lifeguard=False)
    add(c, *[f"n{i}" for i in range(9)])
    c.receive(T0, ("h", 1), [Suspect(0, "n0", "n1")])
    run(c, T0 + 1.9)
    assert c.member("n0").state == MemberState.SUSPECT  # type: ignore[union-attr]
    run(c, T0 + 2.1)
    assert c.member("n0").state == MemberState.DEAD  # type: ignore[union-attr]


def test_failed_probe_goes_indirect_with_tcp_fallback_then_suspects() -> None:
    c = core()
    add(c, "a", "b", "c", "d")
    t = T0
    for _ in range(200):
        t = run(c, t + 0.01)
        if any(isinstance(m, Ping) for _, m in sent(c)):
            break  # a probe went out
    t = run(c, t + 0.21)
    acts = c.drain_actions()
    indirect = [
        m for a in acts if isinstance(a, SendPacket) for m in a.msgs if isinstance(m, IndirectPing)
    ]
    assert len(indirect) == 3 and all(m.nack for m in indirect)
    assert any(isinstance(a, TcpPing) for a in acts)
    target = indirect[0].target
    # Two helpers answer with a nack, one stays silent: health rises by the missed nack.
    c.receive(t, ("h", 1), [Nack(indirect[0].seq, "x"), Nack(indirect[0].seq, "y")])
    run(c, t + 0.5)
    assert c.member(target).state == MemberState.SUSPECT  # type: ignore[union-attr]
    assert c.health == 1


def test_indirect_ping_relays_ack_or_nacks() -> None:
    c = core()
    c.receive(T0, ("r", 1), [IndirectPing(42, "t", ("10.0.5.5", 1), True, "req", ("10.0.6.6", 2))])
    relay = [(a, m) for a, m in sent(c) if isinstance(m, Ping)]
    assert relay and relay[0][0] == ("10.0.5.5", 1)
    run(c, T0 + 0.2)
    assert (("10.0.6.6", 2), Nack(42, "me")) in sent(c)
    c.receive(
        T0 + 0.2, ("r", 1), [IndirectPing(43, "t", ("10.0.5.5", 1), True, "req", ("10.0.6.6", 2))]
    )
    seq = next(m.seq for _, m in sent(c) if isinstance(m, Ping))
    c.receive(T0 + 0.21, ("10.0.5.5", 1), [Ack(seq, "t")])
    assert (("10.0.6.6", 2), Ack(43, "me")) in sent(c)


def test_loop_stall_raises_health_and_postpones_suspicion() -> None:
    c = core()
    add(c, *[f"n{i}" for i in range(9)])
    c.receive(T0, ("h", 1), [Suspect(0, "n0", "n1")])
    c.receive(T0, ("h", 1), [Suspect(0, "n0", "n2"), Suspect(0, "n0", "n3")])  # deadline T0 + 2
    c.tick(T0 + 0.01)
    c.tick(T0 + 1.9)  # a 1.9 s stall: we could not listen, so that time is not evidence
    assert c.stats.stalls == 1 and c.health >= 1
    run(c, T0 + 3.5)
    assert c.member("n0").state == MemberState.SUSPECT  # type: ignore[union-attr]
    run(c, T0 + 4.0)
    assert c.member("n0").state == MemberState.DEAD  # type: ignore[union-attr]


def test_leave_then_unknown_pinger_triggers_no_sync() -> None:
    c = core()
    c.receive(T0, ("10.0.9.9", 1), [Ping(1, "me", "stranger", ("10.0.9.9", 1))])
    assert any(isinstance(a, PushPullRequest) for a in c.drain_actions())
    c.leave(T0)
    c.receive(T0, ("10.0.9.8", 1), [Ping(1, "me", "stranger2", ("10.0.9.8", 1))])
    assert not any(isinstance(a, PushPullRequest) for a in c.drain_actions())
    assert c.member("me").state == MemberState.LEFT  # type: ignore[union-attr]


def test_address_conflict_is_ignored_but_dead_member_can_reclaim() -> None:
    c = core()
    add(c, "x")
    c.receive(T0, ("h", 1), [Alive(5, "x", ("10.9.9.9", 1), NodeMeta(node_id="x"))])
    assert c.member("x").addr == ("10.0.1.2", 7946)  # type: ignore[union-attr]
    c.receive(T0, ("h", 1), [Dead(0, "x", "z")])
    c.receive(T0 + 1, ("h", 1), [Alive(0, "x", ("10.9.9.9", 1), NodeMeta(node_id="x"))])
    m = c.member("x")
    assert m is not None and m.addr == ("10.9.9.9", 1) and m.state == MemberState.ALIVE


def test_packets_never_exceed_the_udp_budget() -> None:
    from pairq.gossip.codec import encode_packet

    c = core()
    for i in range(300):  # lots of pending broadcasts to piggyback
        meta = NodeMeta(
            role="broker", node_id=f"node-{i:03d}", pair=f"pair-{i}", grpc_address="10.1.1.1:4150"
        )
        c.receive(T0, ("h", 1), [Alive(0, f"node-{i:03d}", ("10.2.0.1", 7000 + i), meta)])
    c.drain_actions()
    run(c, T0 + 2.0)
    sizes = [len(encode_packet(a.msgs)) for a in c.drain_actions() if isinstance(a, SendPacket)]
    assert sizes and max(sizes) <= c.config.udp_buffer_size
    assert max(sizes) > c.config.udp_buffer_size // 2  # and the budget is actually used


def test_partner_heartbeat_with_newer_incarnation_pulls_its_state() -> None:
    from pairq.gossip.messages import PairHeartbeat

    c = Core(lan(), "a", ("10.0.0.1", 7946), NodeMeta(node_id="a", pair="p"), T0, random.Random(1))
    c.start(T0)
    c.receive(T0, ("h", 1), [Alive(0, "b", ("10.0.0.2", 7946), NodeMeta(node_id="b", pair="p"))])
    c.drain_actions()
    c.receive(T0, ("10.0.0.2", 7946), [PairHeartbeat(1, "b", 0)])
    assert not any(isinstance(a, PushPullRequest) for a in c.drain_actions())
    c.receive(T0, ("10.0.0.2", 7946), [PairHeartbeat(2, "b", 3)])  # it refuted something we missed
    assert PushPullRequest(("10.0.0.2", 7946), False) in c.drain_actions()
