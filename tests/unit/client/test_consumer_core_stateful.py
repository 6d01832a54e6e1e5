"""Hypothesis stateful test: the consumer core against an independent model.

The model follows the rules of ``pairq.client.consumer_core`` from scratch: which
deliveries run, wait or are FIN'd as duplicates (a window modelled as a list of
(id, time) in recording order, bounded and timed), what every session's outbox
must hold (FINs in order, REQs per delay), how much is in flight, what each
session's credit is, and the counters. Sessions open and close at random and
answers for closed sessions are checked to vanish, so a lost, doubled or
misdirected answer fails at once; ``check_invariants`` runs after every step.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pairq.client._policy import rdy_per_connection, requeue_delay_ms
from pairq.client.consumer_core import FINISHED, PENDING, REQUEUED, ConsumerCore, Outbox
from pairq.client.dedupe import MemoryDedupe

IDS = 6  # a small pool, so duplicates are common
MAX_ENTRIES = 4
TTL = 5.0
BASE_MS, MAX_MS = 100, 800


class D:
    __slots__ = ("_box", "_state", "attempts", "id")

    def __init__(self, key: int, box: Outbox, attempts: int) -> None:
        self.id = key.to_bytes(16, "big")
        self._box = box
        self._state = PENDING
        self.attempts = attempts


class ConsumerModel(RuleBasedStateMachine):
    dedupe = True

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.mif = 6
        self.window = MemoryDedupe(max_entries=MAX_ENTRIES, ttl=TTL) if self.dedupe else None
        self.core = ConsumerCore(
            max_in_flight=self.mif,
            requeue_base_ms=BASE_MS,
            requeue_max_ms=MAX_MS,
            fin_batch_size=8,
            window=self.window,
        )
        self.boxes: list[Outbox] = []  # every box ever made
        self.open_boxes: list[Outbox] = []
        self.fins: dict[int, list[bytes]] = {}  # id(box) -> expected FINs
        self.reqs: dict[int, dict[int, list[bytes]]] = {}
        self.stopping = False
        self.handled: list[D] = []  # handed to the handler, not answered
        self.answered: list[D] = []
        self.handling: dict[bytes, D] = {}
        self.waiting: dict[bytes, list[D]] = {}
        self.recorded: list[tuple[bytes, float]] = []  # the window, oldest first
        self.in_flight = 0
        self.counts = {"received": 0, "finished": 0, "requeued": 0, "duplicates": 0}

    # -- the model's window ---------------------------------------------------------

    def _expire(self) -> None:
        self.recorded = [(m, t) for m, t in self.recorded if t >= self.now - TTL]

    def _seen(self, mid: bytes) -> bool:
        self._expire()
        return any(m == mid for m, _ in self.recorded)

    def _record(self, ids: list[bytes]) -> None:
        self._expire()
        for mid in ids:
            self.recorded = [(m, t) for m, t in self.recorded if m != mid]
            self.recorded.append((mid, self.now))
        del self.recorded[: max(0, len(self.recorded) - MAX_ENTRIES)]

    # -- helpers ------------------------------------------------------------------

    def _fin(self, d: D) -> None:
        if d._box.open:
            self.fins[id(d._box)].append(d.id)

    def _req(self, d: D, delay: int) -> None:
        if d._box.open:
            self.reqs[id(d._box)].setdefault(delay, []).append(d.id)

    def _share(self, box: Outbox) -> int:
        if self.stopping:
            return 0
        return rdy_per_connection(self.mif, len(self.open_boxes), box.max_rdy)

    # -- rules --------------------------------------------------------------------

    @rule(max_rdy=st.sampled_from([0, 2, 5]))
    def open_session(self, max_rdy: int) -> None:
        box = Outbox(max_rdy)
        self.boxes.append(box)
        self.open_boxes.append(box)
        self.fins[id(box)] = []
        self.reqs[id(box)] = {}
        self.core.open(box)

    @precondition(lambda self: self.open_boxes)
    @rule(data=st.data())
    def close_session(self, data: st.DataObject) -> None:
        box = data.draw(st.sampled_from(self.open_boxes))
        self.open_boxes.remove(box)
        self.core.close(box)
        self.fins[id(box)] = []
        self.reqs[id(box)] = {}

    @rule(mif=st.integers(0, 8))
    def set_max_in_flight(self, mif: int) -> None:
        self.mif = mif
        self.core.set_max_in_flight(mif)

    @precondition(lambda self: not self.stopping)
    @rule()
    def stop(self) -> None:
        self.stopping = True
        self.core.stop()

    @rule()
    def write_rdy(self) -> None:
        for box in self.open_boxes:
            if box.rdy is not None:
                box.sent_rdy, box.rdy = box.rdy, None

    @rule(seconds=st.sampled_from([0.0, 0.5, 2.0, 6.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: self.open_boxes)
    @rule(
        data=st.data(),
        batch=st.lists(st.tuples(st.integers(0, IDS - 1), st.integers(1, 4)), max_size=5),
    )
    def deliver(self, data: st.DataObject, batch: list[tuple[int, int]]) -> None:
        box = data.draw(st.sampled_from(self.open_boxes))
        msgs = [D(k, box, a) for k, a in batch]
        self.counts["received"] += len(msgs)
        expected: list[D] = []
        if self.stopping:
            self.counts["requeued"] += len(msgs)
            if msgs:
                self.reqs[id(box)].setdefault(0, []).extend(m.id for m in msgs)
        else:
            self.in_flight += len(msgs)
            for m in msgs:
                if not self.dedupe:
                    expected.append(m)
                elif m.id in self.handling:
                    self.waiting.setdefault(m.id, []).append(m)
                elif self._seen(m.id):
                    self.in_flight -= 1
                    self.counts["duplicates"] += 1
                    self._fin(m)
                else:
                    self.handling[m.id] = m
                    expected.append(m)
        got = self.core.admit(box, msgs, self.now)
        assert [id(m) for m in got] == [id(m) for m in expected]
        self.handled += got

    @precondition(lambda self: self.handled)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        picks = data.draw(
            st.lists(st.sampled_from(self.handled), min_size=1, max_size=3, unique_by=id)
        )
        ids = []
        for d in picks:
            self.handled.remove(d)
            self.answered.append(d)
            self.in_flight -= 1
            self.counts["finished"] += 1
            self._fin(d)
            ids.append(d.id)
        if self.dedupe:
            for mid in ids:
                del self.handling[mid]
            self._record(ids)
            for mid in ids:
                for dup in self.waiting.pop(mid, []):
                    self.in_flight -= 1
                    self.counts["duplicates"] += 1
                    self._fin(dup)
        self.core.finish_many(picks, self.now)
        assert all(d._state == FINISHED for d in picks)

    @precondition(lambda self: self.handled)
    @rule(data=st.data(), delay=st.sampled_from([None, 0, 300]))
    def requeue(self, data: st.DataObject, delay: int | None) -> None:
        d = data.draw(st.sampled_from(self.handled))
        self.handled.remove(d)
        self.answered.append(d)
        ms = delay
        if ms is None:
            ms = requeue_delay_ms(d.attempts, base_ms=BASE_MS, max_ms=MAX_MS)
        for m in [d, *(self.waiting.pop(d.id, []) if self.dedupe else [])]:
            self.in_flight -= 1
            self.counts["requeued"] += 1
            self._req(m, ms)
        self.handling.pop(d.id, None)
        self.core.requeue(d, delay, self.now)
        assert d._state == REQUEUED

    @precondition(lambda self: self.answered)
    @rule(data=st.data())
    def answer_again(self, data: st.DataObject) -> None:
        d = data.draw(st.sampled_from(self.answered))
        state = d._state
        self.core.finish(d, self.now)
        self.core.requeue(d, 0, self.now)
        assert d._state == state  # ignored: the invariants check nothing else moved

    # -- invariants ---------------------------------------------------------------

    @invariant()
    def core_is_consistent(self) -> None:
        self.core.check_invariants()
        self.core.woken.clear()

    @invariant()
    def outboxes_hold_exactly_the_answers(self) -> None:
        for box in self.boxes:
            assert box.fins == self.fins[id(box)]
            assert box.reqs == self.reqs[id(box)]
            assert box.open == (box in self.open_boxes)

    @invariant()
    def credit_is_the_share(self) -> None:
        for box in self.open_boxes:
            have = box.rdy if box.rdy is not None else box.sent_rdy
            assert have == self._share(box)

    @invariant()
    def counters_and_in_flight(self) -> None:
        assert self.core.in_flight == self.in_flight
        stats = self.core.stats
        for k, v in self.counts.items():
            assert getattr(stats, k) == v, k

    @invariant()
    def window_matches(self) -> None:
        if self.window is not None:
            self._expire()
            assert len(self.window) <= MAX_ENTRIES
            for k in range(IDS):
                mid = k.to_bytes(16, "big")
                assert self.window.seen(mid, self.now) == any(m == mid for m, _ in self.recorded)


class ConsumerModelWithoutWindow(ConsumerModel):
    dedupe = False


_settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ConsumerModel.TestCase.settings = _settings
ConsumerModelWithoutWindow.TestCase.settings = _settings
TestConsumerCore = ConsumerModel.TestCase
TestConsumerCoreWithoutWindow = ConsumerModelWithoutWindow.TestCase
