"""The consumer core's rules, one by one, with a fake clock (no sockets, no tasks)."""

from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor

import pytest

from pairq.client.consumer_core import FINISHED, PENDING, REQUEUED, ConsumerCore, Outbox
from pairq.client.dedupe import MemoryDedupe


class D:
    """A delivery as the core sees it (Message's shape)."""

    __slots__ = ("_box", "_state", "attempts", "id")

    def __init__(self, key: int, box: Outbox, attempts: int = 1) -> None:
        self.id = key.to_bytes(16, "big")
        self._box = box
        self._state = PENDING
        self.attempts = attempts


def mid(key: int) -> bytes:
    return key.to_bytes(16, "big")


def core(window: object = None, **kw: int) -> ConsumerCore:
    opts = {"max_in_flight": 10, "requeue_base_ms": 100, "requeue_max_ms": 1000}
    opts.update(kw)
    return ConsumerCore(window=window, **opts)  # type: ignore[arg-type]


def sent(*boxes: Outbox) -> None:
    """What the consumer does with a box's RDY: writes it."""
    for b in boxes:
        if b.rdy is not None:
            b.sent_rdy, b.rdy = b.rdy, None


# -- credit ---------------------------------------------------------------------------


def test_credit_is_spread_over_open_sessions_and_redistributed() -> None:
    c = core(max_in_flight=10)
    a, b = Outbox(), Outbox(max_rdy=3)
    assert c.open(a) == [a] and a.rdy == 10
    sent(a)
    assert c.open(b) == [a, b] and (a.rdy, b.rdy) == (5, 3)  # b capped by the broker
    sent(a, b)
    assert c.close(b) == [a] and a.rdy == 10 and b.rdy is None and not b.open
    sent(a)
    assert c.close(b) == []  # closing twice changes nothing
    assert c.set_max_in_flight(0) == [a] and a.rdy == 0  # paused
    sent(a)
    assert c.set_max_in_flight(0) == []  # unchanged share: nothing to send
    c.check_invariants()


def test_every_session_gets_at_least_one_and_zero_once_stopping() -> None:
    c = core(max_in_flight=2)
    boxes = [Outbox() for _ in range(3)]
    for b in boxes:
        c.open(b)
    assert [b.rdy for b in boxes] == [1, 1, 1]
    sent(*boxes)
    assert c.stop() == boxes and [b.rdy for b in boxes] == [0, 0, 0]
    c.check_invariants()


def test_fin_threshold_is_a_quarter_of_the_credit_within_bounds() -> None:
    c = core(max_in_flight=2500, fin_batch_size=256)
    a = Outbox()
    c.open(a)
    assert a.fin_threshold == 256
    c.set_max_in_flight(40)
    assert a.fin_threshold == 10
    c.set_max_in_flight(2)
    assert a.fin_threshold == 1


def test_opening_an_open_box_is_refused() -> None:
    c = core()
    a = Outbox()
    c.open(a)
    with pytest.raises(ValueError):
        c.open(a)


# -- in flight, FIN, REQ --------------------------------------------------------------


def test_without_window_every_delivery_runs_and_is_answered_once() -> None:
    c = core()
    a = Outbox()
    c.open(a)
    msgs = [D(1, a), D(2, a), D(1, a)]
    assert c.admit(a, msgs, 0.0) is msgs  # no dedupe: the same id twice runs twice
    assert c.in_flight == 3 and c.stats.received == 3
    c.finish(msgs[0], 0.0)
    c.finish(msgs[0], 0.0)  # answered already: ignored
    c.requeue(msgs[0], 5, 0.0)
    assert a.fins == [mid(1)] and a.reqs == {} and c.in_flight == 2
    c.finish_many(msgs[1:], 0.0)
    assert a.fins == [mid(1), mid(2), mid(1)] and c.in_flight == 0
    assert c.stats.finished == 3 and msgs[2]._state == FINISHED
    c.check_invariants()


def test_requeue_backoff_by_attempts_capped_or_the_given_delay() -> None:
    c = core(requeue_base_ms=100, requeue_max_ms=1000)
    a = Outbox()
    c.open(a)
    msgs = [D(k, a, attempts=k) for k in (1, 2, 3, 9)] + [D(5, a)]
    c.admit(a, msgs, 0.0)
    for m in msgs[:4]:
        c.requeue(m, None, 0.0)
    c.requeue(msgs[4], 0, 0.0)
    assert a.reqs == {100: [mid(1)], 200: [mid(2)], 400: [mid(3)], 1000: [mid(9)], 0: [mid(5)]}
    assert c.stats.requeued == 5 and c.in_flight == 0 and msgs[0]._state == REQUEUED


def test_touch_only_while_unanswered_and_open() -> None:
    c = core()
    a = Outbox()
    c.open(a)
    m, n = D(1, a), D(2, a)
    c.admit(a, [m, n], 0.0)
    assert c.touch(m) and a.touches == [mid(1)] and c.stats.touched == 1
    c.finish(m, 0.0)
    assert not c.touch(m)
    c.close(a)
    assert not c.touch(n) and c.stats.touched == 1


def test_deliveries_while_stopping_are_refused_and_not_in_flight() -> None:
    c = core()
    a = Outbox()
    c.open(a)
    c.stop()
    assert c.admit(a, [D(1, a), D(2, a)], 0.0) == []
    assert a.reqs == {0: [mid(1), mid(2)]} and c.in_flight == 0 and c.stats.requeued == 2
    c.check_invariants()


def test_answers_of_an_ended_session_are_dropped_but_counted() -> None:
    c = core(window=MemoryDedupe(ttl=60))
    a, b = Outbox(), Outbox()
    c.open(a)
    m, n = D(1, a), D(2, a)
    c.admit(a, [m, n], 0.0)
    c.close(a)
    c.finish(m, 1.0)
    c.requeue(n, None, 1.0)
    assert a.fins == [] and a.reqs == {} and c.in_flight == 0
    assert c.stats.finished == 1 and c.stats.requeued == 1
    # The id was still recorded: the broker's redelivery on the next session is a duplicate.
    c.open(b)
    again = D(1, b, attempts=2)
    assert c.admit(b, [again], 2.0) == [] and b.fins == [mid(1)] and c.stats.duplicates == 1
    c.check_invariants()


# -- de-duplication ---------------------------------------------------------------------


def test_recorded_ids_are_fin_d_as_duplicates_until_the_ttl() -> None:
    c = core(window=MemoryDedupe(ttl=10))
    a = Outbox()
    c.open(a)
    first = D(1, a)
    c.admit(a, [first], 100.0)
    c.finish(first, 100.0)
    dup = D(1, a, attempts=2)
    out = c.admit(a, [D(2, a), dup, D(3, a)], 110.0)
    assert [m.id for m in out] == [mid(2), mid(3)] and a.fins == [mid(1), mid(1)]
    assert dup._state == FINISHED and c.stats.duplicates == 1 and c.in_flight == 2
    late = D(1, a, attempts=3)
    assert c.admit(a, [late], 110.5) == [late]  # recorded 10.5 s ago: forgotten
    c.check_invariants()


def test_a_duplicate_of_a_run_in_progress_waits_for_its_fin() -> None:
    c = core(window=MemoryDedupe())
    a, b = Outbox(), Outbox()
    c.open(a)
    c.open(b)
    run = D(7, a)
    twin = D(7, b)
    assert c.admit(a, [run], 0.0) == [run]
    assert c.admit(b, [twin], 0.0) == []
    assert c.in_flight == 2 and twin._state == PENDING
    c.check_invariants()
    c.finish(run, 1.0)
    assert a.fins == [mid(7)] and b.fins == [mid(7)] and c.woken == [b]
    assert c.in_flight == 0 and c.stats.finished == 1 and c.stats.duplicates == 1
    c.check_invariants()


def test_a_duplicate_of_a_run_in_progress_is_requeued_with_it() -> None:
    c = core(window=MemoryDedupe())
    a = Outbox()
    c.open(a)
    run, twin = D(7, a), D(7, a)
    assert c.admit(a, [run, twin], 0.0) == [run]  # the same id twice in one batch
    c.requeue(run, 250, 0.0)
    assert a.reqs == {250: [mid(7), mid(7)]} and c.in_flight == 0
    again = D(7, a, attempts=2)
    assert c.admit(a, [again], 0.0) == [again]  # requeue records nothing
    c.check_invariants()


class SlowWindow:
    """A window whose writes run on an executor (like Dedupe)."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.ids: set[bytes] = set()
        self.fail_lookups = False

    def contains(self, m: bytes) -> bool:
        if self.fail_lookups:
            raise OSError("broken")
        return m in self.ids

    def add_many(self, ids: list[bytes]) -> None:
        self.ids.update(ids)

    def add(self, m: bytes) -> None:
        self.ids.add(m)

    def close(self) -> None:
        pass


def test_with_an_executor_window_fin_waits_for_the_record() -> None:
    with ThreadPoolExecutor(1) as ex:
        w = SlowWindow(ex)
        c = core(window=w)
        a = Outbox()
        c.open(a)
        m, twin = D(1, a), D(1, a)
        c.admit(a, [m], 0.0)
        c.finish(m, 0.0)
        assert a.fins == [] and c.in_flight == 1 and c.to_record == [m]
        assert c.admit(a, [twin], 0.0) == []  # still being recorded: waits
        c.check_invariants()
        batch = c.take_records()
        w.add_many([x.id for x in batch])
        c.recorded(batch)
        assert a.fins == [mid(1), mid(1)] and c.in_flight == 0 and c.stats.duplicates == 1
        n = D(2, a)
        c.admit(a, [n], 0.0)
        c.finish(n, 0.0)
        c.recorded(c.take_records(), ok=False)  # the commit failed: FIN'd anyway
        assert c.stats.dedupe_errors == 1 and a.fins[-1] == mid(2)
        c.check_invariants()


def test_a_failing_window_lookup_counts_as_not_seen() -> None:
    with ThreadPoolExecutor(1) as ex:
        w = SlowWindow(ex)
        w.ids.add(mid(1))
        w.fail_lookups = True
        c = core(window=w)
        a = Outbox()
        c.open(a)
        m = D(1, a)
        assert c.admit(a, [m], 0.0) == [m]
        assert c.stats.dedupe_errors == 1 and c.window_errors[0][:2] == ("lookup", mid(1))


def test_memory_window_size_bound_with_batches_and_re_records() -> None:
    w = MemoryDedupe(max_entries=4, ttl=100)
    w.record_many([mid(1), mid(2), mid(3)], 1.0)
    w.record_many([mid(4), mid(1)], 2.0)  # 1 recorded again: now among the youngest
    assert len(w) == 4 and w.seen(mid(1), 2.0)
    w.record_many([mid(5), mid(6)], 3.0)  # evicts 2 and 3 (the oldest), not 1
    assert [w.seen(mid(k), 3.0) for k in range(1, 7)] == [True, False, False, True, True, True]
    w.record_many([mid(7), mid(7)], 4.0)  # twice in one batch
    assert len(w) == 4 and w.seen(mid(7), 4.0) and not w.seen(mid(4), 4.0)
    assert w.disjoint([mid(2), mid(3)], 4.0) and not w.disjoint([mid(2), mid(7)], 4.0)
    assert not w.seen(mid(7), 104.5) and len(w) == 0  # all expired
