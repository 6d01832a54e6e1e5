"""Deterministic tests of the pair state machine (``pair/core.py``), with a fake clock.

Times are plain floats handed to the core; nothing sleeps and nothing opens a
socket. ``Harness`` plays this broker's I/O layer and a scripted partner: we
tick every ``TICK`` and send a batch every ``HEARTBEAT``; a live partner's
batch reaches us ``LATENCY`` later (``on_heard`` + ``on_grant``, as we ack it)
together with its ack of our batch (``on_ack``). A TAKE_OVER is completed at
once (``on_takeover_done``). Tests that need an exact boundary use dyadic
times (1/64 s steps, lease 0.75 s) so the running clock adds up exactly.
"""

from __future__ import annotations

import itertools

import pytest

from pairq.broker.pair.core import (
    EPOCH,
    LEFT_SOLO,
    PAIRED,
    RESET_LINK,
    RESUMED,
    SOLO,
    STALE_VERDICT,
    TAKE_OVER,
    TAKING_OVER,
    Action,
    PairCore,
)

LEASE = 0.8
ACK_TIMEOUT = 1.6
TICK = 0.02
BEAT_TICKS = 5  # a heartbeat (batch) every 0.1 s
HEARTBEAT = BEAT_TICKS * TICK
LATENCY = 0.004
T0 = 1000.0

# Exact arithmetic for boundary tests: every time and sum below is a dyadic float.
D0 = 1024.0
DSTEP = 1 / 64
DLEASE = 0.75
DACK = 1.5


def kinds(actions: list[Action]) -> list[str]:
    return [a.kind for a in actions]


def make(now: float = T0, **kw: float | bool) -> PairCore:
    core = PairCore(lease=LEASE, ack_timeout=ACK_TIMEOUT, now=now, **kw)  # type: ignore[arg-type]
    core.check_invariants()
    return core


def dyadic(**kw: float | bool) -> PairCore:
    return PairCore(lease=DLEASE, ack_timeout=DACK, now=D0, **kw)  # type: ignore[arg-type]


def solo(core: PairCore, now: float) -> float:
    """Drive a core into SOLO by ticking through a lease of silence from ``now``;
    returns the time of the last call."""
    t = now
    while core.mode == PAIRED:
        t += TICK
        if TAKE_OVER in kinds(core.tick(t)):
            assert kinds(core.on_takeover_done(t)) == [EPOCH]
    assert core.mode == SOLO
    return t


def tick_until(core: PairCore, start: float, end: float) -> list[str]:
    """Tick every TICK after ``start`` up to ``end`` (a running process); returns the kinds."""
    out: list[str] = []
    n = 1
    while start + n * TICK <= end + 1e-9:
        out += kinds(core.tick(start + n * TICK))
        n += 1
    return out


class Harness:
    """This broker's core, its clock and a scripted partner (see the module docstring)."""

    def __init__(self, now: float = T0, *, catalog_ready: bool = True) -> None:
        self.base = now  # self.t = base + k * TICK, so no float drift over long runs
        self.k = 0
        self.core = make(now, catalog_ready=catalog_ready)
        self.log: list[tuple[float, Action]] = []
        self.takeover_at: list[float] = []
        self.granted_at_takeover: list[float] = []
        self.last_sent: float | None = None
        self.pending = False  # a batch of ours is unacknowledged
        self.last_heard = now  # the core counts silence from its creation

    @property
    def t(self) -> float:
        return self.base + self.k * TICK

    def kinds(self, since: int = 0) -> list[str]:
        return [a.kind for _, a in self.log[since:]]

    def count(self, kind: str, since: int = 0) -> int:
        return self.kinds(since).count(kind)

    def record(self, now: float, actions: list[Action]) -> list[str]:
        self.log.extend((now, a) for a in actions)
        if TAKE_OVER in kinds(actions):
            assert self.core.mode == TAKING_OVER
            self.takeover_at.append(now)
            self.granted_at_takeover.append(self.core.granted_until)
            done = self.core.on_takeover_done(now)
            assert kinds(done) == [EPOCH]
            self.log.extend((now, a) for a in done)
        self.core.check_invariants()
        return kinds(actions)

    def tick(self) -> list[str]:
        """Tick at ``t`` (sending our batch if a heartbeat is due) and move to the next tick."""
        now = self.t
        if self.k % BEAT_TICKS == 0:
            self.last_sent = now
            self.pending = True
        out = self.record(now, self.core.tick(now, unacked=self.pending))
        self.k += 1
        return out

    def partner_speaks(self, now: float, *, acks: float | None = None) -> list[str]:
        """The partner's batch arrives (we hear it and ack it: a promise) with its ack
        of our batch sent at ``acks`` (default: our latest)."""
        self.core.on_heard(now)
        self.core.on_grant(now)
        self.last_heard = now
        sent = self.last_sent if acks is None else acks
        if sent is None:
            return []
        out = self.record(now, self.core.on_ack(sent, LEASE, now))
        if acks is None:
            self.pending = False
        return out

    def step(self, *, partner: bool) -> None:
        now = self.t
        beat = self.k % BEAT_TICKS == 0
        self.tick()
        if partner and beat:
            self.partner_speaks(now + LATENCY)

    def run(self, seconds: float, *, partner: bool = True) -> None:
        for _ in range(round(seconds / TICK)):
            self.step(partner=partner)

    def silent_then_heard(self, seconds: float) -> str:
        """The partner says nothing for ``seconds`` after it was last heard while we keep
        ticking and sending; then its next batch and ack arrive. Returns our mode just
        before that."""
        back = self.last_heard + seconds
        while self.t < back:
            self.step(partner=False)
        mode = self.core.mode
        self.partner_speaks(back)
        return mode

    def pause(self, seconds: float) -> float:
        """This process gets no calls for ``seconds``; returns the time it resumes at."""
        self.base += seconds
        return self.t


# ------------------------------------------------------------------ construction


def test_rejects_non_positive_lease_or_ack_timeout() -> None:
    with pytest.raises(ValueError):
        PairCore(lease=0, ack_timeout=1.0, now=T0)
    with pytest.raises(ValueError):
        PairCore(lease=0.8, ack_timeout=-1.0, now=T0)


def test_fresh_core_is_paired_without_a_lease() -> None:
    core = make()
    assert core.mode == PAIRED
    assert core.takeovers == 0
    assert core.max_gap == pytest.approx(0.25)  # min(0.25, lease / 3)
    assert not core.may_deliver(T0)
    assert core.lease_remaining(T0) == 0.0


# ------------------------------------------------------------------ lease


def test_ack_renews_the_lease_to_sent_at_plus_lease() -> None:
    core = make()
    assert core.on_ack(T0 + 0.1, LEASE, T0 + 0.15) == []
    assert core.lease_until == pytest.approx(T0 + 0.9)  # sent_at + lease, not ack time + lease
    assert core.may_deliver(T0 + 0.89)
    assert not core.may_deliver(T0 + 0.9)
    assert core.lease_remaining(T0 + 0.5) == pytest.approx(0.4)
    assert core.lease_remaining(T0 + 3.0) == 0.0
    core.on_ack(T0 + 0.2, LEASE, T0 + 0.25)  # the next ack moves the fence with it
    assert core.may_deliver(T0 + 0.95)
    assert not core.may_deliver(T0 + 1.0)
    core.check_invariants()


def test_an_older_ack_never_shortens_the_lease() -> None:
    core = make()
    core.on_ack(T0 + 0.3, LEASE, T0 + 0.31)
    core.on_ack(T0 + 0.1, LEASE, T0 + 0.32)  # acks of older batches arriving late
    core.on_ack(T0 + 0.2, 0.1, T0 + 0.33)  # and a shorter lease from the partner
    assert core.lease_until == pytest.approx(T0 + 1.1)


def test_the_ack_carries_the_partners_lease() -> None:
    core = make()
    core.on_ack(T0, 0.5, T0 + 0.01)
    assert core.lease_until == pytest.approx(T0 + 0.5)


def test_the_lease_lapses_on_the_real_clock_without_any_call() -> None:
    core = make()
    core.on_ack(T0, LEASE, T0 + 0.01)
    assert core.may_deliver(T0 + 0.5)
    assert not core.may_deliver(T0 + 5.0)  # a pause: no tick needed for the fence to close


def test_solo_delivers_without_a_lease_while_running() -> None:
    core = make()
    assert RESUMED not in tick_until(core, solo(core, T0), T0 + 100)
    assert core.lease_remaining(T0 + 100) == 0.0
    assert core.mode == SOLO
    assert core.may_deliver(T0 + 100)
    assert core.may_deliver(T0 + 100 + LEASE / 2 - 0.01)  # a short stall: still SOLO


def test_may_deliver_in_solo_asked_first_after_a_pause_is_false() -> None:
    # The delivery loop may ask before any event saw the pause (docstring "Pause").
    core = make()
    last = solo(core, T0)
    assert not core.may_deliver(last + LEASE / 2 + 0.001)
    assert not core.may_deliver(last + 60)
    assert core.mode == SOLO  # a query changes nothing...
    assert RESUMED in kinds(core.tick(last + 60))  # ...the next call applies the rule
    assert core.mode == PAIRED


# ------------------------------------------------------------------ epochs


def test_the_first_lease_of_a_run_and_its_renewals_keep_the_epoch() -> None:
    h = Harness()
    h.run(2.0)  # the first ack wins the first lease: a start moved the epoch already
    assert h.count(EPOCH) == 0
    assert h.core.may_deliver(h.t)


def test_winning_back_a_lapsed_lease_starts_a_new_epoch() -> None:
    core = make()
    assert core.on_ack(T0, LEASE, T0 + 0.01) == []  # lease until T0 + 0.8
    assert core.on_ack(T0 + 0.5, LEASE, T0 + 0.51) == []  # renewed while live: same term
    for i in range(1, 50):  # its batches arrive, our acks are lost: lapsed at T0 + 1.3
        core.tick(T0 + 0.51 + i * TICK)
        core.on_heard(T0 + 0.511 + i * TICK)
    assert not core.may_deliver(T0 + 1.5)
    assert core.on_ack(T0 + 0.6, LEASE, T0 + 1.5) == []  # an old batch: still lapsed
    assert kinds(core.on_ack(T0 + 1.45, LEASE, T0 + 1.51)) == [EPOCH]  # won back
    assert core.may_deliver(T0 + 1.51)
    assert core.on_ack(T0 + 1.5, LEASE, T0 + 1.52) == []
    assert core.mode == PAIRED
    assert core.takeovers == 0


def test_leaving_solo_keeps_the_takeovers_epoch() -> None:
    core = make()
    core.on_ack(T0, LEASE, T0 + 0.01)
    t = solo(core, T0 + 0.01)  # the takeover moved the epoch
    tick_until(core, t, T0 + 3.0)
    assert kinds(core.on_ack(T0 + 2.95, LEASE, T0 + 3.0)) == [LEFT_SOLO]


@pytest.mark.parametrize("pause", [1.0, 5.0])
def test_the_first_fresh_ack_after_a_pause_starts_a_new_epoch(pause: float) -> None:
    h = Harness()
    h.run(1.0)
    stopped = h.t
    h.pause(pause)
    h.tick()
    mark = len(h.log)
    h.partner_speaks(h.t, acks=stopped - TICK)  # queued ack of a batch from before
    assert h.count(EPOCH, mark) == 0
    h.run(0.2)
    assert h.count(EPOCH, mark) == 1
    assert h.core.may_deliver(h.t)


# ------------------------------------------------------------------ promise


def test_no_takeover_before_the_promise_expires() -> None:
    core = dyadic()
    core.on_grant(D0 + 0.5)  # we acked the partner: it may deliver until D0 + 1.25
    assert core.granted_until == D0 + 1.25
    t = D0
    while t < D0 + 1.25 - DSTEP / 2:
        t += DSTEP
        out = kinds(core.tick(t))
        if t < D0 + 1.25:
            assert TAKE_OVER not in out, f"takeover at {t - D0} inside the promise"
    assert t == D0 + 1.25
    assert TAKE_OVER in out  # silent since D0 (a grant is not hearing), promise now over
    core.check_invariants()


def test_the_promise_is_one_lease_from_the_latest_time_seen() -> None:
    core = make()
    core.tick(T0 + 1.0)
    core.on_grant(T0 + 0.5)  # a stale clock reading counts as the latest one
    assert core.granted_until == pytest.approx(T0 + 1.0 + LEASE)
    core.on_grant(T0 + 1.1)
    assert core.granted_until == pytest.approx(T0 + 1.1 + LEASE)
    core.check_invariants()


# ------------------------------------------------------------------ takeover


def test_takeover_after_exactly_a_lease_of_silence_then_solo_and_epoch() -> None:
    core = dyadic()
    for i in range(1, 48):  # 47/64 s of silence: not yet
        assert core.tick(D0 + i * DSTEP) == [], i
    out = core.tick(D0 + 48 * DSTEP)  # exactly 0.75 s
    assert kinds(out) == [TAKE_OVER]
    assert "silent" in out[0].reason
    assert core.mode == TAKING_OVER
    assert not core.may_deliver(D0 + 0.75)
    assert core.tick(D0 + 49 * DSTEP) == []  # one takeover at a time
    assert kinds(core.on_takeover_done(D0 + 50 * DSTEP)) == [EPOCH]
    assert core.mode == SOLO
    assert core.takeovers == 1
    assert core.may_deliver(D0 + 50 * DSTEP)
    for i in range(51, 200):  # SOLO never takes over again, however long the silence
        assert TAKE_OVER not in kinds(core.tick(D0 + i * DSTEP))
    core.check_invariants()


def test_failed_takeover_returns_to_paired_and_the_next_tick_retries() -> None:
    core = dyadic()
    for i in range(1, 48):
        assert core.tick(D0 + i * DSTEP) == []
    t = D0 + 48 * DSTEP
    assert kinds(core.tick(t)) == [TAKE_OVER]
    core.on_takeover_failed(t + DSTEP)
    assert core.mode == PAIRED
    assert core.takeovers == 0
    assert not core.may_deliver(t + DSTEP)
    assert kinds(core.tick(t + 2 * DSTEP)) == [TAKE_OVER]  # still silent: try again
    core.on_takeover_failed(t + 3 * DSTEP)
    core.on_takeover_failed(t + 3 * DSTEP)  # a late duplicate changes nothing
    assert core.mode == PAIRED


def test_takeover_done_outside_a_takeover_is_an_error() -> None:
    core = make()
    with pytest.raises(AssertionError):
        core.on_takeover_done(T0 + 1)
    solo(core, T0)
    with pytest.raises(AssertionError):
        core.on_takeover_done(T0 + 10)


@pytest.mark.parametrize("event", ["heard", "ack"])
def test_any_message_from_the_partner_restarts_the_silence(event: str) -> None:
    core = dyadic()
    for i in range(1, 200):
        t = D0 + i * DSTEP
        if i == 32:  # 0.5 s
            if event == "heard":
                core.on_heard(t)
            else:
                core.on_ack(t - 0.25, DLEASE, t)
        out = kinds(core.tick(t))
        if i < 32 + 48:
            assert TAKE_OVER not in out, i
        else:
            assert i == 80 and out == [TAKE_OVER]  # exactly a lease after the message
            break
    assert core.silence(D0 + 80 * DSTEP) == DLEASE


def test_gossip_verdict_does_not_shorten_the_lease() -> None:
    core = dyadic()
    core.on_gossip(True)
    for i in range(1, 48):
        assert core.tick(D0 + i * DSTEP) == []
    out = core.tick(D0 + 48 * DSTEP)
    assert kinds(out) == [TAKE_OVER]
    assert "gossip" in out[0].reason


@pytest.mark.parametrize("start", [PAIRED, SOLO])
def test_a_partner_with_a_new_store_id_is_taken_over_at_once(start: str) -> None:
    core = make()
    t = T0 + 0.1
    if start == SOLO:
        t = solo(core, T0)
    before = core.takeovers
    t += TICK
    out = core.on_new_identity(t)  # no silence or lease needed: its old identity is gone
    assert kinds(out) == [TAKE_OVER]
    assert "store id" in out[0].reason
    assert core.mode == TAKING_OVER
    assert core.silence(t) == 0.0  # its hello counts as hearing it
    assert core.on_new_identity(t + TICK) == []  # already taking over
    assert kinds(core.on_takeover_done(t + 2 * TICK)) == [EPOCH]
    assert core.mode == SOLO
    assert core.takeovers == before + 1
    core.check_invariants()


# ------------------------------------------------------------------ leaving SOLO


def test_ack_with_a_live_lease_leaves_solo() -> None:
    core = make()
    now = T0 + 5.0
    tick_until(core, solo(core, T0), now - 0.01)  # running (an ack after a pause: see below)
    assert kinds(core.on_ack(now - 0.1, LEASE, now)) == [LEFT_SOLO]
    assert core.mode == PAIRED
    assert core.may_deliver(now)  # now under the fresh lease
    assert not core.may_deliver(now + LEASE)
    assert core.takeovers == 1
    assert core.on_ack(now - 0.05, LEASE, now + 0.01) == []  # only once


def test_ack_of_a_batch_whose_lease_already_lapsed_ends_solo_but_grants_no_lease() -> None:
    core = make()
    now = T0 + 5.0
    tick_until(core, solo(core, T0), now - 0.01)
    # An old batch acked late: the partner is alive, so SOLO ends, but the ack's
    # lease has lapsed already, so we stay fenced until a fresh one.
    assert kinds(core.on_ack(now - 1.0, LEASE, now)) == [LEFT_SOLO]
    assert core.mode == PAIRED
    assert not core.may_deliver(now)


# ------------------------------------------------------------------ pauses


def test_a_gap_longer_than_max_gap_reports_resumed() -> None:
    core = dyadic()  # max_gap = min(0.25, 0.75 / 3) = 0.25
    assert core.max_gap == 0.25
    assert core.tick(D0 + 0.25) == []  # exactly max_gap: a slow loop, not a pause
    out = core.tick(D0 + 0.25 + 0.3125)
    assert kinds(out) == [RESUMED]
    assert out[0].gap == 0.3125
    assert core.mode == PAIRED


def test_a_short_stall_counts_at_most_max_gap_of_running_time() -> None:
    core = dyadic()  # lease / 2 = 0.375
    core.on_heard(D0 + 0.125)
    assert core.silence(D0 + 0.25) == 0.125
    assert core.silence(D0 + 60.0) == 0.25  # any gap counts max_gap at most
    out = core.tick(D0 + 0.125 + 0.3125)  # a stall longer than max_gap, under half a lease
    assert kinds(out) == [RESUMED] and out[0].gap == 0.3125
    assert core.silence(D0 + 0.4375) == 0.25  # counted, not restarted


def test_a_pause_of_half_a_lease_restarts_the_silence() -> None:
    core = dyadic()
    core.on_heard(D0 + 0.125)
    core.tick(D0 + 0.25)
    assert core.silence(D0 + 0.25) == 0.125
    core.on_grant(D0 + 0.25 + 0.375)  # any call: the first after the pause
    assert core.silence(D0 + 0.625) == 0.0  # a whole lease of running silence needed again
    assert kinds(core.tick(D0 + 0.625 + DSTEP)) == [RESUMED]  # reported by the next tick
    assert core.tick(D0 + 0.625 + 2 * DSTEP) == []


def test_the_tick_that_notices_a_stall_never_takes_over() -> None:
    core = dyadic()
    t = D0
    for _ in range(44):  # 0.6875 s of silence, ticking
        t += DSTEP
        assert core.tick(t) == []
    t += 0.3125  # stalled (under half a lease): 0.25 counted, silence now 0.9375 > lease
    assert kinds(core.tick(t)) == [RESUMED]  # but the partner's messages are unread
    core.on_heard(t + 0.001)  # they arrive: no takeover
    assert core.tick(t + DSTEP) == []
    # Without them the next tick would take over: the stall did count.
    core2 = dyadic()
    t = D0
    for _ in range(44):
        t += DSTEP
        core2.tick(t)
    core2.tick(t + 0.3125)
    assert kinds(core2.tick(t + 0.3125 + DSTEP)) == [TAKE_OVER]


def test_a_short_stall_keeps_solo() -> None:
    core = make()
    last = T0 + 2.0
    tick_until(core, solo(core, T0), last)
    out = core.tick(last + 0.3)  # a busy loop: the partner cannot have seen a lease of silence
    assert kinds(out) == [RESUMED]
    assert core.mode == SOLO
    assert core.may_deliver(last + 0.3)


def test_a_pause_ends_solo() -> None:
    core = make()
    assert TAKE_OVER not in tick_until(core, solo(core, T0), T0 + 3.0)
    assert core.tick(T0 + 3.02) == []  # the partner stays silent: we stay SOLO
    assert core.mode == SOLO
    out = core.tick(T0 + 8.0)  # stopped for 5 s
    assert kinds(out) == [RESUMED]
    assert out[0].gap == pytest.approx(4.98)
    assert core.mode == PAIRED
    assert not core.may_deliver(T0 + 8.0)  # only under a fresh lease from here on
    assert core.takeovers == 1


def test_a_pause_is_noticed_when_a_message_is_the_first_call_after_it() -> None:
    # After SIGCONT the reader task may run before the ticker: the partner's queued
    # messages are then the first calls. The gap still means "we were stopped", and
    # the partner may have taken our log meanwhile: SOLO must end (docstring "Pause").
    core = make()
    assert RESUMED not in tick_until(core, solo(core, T0), T0 + 3.0)
    assert core.mode == SOLO
    core.on_heard(T0 + 8.0)  # stopped for 5 s; the partner's queued batch is read first
    out = kinds(core.tick(T0 + 8.02))
    assert core.mode != SOLO, "the 5 s pause went unnoticed: still SOLO, delivering unfenced"
    assert not core.may_deliver(T0 + 8.02)
    assert RESUMED in out


# ------------------------------------------------------------------ ack timeout


def resets_of(
    core: PairCore, seconds: float, *, unacked: bool = True, event: tuple[float, str] | None = None
) -> list[float]:
    """Tick a dyadic core every DSTEP for ``seconds``; the times (from D0) of RESET_LINK.
    ``event`` = (time, "heard" | "ack") delivers one message from the partner."""
    out: list[float] = []
    for i in range(1, round(seconds / DSTEP) + 1):
        t = D0 + i * DSTEP
        if event is not None and event[0] == i * DSTEP:
            if event[1] == "heard":
                core.on_heard(t)
            else:
                core.on_ack(t - DSTEP, DLEASE, t)
        out += [i * DSTEP for a in core.tick(t, unacked=unacked) if a.kind == RESET_LINK]
        core.check_invariants()
    return out


def test_reset_link_only_while_unacknowledged() -> None:
    assert resets_of(dyadic(), 6.0, unacked=False) == []
    # Counted from the first tick that saw batches unacknowledged (the one at DSTEP).
    assert resets_of(dyadic(), 2.0)[:1] == [DSTEP + DACK]


def test_reset_link_at_most_once_per_ack_timeout() -> None:
    resets = resets_of(dyadic(), 10.0)
    assert len(resets) >= 5  # it keeps reconnecting while nothing is acknowledged...
    gaps = [b - a for a, b in itertools.pairwise(resets)]
    assert all(g >= DACK for g in gaps), gaps  # ...but never more often than ack_timeout
    assert all(g <= DACK + 2 * DSTEP for g in gaps), gaps


def test_an_ack_restarts_the_ack_timeout() -> None:
    resets = resets_of(dyadic(), 4.0, event=(1.0, "ack"))
    assert resets[:1] == [1.0 + DACK]  # from the first unacked tick after the ack (at 1.0)


def test_hearing_the_partners_stream_does_not_postpone_reset_link() -> None:
    # A one-way partition: its batches reach us, our batches (or its acks) are lost.
    assert resets_of(dyadic(), 2.0, event=(1.0, "heard")) == [DSTEP + DACK]


def test_a_pause_counts_at_most_max_gap_toward_the_ack_timeout() -> None:
    core = dyadic()
    core.tick(D0 + DSTEP, unacked=True)  # batches outstanding from here
    out = kinds(core.tick(D0 + 60.0, unacked=True))  # stopped for a minute
    assert RESET_LINK not in out


# ------------------------------------------------------------------ catalog gate


def test_catalog_gate() -> None:
    assert make().catalog_ready
    core = make(catalog_ready=False)
    assert not core.catalog_ready
    core.tick(T0 + 0.1)
    assert not core.catalog_ready  # nothing but the catalog opens the gate
    core.on_catalog(T0 + 0.2)
    assert core.catalog_ready
    assert core.mode == PAIRED
    core.check_invariants()


# ------------------------------------------------------------------ clock


def test_an_older_now_counts_as_the_latest_one_seen() -> None:
    core = make()
    core.tick(T0 + 1.0)
    assert core.tick(T0 + 0.5) == []  # no negative gap, no RESUMED
    core.on_heard(T0 + 0.2)
    assert core.silence(T0 + 1.0) == 0.0
    assert core.tick(T0 + 1.0 + 0.2) == []  # the gap is measured from T0 + 1.0
    core.check_invariants()


def test_may_deliver_with_an_older_now_uses_the_latest_time_seen() -> None:
    # The docstring: "an older value than one seen is treated as the latest one seen".
    # The fence query must not open again for a stale clock reading.
    core = make()
    core.on_ack(T0, LEASE, T0 + 0.01)  # lease until T0 + 0.8
    core.tick(T0 + 1.0)  # the core has seen T0 + 1.0: the lease has lapsed
    assert not core.may_deliver(T0 + 0.5), "the fence opened for a stale now"
    assert core.lease_remaining(T0 + 0.5) == 0.0


# ------------------------------------------------------------------ partner silence


@pytest.mark.parametrize("silence", [0.1, 0.5, 1.0, 3.0, 5.0, 30.0, 120.0])
def test_partner_silent_then_heard_again(silence: float) -> None:
    h = Harness()
    h.run(1.0)
    assert h.core.mode == PAIRED and h.core.may_deliver(h.t)
    mark = len(h.log)
    last_heard = h.last_heard
    mode_before = h.silent_then_heard(silence)
    taken = silence >= LEASE
    assert h.count(TAKE_OVER, mark) == int(taken)
    # A takeover is one epoch; the lease won back once the partner is heard is the next.
    assert h.count(EPOCH, mark) == 2 * int(taken)
    assert h.core.takeovers == int(taken)
    if taken:
        at = h.takeover_at[0]
        assert LEASE <= at - last_heard < LEASE + TICK + 1e-9  # the first tick after a lease
        assert h.granted_at_takeover[0] <= at  # the partner's lease from us had lapsed
        assert mode_before == SOLO
        # Its batch (heard: SOLO ends) and its ack of our latest batch: lease live again.
        assert h.core.mode == PAIRED and h.core.may_deliver(h.t)
    else:
        assert mode_before == PAIRED
        assert LEFT_SOLO not in h.kinds(mark)
    # An ack timeout's worth of silence with batches outstanding resets the link.
    resets = h.count(RESET_LINK, mark)
    assert (resets > 0) == (silence >= ACK_TIMEOUT)
    assert resets <= silence / ACK_TIMEOUT + 1
    h.run(1.0)
    assert h.core.mode == PAIRED
    assert h.core.may_deliver(h.t)
    assert h.core.takeovers == int(taken)
    assert h.count(TAKE_OVER, mark) == int(taken)


# ------------------------------------------------------------------ pause of this process


@pytest.mark.parametrize("pause", [0.3, 1.0, 5.0, 30.0, 120.0])
def test_pause_of_this_process_while_paired(pause: float) -> None:
    h = Harness()
    h.run(1.0)
    stopped = h.t
    before = h.core.lease_until
    resumed = h.pause(pause)
    mark = len(h.log)
    first = h.tick()  # the ticker runs first; the partner's messages are still queued
    assert RESUMED in first
    gap = next(a.gap for _, a in h.log[mark:] if a.kind == RESUMED)
    assert gap >= pause > h.core.max_gap
    assert TAKE_OVER not in first
    assert h.core.may_deliver(resumed) == (resumed < before)
    if pause > LEASE:
        assert not h.core.may_deliver(resumed)  # the lease ran out while we were stopped
    # What the partner sent meanwhile is read a few ms later: the ack of a batch we
    # sent before stopping cannot renew the lease.
    h.partner_speaks(resumed + 0.003, acks=stopped - TICK)
    for _ in range(3):
        assert TAKE_OVER not in h.tick()
    h.run(2.0)
    assert h.count(TAKE_OVER, mark) == 0
    assert h.core.mode == PAIRED
    assert h.core.may_deliver(h.t)  # fresh acks, fresh lease


@pytest.mark.parametrize("pause", [0.3, 1.0, 5.0, 30.0, 120.0])
def test_pause_of_this_process_while_solo(pause: float) -> None:
    # The partner died, we took over; then we were stopped. Meanwhile the partner came
    # back (and, for the long pauses, saw us silent and took our log over); its
    # messages wait in our sockets.
    h = Harness()
    h.run(1.0)
    back = h.last_heard + 2.0
    while h.t < back:
        h.step(partner=False)
    assert h.core.mode == SOLO and h.core.takeovers == 1
    stopped = h.t
    resumed = h.pause(pause)
    mark = len(h.log)
    first = h.tick()
    assert RESUMED in first
    assert TAKE_OVER not in first, (
        "took over on the first tick after a pause, before reading the partner's queued messages"
    )
    if pause >= LEASE / 2:
        assert h.core.mode == PAIRED  # SOLO ends on resume
        assert not h.core.may_deliver(resumed)
    else:  # a stall too short for the partner to have seen a lease of silence
        assert h.core.mode == SOLO
        assert h.core.may_deliver(resumed)
    h.partner_speaks(resumed + 0.003, acks=stopped - TICK)
    for _ in range(3):
        assert TAKE_OVER not in h.tick()
    h.run(2.0)
    assert h.count(TAKE_OVER, mark) == 0
    assert h.core.takeovers == 1
    assert h.core.mode == PAIRED
    assert h.core.may_deliver(h.t)


def test_resume_after_a_short_silence_never_takes_over_on_the_first_tick() -> None:
    # Docstring: "a resumed broker never takes over on resume: it must hear nothing for
    # a whole lease while running first". The partner was quiet for 0.6 s (< lease),
    # then we were stopped for 5 s while it kept sending.
    h = Harness()
    h.run(1.0)
    quiet_until = h.last_heard + 0.6
    while h.t < quiet_until:
        h.step(partner=False)
    assert h.core.takeovers == 0
    stopped = h.t
    resumed = h.pause(5.0)
    first = h.tick()
    assert RESUMED in first
    assert TAKE_OVER not in first, (
        f"took over on resume after {h.core.silence(resumed):.2f} s of counted silence, "
        f"of which only {stopped - TICK - h.last_heard:.2f} s running"
    )
    h.partner_speaks(resumed + 0.003, acks=stopped - TICK)
    h.run(1.0)
    assert h.core.takeovers == 0


# ------------------------------------------------------------------ both paused at once


class TwoCores:
    """Both brokers of a pair on one clock, exchanging a batch each way per heartbeat."""

    def __init__(self, now: float = T0) -> None:
        self.base = now
        self.k = 0
        self.cores = {n: make(now) for n in "AB"}
        self.log: list[tuple[str, float, str]] = []

    @property
    def t(self) -> float:
        return self.base + self.k * TICK

    def record(self, name: str, now: float, actions: list[Action]) -> None:
        for a in actions:
            self.log.append((name, now, a.kind))
            if a.kind == TAKE_OVER:
                self.cores[name].on_takeover_done(now)
        self.cores[name].check_invariants()

    def exchange(self, now: float) -> None:
        """Each sends a batch at ``now``; the other hears and acks it; acks come back."""
        for core in self.cores.values():
            core.on_heard(now + LATENCY)
            core.on_grant(now + LATENCY)
        for name, core in self.cores.items():
            self.record(name, now + 2 * LATENCY, core.on_ack(now, LEASE, now + 2 * LATENCY))

    def step(self, *, exchange: bool = True) -> None:
        now = self.t
        for name, core in self.cores.items():
            self.record(name, now, core.tick(now))
        if exchange and self.k % BEAT_TICKS == 0:
            self.exchange(now)
        self.k += 1

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / TICK)):
            self.step()

    def kinds(self, name: str) -> list[str]:
        return [k for n, _, k in self.log if n == name]


def test_both_brokers_paused_at_once_neither_takes_over() -> None:
    pair = TwoCores()
    pair.run(1.0)
    pair.base += 3.0  # neither process gets a call for 3 s
    resumed = pair.t
    a, b = pair.cores["A"], pair.cores["B"]
    pair.record("A", resumed, a.tick(resumed))
    pair.record("B", resumed + 0.001, b.tick(resumed + 0.001))
    assert not a.may_deliver(resumed + 0.001) and not b.may_deliver(resumed + 0.001)
    pair.exchange(resumed + 0.002)  # they hear each other within a few ms
    pair.k += 1
    pair.run(2.0)
    for name, core in pair.cores.items():
        assert RESUMED in pair.kinds(name)
        assert TAKE_OVER not in pair.kinds(name), name
        assert core.takeovers == 0
        assert core.mode == PAIRED
        assert core.may_deliver(pair.t)


# ------------------------------------------------------------------ link flapping


@pytest.mark.parametrize("silence", [0.3, 0.7, 0.78])
def test_link_flapping_twenty_times(silence: float) -> None:
    h = Harness()
    h.run(1.0)
    mark = len(h.log)
    for _ in range(20):
        assert h.silent_then_heard(silence) == PAIRED
        h.run(0.2)  # heard again for a couple of heartbeats
    assert h.count(TAKE_OVER, mark) == 0
    assert h.count(RESET_LINK, mark) == 0  # no storm: never an ack timeout of silence
    assert h.core.mode == PAIRED
    assert h.core.may_deliver(h.t)


# ------------------------------------------------------------------ restart


@pytest.mark.parametrize("catalog_ready", [True, False])
def test_restart_no_takeover_while_the_partner_is_heard_within_a_lease(
    catalog_ready: bool,
) -> None:
    # A new core, as after a restart (or a re-filled broker waiting for the catalog).
    h = Harness(T0 + 500.0, catalog_ready=catalog_ready)
    assert not h.core.may_deliver(h.t)  # no lease until the partner acks
    assert h.core.catalog_ready is catalog_ready
    for _ in range(15):
        assert h.silent_then_heard(0.7) == PAIRED
    assert h.count(TAKE_OVER) == 0
    assert h.core.may_deliver(h.t)  # its ack of our latest batch
    assert h.core.mode == PAIRED


def test_restart_with_a_silent_partner_takes_over_only_after_a_full_lease() -> None:
    start = T0 + 500.0
    h = Harness(start)
    h.run(3.0, partner=False)
    assert h.takeover_at and LEASE <= h.takeover_at[0] - start < LEASE + TICK + 1e-9
    assert h.core.takeovers == 1 and h.core.mode == SOLO


# ------------------------------------------------------------------ witnessed takeover (issue 10)


def silent_ticks(core: PairCore, start: float, seconds: float) -> list[str]:
    """Tick every DSTEP for ``seconds`` without hearing the partner; every action kind."""
    out: list[str] = []
    n = int(seconds / DSTEP)
    for i in range(1, n + 1):
        out += kinds(core.tick(start + i * DSTEP))
    return out


def test_with_witnesses_a_lapsed_lease_alone_never_takes_over() -> None:
    # A pair-link partition (or this broker cut off from everyone): the lease lapses,
    # but gossip has no verdict, or only our own.
    core = dyadic()
    core.heard_ever = True
    core.witnesses_exist = True
    assert TAKE_OVER not in silent_ticks(core, D0, 5.0)
    core.on_gossip(True, witnessed=False)  # our own view only: what an isolated broker sees
    assert TAKE_OVER not in silent_ticks(core, D0 + 5.0, 5.0)
    assert core.mode == PAIRED and not core.may_deliver(D0 + 10.0)


def test_with_witnesses_a_witnessed_verdict_and_a_lapsed_lease_take_over() -> None:
    core = dyadic()
    core.heard_ever = True
    core.witnesses_exist = True
    core.on_gossip(True, witnessed=True)  # before the lease lapsed: it still waits for it
    out = silent_ticks(core, D0, DLEASE - DSTEP)
    assert TAKE_OVER not in out
    assert kinds(core.tick(D0 + DLEASE)) == [TAKE_OVER]


def test_alive_again_withdraws_the_verdict() -> None:
    core = dyadic()
    core.heard_ever = True
    core.witnesses_exist = True
    core.on_gossip(True, witnessed=True)
    core.on_gossip(False)
    assert TAKE_OVER not in silent_ticks(core, D0, 3.0)


def test_an_ack_of_a_batch_sent_after_the_verdict_sets_it_aside() -> None:
    """smoke seed 1 in CI (session 15): a verdict from before the partner came back
    must not arm a takeover of the live partner at its next silence."""
    core = dyadic()
    core.heard_ever = True
    core.witnesses_exist = True
    core.on_gossip(True, witnessed=True, now=D0)
    # An ack of a batch sent before the verdict proves nothing about after it.
    assert STALE_VERDICT not in kinds(core.on_ack(D0 - DSTEP, DLEASE, D0 + DSTEP))
    assert core.gossip_dead and core.gossip_witnessed
    # One sent after it does: the partner was alive after gossip's verdict.
    assert STALE_VERDICT in kinds(core.on_ack(D0 + DSTEP, DLEASE, D0 + 2 * DSTEP))
    assert not core.gossip_dead and not core.gossip_witnessed
    core.check_invariants()
    start = D0 + 2 * DSTEP
    # Gossip revives the partner within the grace: its word replaces the verdict.
    core.on_gossip(False, now=start)
    assert TAKE_OVER not in silent_ticks(core, start, 5.0)
    assert core.mode == PAIRED and not core.may_deliver(start + 5.0)
    # A new verdict arms it again.
    core.on_gossip(True, witnessed=True, now=start + 5.0)
    assert kinds(core.tick(start + 5.0 + DSTEP)) == [TAKE_OVER]


def test_a_verdict_set_aside_stands_again_if_gossip_never_revives_the_partner() -> None:
    """The partner acked after the verdict, then died before gossip saw it alive:
    gossip still holds it dead and says nothing new, so after ``stale_grace`` the
    verdict stands again (its messages wait that long, not forever)."""
    core = dyadic(stale_grace=2.0)
    core.heard_ever = True
    core.witnesses_exist = True
    core.on_gossip(True, witnessed=True, now=D0)
    assert STALE_VERDICT in kinds(core.on_ack(D0 + DSTEP, DLEASE, D0 + DSTEP))
    out = silent_ticks(core, D0 + DSTEP, 2.0 - 2 * DSTEP)
    assert TAKE_OVER not in out, "took over on a verdict set aside"
    assert kinds(core.tick(D0 + 2.0 + DSTEP)) == [TAKE_OVER]
    assert core.gossip_dead and core.gossip_witnessed
    core.check_invariants()


def test_without_witnesses_the_lease_alone_decides() -> None:
    core = dyadic()
    core.heard_ever = True
    assert not core.witnesses_exist
    assert TAKE_OVER in silent_ticks(core, D0, DLEASE + DSTEP)


def test_startup_grace_for_a_partner_never_heard() -> None:
    core = PairCore(lease=DLEASE, ack_timeout=2 * DLEASE, now=D0, startup_grace=4 * DLEASE)
    out = silent_ticks(core, D0, 4 * DLEASE - DSTEP)
    assert TAKE_OVER not in out  # the second broker of a pair may start a few seconds later
    assert kinds(core.tick(D0 + 4 * DLEASE)) == [TAKE_OVER]


def test_startup_grace_ends_once_the_partner_was_heard() -> None:
    core = PairCore(lease=DLEASE, ack_timeout=2 * DLEASE, now=D0, startup_grace=4 * DLEASE)
    core.on_heard(D0 + DSTEP)
    out = silent_ticks(core, D0 + DSTEP, DLEASE + DSTEP)
    assert out.count(TAKE_OVER) == 1  # a lease of silence after it was heard is enough
