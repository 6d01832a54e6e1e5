"""Hypothesis stateful test: both brokers' pair cores on one fake clock, over a model network.

The test is the I/O layer of both brokers (what the rest of the
``pairq.broker.pair`` package does around the core). Each broker has an outbound *session* to its partner: it opens it with
a hello, the partner answers welcome (telling it what the partner has taken
over from it: it drops that), then it sends a batch every heartbeat; the
partner hears it, grants (``on_grant``) and acks, and the ack renews the
sender's lease (``on_ack``). A broker that took over fences the partner's
session (no more acks; a batch on a fenced or unknown session is answered
``closed``); a broker whose session is closed or reset (RESET_LINK) opens a
new one. A restart is a new core with its sessions gone (its disk, and so
what it holds and what it took, survives). Messages keep their order per
direction, arrive after ``latency``, are dropped by a partition, and queue
for a paused broker until it resumes (read before its first tick).

Ownership is the ground truth the cores must respect: the log is made of
segments, each with one owner. A takeover gives the taker every segment the
partner owned as of now (the partner starts a new one); the partner keeps
believing it holds them until a welcome tells it. The fence: a broker that
holds a segment it does not own must not be able to deliver (``may_deliver``)
at that instant, paused or not; it is checked after every message and every
tick, not only between steps. After the faults (``settle``, and the teardown)
the pair must be healthy: both PAIRED under a live lease, each segment held by
its owner alone.

Four machines: pauses and restarts only (every stream arrives); plus one-way
partitions; plus partitions of both directions (lease rule alone: a two-way
partition is a split brain in SOLO, so the fence is checked for delivery under
a live lease there); and the same with a witness (gossip with a lookup the
pair-link partition does not cut), where the fence holds for SOLO too. The scripted scenarios at the
end replay what they found.
"""

from __future__ import annotations

import heapq
import sys
from collections import deque
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pairq.broker.pair.core import (
    EPOCH,
    LEFT_SOLO,
    PAIRED,
    RESET_LINK,
    RESUMED,
    SOLO,
    TAKE_OVER,
    Action,
    PairCore,
)

LEASE = 0.8
ACK_TIMEOUT = 1.6
TICK = 0.02
HEARTBEAT = 0.1
WITNESS_DEAD_AFTER = 0.75  # gossip's pair_dead_after
T0 = 1000.0
SETTLE = 5.0
NAMES = ("A", "B")
BEAT_PHASE = {"A": 0.0, "B": 0.04}


def other(name: str) -> str:
    return "B" if name == "A" else "A"


@dataclass
class Msg:
    kind: str  # hello | welcome | batch | ack | closed
    src: str
    session: int  # the session of the batch / hello it concerns
    arrive: float
    seq: int
    sent_at: float = 0.0
    taken: frozenset[int] = frozenset()


@dataclass
class Segment:
    origin: str
    owner: str
    since: float


@dataclass
class Broker:
    name: str
    core: PairCore
    session: int = -1  # our outbound session
    handshaken: bool = False
    unacked: list[float] = field(default_factory=list)
    accepted: int | None = None  # the partner's session we accept batches on
    fenced: bool = False  # ... unless we fenced it by taking over
    holds: set[int] = field(default_factory=set)  # segments it believes it may deliver
    took: set[int] = field(default_factory=set)  # segments it took from the partner
    paused_until: float | None = None
    paused_at: float = 0.0
    resumed_at: float = 0.0
    gossip_dead: bool = False  # what the witness told this broker about its partner
    inbox: list[Msg] = field(default_factory=list)  # queued in its sockets while paused
    resets: int = 0
    next_beat: float = 0.0

    @property
    def running(self) -> bool:
        return self.paused_until is None


def new_core(now: float) -> PairCore:
    return PairCore(lease=LEASE, ack_timeout=ACK_TIMEOUT, now=now, catalog_ready=True)


class PairModelBase(RuleBasedStateMachine):
    """Pauses, restarts and latency changes: every broker's stream reaches its partner."""

    def __init__(self) -> None:
        super().__init__()
        self.k = 0
        self.latency = 0.004
        self.seq = 0
        self.sessions = 0
        self.wire: list[tuple[float, int, str, Msg]] = []  # heap: (arrive, seq, dst, msg)
        self.last_arrive = dict.fromkeys(NAMES, 0.0)  # per destination: TCP keeps the order
        self.cut: dict[tuple[str, str], float] = {}  # (src, dst) -> dropped until
        self.segments: list[Segment] = []
        self.owned: dict[str, set[int]] = {n: set() for n in NAMES}  # the ground truth
        self.trace: deque[str] = deque(maxlen=40)
        self.brokers = {n: Broker(n, new_core(self.t)) for n in NAMES}
        for b in self.brokers.values():
            b.core.witnesses_exist = self.witnessed
        for n in NAMES:
            self.new_segment(n)
        for b in self.brokers.values():
            b.next_beat = self.t + BEAT_PHASE[b.name]
            self.open_session(b, self.t)
        self.run(1.0)  # start as a healthy pair
        self.assert_healthy()

    @property
    def t(self) -> float:
        return T0 + self.k * TICK

    # ------------------------------------------------------------- network

    def note(self, now: float, text: str) -> None:
        self.trace.append(f"{now - T0:8.3f} {text}")

    def send(self, src: str, kind: str, session: int, now: float, **kw: object) -> None:
        dst = other(src)
        if self.cut.get((src, dst), -1.0) > now:
            return
        arrive = max(now + self.latency, self.last_arrive[dst])
        self.last_arrive[dst] = arrive
        self.seq += 1
        msg = Msg(kind, src, session, arrive, self.seq, **kw)  # type: ignore[arg-type]
        heapq.heappush(self.wire, (arrive, self.seq, dst, msg))

    def deliver_until(self, until: float) -> None:
        while self.wire and self.wire[0][0] <= until:
            _, _, dst, msg = heapq.heappop(self.wire)
            if self.cut.get((msg.src, dst), -1.0) > msg.arrive:
                continue  # lost in the partition
            b = self.brokers[dst]
            if not b.running:
                b.inbox.append(msg)
            else:
                self.receive(b, msg, msg.arrive)

    # ------------------------------------------------------------- one broker's I/O layer

    def open_session(self, b: Broker, now: float) -> None:
        self.sessions += 1
        b.session = self.sessions
        b.handshaken = False
        b.unacked = []
        self.send(b.name, "hello", b.session, now)

    def new_segment(self, origin: str) -> None:
        self.segments.append(Segment(origin, origin, self.t))
        i = len(self.segments) - 1
        self.brokers[origin].holds.add(i)
        self.owned[origin].add(i)

    def act(self, b: Broker, actions: list[Action], now: float) -> None:
        for a in actions:
            if a.kind == RESUMED:
                self.note(now, f"{b.name} RESUMED gap {a.gap:.3f}")
            elif a.kind == LEFT_SOLO:
                self.note(now, f"{b.name} LEFT_SOLO")
            elif a.kind == RESET_LINK:
                b.resets += 1
                self.note(now, f"{b.name} RESET_LINK ({a.reason})")
                self.open_session(b, now)
            elif a.kind == TAKE_OVER:
                self.take_over(b, now, a.reason)

    def take_over(self, b: Broker, now: float, why: str) -> None:
        done = b.core.on_takeover_done(now)
        assert [a.kind for a in done] == [EPOCH]
        p = other(b.name)
        taken = {i for i, s in enumerate(self.segments) if s.owner == p}
        for i in taken:
            self.segments[i].owner = b.name
        self.owned[p] -= taken
        self.owned[b.name] |= taken
        b.holds |= taken
        b.took |= taken
        self.new_segment(p)  # what is published to the partner from now on is its own
        self.note(now, f"{b.name} TAKE_OVER of {sorted(taken)} ({why}); mode {b.core.mode}")
        if b.accepted is not None and not b.fenced:
            b.fenced = True
            self.send(b.name, "closed", b.accepted, now)

    def receive(self, b: Broker, m: Msg, now: float) -> None:
        core = b.core
        if m.kind == "hello":
            core.on_heard(now)
            b.accepted, b.fenced = m.session, False
            self.send(b.name, "welcome", m.session, now, taken=frozenset(b.took))
        elif m.kind == "batch":
            core.on_heard(now)
            if b.accepted == m.session and not b.fenced:
                core.on_grant(now)
                self.send(b.name, "ack", m.session, now, sent_at=m.sent_at)
            else:
                self.send(b.name, "closed", m.session, now)
        elif m.kind == "ack":
            if m.session == b.session and b.handshaken:
                b.unacked = [s for s in b.unacked if s > m.sent_at]
                self.act(b, core.on_ack(m.sent_at, LEASE, now), now)
            else:
                core.on_heard(now)  # an ack on an old session renews nothing
        elif m.kind == "welcome":
            core.on_heard(now)
            if m.session == b.session and not b.handshaken:
                lost = {i for i in m.taken if self.segments[i].owner != b.name} & b.holds
                b.holds -= lost
                b.handshaken = True
                if lost:
                    self.note(now, f"{b.name} learns {sorted(lost)} were taken; drops them")
        elif m.kind == "closed":
            core.on_heard(now)
            if m.session == b.session:
                self.open_session(b, now)
        self.check_fence(now, f"{b.name} received {m.kind}")

    def tick_one(self, b: Broker, now: float) -> None:
        if not b.running:
            assert b.paused_until is not None
            if now < b.paused_until:
                return
            b.paused_until = None
            b.resumed_at = now
            self.note(now, f"{b.name} resumes; {len(b.inbox)} queued messages")
            queued, b.inbox = b.inbox, []
            for m in queued:  # from its sockets, before its first tick
                self.receive(b, m, now)
        if now >= b.next_beat - 1e-9:  # an overdue heartbeat goes out at once after a stall
            b.next_beat = now + HEARTBEAT
            if not b.handshaken:
                self.send(b.name, "hello", b.session, now)
            else:
                self.send(b.name, "batch", b.session, now, sent_at=now)
                b.unacked.append(now)
        waiting = bool(b.unacked) or not b.handshaken
        self.act(b, b.core.tick(now, unacked=waiting), now)
        self.check_fence(now, f"{b.name} ticked")

    # A witness (a lookup, gossiping with both brokers) that a partition of the pair's
    # own link does not reach: it sees a broker dead once it has been stopped for
    # WITNESS_DEAD_AFTER, alive again ``alive_lag`` after it resumes (gossip can be
    # slower than the pair link: the partner acks while the verdict still stands),
    # and tells the partner.
    witnessed = False
    alive_lag = 0.0

    def witness(self, now: float) -> None:
        for n in NAMES:
            b, o = self.brokers[n], self.brokers[other(n)]
            if not o.running:
                dead = now - o.paused_at >= WITNESS_DEAD_AFTER
            else:
                dead = b.gossip_dead and now - o.resumed_at < self.alive_lag
            if b.running and dead != b.gossip_dead:
                b.gossip_dead = dead
                b.core.on_gossip(dead, witnessed=dead, now=now)
                self.note(now, f"witness tells {n}: {other(n)} {'dead' if dead else 'alive'}")

    def run(self, seconds: float) -> None:
        for _ in range(max(1, round(seconds / TICK))):
            self.k += 1
            now = self.t
            self.deliver_until(now)
            if self.witnessed:
                self.witness(now)
            for n in NAMES:
                self.tick_one(self.brokers[n], now)

    # ------------------------------------------------------------- the fence

    # Without witnesses (no gossip), a partition of both directions makes each broker
    # see the other silent: both take over and deliver alone (SOLO), a split brain
    # that consumer de-duplication absorbs and that witnessed takeover removes. A
    # machine with such partitions checks the fence for delivery under a live lease.
    solo_split_allowed = False

    def check_fence(self, now: float, where: str) -> None:
        for n, b in self.brokers.items():
            stale = b.holds - self.owned[n]  # held, but owned by the partner
            if self.solo_split_allowed and b.core.mode == SOLO:
                continue
            # Paused ones too: a delivery checked just before a SIGSTOP goes out right
            # after the SIGCONT, before any event.
            if stale and b.core.may_deliver(now):
                i = min(stale)
                s = self.segments[i]
                raise AssertionError(
                    f"at {now - T0:.3f} ({where}): {n} may deliver segment {i} "
                    f"(origin {s.origin}) in mode {b.core.mode}, lease until "
                    f"{b.core.lease_until - T0:.3f}, while {s.owner} owns it\n"
                    + "\n".join(self.trace)
                )

    def assert_healthy(self) -> None:
        now = self.t
        for b in self.brokers.values():
            assert b.core.mode == PAIRED, (b.name, b.core.mode, "\n".join(self.trace))
            assert b.core.may_deliver(now), (b.name, "no lease", "\n".join(self.trace))
        for i, s in enumerate(self.segments):
            holders = {n for n in NAMES if i in self.brokers[n].holds}
            assert holders == {s.owner}, (i, s, holders, "\n".join(self.trace))

    # ------------------------------------------------------------- rules

    @rule(
        dt=st.sampled_from([0.02, 0.06, 0.1, 0.3, 0.5, 0.9, 1.7, 3.0]),
        latency=st.sampled_from([None, None, 0.001, 0.004, 0.02, 0.05]),
    )
    def advance(self, dt: float, latency: float | None) -> None:
        """Time passes (ticking every running core, delivering what is due); the
        network's latency may change first."""
        if latency is not None:
            self.latency = latency
        self.run(dt)

    @rule(
        name=st.sampled_from(NAMES),
        duration=st.one_of(
            st.sampled_from([0.05, 0.3, 0.9, 2.0, 5.0, 10.0]), st.floats(0.05, 10.0)
        ),
        then=st.sampled_from([0.0, 0.5, 1.2, 3.0]),
    )
    def pause(self, name: str, duration: float, then: float) -> None:
        """``name`` gets no calls for ``duration``; then ``then`` seconds pass (for all)."""
        b = self.brokers[name]
        until = self.t + duration
        if b.paused_until is None:
            b.paused_at = self.t
        b.paused_until = until if b.paused_until is None else max(b.paused_until, until)
        self.note(self.t, f"{name} paused until {b.paused_until - T0:.3f}")
        if then:
            self.run(then)

    @rule(name=st.sampled_from(NAMES), flip=st.integers(0, 2))
    def restart(self, name: str, flip: int) -> None:
        if flip:  # rarer than the other faults: it wipes the interesting state
            return
        b = self.brokers[name]
        b.core = new_core(self.t)
        b.core.witnesses_exist = self.witnessed
        b.gossip_dead = False
        b.next_beat = self.t
        b.paused_until = None
        b.inbox = []
        b.accepted, b.fenced = None, False  # the partner's session died with us
        self.note(self.t, f"{name} restarted")
        self.open_session(b, self.t)
        self.check_fence(self.t, f"{name} restarted")

    @rule(flip=st.integers(0, 3))
    def settle_sometimes(self, flip: int) -> None:
        if not flip:  # rare: it ends every fault in progress
            self.settle()

    def settle(self) -> None:
        """The faults end: heal, resume everyone, 5 s of traffic, then a healthy pair."""
        self.cut.clear()
        for b in self.brokers.values():
            if b.paused_until is not None:
                b.paused_until = self.t
        self.note(self.t, "settle")
        self.run(SETTLE)
        self.assert_healthy()

    # ----------------------------------------------------------- invariants

    @invariant()
    def cores_consistent(self) -> None:
        for b in self.brokers.values():
            b.core.check_invariants()
            assert b.core.mode != SOLO or b.core.takeovers > 0

    @invariant()
    def fenced_now(self) -> None:
        self.check_fence(self.t, "end of step")

    @invariant()
    def model_consistent(self) -> None:
        for i, s in enumerate(self.segments):
            assert i in self.owned[s.owner] and i in self.brokers[s.owner].holds, (i, s)
            assert i not in self.owned[other(s.owner)]

    def teardown(self) -> None:
        if sys.exc_info()[1] is None:  # not while a failure propagates (teardown runs in a finally)
            self.settle()


class PairModel(PairModelBase):
    """Everything, and partitions of either or both directions (see solo_split_allowed)."""

    solo_split_allowed = True

    @rule(
        way=st.sampled_from(["A>B", "B>A", "both"]),
        duration=st.sampled_from([0.1, 0.5, 0.9, 2.0, 5.0]),
    )
    def partition(self, way: str, duration: float) -> None:
        dirs = [("A", "B"), ("B", "A")] if way == "both" else [(way[0], way[2])]
        for d in dirs:
            self.cut[d] = max(self.cut.get(d, -1.0), self.t + duration)
        self.note(self.t, f"partition {way} for {duration}")

    @rule()
    def heal(self) -> None:
        self.cut.clear()
        self.note(self.t, "healed")


class PairModelWitnessed(PairModel):
    """Everything, partitions of either or both directions, and a witness (gossip with a
    lookup): the fence holds for SOLO too; a two-way partition makes neither take over."""

    witnessed = True
    solo_split_allowed = False

    @rule(lag=st.sampled_from([0.0, 0.3, 1.0, 3.0]))
    def gossip_lag(self, lag: float) -> None:
        self.alive_lag = lag
        self.note(self.t, f"gossip's alive verdicts now lag {lag} s behind a resume")


class PairModelOneWay(PairModelBase):
    """Partitions of one direction at a time (a cut starts by healing the other way)."""

    @rule(
        way=st.sampled_from(["A>B", "B>A"]),
        duration=st.sampled_from([0.1, 0.5, 0.9, 2.0, 5.0]),
    )
    def partition_one_way(self, way: str, duration: float) -> None:
        self.cut = {(way[0], way[2]): self.t + duration}
        self.note(self.t, f"partition {way} only, for {duration}")

    @rule()
    def heal(self) -> None:
        self.cut.clear()
        self.note(self.t, "healed")


_settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestPairCorePartitionsPausesRestarts = PairModel.TestCase
TestPairCorePartitionsPausesRestarts.settings = _settings
TestPairCoreWitnessed = PairModelWitnessed.TestCase
TestPairCoreWitnessed.settings = _settings
TestPairCoreOneWayPartitions = PairModelOneWay.TestCase
TestPairCoreOneWayPartitions.settings = _settings
TestPairCorePausesRestarts = PairModelBase.TestCase
TestPairCorePausesRestarts.settings = _settings


# ------------------------------------------------------------------ scripted scenarios
# The same model driven by hand: readable regressions for what the machines found.


def test_taker_stopped_while_solo_is_fenced_when_the_partner_takes_back() -> None:
    # B stops; A takes B's log over (SOLO); A stops in turn; B resumes, hears nothing
    # for a lease and takes everything back. When A resumes, the first calls are B's
    # queued messages (not a tick): A must not deliver unfenced any more.
    m = PairModelBase()
    m.pause("B", 2.0, 1.2)
    assert m.brokers["A"].core.mode == SOLO
    m.pause("A", 5.0, 3.0)
    assert m.brokers["B"].core.mode == SOLO
    m.run(3.0)  # A resumes at 7.2 (checked at every message and tick)
    m.settle()


def test_one_way_partition_after_a_takeover() -> None:
    # B stops for 2 s; A takes B's log over and is SOLO. Just before B resumes, A's
    # messages stop reaching B (B's still reach A). B, running, hears nothing from A
    # for a lease and takes A's log over; A hears B all along (hello every 0.1 s) but,
    # being SOLO, keeps delivering without a lease: both deliver A's messages.
    m = PairModel()
    m.pause("B", 2.0, 1.9)
    assert m.brokers["A"].core.mode == SOLO
    m.partition("A>B", 5.0)
    m.run(3.0)
