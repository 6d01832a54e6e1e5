"""Deterministic tests of the channel delivery state machine, with a fake clock."""

from __future__ import annotations

import math

import pytest

from pairq.broker.channel_core import (
    DEAD,
    REQUEUED,
    ChannelCore,
    DelayError,
    Entry,
    Outcome,
    RdyError,
)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t


def mid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def entries(*keys: int, due: float = 0.0) -> list[Entry]:
    return [Entry(k, mid(k), due=due) for k in keys]


def keys_of(es: list[Entry]) -> list[int]:
    return [e.key for e in es]


def delivered(out: list[tuple[int, list[Entry]]]) -> dict[int, list[int]]:
    return {cid: keys_of(es) for cid, es in out}


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(
    clock: Clock, *, clients: dict[int, float] | None = None, rdy: int = 10, **kw: int
) -> ChannelCore:
    core = ChannelCore(**kw)
    for cid, timeout in (clients or {1: 30.0}).items():
        core.add_client(cid, timeout)
        core.set_ready(cid, rdy)
    return core


def check(core: ChannelCore) -> None:
    core.check_invariants()


# ------------------------------------------------------------------ delivery


def test_take_marks_in_flight(clock: Clock) -> None:
    core = make(clock)
    core.push(entries(1, 2, 3), clock())
    out = core.take(clock())
    assert delivered(out) == {1: [1, 2, 3]}
    for e in out[0][1]:
        assert e.attempts == 1
        assert e.client == 1
        assert e.deadline == clock() + 30.0
    assert (core.depth, core.in_flight, core.delivered) == (0, 3, 3)
    assert core.client(1).in_flight == 3
    assert core.client(1).delivered == 3
    assert core.take(clock()) == []
    check(core)


def test_take_without_clients_or_credit_delivers_nothing(clock: Clock) -> None:
    core = ChannelCore()
    core.push(entries(1), clock())
    assert core.take(clock()) == []
    core.add_client(1, 10.0)
    assert core.take(clock()) == []  # RDY starts at 0
    core.set_ready(1, 1)
    assert delivered(core.take(clock())) == {1: [1]}


def test_delivery_never_exceeds_rdy_minus_in_flight(clock: Clock) -> None:
    core = make(clock, rdy=3)
    core.push(entries(*range(10)), clock())
    assert delivered(core.take(clock())) == {1: [0, 1, 2]}
    assert core.take(clock()) == []
    core.finish(1, [mid(0)], clock())
    assert delivered(core.take(clock())) == {1: [3]}
    core.set_ready(1, 5)
    assert delivered(core.take(clock())) == {1: [4, 5]}
    assert core.client(1).in_flight == 5
    core.set_ready(1, 2)  # lowered below in flight: nothing until FINs catch up
    core.finish(1, [mid(1), mid(2)], clock())
    assert core.take(clock()) == []
    core.finish(1, [mid(3)], clock())
    assert core.take(clock()) == []  # RDY 2, in flight 2
    core.finish(1, [mid(4)], clock())
    assert delivered(core.take(clock())) == {1: [6]}
    check(core)


def test_rdy_zero_stops_delivery_to_that_client(clock: Clock) -> None:
    core = make(clock, clients={1: 30.0, 2: 30.0}, rdy=5)
    core.set_ready(1, 0)
    core.push(entries(*range(4)), clock())
    assert delivered(core.take(clock())) == {2: [0, 1, 2, 3]}


def test_held_client_gets_nothing_and_its_timeouts_go_to_others(clock: Clock) -> None:
    core = make(clock, clients={1: 10.0, 2: 30.0}, rdy=2)
    core.set_ready(2, 0)
    core.push(entries(1, 2, 3), clock())
    assert delivered(core.take(clock())) == {1: [1, 2]}
    core.hold(1, True)  # its stream backed up: credit kept, nothing more for it
    core.finish(1, [mid(1)], clock())
    assert core.take(clock()) == []
    assert core.client(1).rdy == 2 and core.client(1).held
    # Its in-flight entry still times out, and goes to a client that is not held.
    assert [o.kind for o in core.tick(clock.advance(10.0))] == [REQUEUED]
    assert core.take(clock()) == []
    core.set_ready(2, 2)
    assert delivered(core.take(clock())) == {2: [3, 2]}
    core.hold(1, False)
    core.push(entries(4), clock())
    assert delivered(core.take(clock())) == {1: [4]}
    check(core)


def test_set_ready_bounds(clock: Clock) -> None:
    core = make(clock, max_rdy=100)
    core.set_ready(1, 100)
    core.set_ready(1, 0)
    with pytest.raises(RdyError) as err:
        core.set_ready(1, 101)
    assert isinstance(err.value, ValueError)
    assert (err.value.count, err.value.max_rdy) == (101, 100)
    with pytest.raises(RdyError):
        core.set_ready(1, -1)
    assert core.client(1).rdy == 0  # unchanged by the rejected calls
    with pytest.raises(KeyError):
        core.set_ready(99, 1)


def test_fair_spread_across_clients(clock: Clock) -> None:
    core = make(clock, clients={1: 30.0, 2: 30.0, 3: 30.0}, rdy=100)
    core.push(entries(*range(30)), clock())
    out = core.take(clock())
    counts = {cid: len(es) for cid, es in out}
    assert counts == {1: 10, 2: 10, 3: 10}
    all_keys = sorted(k for _, es in out for k in keys_of(es))
    assert all_keys == list(range(30))


def test_fair_spread_respects_small_credits(clock: Clock) -> None:
    core = make(clock, clients={1: 30.0, 2: 30.0, 3: 30.0}, rdy=100)
    core.set_ready(1, 2)
    core.push(entries(*range(20)), clock())
    counts = {cid: len(es) for cid, es in core.take(clock())}
    assert counts == {1: 2, 2: 9, 3: 9}


def test_round_robin_one_at_a_time(clock: Clock) -> None:
    core = make(clock, clients={1: 30.0, 2: 30.0, 3: 30.0}, rdy=100)
    got: dict[int, int] = {1: 0, 2: 0, 3: 0}
    for k in range(30):
        core.push(entries(k), clock())
        ((cid, es),) = core.take(clock())
        got[cid] += len(es)
    assert got == {1: 10, 2: 10, 3: 10}


def test_deliveries_use_each_clients_timeout(clock: Clock) -> None:
    core = make(clock, clients={1: 5.0, 2: 50.0}, rdy=1)
    core.push(entries(1, 2), clock())
    out = core.take(clock())
    deadlines = {cid: es[0].deadline for cid, es in out}
    assert deadlines == {1: clock() + 5.0, 2: clock() + 50.0}
    assert core.next_wakeup() == clock() + 5.0


# ------------------------------------------------------------------ FIN


def test_finish_returns_entries_and_unknown_ids(clock: Clock) -> None:
    core = make(clock, clients={1: 30.0, 2: 30.0}, rdy=1)
    core.push(entries(1, 2), clock())
    held = {cid: es[0].id for cid, es in core.take(clock())}
    done, unknown = core.finish(1, [held[1], held[2], mid(99), held[1]], clock())
    assert keys_of(done) == [int.from_bytes(held[1], "big")]
    assert done[0].client == -1
    # another client's id, a never-seen id, and a second FIN of the same id
    assert unknown == [held[2], mid(99), held[1]]
    assert core.in_flight == 1
    assert core.finished == 1
    assert core.client(1).finished == 1
    assert core.client(1).in_flight == 0
    assert core.client(2).in_flight == 1
    check(core)


def test_finish_of_queued_entry_is_unknown(clock: Clock) -> None:
    core = make(clock, rdy=0)
    core.push(entries(1), clock())
    done, unknown = core.finish(1, [mid(1)], clock())
    assert (done, unknown) == ([], [mid(1)])
    assert core.depth == 1


def test_unknown_client_is_a_caller_bug(clock: Clock) -> None:
    core = make(clock)
    with pytest.raises(KeyError):
        core.finish(7, [mid(1)], clock())
    with pytest.raises(KeyError):
        core.remove_client(7, clock())


# ------------------------------------------------------------------ timeouts


def test_timeout_requeues_to_back_with_no_delay(clock: Clock) -> None:
    core = make(clock, rdy=1)
    core.push(entries(1, 2), clock())
    ((_, (first,)),) = core.take(clock())
    assert core.tick(clock.advance(29.9)) == []
    outcomes = core.tick(clock.advance(0.1))
    assert outcomes == [Outcome(first, REQUEUED)]
    assert first.due == 0.0
    assert first.client == -1
    assert (core.timed_out, core.in_flight, core.depth) == (1, 0, 2)
    assert core.client(1).timed_out == 1
    # back of the queue: entry 2 goes first, then the timed-out one, attempts 2
    assert delivered(core.take(clock())) == {1: [2]}
    core.finish(1, [mid(2)], clock())
    ((_, (again,)),) = core.take(clock())
    assert again is first
    assert again.attempts == 2
    check(core)


def test_timed_out_id_is_unknown_to_the_old_holder(clock: Clock) -> None:
    core = make(clock, clients={1: 10.0, 2: 10.0}, rdy=1)
    core.set_ready(2, 0)
    core.push(entries(1), clock())
    core.take(clock())
    core.tick(clock.advance(10))
    core.set_ready(1, 0)
    core.set_ready(2, 1)
    assert delivered(core.take(clock())) == {2: [1]}
    assert core.finish(1, [mid(1)], clock()) == ([], [mid(1)])
    assert core.touch(1, [mid(1)], clock()) == [mid(1)]
    assert core.requeue(1, [mid(1)], 0, clock()) == ([], [mid(1)])
    assert core.in_flight == 1
    assert core.client(2).in_flight == 1
    check(core)


def test_touch_extends_deadline(clock: Clock) -> None:
    core = make(clock, rdy=2)
    core.push(entries(1, 2), clock())
    core.take(clock())
    clock.advance(20)
    assert core.touch(1, [mid(1), mid(99)], clock()) == [mid(99)]
    assert core.next_wakeup() == 1030.0  # entry 2 still due at the old deadline
    outcomes = core.tick(clock.advance(10))  # t=1030
    assert [o.entry.key for o in outcomes] == [2]
    assert core.next_wakeup() == 1050.0
    assert core.tick(clock.advance(19.9)) == []
    assert [o.entry.key for o in core.tick(clock.advance(0.1))] == [1]
    check(core)


def test_touch_repeatedly_keeps_it_alive(clock: Clock) -> None:
    core = make(clock, rdy=1)
    core.push(entries(1), clock())
    core.take(clock())
    for _ in range(100):
        assert core.tick(clock.advance(9)) == []
        assert core.touch(1, [mid(1)], clock()) == []
    assert core.in_flight == 1
    assert core.timed_out == 0
    check(core)


def test_finished_entry_never_times_out(clock: Clock) -> None:
    core = make(clock, rdy=1)
    core.push(entries(1), clock())
    core.take(clock())
    core.finish(1, [mid(1)], clock())
    assert core.next_wakeup() is None
    assert core.tick(clock.advance(100)) == []
    assert core.timed_out == 0


# ------------------------------------------------------------------ REQ


def test_requeue_zero_goes_to_back_of_queue(clock: Clock) -> None:
    core = make(clock, rdy=1)
    core.push(entries(1, 2, 3), clock())
    core.take(clock())
    outcomes, unknown = core.requeue(1, [mid(1)], 0, clock())
    assert unknown == []
    assert [(o.entry.key, o.kind, o.entry.due) for o in outcomes] == [(1, REQUEUED, 0.0)]
    assert core.requeued == 1
    assert core.client(1).requeued == 1
    order = []
    for _ in range(3):
        ((_, (e,)),) = core.take(clock())
        order.append(e.key)
        core.finish(1, [e.id], clock())
    assert order == [2, 3, 1]


def test_requeue_with_delay_defers(clock: Clock) -> None:
    core = make(clock, rdy=5)
    core.push(entries(1), clock())
    core.take(clock())
    outcomes, _ = core.requeue(1, [mid(1)], 5.0, clock())
    assert outcomes[0].entry.due == clock() + 5.0
    assert (core.deferred, core.depth, core.in_flight) == (1, 0, 0)
    assert core.next_wakeup() == clock() + 5.0
    assert core.take(clock.advance(4.9)) == []
    assert delivered(core.take(clock.advance(0.1))) == {1: [1]}
    assert core.deferred == 0
    check(core)


def test_requeue_rejects_bad_delay_without_changing_state(clock: Clock) -> None:
    core = make(clock, rdy=1)
    core.push(entries(1), clock())
    core.take(clock())
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(DelayError):
            core.requeue(1, [mid(1)], bad, clock())
    assert core.in_flight == 1
    check(core)


# ------------------------------------------------------------------ deferred


def test_deferred_entries_come_due_in_due_order(clock: Clock) -> None:
    core = make(clock, rdy=10)
    t = clock()
    core.push(
        [Entry(1, mid(1), due=t + 30), Entry(2, mid(2), due=t + 10), Entry(3, mid(3), due=t + 20)],
        t,
    )
    core.push(entries(4), t)
    assert (core.deferred, core.depth) == (3, 1)
    assert delivered(core.take(t)) == {1: [4]}
    assert core.next_wakeup() == t + 10
    assert core.tick(clock.advance(25)) == []  # promotion is not an outcome
    assert (core.deferred, core.depth) == (1, 2)
    assert delivered(core.take(clock())) == {1: [2, 3]}
    assert delivered(core.take(clock.advance(5))) == {1: [1]}


def test_due_in_the_past_is_ready_now(clock: Clock) -> None:
    core = make(clock)
    core.push([Entry(1, mid(1), due=clock() - 5), Entry(2, mid(2), due=clock())], clock())
    assert (core.deferred, core.depth) == (0, 2)


def test_wants_tracks_the_backlog() -> None:
    core = ChannelCore(max_backlog=5)
    assert core.wants() == 5
    core.push(entries(1, 2), 0.0)
    assert core.wants() == 3
    core.push(entries(3, 4, 5, 6), 0.0)
    assert core.wants() == 0
    core.push(entries(7, due=100.0), 0.0)  # deferred entries do not block reads
    assert core.wants() == 0
    assert core.depth == 6


# ------------------------------------------------------------------ dead letters


def test_dead_letter_on_timeout_at_max_attempts(clock: Clock) -> None:
    core = make(clock, rdy=1, max_attempts=3)
    core.push(entries(1), clock())
    kinds = []
    for _ in range(3):
        ((_, (e,)),) = core.take(clock())
        (outcome,) = core.tick(clock.advance(30))
        kinds.append(outcome.kind)
    assert kinds == [REQUEUED, REQUEUED, DEAD]
    assert e.attempts == 3
    assert (core.depth, core.in_flight, core.deferred) == (0, 0, 0)
    assert (core.dead_lettered, core.timed_out) == (1, 3)
    assert core.take(clock()) == []
    check(core)


def test_dead_letter_on_requeue_at_max_attempts(clock: Clock) -> None:
    core = make(clock, rdy=1, max_attempts=2)
    core.push(entries(1), clock())
    core.take(clock())
    assert [o.kind for o in core.requeue(1, [mid(1)], 1.0, clock())[0]] == [REQUEUED]
    core.take(clock.advance(1))
    (outcome,), _ = core.requeue(1, [mid(1)], 1.0, clock())
    assert outcome.kind is DEAD
    assert (core.deferred, core.depth, core.dead_lettered, core.requeued) == (0, 0, 1, 1)
    assert core.client(1).requeued == 2


def test_unlimited_attempts_never_dead_letter(clock: Clock) -> None:
    core = make(clock, rdy=1, max_attempts=0)
    core.push(entries(1), clock())
    for _ in range(50):
        core.take(clock())
        assert [o.kind for o in core.tick(clock.advance(30))] == [REQUEUED]
    assert core.dead_lettered == 0
    assert core.depth == 1


# ------------------------------------------------------------------ clients


def test_remove_client_returns_its_in_flight_to_the_front(clock: Clock) -> None:
    core = make(clock, clients={1: 30.0, 2: 30.0}, rdy=2)
    core.set_ready(2, 0)
    core.push(entries(1, 2, 3, 4), clock())
    core.take(clock())  # client 1 holds 1, 2
    outcomes = core.remove_client(1, clock())
    assert [(o.entry.key, o.kind, o.entry.attempts) for o in outcomes] == [
        (1, REQUEUED, 1),
        (2, REQUEUED, 1),
    ]
    assert (core.in_flight, core.depth, core.requeued) == (0, 4, 2)
    assert core.next_wakeup() is None  # stale deadlines are gone
    core.set_ready(2, 4)
    out = core.take(clock())
    assert delivered(out) == {2: [1, 2, 3, 4]}
    assert [e.attempts for e in out[0][1]] == [2, 2, 1, 1]
    assert core.tick(clock.advance(29.9)) == []
    check(core)


def test_remove_client_dead_letters_at_max_attempts(clock: Clock) -> None:
    core = make(clock, rdy=1, max_attempts=1)
    core.push(entries(1), clock())
    core.take(clock())
    assert [o.kind for o in core.remove_client(1, clock())] == [DEAD]
    assert (core.depth, core.dead_lettered) == (0, 1)


def test_add_client_validation(clock: Clock) -> None:
    core = make(clock)
    with pytest.raises(ValueError):
        core.add_client(1, 30.0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            core.add_client(2, bad)
    assert [c.cid for c in core.clients] == [1]


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        ChannelCore(max_attempts=-1)
    with pytest.raises(ValueError):
        ChannelCore(max_rdy=0)
    with pytest.raises(ValueError):
        ChannelCore(max_backlog=0)


# ------------------------------------------------------------------ pause / empty


def test_pause_stops_delivery_but_not_fin_req_touch_or_timeouts(clock: Clock) -> None:
    core = make(clock, rdy=3)
    core.push(entries(1, 2, 3), clock())
    core.take(clock())
    core.push(entries(4), clock())
    core.pause()
    assert core.paused
    assert core.take(clock()) == []
    assert core.finish(1, [mid(1)], clock())[1] == []
    assert core.requeue(1, [mid(2)], 0, clock())[1] == []
    assert core.touch(1, [mid(3)], clock()) == []
    assert core.take(clock()) == []
    assert [o.entry.key for o in core.tick(clock.advance(30))] == [3]
    assert core.depth == 3
    core.unpause()
    assert not core.paused
    assert delivered(core.take(clock())) == {1: [4, 2, 3]}


def test_pause_still_promotes_deferred(clock: Clock) -> None:
    core = make(clock)
    core.push(entries(1, due=clock() + 5), clock())
    core.pause()
    core.tick(clock.advance(5))
    assert (core.deferred, core.depth) == (0, 1)


def test_empty_drops_everything(clock: Clock) -> None:
    core = make(clock, rdy=2)
    core.push(entries(1, 2, 3), clock())
    core.push(entries(4, due=clock() + 10), clock())
    core.take(clock())
    dropped = core.empty()
    assert sorted(keys_of(dropped)) == [1, 2, 3, 4]
    assert all(e.client == -1 for e in dropped)
    assert (core.depth, core.in_flight, core.deferred) == (0, 0, 0)
    assert core.client(1).in_flight == 0
    assert core.next_wakeup() is None
    assert core.finish(1, [mid(1)], clock()) == ([], [mid(1)])
    assert core.tick(clock.advance(100)) == []
    core.push(entries(5, 6), clock())
    assert delivered(core.take(clock())) == {1: [5, 6]}
    check(core)


# ------------------------------------------------------------------ time and scale


def test_time_going_backwards_is_clamped(clock: Clock) -> None:
    core = make(clock, rdy=1)
    core.push(entries(1), clock())
    core.take(clock())  # deadline 1030
    clock.advance(10)
    core.tick(clock())
    core.touch(1, [mid(1)], clock() - 500)  # treated as t=1010 -> deadline 1040
    assert core.next_wakeup() == 1040.0
    # an entry pushed with a "past" now is still deferred relative to the latest time
    core.push(entries(2, due=1005.0), 900.0)
    assert core.deferred == 0


def test_many_fins_keep_timeout_records_bounded_and_stragglers_alive(clock: Clock) -> None:
    core = make(clock, rdy=1000)
    stragglers = []
    for k in range(0, 50_000, 100):
        core.push(entries(*range(k, k + 100)), clock())
        ((_, es),) = core.take(clock())
        core.finish(1, [e.id for e in es[:98]], clock())
        core.touch(1, [es[98].id], clock())
        core.finish(1, [es[98].id], clock())
        stragglers.append(es[99].key)  # held to the end: must survive compaction
        assert core._recorded <= 2 * core.in_flight + core.compact_slack + 100
        clock.advance(0.001)
    assert core.in_flight == 500
    check(core)
    assert core.next_wakeup() == pytest.approx(1030.0)
    outcomes = core.tick(clock.advance(30))
    assert sorted(o.entry.key for o in outcomes) == stragglers
    assert core.in_flight == 0
    assert core._recorded == 0
    check(core)


def test_next_wakeup_skips_stale_heads(clock: Clock) -> None:
    core = make(clock, clients={1: 10.0, 2: 20.0}, rdy=1)
    core.push(entries(1, 2), clock())
    held = {cid: es[0].id for cid, es in core.take(clock())}
    assert core.next_wakeup() == 1010.0
    core.finish(1, [held[1]], clock())
    assert core.next_wakeup() == 1020.0
    core.requeue(2, [held[2]], 3.0, clock())
    assert core.next_wakeup() == 1003.0
