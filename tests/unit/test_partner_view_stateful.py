"""Hypothesis stateful test of ``pair/partner_view.py`` over a model of gossip's members.

The world: one broker (``me``) and its partner, each a run of processes. A wipe of
either (or a store moved aside) ends its process and starts a new one under a new
node id at the same addresses; ``me`` may also come back wiped at new addresses (a
host replaced: its partner's address, which it is configured with, stays); a kill
ends the partner's process for good (until a later start). Gossip is truthful but
late and unordered across members: every process's events reach this broker's view
in their own order (JOIN, then DEAD once it stopped; SUSPECT and UPDATE at any time
in between), interleaved with the other processes' events in any order. A wipe of
``me`` starts a new view (this broker's new run), which learns every process gossip
still holds from scratch: its own earlier runs included.

The edge is played as ``Membership._on_event`` plays it: every ``Seen.dead`` that is
not None is handed to the pair (``told``). The properties:

- **Safety** (after every step): the pair is never told "dead" while the partner
  process the view names is running, nor is the view's partner ever a run of
  ``me``, moved or not: an earlier incarnation's death, or my own, is never a
  partner-dead verdict.
- **The partner is the newest.** The view's partner is the latest-started partner
  process whose events reached it.
- **Liveness** (once every event is delivered): the pair's verdict is the newest
  partner process's true state, witnessed exactly when gossip said so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pairq.broker.pair.partner_view import PartnerView
from pairq.gossip import EventKind, MemberEvent, MemberState, MemberView, NodeMeta

PAIR = "p"
ADDR = {
    "me": (("10.0.0.4", 7946), "10.0.0.4:4150"),
    "partner": (("10.0.0.5", 7946), "10.0.0.5:4150"),
}
LOOKUP = MemberView(
    "lk1", ("10.0.0.9", 7946), NodeMeta(role="lookup", node_id="lk1"), 0, MemberState.ALIVE
)


@dataclass
class Proc:
    node_id: str
    who: str  # "me" or "partner"
    started: int  # start_epoch_ms
    running: bool = True
    witnessed: bool = True  # whether gossip's verdict on its death names witnesses
    addr: tuple[tuple[str, int], str] | None = None  # (gossip, grpc); None: ADDR[who]

    def member(self) -> MemberView:
        gossip, grpc = self.addr or ADDR[self.who]
        meta = NodeMeta(
            role="broker",
            node_id=self.node_id,
            pair=PAIR,
            grpc_address=grpc,
            start_epoch_ms=self.started,
        )
        return MemberView(self.node_id, gossip, meta, 0, MemberState.ALIVE)


@dataclass
class Stream:
    """One process's events not yet delivered to the view, in order."""

    proc: Proc
    pending: list[EventKind] = field(default_factory=list)
    joined: bool = False  # its JOIN reached the view
    dead_sent: bool = False  # its DEAD is queued or delivered


class PartnerViewModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = 1_000_000
        self.k = 0
        self.procs: list[Proc] = []
        self.me = self.start("me")
        self.partner: Proc | None = self.start("partner")
        self.new_view()

    # ------------------------------------------------------------ the world
    def start(self, who: str, addr: tuple[tuple[str, int], str] | None = None) -> Proc:
        self.k += 1
        self.clock += 1000  # a restart takes far more than 1 ms
        p = Proc(f"{who}-{self.k:04d}", who, self.clock, addr=addr)
        self.procs.append(p)
        if hasattr(self, "streams"):
            self.streams[p.node_id] = Stream(p, [EventKind.JOIN])
        return p

    def stop(self, p: Proc, witnessed: bool) -> None:
        p.running, p.witnessed = False, witnessed
        s = self.streams.get(p.node_id)
        if s is not None and not s.dead_sent:
            s.pending.append(EventKind.DEAD)
            s.dead_sent = True

    def new_view(self) -> None:
        """This broker's (new) run: a fresh view that learns everything again."""
        gossip, grpc = self.me.addr or ADDR["me"]
        self.view = PartnerView(
            pair=PAIR,
            node_id=self.me.node_id,
            addresses=(gossip, grpc),
            partner_address=ADDR["partner"][1],
        )
        self.told: tuple[bool, bool] | None = None
        self.streams: dict[str, Stream] = {}
        for p in self.procs:
            if p is self.me:
                continue  # gossip tells no member about itself
            self.streams[p.node_id] = Stream(p, [EventKind.JOIN])
            if not p.running:
                self.streams[p.node_id].pending.append(EventKind.DEAD)
                self.streams[p.node_id].dead_sent = True
        self.streams["lk1"] = Stream(Proc("lk1", "lookup", 0), [EventKind.JOIN])

    def deliver(self, s: Stream) -> None:
        kind = s.pending.pop(0)
        if s.proc.who == "lookup":
            e = MemberEvent(kind, LOOKUP, 0.0)
        else:
            witnesses = (
                frozenset({"lk1"}) if kind == EventKind.DEAD and s.proc.witnessed else frozenset()
            )
            e = MemberEvent(kind, s.proc.member(), 0.0, witnesses)
        if kind == EventKind.JOIN:
            s.joined = True
        seen = self.view.on_event(e)
        if seen.dead is not None:
            self.told = (seen.dead, seen.witnessed)
        self.view.check_invariants()
        self.check_safety()

    # ------------------------------------------------------------ rules
    @rule(witnessed=st.booleans())
    def wipe_partner(self, witnessed: bool) -> None:
        if self.partner is not None:
            self.stop(self.partner, witnessed)
        self.partner = self.start("partner")

    @precondition(lambda self: self.partner is not None)
    @rule(witnessed=st.booleans())
    def kill_partner(self, witnessed: bool) -> None:
        assert self.partner is not None
        self.stop(self.partner, witnessed)
        self.partner = None

    @precondition(lambda self: self.partner is None)
    @rule()
    def start_partner(self) -> None:
        self.partner = self.start("partner")

    @rule(witnessed=st.booleans(), move=st.booleans())
    def wipe_me(self, witnessed: bool, move: bool) -> None:
        self.me.running, self.me.witnessed = False, witnessed
        addr = self.me.addr
        if move:  # a new host: new gossip and gRPC addresses
            host = f"10.0.1.{self.k % 250}"
            addr = ((host, 7946), f"{host}:4150")
        self.me = self.start("me", addr)
        self.new_view()

    @rule(data=st.data())
    def deliver_one(self, data: st.DataObject) -> None:
        ready = [s for s in self.streams.values() if s.pending]
        if not ready:
            return
        self.deliver(data.draw(st.sampled_from(ready)))

    @rule(data=st.data(), kind=st.sampled_from([EventKind.SUSPECT, EventKind.UPDATE]))
    def noise(self, data: st.DataObject, kind: EventKind) -> None:
        """A suspicion or a metadata update of a member the view knows, any time."""
        known = [s for s in self.streams.values() if s.joined and s.proc.who != "lookup"]
        if known:
            s = data.draw(st.sampled_from(known))
            s.pending.insert(0, kind)
            self.deliver(s)

    @rule()
    def drain(self) -> None:
        for s in self.streams.values():
            while s.pending:
                self.deliver(s)
        self.check_settled()

    # ------------------------------------------------------------ properties
    def known_partners(self) -> list[Proc]:
        return [s.proc for s in self.streams.values() if s.joined and s.proc.who == "partner"]

    def check_safety(self) -> None:
        by_id = {p.node_id: p for p in self.procs}
        named = by_id.get(self.view.partner)
        assert named is None or named.who == "partner", f"the view's partner is me: {named}"
        known = self.known_partners()
        if known:
            newest = max(known, key=lambda p: p.started)
            assert self.view.partner == newest.node_id, (self.view.partner, newest)
        if self.told is not None and self.told[0]:
            assert named is not None and not named.running, (
                f"told the pair its partner is dead while {named} runs"
            )

    def check_settled(self) -> None:
        assert all(not s.pending for s in self.streams.values())
        newest = max((p for p in self.procs if p.who == "partner"), key=lambda p: p.started)
        assert self.view.partner == newest.node_id
        want = (not newest.running, not newest.running and newest.witnessed)
        assert self.told == want, f"the pair was told {self.told}, the partner {newest} is {want}"

    @invariant()
    def safe(self) -> None:
        self.check_safety()

    def teardown(self) -> None:
        self.drain()


PartnerViewModel.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
test_partner_view_model = PartnerViewModel.TestCase
