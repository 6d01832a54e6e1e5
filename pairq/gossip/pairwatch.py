"""pairq's pair fast path: the rules that give a broker's partner a fast verdict.

Pure and sans-IO, like :mod:`pairq.gossip.core` which drives it: no clock (every
call takes ``now``), no sockets, no randomness. :class:`PairWatches` holds one
:class:`Watch` per watched member and the sequence numbers of the probes sent
for them; :meth:`PairWatches.assess` applies the rules below to one watch and
says what to do (:class:`Step`). The core sends the heartbeats and probes it is
told to, feeds back what it hears, and turns a DEAD step into a DEAD verdict.

The rules:

- **Who is watched.** Members with the same non-empty metadata ``pair`` (the
  two brokers of a pair) watch each other from the moment either is known alive
  (:meth:`PairWatches.watch_partner`). A member without a pair (a lookup) picks
  ``watchers`` members on a hash ring and heartbeats them; a member receiving
  such heartbeats watches the sender (``watched``, :meth:`PairWatches.watch_heartbeater`).
  A watch is only ever started by the watched member's own heartbeat, and is
  dropped when those stop for ``watch_expire`` while the member still answers
  probes (it chose other watchers), or when it pairs up, or when the member is
  no longer alive or suspect (:func:`keep`). Differing views therefore cannot
  make a watcher declare a live member dead: the probes would be answered.
- **Heartbeats.** Partners heartbeat each other every ``pair_heartbeat_interval``;
  an unpaired member heartbeats its watchers every ``watch_heartbeat_interval``.
- **Silence.** Any heartbeat, ping or ack from the watched member (directly or
  relayed) resets its watch (:meth:`PairWatches.heard_from`): silence is counted
  from the last thing heard, and the evidence gathered so far is dropped.
- **Probing.** After ``suspect_after`` of silence (``pair_suspect_after``, or
  ``watch_suspect_after`` for a watch) the member is probed directly (UDP, plus
  TCP with ``tcp_fallback``) and through up to ``pair_probe_helpers`` other
  members, which answer with a nack if they cannot reach it either; probes are
  re-sent every ``pair_probe_interval`` while the silence lasts.
- **Slow verdict.** After ``dead_after`` of silence it is DEAD when no probe got
  an ack, at least min(2, others available) helpers were asked, the TCP probe
  was tried (with ``tcp_fallback``) and a witness exists: a helper's nack (it is
  up and could not reach the member either), required when any helper exists.
  A member cut off from everyone gets no nack; it declares the verdict only
  after ``4 * dead_after``.
- **Fast verdict.** Sooner, if the TCP probe was *refused* (no process listens
  on the port: a crash, never a pause) and min(2, others available) helpers
  nacked: DEAD_REFUSED.
- **Witnesses.** The nackers of a watch are the witnesses named in the DEAD
  event (``MemberEvent.witnesses``), which the pair's witnessed takeover relies on.
- **Stalls.** A stall of the event loop shifts every watch's clock by its length
  (:meth:`PairWatches.shift`): time in which we could not listen is no evidence.
- Probe sequence numbers are forgotten 2 s after they were sent.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["SEQ_TTL", "PairWatches", "Step", "Thresholds", "Watch", "keep"]

SEQ_TTL = 2.0
"""Seconds after which an unanswered probe's sequence number is forgotten."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The silences after which a watched member is probed, then found dead."""

    suspect_after: float
    dead_after: float


@dataclass(slots=True)
class Watch:
    """What we know about one watched member's silence and the probes for it."""

    last_heard: float
    probing_since: float | None = None
    last_probe: float = float("-inf")
    helpers_asked: set[str] = field(default_factory=set)
    nackers: set[str] = field(default_factory=set)
    tcp_tried: bool = False
    refused: bool = False
    # A watch of an unpaired member (started by its heartbeats), not a pair partner.
    watched: bool = False
    last_hb: float = float("-inf")

    def reset(self, now: float) -> None:
        """We heard from the member: silence starts again, evidence is dropped."""
        self.last_heard = max(self.last_heard, now)
        self.probing_since = None
        self.helpers_asked.clear()
        self.nackers.clear()
        self.tcp_tried = False
        self.refused = False


class Step(enum.Enum):
    """What :meth:`PairWatches.assess` says to do about one watch now."""

    QUIET = "quiet"  # heard from recently enough: nothing to do
    WAIT = "wait"  # silent: probes are out, no verdict yet
    PROBE = "probe"  # silent and a probe round is due (then assess the verdict again)
    DEAD = "dead"  # the slow verdict
    DEAD_REFUSED = "dead_refused"  # the fast verdict: TCP refused and helpers nacked


def keep(
    w: Watch,
    now: float,
    *,
    live: bool,
    partner: bool,
    unpaired: bool,
    watch_expire: float,
) -> bool:
    """Whether a watch stays: the member is alive or suspect, and it is our partner,
    or (a watch) still unpaired and heartbeating us within ``watch_expire``."""
    if not live:
        return False
    if partner:
        return True
    return w.watched and unpaired and now - w.last_hb < watch_expire


class PairWatches:
    """Every watch of this member, by member name, and the probes sent for them."""

    def __init__(self) -> None:
        self._watches: dict[str, Watch] = {}
        self._seqs: dict[int, tuple[str, float]] = {}

    # --- the table ----------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self._watches

    def __len__(self) -> int:
        return len(self._watches)

    def items(self) -> Iterator[tuple[str, Watch]]:
        """A snapshot of (name, watch): safe to drop watches while iterating."""
        return iter(list(self._watches.items()))

    def get(self, name: str) -> Watch | None:
        return self._watches.get(name)

    def pop(self, name: str) -> Watch | None:
        """Stop watching ``name`` (its verdict is in, or it is gone); its watch or None."""
        return self._watches.pop(name, None)

    def watch_partner(self, name: str, now: float) -> None:
        """Our partner is (again) known alive: a fresh watch, silence from ``now``."""
        self._watches[name] = Watch(last_heard=now)

    def ensure_partner(self, name: str, now: float) -> None:
        """Watch ``name`` as a partner unless it is watched already."""
        if name not in self._watches:
            self.watch_partner(name, now)

    def heartbeat(self, name: str, now: float, *, may_watch: bool) -> Watch | None:
        """A heartbeat from ``name``: start a watch of it if ``may_watch`` (it is
        unpaired and watching is on) and none exists; note when it came. Resetting
        the silence is :meth:`heard_from`'s job."""
        w = self._watches.get(name)
        if w is None and may_watch:
            w = self._watches[name] = Watch(last_heard=now, watched=True)
        if w is not None:
            w.last_hb = now
        return w

    def heard_from(self, name: str, now: float) -> None:
        """Anything from ``name`` (heartbeat, ping, ack, relayed or not)."""
        w = self._watches.get(name)
        if w is not None:
            w.reset(now)

    def shift(self, by: float) -> None:
        """The event loop stalled for ``by`` seconds: push every clock back by it."""
        for w in self._watches.values():
            w.last_heard += by
            w.last_hb += by
            if w.probing_since is not None:
                w.probing_since += by

    # --- probes -------------------------------------------------------------------
    def probe_sent(self, name: str, seq: int, now: float) -> None:
        """A probe round for ``name`` went out (direct ping ``seq`` and relays of it)."""
        self._seqs[seq] = (name, now)
        w = self._watches.get(name)
        if w is not None:
            w.last_probe = now

    def helper_asked(self, name: str, helper: str) -> None:
        w = self._watches.get(name)
        if w is not None:
            w.helpers_asked.add(helper)

    def tcp_probe_sent(self, name: str) -> None:
        w = self._watches.get(name)
        if w is not None:
            w.tcp_tried = True

    def owner(self, seq: int) -> str | None:
        """The member a probe ``seq`` is for, if it is one of ours."""
        entry = self._seqs.get(seq)
        return entry[0] if entry is not None else None

    def acked(self, seq: int) -> str | None:
        """An ack for ``seq``: the member it proves alive (the caller resets its
        watch through :meth:`heard_from`), or None if ``seq`` is not ours."""
        entry = self._seqs.pop(seq, None)
        return entry[0] if entry is not None else None

    def nacked(self, seq: int, helper: str) -> None:
        """``helper`` could not reach the member either: a witness, while probing."""
        w = self._probing(seq)
        if w is not None:
            w.nackers.add(helper)

    def refused(self, seq: int) -> None:
        """Nobody listens on the member's port (the TCP probe was refused)."""
        w = self._probing(seq)
        if w is not None:
            w.refused = True

    def expire(self, now: float) -> None:
        """Forget probes older than :data:`SEQ_TTL`."""
        for seq, (_, sent) in list(self._seqs.items()):
            if now - sent > SEQ_TTL:
                del self._seqs[seq]

    def _probing(self, seq: int) -> Watch | None:
        name = self.owner(seq)
        w = self._watches.get(name) if name is not None else None
        return w if w is not None and w.probing_since is not None else None

    # --- the rules ----------------------------------------------------------------
    @staticmethod
    def silent(w: Watch, now: float, limits: Thresholds) -> bool:
        """Whether ``w``'s member has been silent for ``suspect_after`` (else QUIET)."""
        return now - w.last_heard >= limits.suspect_after

    @staticmethod
    def assess(
        w: Watch,
        now: float,
        limits: Thresholds,
        *,
        probe_interval: float,
        helpers_available: int,
        tcp_fallback: bool,
        probing: bool = False,
    ) -> Step:
        """The step for ``w`` at ``now`` (see the module rules). ``helpers_available``
        counts the other live members that could probe it. Call it once per tick;
        after a PROBE step, send the round and call it again with ``probing=True``
        for the verdict, which counts the helpers that round asked."""
        if not PairWatches.silent(w, now, limits):
            return Step.QUIET
        silence = now - w.last_heard
        if w.probing_since is None:
            w.probing_since = now
        if not probing and now - w.last_probe >= probe_interval:
            return Step.PROBE
        need = min(2, helpers_available)
        tcp_ok = w.tcp_tried or not tcp_fallback
        witnessed = len(w.nackers) >= min(1, need) or silence >= 4 * limits.dead_after
        slow = (
            silence >= limits.dead_after and len(w.helpers_asked) >= need and tcp_ok and witnessed
        )
        if slow:
            return Step.DEAD
        if w.refused and len(w.nackers) >= need:
            return Step.DEAD_REFUSED
        return Step.WAIT

    def check_invariants(self, now: float) -> None:
        """Raise AssertionError if the table is inconsistent (tests call this)."""
        for name, w in self._watches.items():
            assert name, "a watch needs a member name"
            if w.probing_since is None:
                assert not w.nackers and not w.refused, f"{name}: evidence without probing"
            else:
                assert w.probing_since >= w.last_heard, f"{name}: probing before the silence"
        for seq, (_, sent) in self._seqs.items():
            assert sent <= now, f"probe {seq} sent in the future"
