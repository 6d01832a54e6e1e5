"""The producers' placement rule (pure; ``pairq.client.discovery.place``)."""

from __future__ import annotations

from pairq.client.discovery import BrokerState, PairState, place, rendezvous_score


def pair(
    name: str, *, alive: tuple[str, ...] = ("alive", "alive"), topics: tuple[str, ...] = ()
) -> PairState:
    brokers = [
        BrokerState(f"{name}-{i}:1", live != "dead", False, live, f"{name}-{i}")
        for i, live in enumerate(alive)
    ]
    return PairState(name, brokers, frozenset(topics))


def test_healthy_holder_first_then_rendezvous_order() -> None:
    pairs = [pair("p1"), pair("p2"), pair("p3", topics=("orders",))]
    order = place("orders", pairs)
    assert order[0].pair == "p3"
    rest = [p.pair for p in order[1:]]
    assert rest == sorted(["p1", "p2"], key=lambda n: -rendezvous_score("orders", n))


def test_every_producer_agrees_regardless_of_input_order() -> None:
    pairs = [pair(f"p{i}") for i in range(6)]
    first = [p.pair for p in place("t", pairs)]
    assert [p.pair for p in place("t", list(reversed(pairs)))] == first
    # topics spread over pairs: not everything lands on one pair
    chosen = {place(f"topic-{i}", pairs)[0].pair for i in range(60)}
    assert len(chosen) >= 4


def test_unhealthy_pairs_come_after_healthy_ones_and_dead_pairs_are_left_out() -> None:
    pairs = [
        pair("holder-degraded", alive=("alive", "dead"), topics=("t",)),
        pair("healthy"),
        pair("suspect", alive=("alive", "suspect")),
        pair("gone", alive=("dead", "dead"), topics=("t",)),
        PairState("half", [BrokerState("h:1", True, False, "alive", "h0")], frozenset()),
    ]
    order = [p.pair for p in place("t", pairs)]
    assert order[0] == "healthy"
    assert order[1] == "holder-degraded"
    assert set(order[2:]) == {"suspect", "half"}
    assert "gone" not in order


def test_adding_a_pair_moves_only_topics_that_prefer_it() -> None:
    base = [pair(f"p{i}") for i in range(4)]
    grown = [*base, pair("p4")]
    topics = [f"t{i}" for i in range(200)]
    moved = [t for t in topics if place(t, base)[0].pair != place(t, grown)[0].pair]
    assert all(place(t, grown)[0].pair == "p4" for t in moved)
    assert 10 < len(moved) < 80  # about a fifth


def test_single_broker_healthy_and_key() -> None:
    single = PairState("", [BrokerState("s:1", True, False, "alive", "n1")])
    assert single.healthy and single.key == "node:n1"
    assert not pair("p", alive=("alive",)).healthy  # a named pair needs both halves
    assert pair("p", alive=("alive", "dead")).addresses() == ["p-0:1"]
