"""Hypothesis stateful test: the channel core against an independent model.

The model tracks where every pushed entry must be (queued in a known order,
deferred, in flight with one client, finished, dead, emptied) from the NSQ
rules alone, and predicts every answer: which ids FIN / REQ / TOUCH know, which
entries time out, which deferred ones come due and in what order, what each
client may receive. Invariants compare the core's stats and entries to the
model after every step, so a lost, duplicated, reordered or double-delivered
entry fails at once; the teardown checks that ``empty()`` returns exactly what
the model still holds (nothing lost).
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pairq.broker.channel_core import DEAD, REQUEUED, ChannelCore, Entry, Outcome, RdyError

MAX_RDY = 8
TIMEOUTS = (1.0, 2.5, 10.0)
CIDS = (1, 2, 3, 4)
BACKLOG = 50


def mid(key: int) -> bytes:
    return key.to_bytes(16, "big")


def key_of(i: bytes) -> int:
    return int.from_bytes(i, "big")


class EagerCompactingCore(ChannelCore):
    """Compacts its timeout records at every chance, so the steps exercise it."""

    compact_slack = 0


class ChannelModel(RuleBasedStateMachine):
    max_attempts = 0
    core_class: type[ChannelCore] = ChannelCore

    def __init__(self) -> None:
        super().__init__()
        self.t = 1000.0
        self.seen = self.t  # the latest time the core was given
        self.core = self.core_class(
            max_attempts=self.max_attempts, max_rdy=MAX_RDY, max_backlog=BACKLOG
        )
        self.next_key = 0
        self.entries: dict[int, Entry] = {}
        self.loc: dict[int, str] = {}  # queued|deferred|inflight|finished|dead|emptied
        self.queue: list[int] = []  # the ready queue, front first
        self.holder: dict[int, int] = {}
        self.deadline: dict[int, float] = {}
        self.due: dict[int, float] = {}
        self.defer_seq: dict[int, int] = {}  # deferral order breaks ties of equal due
        self.delivery_seq: dict[int, int] = {}
        self.seq = 0
        self.attempts: dict[int, int] = {}
        self.clients: dict[int, float] = {}  # cid -> msg_timeout
        self.rdy: dict[int, int] = {}
        self.paused = False
        self.counts = dict.fromkeys(
            ("delivered", "finished", "requeued", "timed_out", "dead_lettered"), 0
        )

    # ------------------------------------------------------------- helpers

    def where(self, state: str) -> set[int]:
        return {k for k, v in self.loc.items() if v == state}

    def held_by(self, cid: int) -> set[int]:
        return {k for k, c in self.holder.items() if c == cid}

    def now(self) -> float:
        """The time to hand the core (and remember it saw it)."""
        self.seen = self.t
        return self.t

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def defer(self, k: int, due: float) -> None:
        self.loc[k] = "deferred"
        self.due[k] = due
        self.defer_seq[k] = self.next_seq()

    def enqueue(self, k: int, *, front: bool = False) -> None:
        self.loc[k] = "queued"
        if front:
            self.queue.insert(0, k)
        else:
            self.queue.append(k)

    def promote(self, now: float) -> None:
        ready = [k for k in self.where("deferred") if self.due[k] <= now]
        for k in sorted(ready, key=lambda k: (self.due[k], self.defer_seq[k])):
            self.enqueue(k)

    def failed(self, k: int, kind: object, *, delay: float = 0.0, now: float) -> None:
        """A failed delivery (timeout, REQ, client gone): check the kind, move it."""
        del self.holder[k]
        if self.max_attempts and self.attempts[k] >= self.max_attempts:
            assert kind is DEAD
            self.loc[k] = "dead"
            self.counts["dead_lettered"] += 1
            return
        assert kind is REQUEUED
        e = self.entries[k]
        if delay > 0:
            assert e.due == now + delay
            self.defer(k, now + delay)
        else:
            assert e.due == 0.0
            self.enqueue(k)

    def check_outcomes(self, outcomes: list[Outcome], expected: set[int]) -> None:
        got = [o.entry.key for o in outcomes]
        assert len(got) == len(set(got)), "an entry came back twice"
        assert set(got) == expected
        for o in outcomes:
            assert o.entry.client == -1

    def pick(self, data: st.DataObject) -> tuple[int, list[bytes]]:
        """A client and a list of ids: usually in-flight ids and, usually, the holder
        of the first; mixed with noise (queued / finished / dead / never-seen ids)."""
        flying = sorted(self.holder)
        keys: list[int] = []
        if flying and data.draw(st.sampled_from([True, True, True, False]), label="aim"):
            keys = data.draw(st.lists(st.sampled_from(flying), min_size=1, max_size=4))
        noise = st.integers(10_000, 10_005)
        if self.entries:
            noise = st.one_of(noise, st.sampled_from(sorted(self.entries)))
        keys += data.draw(st.lists(noise, max_size=2), label="noise")
        keys = data.draw(st.permutations(keys), label="ids")
        cids = sorted(self.clients)
        if keys and keys[0] in self.holder and data.draw(st.sampled_from([True, True, False])):
            cid = self.holder[keys[0]]
        else:
            cid = data.draw(st.sampled_from(cids), label="cid")
        return cid, [mid(k) for k in keys]

    def expect_split(self, cid: int, ids: list[bytes]) -> tuple[list[int], list[bytes]]:
        """Ids the client holds (first occurrence only) and the rest, in order."""
        held = self.held_by(cid)
        hit: list[int] = []
        miss: list[bytes] = []
        for i in ids:
            k = key_of(i)
            if k in held and k not in hit:
                hit.append(k)
            else:
                miss.append(i)
        return hit, miss

    # --------------------------------------------------------------- rules

    @initialize(
        timeouts=st.lists(st.sampled_from(TIMEOUTS), min_size=2, max_size=2),
        rdys=st.lists(st.integers(1, MAX_RDY), min_size=2, max_size=2),
        backlog=st.integers(1, 12),
    )
    def two_busy_clients(self, timeouts: list[float], rdys: list[int], backlog: int) -> None:
        # Start with two subscribers holding messages: the interesting races need both.
        for cid, timeout, rdy in zip(CIDS, timeouts, rdys, strict=False):
            self.add_client(cid, timeout)
            self.core.set_ready(cid, rdy)
            self.rdy[cid] = rdy
        self.push([0.0] * backlog)
        self.take()

    @rule(cid=st.sampled_from(CIDS), timeout=st.sampled_from(TIMEOUTS))
    def add_client(self, cid: int, timeout: float) -> None:
        if cid in self.clients:
            with pytest.raises(ValueError):
                self.core.add_client(cid, timeout)
            return
        self.core.add_client(cid, timeout)
        self.clients[cid] = timeout
        self.rdy[cid] = 0

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def remove_client(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(self.clients)), label="cid")
        held = sorted(self.held_by(cid), key=self.delivery_seq.__getitem__)
        outcomes = self.core.remove_client(cid, self.now())
        # In delivery order; the requeued ones go to the front, in that order.
        assert [o.entry.key for o in outcomes] == held
        back = []
        for e, kind in outcomes:
            self.failed(e.key, kind, now=self.t)
            if kind is REQUEUED:
                self.queue.remove(e.key)
                back.append(e.key)
        self.queue[:0] = back
        self.counts["requeued"] += len(back)
        del self.clients[cid], self.rdy[cid]

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), count=st.integers(-1, MAX_RDY + 1))
    def set_ready(self, data: st.DataObject, count: int) -> None:
        cid = data.draw(st.sampled_from(sorted(self.clients)), label="cid")
        if 0 <= count <= MAX_RDY:
            self.core.set_ready(cid, count)
            self.rdy[cid] = count
        else:
            with pytest.raises(RdyError):
                self.core.set_ready(cid, count)

    @rule(delays=st.lists(st.sampled_from([-1.0, 0.0, 0.0, 0.5, 3.0]), min_size=1, max_size=5))
    def push(self, delays: list[float]) -> None:
        new = []
        for d in delays:
            k = self.next_key
            self.next_key += 1
            e = Entry(k, mid(k), due=self.t + d if d else 0.0)
            new.append(e)
            self.entries[k] = e
            self.attempts[k] = 0
            if e.due > self.t:
                self.defer(k, e.due)
            else:
                self.enqueue(k)
        self.core.push(new, self.now())

    @rule()
    def take(self) -> None:
        self.promote(self.t)
        credit = {cid: max(0, self.rdy[cid] - len(self.held_by(cid))) for cid in self.clients}
        out = self.core.take(self.now())
        if self.paused:
            assert out == []
            return
        sent: list[int] = []
        for cid, es in out:
            assert cid in self.clients
            assert 0 < len(es) <= credit[cid], "delivery beyond RDY minus in flight"
            for e in es:
                k = e.key
                sent.append(k)
                assert e.attempts == self.attempts[k] + 1
                assert e.client == cid
                assert e.deadline == self.t + self.clients[cid]
                self.attempts[k] = e.attempts
                self.loc[k] = "inflight"
                self.holder[k] = cid
                self.deadline[k] = e.deadline
                self.delivery_seq[k] = self.next_seq()
        # From the front of the queue, in order, each entry once, and
        # work-conserving: it stops only when the queue or the credit runs out.
        n = min(len(self.queue), sum(credit.values()))
        assert sent == self.queue[:n]
        del self.queue[:n]
        self.counts["delivered"] += n
        # Fair: with credit to spare, shares differ by at most one.
        if n < sum(credit.values()):
            shares = {cid: 0 for cid, c in credit.items() if c > 0}
            for cid, es in out:
                shares[cid] = len(es)
            unfilled = [s for cid, s in shares.items() if s < credit[cid]]
            if unfilled:
                assert max(shares.values()) - min(unfilled) <= 1, (shares, credit)

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        cid, ids = self.pick(data)
        hit, miss = self.expect_split(cid, ids)
        done, unknown = self.core.finish(cid, ids, self.now())
        assert [e.key for e in done] == hit
        assert unknown == miss
        for e in done:
            assert e.client == -1
            self.loc[e.key] = "finished"
            del self.holder[e.key]
        self.counts["finished"] += len(hit)

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), delay=st.sampled_from([0.0, 0.5, 3.0]))
    def requeue(self, data: st.DataObject, delay: float) -> None:
        cid, ids = self.pick(data)
        hit, miss = self.expect_split(cid, ids)
        outcomes, unknown = self.core.requeue(cid, ids, delay, self.now())
        assert unknown == miss
        assert [o.entry.key for o in outcomes] == hit
        self.check_outcomes(outcomes, set(hit))
        for e, kind in outcomes:
            self.failed(e.key, kind, delay=delay, now=self.t)
            if kind is REQUEUED:
                self.counts["requeued"] += 1

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), dt=st.sampled_from([0.0, 0.25, 0.5, 2.0]))
    def touch(self, data: st.DataObject, dt: float) -> None:
        self.t += dt  # touching later than the delivery is what moves a deadline
        cid, ids = self.pick(data)
        held = self.held_by(cid)
        miss = [i for i in ids if key_of(i) not in held]  # repeating a held id is fine
        assert self.core.touch(cid, ids, self.now()) == miss
        for k in {key_of(i) for i in ids} & held:
            self.deadline[k] = self.t + self.clients[cid]

    @rule(dt=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 4.0]))
    def advance(self, dt: float) -> None:
        self.t += dt

    def expire(self, now: float, outcomes: list[Outcome]) -> None:
        due = {k for k in self.holder if self.deadline[k] <= now}
        self.check_outcomes(outcomes, due)
        # Requeued ones join the back of the queue in the order returned.
        for e, kind in outcomes:
            self.failed(e.key, kind, now=now)
        self.counts["timed_out"] += len(outcomes)
        self.promote(now)

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 2.5, 10.0]))
    def tick(self, dt: float) -> None:
        self.t += dt
        self.expire(self.t, self.core.tick(self.now()))

    @rule()
    def tick_with_a_stale_clock(self) -> None:
        # A late caller's older "now" counts as the latest time seen, never earlier.
        latest = self.seen
        self.expire(latest, self.core.tick(latest - 5.0))

    @rule(paused=st.booleans())
    def pause(self, paused: bool) -> None:
        if paused:
            self.core.pause()
        else:
            self.core.unpause()
        self.paused = paused
        assert self.core.paused is paused

    @rule(flip=st.integers(0, 9))
    def empty(self, flip: int) -> None:
        if flip:  # rare: it wipes the interesting state
            return
        live = self.where("queued") | self.where("deferred") | self.where("inflight")
        dropped = self.core.empty()
        keys = [e.key for e in dropped]
        assert len(keys) == len(set(keys))
        assert set(keys) == live
        for e in dropped:
            assert e.client == -1
            self.loc[e.key] = "emptied"
        self.holder.clear()
        self.queue.clear()

    # ----------------------------------------------------------- invariants

    @invariant()
    def internal_bookkeeping(self) -> None:
        self.core.check_invariants()

    @invariant()
    def stats_match_the_model(self) -> None:
        core = self.core
        assert set(self.queue) == self.where("queued") and len(set(self.queue)) == len(self.queue)
        assert core.depth == len(self.queue)
        assert core.deferred == len(self.where("deferred"))
        assert core.in_flight == len(self.holder) == len(self.where("inflight"))
        assert core.delivered == self.counts["delivered"]
        assert core.finished == self.counts["finished"]
        assert core.requeued == self.counts["requeued"]
        assert core.timed_out == self.counts["timed_out"]
        assert core.dead_lettered == self.counts["dead_lettered"]
        assert core.wants() == max(0, BACKLOG - core.depth)
        assert {c.cid for c in core.clients} == set(self.clients)
        for cid in self.clients:
            state = core.client(cid)
            assert state.in_flight == len(self.held_by(cid))
            assert state.rdy == self.rdy[cid]

    @invariant()
    def every_entry_in_exactly_one_place(self) -> None:
        for k, e in self.entries.items():
            assert e.attempts == self.attempts[k], "attempts changed outside delivery"
            if self.loc[k] == "inflight":
                assert e.client == self.holder[k]
                assert e.deadline == self.deadline[k]
                assert e.attempts >= 1
            else:
                assert e.client == -1
                assert k not in self.holder
            if self.max_attempts:
                assert e.attempts <= self.max_attempts

    @invariant()
    def wakeup_is_the_earliest_pending_time(self) -> None:
        times = [self.deadline[k] for k in self.holder]
        times += [self.due[k] for k in self.where("deferred")]
        assert self.core.next_wakeup() == (min(times) if times else None)

    def teardown(self) -> None:
        # Nothing was lost: what the model says is live is exactly what empty() returns.
        live = self.where("queued") | self.where("deferred") | self.where("inflight")
        assert {e.key for e in self.core.empty()} == live


class ChannelModelMaxAttempts(ChannelModel):
    max_attempts = 2
    core_class = EagerCompactingCore


_settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestChannelCoreUnlimitedAttempts = ChannelModel.TestCase
TestChannelCoreUnlimitedAttempts.settings = _settings
TestChannelCoreMaxAttempts = ChannelModelMaxAttempts.TestCase
TestChannelCoreMaxAttempts.settings = _settings
