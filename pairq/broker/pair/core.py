"""The pair's decisions as one pure state machine: lease, silence, pauses, takeover.

Every decision a broker makes about its partner lives here (DESIGN.md
"Pairs"); the rest of the package (``pairq.broker.pair``) owns the sockets,
the store and the tasks, feeds this object events and carries out the
actions it returns. The object does no I/O, starts no tasks and never reads
a clock: every method takes ``now`` (seconds of a monotonic clock,
non-decreasing; an older value than one seen is treated as the latest one
seen).

Interface::

    core = PairCore(lease=0.8, ack_timeout=1.6, now=t, catalog_ready=True)

    core.tick(now, unacked=bool) -> list[Action]   # call every few tens of ms
    core.on_ack(sent_at, lease, now) -> list[Action]  # the partner acked a batch sent at sent_at
    core.on_heard(now)                          # any message from the partner (inbound stream)
    core.on_grant(now)                          # we acked the partner: promise made
    core.on_takeover_done(now) -> list[Action]
    core.on_takeover_failed(now)
    core.on_new_identity(now) -> list[Action]   # the partner returned with a new store id
    core.on_catalog(now)                        # the pair's catalog is here (see below)
    core.on_gossip(dead, witnessed=False, now=t)  # gossip's verdict on the partner
    core.witnesses_exist = True                 # gossip knows members besides the pair

    core.may_deliver(now) -> bool               # the delivery fence
    core.lease_remaining(now) -> float
    core.mode                                   # PAIRED | TAKING_OVER | SOLO
    core.catalog_ready, core.takeovers, core.check_invariants()

Modes and every transition (nothing else changes ``mode``)::

    PAIRED      --tick: partner silent >= lease, promise expired-->  TAKING_OVER  (TAKE_OVER)
    PAIRED|SOLO --on_new_identity-->                                 TAKING_OVER  (TAKE_OVER)
    TAKING_OVER --on_takeover_done-->                                SOLO         (EPOCH)
    TAKING_OVER --on_takeover_failed-->                              PAIRED
    SOLO        --on_ack-->                                          PAIRED       (LEFT_SOLO)
    SOLO        --on_heard (the partner's own stream reaches us)-->  PAIRED
    PAIRED      --on_ack winning back a lapsed lease-->              PAIRED       (EPOCH)
    SOLO        --any call after a pause of half a lease or more-->  PAIRED       (RESUMED at the next tick)

Rules (tests/unit/test_pair_core*.py check each one):

- Lease (the fence). The partner's ack of a batch sent at ``sent_at``
  renews our lease to ``sent_at + lease`` (the partner acked at or after
  ``sent_at``, and promised not to take over before ack time + lease, so the
  two never deliver the same message under live leases). ``may_deliver`` is
  true while the lease is live, or in SOLO (we took over: the partner is
  gone). The lease runs on the real clock, so a pause of this process makes
  it lapse like any other silence.
- Epochs. Each time the lease is won back after it lapsed (not the first
  lease of a run: a start moves the epoch already), ``on_ack`` returns EPOCH:
  the deliveries of one unbroken lease form one term, so no delivery under
  an epoch can come after that epoch's lease lapsed. A takeover moves the
  epoch too.
- Promise. ``on_grant`` records that we granted the partner a lease until
  ``now + lease``; we never start a takeover before that instant.
- Silence is measured in *running* time. Between two calls the core counts
  at most ``max_gap`` seconds: a process that was stopped (SIGSTOP, a host
  suspend, a VM migration, a loop stalled by load) cannot tell whether its
  partner spoke meanwhile, because the partner's messages are still unread
  in its sockets. So a resumed broker never takes over on resume: it must
  hear nothing for a whole lease while running first. Any message from the
  partner, in either direction (an ack on our stream, a batch on its),
  restarts the silence.
- Pause. A gap of more than ``max_gap`` between calls (any call: after
  SIGCONT a reader may run before the ticker) is reported by the next tick
  (RESUMED, with the gap), and that tick never takes over. A gap of half a
  lease or more also restarts the silence and ends SOLO: while we were
  stopped the partner may have come back and, hearing nothing from us for a
  lease, taken our messages over; so we deliver again only under a fresh
  lease, or after we have seen the partner silent for a whole lease again (a
  new takeover, which bumps the epoch). ``may_deliver`` applies the same rule
  when it is asked first. Shorter stalls (a busy loop) keep SOLO: the partner
  cannot have seen us silent for a lease.
- Takeover. In PAIRED, once the partner has been silent for ``lease`` of
  running time and our promise has expired, the tick returns TAKE_OVER (and
  the mode is TAKING_OVER until the I/O layer reports the result), provided:
  - Witnessed (gossip with members besides the pair, ``witnesses_exist``):
    gossip has declared the partner dead on the evidence of at least one
    other member (``on_gossip(True, witnessed=True)``: a member that declared
    or confirmed it, or a helper that could not reach it either). A broker cut
    off from everyone hears no witness and never takes over; a partition of
    the pair's own link, with both brokers visible to the others, makes
    neither take over (both stay fenced, publishes fail with UNAVAILABLE,
    until it heals). The price: with every other member unreachable too, a
    dead partner's messages wait.
  - A verdict is about the silence it was given in: once the partner acks a
    batch we sent after gossip declared it dead, it was alive after the
    verdict, and the verdict is set aside (``gossip_dead`` false,
    STALE_VERDICT) until gossip speaks again, or for ``stale_grace`` at most.
    Otherwise a verdict from before a return (the partner killed or paused,
    taken over, back on the link before gossip's ALIVE reaches us) would arm a
    takeover of the live partner at its next pause or partition (chaos smoke
    seed 1, in CI). The grace is bounded because gossip revives a returned
    partner within a second or so, and a partner that died again before it did
    gets no new verdict (gossip still holds it dead): after the grace the
    verdict stands again, so its messages wait ``stale_grace``, not forever.
  - Start-up grace: a partner never heard from in this run must have been
    silent for ``startup_grace`` (not one lease): the second broker of a
    pair often starts a moment after the first. A
  successful takeover counts, bumps the epoch (EPOCH) and enters SOLO. A
  partner that says hello with a new store id lost its disk: everything we
  hold of its old identity is ours at once (``on_new_identity``).
- Ack timeout. When batches have been waiting for an acknowledgement for
  ``ack_timeout`` of running time (counted from the first tick that saw them
  unacknowledged, restarted by every ack), the tick returns RESET_LINK: our
  link is dead or the partner stopped, so the sender drops the session
  (publishes waiting on it fail with UNAVAILABLE at once) and reconnects.
  Only acks count here: a partner whose own stream still reaches us (a
  one-way partition) does not keep a dead link of ours alive.
- Catalog gate. A broker whose store is new (a fresh or wiped disk) starts
  with ``catalog_ready`` false: it must not accept publishes or create
  channels until ``on_catalog`` (the partner's full channel list arrived),
  or it would create topics without the pair's channels.
"""

from __future__ import annotations

from dataclasses import dataclass

PAIRED = "paired"
TAKING_OVER = "taking_over"
SOLO = "solo"

# Action kinds
TAKE_OVER = "take_over"  # promote the partner's standby copies, then on_takeover_done
EPOCH = "epoch"  # a new ownership epoch: persist it, stamp it on deliveries
LEFT_SOLO = "left_solo"  # the partner is back and acknowledging
RESUMED = "resumed"  # this process was stopped for ``gap`` seconds
RESET_LINK = "reset_link"  # drop the outbound session and reconnect
STALE_VERDICT = "stale_verdict"  # the partner acked after gossip's dead verdict: set aside


@dataclass(frozen=True)
class Action:
    kind: str
    reason: str = ""
    gap: float = 0.0


class PairCore:
    """Lease, silence, pause and takeover decisions of one broker of a pair."""

    def __init__(
        self,
        *,
        lease: float,
        ack_timeout: float,
        now: float,
        catalog_ready: bool = True,
        max_gap: float | None = None,
        startup_grace: float = 0.0,
        stale_grace: float | None = None,
    ) -> None:
        if lease <= 0 or ack_timeout <= 0:
            raise ValueError("lease and ack_timeout must be > 0")
        self.lease = lease
        self.ack_timeout = ack_timeout
        # Longest step of the running clock between two calls (see "Silence").
        self.max_gap = min(0.25, lease / 3) if max_gap is None else max_gap
        self.mode = PAIRED
        self.catalog_ready = catalog_ready
        self.takeovers = 0
        self.gossip_dead = False
        self.gossip_witnessed = False
        self.verdict_at = 0.0  # real clock: when gossip's standing dead verdict came
        # A verdict set aside by a later ack (see "A verdict"): (witnessed, until when,
        # real clock), or None.
        self.stale_grace = 3 * lease if stale_grace is None else stale_grace
        self.set_aside: tuple[bool, float] | None = None
        self.witnesses_exist = False
        self.startup_grace = startup_grace
        self.heard_ever = False
        self.lease_until = 0.0  # real clock
        self.granted_until = 0.0  # real clock
        self._last = now  # real time of the latest call
        self._run = 0.0  # running time at ``_last``
        self.heard_run = 0.0  # running time when the partner was last heard
        self._stall_from: float | None = None  # running time unacked batches were first seen
        self._gap = 0.0  # the longest pause seen since the last tick (reported by it)

    # ------------------------------------------------------------ clocks
    def _advance(self, now: float) -> float:
        """Move both clocks to ``now``; return the real gap since the last call. Any
        call may be the first after a pause (after SIGCONT a reader may run before
        the ticker), so the pause rule applies here; the next tick reports it."""
        gap = now - self._last
        if gap <= 0:
            return 0.0
        self._run += min(gap, self.max_gap)
        self._last = now
        if gap > self.max_gap:
            self._gap = max(self._gap, gap)
            if gap >= self.lease / 2:
                # Long enough for the partner to have acted: give it a whole lease
                # to be heard again, and stop delivering unfenced.
                self.heard_run = self._run
                if self.mode == SOLO:
                    self.mode = PAIRED
        return gap

    def silence(self, now: float) -> float:
        """Running time since the partner was last heard (as of ``now``)."""
        gap = max(0.0, now - self._last)
        return self._run + min(gap, self.max_gap) - self.heard_run

    # ------------------------------------------------------------ events
    def tick(self, now: float, *, unacked: bool = False) -> list[Action]:
        self._advance(now)
        now = self._last
        out: list[Action] = []
        if self.set_aside is not None and now >= self.set_aside[1]:
            # Gossip never revived the partner: its verdict stands again.
            self.gossip_dead, self.gossip_witnessed = True, self.set_aside[0]
            self.verdict_at, self.set_aside = now, None
        resumed = self._gap > 0
        if resumed:
            out.append(Action(RESUMED, gap=self._gap))
            self._gap = 0.0
        silent = self._run - self.heard_run
        if not unacked:
            self._stall_from = None
        elif self._stall_from is None:
            self._stall_from = self._run
        elif self._run - self._stall_from >= self.ack_timeout:
            out.append(
                Action(
                    RESET_LINK,
                    reason=(f"no acknowledgement for {self._run - self._stall_from:.2f} s"),
                )
            )
            self._stall_from = None
        # Never on the tick that noticed a pause: what the partner sent meanwhile is
        # still unread in our sockets (the readers run before the next tick).
        if (
            self.mode == PAIRED
            and not resumed
            and silent >= self.lease
            and now >= self.granted_until
            and self._may_take_over(silent)
        ):
            self.mode = TAKING_OVER
            why = f"partner silent for {silent:.2f} s (lease {self.lease:.2f} s lapsed)"
            if self.gossip_dead:
                why += "; gossip declared it dead" + (
                    " (witnessed by other members)" if self.gossip_witnessed else ""
                )
            out.append(Action(TAKE_OVER, reason=why))
        return out

    def _may_take_over(self, silent: float) -> bool:
        if not self.heard_ever and silent < self.startup_grace:
            return False
        if self.witnesses_exist:
            return self.gossip_dead and self.gossip_witnessed
        return True

    def on_heard(self, now: float) -> None:
        self._advance(now)
        self.heard_run = self._run
        self.heard_ever = True
        if self.mode == SOLO:
            # SOLO rests on "the partner is gone"; hearing it disproves that (it may
            # be cut off from us one way and about to take our log over): deliver
            # again only under its acks.
            self.mode = PAIRED

    def on_ack(self, sent_at: float, lease: float, now: float) -> list[Action]:
        self._advance(now)
        self.heard_run = self._run
        self.heard_ever = True
        self._stall_from = None
        had = self.lease_until
        self.lease_until = max(self.lease_until, sent_at + lease)
        out: list[Action] = []
        if self.gossip_dead and sent_at > self.verdict_at:
            # Alive after gossip's verdict: the verdict is stale (see "A verdict").
            self.set_aside = (self.gossip_witnessed, self._last + self.stale_grace)
            self.gossip_dead = self.gossip_witnessed = False
            self.verdict_at = 0.0
            out.append(Action(STALE_VERDICT))
        if had and had <= self._last < self.lease_until and self.mode != SOLO:
            out.append(Action(EPOCH))  # a new term: the lapsed one's deliveries are over
        if self.mode == SOLO:  # the partner is back (a stale ack too: it is alive)
            self.mode = PAIRED
            out.append(Action(LEFT_SOLO))
        return out

    def on_grant(self, now: float) -> None:
        self._advance(now)
        self.granted_until = max(self.granted_until, self._last + self.lease)

    def on_takeover_done(self, now: float) -> list[Action]:
        self._advance(now)
        if self.mode != TAKING_OVER:
            raise AssertionError(f"takeover finished in mode {self.mode}")
        self.mode = SOLO
        self.takeovers += 1
        return [Action(EPOCH)]

    def on_takeover_failed(self, now: float) -> None:
        self._advance(now)
        if self.mode == TAKING_OVER:
            self.mode = PAIRED

    def on_new_identity(self, now: float) -> list[Action]:
        self.on_heard(now)
        if self.mode == TAKING_OVER:
            return []
        self.mode = TAKING_OVER
        return [
            Action(TAKE_OVER, reason="partner came back with a new store id (its disk was wiped)")
        ]

    def on_catalog(self, now: float) -> None:
        self._advance(now)
        self.catalog_ready = True

    def on_gossip(self, dead: bool, *, witnessed: bool = False, now: float | None = None) -> None:
        """Gossip's verdict: the partner is dead (``witnessed``: on the evidence of
        another member), or alive again; given at ``now`` (None: the latest call's)."""
        if now is not None:
            self._advance(now)
        self.gossip_dead = dead
        self.gossip_witnessed = dead and witnessed
        self.verdict_at = self._last if dead else 0.0
        self.set_aside = None  # gossip spoke again: its word is the latest

    # ------------------------------------------------------------ queries
    def may_deliver(self, now: float) -> bool:
        now = max(now, self._last)
        if self.mode == SOLO:
            # A query may come first after a pause, before any event applied it.
            return now - self._last < self.lease / 2
        return now < self.lease_until

    def lease_remaining(self, now: float) -> float:
        return max(0.0, self.lease_until - max(now, self._last))

    def check_invariants(self) -> None:
        """Verify the bookkeeping (for tests). Raises AssertionError."""
        assert self.mode in (PAIRED, TAKING_OVER, SOLO), self.mode
        assert self.heard_run <= self._run + 1e-9, "heard in the future"
        assert self._run >= 0 and self.takeovers >= 0
        assert self.granted_until <= self._last + self.lease + 1e-9, "promise beyond one lease"
        assert self.gossip_dead or not self.gossip_witnessed, "witnessed but not dead"
        assert self.gossip_dead or self.verdict_at == 0.0, "a verdict time without a verdict"
        assert not (self.gossip_dead and self.set_aside), "a verdict both standing and set aside"
