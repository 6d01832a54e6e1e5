"""Deterministic tests of ``pair/partner_view.py``: which gossip member is the partner,
and which of gossip's events are a verdict on it.

The scripts replay what chaos ``mixed`` seed 3 showed (session 9 of
tests/chaos/README.md): a broker whose store was wiped comes back under a new node id
at the same address, gossip still holds its previous incarnation, and declares it
dead seconds later; that death must never become a partner-dead verdict, neither
on the wiped broker (its own earlier run) nor on its partner (the partner's earlier
incarnation)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from pairq.broker.membership import Membership
from pairq.broker.options import BrokerOptions
from pairq.broker.pair import partner_view as pv
from pairq.broker.pair.partner_view import PartnerView, Seen
from pairq.gossip import EventKind, MemberEvent, MemberState, MemberView, NodeMeta

PAIR = "p0"
ME = "aaaa000000000001"  # this run of this broker (a store-made node id)
MY_GOSSIP = ("10.0.0.4", 7946)
MY_GRPC = "10.0.0.4:4150"
PARTNER_GOSSIP = ("10.0.0.5", 7946)
PARTNER_GRPC = "10.0.0.5:4150"
LK = ("10.0.0.9", 7946)


def member(
    node_id: str,
    *,
    addr: tuple[str, int] = PARTNER_GOSSIP,
    grpc: str = PARTNER_GRPC,
    started: int = 1000,
    pair: str = PAIR,
    role: str = "broker",
) -> MemberView:
    meta = NodeMeta(
        role=role, node_id=node_id, pair=pair, grpc_address=grpc, start_epoch_ms=started
    )
    return MemberView(node_id, addr, meta, 0, MemberState.ALIVE)


def ev(kind: EventKind, m: MemberView, *witnesses: str) -> MemberEvent:
    return MemberEvent(kind, m, 0.0, frozenset(witnesses))


def view() -> PartnerView:
    return PartnerView(pair=PAIR, node_id=ME, addresses=(MY_GOSSIP, MY_GRPC))


def feed(v: PartnerView, *events: MemberEvent) -> list[Seen]:
    out = []
    for e in events:
        out.append(v.on_event(e))
        v.check_invariants()
    return out


OLD_ME = member("aaaa0000000000f0", addr=MY_GOSSIP, grpc=MY_GRPC, started=500)
P1 = member("bbbb000000000001", started=1000)  # the partner's first incarnation
P2 = member("bbbb000000000002", started=2000)  # the partner after a wipe


# ----------------------------------------------------------------------------- not me
def test_my_own_earlier_run_dying_is_no_verdict_on_the_partner() -> None:
    """The wiped broker's case (p0a in mixed seed 3): it learns its old incarnation
    from the others' views, then gossip declares it dead with witnesses."""
    v = view()
    partner, joined, dead = feed(
        v, ev(EventKind.JOIN, P1), ev(EventKind.JOIN, OLD_ME), ev(EventKind.DEAD, OLD_ME, "lk1")
    )
    assert partner == Seen(pv.PARTNER, dead=False, partner=P1.name)
    assert joined == Seen(pv.ME, partner=P1.name)
    assert dead == Seen(pv.ME, partner=P1.name)
    assert v.partner == P1.name
    assert v.verdict() == (False, False)


@pytest.mark.parametrize(
    "old",
    [
        member("aaaa0000000000f1", addr=MY_GOSSIP, grpc="10.0.0.4:9999"),  # same gossip address
        member("aaaa0000000000f2", addr=("10.0.0.4", 40001), grpc=MY_GRPC),  # same gRPC address
    ],
    ids=["gossip-address", "grpc-address"],
)
def test_either_of_my_addresses_makes_a_member_me(old: MemberView) -> None:
    v = view()
    feed(v, ev(EventKind.JOIN, P1))
    assert feed(v, ev(EventKind.JOIN, old), ev(EventKind.DEAD, old, "lk1")) == [
        Seen(pv.ME, partner=P1.name),
        Seen(pv.ME, partner=P1.name),
    ]
    assert v.verdict() == (False, False)


def test_my_own_node_id_is_me_whatever_it_claims() -> None:
    v = view()
    me = member(ME, addr=("10.0.0.77", 1), grpc="10.0.0.77:2")
    assert v.on_event(ev(EventKind.DEAD, me, "lk1")).about == pv.ME
    assert v.partner == ""


def test_a_wildcard_address_identifies_nobody() -> None:
    """Two brokers configured with ``--address 0.0.0.0:4150`` on two hosts advertise the
    same gRPC address in gossip: that must not make the partner look like me (it
    would never be found dead, and a dead partner never taken over)."""
    v = PartnerView(pair=PAIR, node_id=ME, addresses=(MY_GOSSIP, "0.0.0.0:4150"))
    p = member(P1.name, grpc="0.0.0.0:4150")
    assert feed(v, ev(EventKind.JOIN, p), ev(EventKind.DEAD, p, "lk1")) == [
        Seen(pv.PARTNER, dead=False, partner=p.name),
        Seen(pv.PARTNER, dead=True, witnessed=True, partner=p.name),
    ]


def test_my_earlier_run_on_another_host_is_never_the_partner() -> None:
    """A broker replaced by a wiped one on a new host (new node id, new addresses;
    its --partner unchanged) learns its old incarnation from gossip: that matches
    none of its addresses, and without the partner's address it was the only
    broker of the pair the view knew until the real partner's JOIN arrived, so its
    death became a partner-dead verdict (a witnessed takeover of a live partner)."""
    v = PartnerView(
        pair=PAIR, node_id=ME, addresses=(MY_GOSSIP, MY_GRPC), partner_address=PARTNER_GRPC
    )
    old_me = member("aaaa0000000000f1", addr=("10.0.0.3", 7946), grpc="10.0.0.3:4150", started=3000)
    assert feed(v, ev(EventKind.JOIN, old_me), ev(EventKind.DEAD, old_me, "lk1")) == [
        Seen(pv.ELSEWHERE),
        Seen(pv.ELSEWHERE),
    ]
    assert v.verdict() is None and v.partner == ""
    # The partner, started before my old run, is the partner all the same.
    assert feed(v, ev(EventKind.JOIN, P1)) == [Seen(pv.PARTNER, dead=False, partner=P1.name)]
    assert feed(v, ev(EventKind.DEAD, old_me, "lk1")) == [Seen(pv.ELSEWHERE, partner=P1.name)]
    assert v.verdict() == (False, False)


def test_a_host_name_on_either_side_leaves_the_newest_rule_alone() -> None:
    """Addresses are compared as text: a --partner host name and an advertised IP (or
    the reverse) cannot be, so such a member is an incarnation of the partner as
    before (the newest one is the partner)."""
    for configured, advertised in (
        ("broker-b.example:4150", PARTNER_GRPC),
        (PARTNER_GRPC, "b.example:4150"),
    ):
        v = PartnerView(
            pair=PAIR, node_id=ME, addresses=(MY_GOSSIP, MY_GRPC), partner_address=configured
        )
        p = member(P1.name, grpc=advertised)
        assert feed(v, ev(EventKind.JOIN, p)) == [Seen(pv.PARTNER, dead=False, partner=p.name)]


def test_the_partner_at_its_configured_address_is_the_partner() -> None:
    """The partner advertises the address this broker is configured with: it is taken
    for the partner, its death is the verdict, as without the address."""
    v = PartnerView(
        pair=PAIR, node_id=ME, addresses=(MY_GOSSIP, MY_GRPC), partner_address=PARTNER_GRPC
    )
    assert feed(
        v, ev(EventKind.JOIN, P1), ev(EventKind.JOIN, P2), ev(EventKind.DEAD, P2, "lk1")
    ) == [
        Seen(pv.PARTNER, dead=False, partner=P1.name),
        Seen(pv.PARTNER, dead=False, partner=P2.name),
        Seen(pv.PARTNER, dead=True, witnessed=True, partner=P2.name),
    ]


# ----------------------------------------------------------------------------- the partner's incarnations
def test_the_partners_earlier_incarnation_dying_is_no_verdict() -> None:
    """The partner's case (p1a in mixed seed 3 on 759f9fd): the partner came back with a
    new node id, and its old one is declared dead after the new one joined."""
    v = view()
    seen = feed(
        v,
        ev(EventKind.JOIN, P1),
        ev(EventKind.JOIN, P2),
        ev(EventKind.DEAD, P1, "lk1", "lk2"),
    )
    assert seen == [
        Seen(pv.PARTNER, dead=False, partner=P1.name),
        Seen(pv.PARTNER, dead=False, partner=P2.name),
        Seen(pv.EARLIER_PARTNER, partner=P2.name),
    ]
    assert v.verdict() == (False, False)
    # The new incarnation's own death is a verdict, witnessed as gossip says.
    assert v.on_event(ev(EventKind.DEAD, P2, "lk1")) == Seen(
        pv.PARTNER, dead=True, witnessed=True, partner=P2.name
    )
    assert v.on_event(ev(EventKind.ALIVE, P2)) == Seen(pv.PARTNER, dead=False, partner=P2.name)


def test_a_death_before_the_new_incarnation_joined_is_the_partners_until_it_does() -> None:
    v = view()
    seen = feed(v, ev(EventKind.JOIN, P1), ev(EventKind.DEAD, P1, "lk1"), ev(EventKind.JOIN, P2))
    assert [s.dead for s in seen] == [False, True, False]
    assert seen[1].witnessed
    assert v.verdict() == (False, False)


def test_an_older_incarnation_learned_late_never_displaces_the_newer() -> None:
    """A fresh broker learns the members from a push-pull in any order: the old
    incarnation (still suspect in someone's view) after the new one."""
    v = view()
    seen = feed(
        v,
        ev(EventKind.JOIN, P2),
        ev(EventKind.JOIN, P1),
        ev(EventKind.SUSPECT, P1),
        ev(EventKind.DEAD, P1, "lk1"),
    )
    assert seen[0] == Seen(pv.PARTNER, dead=False, partner=P2.name)
    assert all(s == Seen(pv.EARLIER_PARTNER, partner=P2.name) for s in seen[1:])
    assert v.verdict() == (False, False)


def test_an_earlier_incarnation_coming_back_is_no_verdict_either() -> None:
    """The partner's current incarnation is dead; an ALIVE of an older one (a stale
    view pushed to us) does not clear the verdict."""
    v = view()
    feed(v, ev(EventKind.JOIN, P1), ev(EventKind.JOIN, P2), ev(EventKind.DEAD, P2, "lk1"))
    assert v.on_event(ev(EventKind.ALIVE, P1)) == Seen(pv.EARLIER_PARTNER, partner=P2.name)
    assert v.verdict() == (True, True)


def test_between_equal_start_times_the_one_learned_last_is_newer() -> None:
    v = view()
    a = member("bbbb0000000000a1", started=0)
    b = member("bbbb0000000000b2", started=0)
    feed(v, ev(EventKind.JOIN, a), ev(EventKind.JOIN, b))
    assert v.partner == b.name
    assert v.on_event(ev(EventKind.DEAD, a, "lk1")).about == pv.EARLIER_PARTNER


def test_a_node_id_started_again_counts_from_its_latest_start() -> None:
    """P1 was replaced by P2, which died; P1's node id comes back (its store restored):
    it is the partner again, its start is the one its new run carries."""
    v = view()
    feed(v, ev(EventKind.JOIN, P1), ev(EventKind.JOIN, P2), ev(EventKind.DEAD, P2, "lk1"))
    again = member(P1.name, started=3000)
    assert v.on_event(ev(EventKind.ALIVE, again)) == Seen(pv.PARTNER, dead=False, partner=P1.name)
    assert v.on_event(ev(EventKind.DEAD, P2, "lk1")) == Seen(pv.EARLIER_PARTNER, partner=P1.name)
    assert v.verdict() == (False, False)


def test_an_unwitnessed_death_is_a_verdict_in_this_view_only() -> None:
    v = view()
    feed(v, ev(EventKind.JOIN, P1))
    assert v.on_event(ev(EventKind.DEAD, P1)) == Seen(
        pv.PARTNER, dead=True, witnessed=False, partner=P1.name
    )


def test_suspect_update_and_leave_of_the_partner_change_no_verdict() -> None:
    v = view()
    feed(v, ev(EventKind.JOIN, P1))
    for kind in (EventKind.SUSPECT, EventKind.UPDATE, EventKind.LEFT):
        assert v.on_event(ev(kind, P1)) == Seen(pv.PARTNER, partner=P1.name), kind
    assert v.verdict() is None  # it left


def test_members_besides_the_pair_arm_the_witness_rule_when_alive() -> None:
    v = view()
    lookup = member("lk1", addr=LK, grpc="10.0.0.9:4160", role="lookup", pair="")
    other_pair = member(
        "cccc000000000001", addr=("10.0.0.6", 7946), grpc="10.0.0.6:4150", pair="p1"
    )
    assert v.on_event(ev(EventKind.JOIN, lookup)) == Seen(pv.OTHER, witnesses_exist=True)
    assert v.on_event(ev(EventKind.ALIVE, other_pair)).witnesses_exist
    assert v.on_event(ev(EventKind.DEAD, other_pair, "lk1")) == Seen(pv.OTHER)
    assert v.partner == "" and v.verdict() is None


def test_old_dead_incarnations_are_forgotten_beyond_the_cap() -> None:
    v = view()
    for k in range(pv.MAX_INCARNATIONS + 10):
        p = member(f"bbbb{k:012x}", started=1000 + k)
        feed(v, ev(EventKind.JOIN, p), ev(EventKind.DEAD, p, "lk1"))
    newest = member(f"bbbb{pv.MAX_INCARNATIONS + 9:012x}", started=1000 + pv.MAX_INCARNATIONS + 9)
    assert len(v._incarnations) <= pv.MAX_INCARNATIONS
    assert v.partner == newest.name
    # A forgotten incarnation heard of again is still older than the newest.
    ghost = member(f"bbbb{0:012x}", started=1000)
    assert v.on_event(ev(EventKind.JOIN, ghost)).about == pv.EARLIER_PARTNER
    v.check_invariants()


# ----------------------------------------------------------------------------- the edge
@dataclass
class FakePair:
    name: str = PAIR
    verdicts: list[tuple[bool, bool]] = field(default_factory=list)
    witnesses: int = 0

    def gossip_partner_dead(self, dead: bool, *, witnessed: bool = False) -> None:
        self.verdicts.append((dead, witnessed))

    def gossip_has_witnesses(self) -> None:
        self.witnesses += 1


@dataclass
class FakeHost:
    pair: Any
    options: BrokerOptions = field(
        default_factory=lambda: BrokerOptions(pair=PAIR, gossip_address="10.0.0.4:7946")
    )
    address: str = MY_GRPC
    node_id: str = ME


def test_membership_hands_the_pair_only_verdicts_on_the_current_partner(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Membership's event handler (the I/O edge) through the mixed seed 3 sequence on
    each side: nothing but the current partner's state reaches the pair, and the
    stale deaths are logged as such."""
    pair = FakePair()
    m = Membership(FakeHost(pair))  # type: ignore[arg-type]
    m.view = view()
    lookup = member("lk1", addr=LK, grpc="10.0.0.9:4160", role="lookup", pair="")
    with caplog.at_level(logging.INFO, logger="pairq.membership"):
        for e in (
            ev(EventKind.JOIN, lookup),
            ev(EventKind.JOIN, P1),
            ev(EventKind.JOIN, OLD_ME),
            ev(EventKind.DEAD, OLD_ME, "lk1"),
            ev(EventKind.JOIN, P2),
            ev(EventKind.DEAD, P1, "lk1"),
        ):
            m._on_event(e)
    assert pair.witnesses == 1
    assert pair.verdicts == [(False, False), (False, False)]
    text = caplog.text
    assert f"{OLD_ME.name} ({MY_GRPC}), an earlier run of this broker, is dead" in text
    assert f"{P1.name} ({PARTNER_GRPC}), an earlier incarnation of the partner, is dead" in text
    assert "gossip: partner" not in text
    m._on_event(ev(EventKind.DEAD, P2, "lk1"))
    assert pair.verdicts[-1] == (True, True)
    assert f"gossip: partner {P2.name} ({PARTNER_GRPC}) is dead (witnesses: lk1)" in caplog.text
