"""The sans-IO gossip protocol: SWIM + Lifeguard + pairq's pair fast path.

:class:`Core` owns every protocol decision and nothing else. It never reads a
clock, opens a socket or sleeps: the embedder passes ``now`` (seconds, any
monotonic origin) into every call, feeds it received messages, calls
:meth:`Core.tick` when :meth:`Core.next_deadline` is reached, and carries out
the :class:`~pairq.gossip.events.Action` objects it drains. Randomness comes
from a ``random.Random`` the embedder seeds, so a simulated cluster is exactly
reproducible.

Where the logic follows memberlist (``state.go``) the method names say so
(``_on_alive`` = ``aliveNode``, ``_on_suspect`` = ``suspectNode``, ...).
Departures from memberlist:

- a stale accusation against self (lower incarnation than ours) is answered
  with our current alive, sent straight to the accuser and re-broadcast, so no
  member keeps a live node suspect/dead until the next push-pull; a member that
  pings us while we hold it suspect/dead gets the accusation back on the ack so
  it can do the same;
- Lifeguard also counts event-loop stalls (a gap between ticks) as local
  sickness, and pushes back every timer by the length of the stall: time in
  which we could not listen is not evidence against anyone;
- the pair fast path: partners (and the watchers of unpaired members) heartbeat
  each other and probe a silent one at once; its rules are in
  :mod:`pairq.gossip.pairwatch`, driven from :meth:`Core._pair_tick`.
"""

from __future__ import annotations

import heapq
import itertools
import random
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pairq.gossip import formulas
from pairq.gossip.broadcast import PART_OVERHEAD, BroadcastQueue
from pairq.gossip.codec import encode_message
from pairq.gossip.config import GossipConfig
from pairq.gossip.events import (
    Action,
    EventKind,
    MemberEvent,
    MemberView,
    PushPullRequest,
    SendPacket,
    Stats,
    TcpPing,
)
from pairq.gossip.messages import (
    Ack,
    Addr,
    Alive,
    Dead,
    IndirectPing,
    MemberState,
    Message,
    Nack,
    PairHeartbeat,
    Ping,
    PushPull,
    PushPullEntry,
    Suspect,
)
from pairq.gossip.meta import NodeMeta
from pairq.gossip.pairwatch import PairWatches, Step, Thresholds, keep

__all__ = ["Core", "Member"]

_MAX_SEQ = 0xFFFFFFFF
_COMPOUND_HEADER = 2


@dataclass(slots=True)
class Member:
    """Mutable per-member record inside the core (use :class:`MemberView` outside)."""

    name: str
    addr: Addr
    meta: NodeMeta
    incarnation: int
    state: MemberState
    state_change: float

    def view(self) -> MemberView:
        return MemberView(self.name, self.addr, self.meta, self.incarnation, self.state)


class _Timer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[float], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    started: float
    acked: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    source_addr: Addr
    seq: int
    nack: bool
    done: bool = False


@dataclass(slots=True)
class _Suspicion:
    incarnation: int
    start: float
    expected: int
    min_timeout: float
    max_timeout: float
    confirmers: set[str]
    timer: _Timer | None = None

    def deadline(self) -> float:
        confirmations = len(self.confirmers) - 1  # the first accuser is not a confirmation
        return self.start + formulas.remaining_suspicion_timeout(
            self.min_timeout, self.max_timeout, confirmations, self.expected
        )


class Core:
    """One gossip member's protocol state machine. Not thread-safe: drive it from one thread."""

    def __init__(
        self,
        config: GossipConfig,
        name: str,
        addr: Addr,
        meta: NodeMeta,
        now: float,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config.validate()
        if not name:
            raise ValueError("a member needs a non-empty name")
        meta.encode(config.max_meta_size)  # raises MetaTooLargeError early
        self.name = name
        self.addr = addr
        self.meta = meta
        self.incarnation = 0
        self.rng = rng if rng is not None else random.Random()
        self.stats = Stats()
        self.health = 0
        self.leaving = False
        self.started = False
        self._members: dict[str, Member] = {
            name: Member(name, addr, meta, 0, MemberState.ALIVE, now)
        }
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, _Relay] = {}
        # The pair fast path's watches and probes (pairwatch.py holds its rules).
        self._pair = PairWatches()
        self._suspicions: dict[str, _Suspicion] = {}
        self._stale_refuted: dict[str, float] = {}
        self._unknown_synced: dict[str, float] = {}
        self._seeds: set[Addr] = set()
        self._broadcasts = BroadcastQueue()
        self._timers: list[tuple[float, int, _Timer]] = []
        self._timer_seq = itertools.count()
        self._seq = self.rng.randrange(_MAX_SEQ)
        self._actions: list[Action] = []
        self._events: list[MemberEvent] = []
        self._last_tick = now
        self._next_heartbeat = now
        self._next_watch_heartbeat = now

    # ------------------------------------------------------------------ public API
    def start(self, now: float) -> None:
        """Begin probing, gossiping and anti-entropy; announce ourselves."""
        if self.started:
            return
        self.started = True
        self._last_tick = now
        self._queue_alive_self()
        jitter = self.rng.random()
        self._schedule(now + jitter * self.config.probe_interval, self._probe_tick)
        self._schedule(now + jitter * self.config.gossip_interval, self._gossip_tick)
        # One early push-pull (1-3 s in) repairs whatever the join broadcasts missed
        # when many members start at once; then the regular, scaled interval.
        first = min(self._push_pull_interval(), 1.0 + 2.0 * jitter)
        self._schedule(now + first, self._push_pull_tick)
        self._schedule(now + self.config.reconnect_interval * (0.5 + jitter), self._reconnect_tick)
        self._schedule(now + self._pair_period(), self._pair_tick)

    def join(self, now: float, addrs: Iterable[Addr]) -> None:
        """Start a joining push-pull with each seed address (names unknown yet).

        The seeds are remembered: while we know no other live member, the
        reconnect timer tries them again (a join during a partition or before
        any seed is up must not leave us alone for good).
        """
        for a in addrs:
            if a != self.addr:
                self._seeds.add(a)
                self._actions.append(PushPullRequest(a, True))

    def remember_seeds(self, addrs: Iterable[Addr]) -> None:
        """Record seeds joined by the embedder itself (see :meth:`join`)."""
        self._seeds.update(a for a in addrs if a != self.addr)

    def leave(self, now: float) -> None:
        """Announce a graceful leave; keep ticking until :meth:`pending_broadcasts` is 0."""
        if self.leaving:
            return
        self.leaving = True
        me = self._members[self.name]
        me.state = MemberState.LEFT
        me.state_change = now
        self._broadcasts.queue(self.name, Dead(self.incarnation, self.name, self.name))
        # Say it to everyone we know directly as well: a leave must not look like a death.
        msg = Dead(self.incarnation, self.name, self.name)
        for m in self._live_members(exclude=(self.name,)):
            self._send(m.addr, [msg], piggyback=False)

    def update_meta(self, now: float, meta: NodeMeta) -> None:
        """Change our metadata; spread as an alive with a higher incarnation."""
        meta.encode(self.config.max_meta_size)
        self.meta = meta
        self.incarnation += 1
        me = self._members[self.name]
        me.meta = meta
        me.incarnation = self.incarnation
        self._queue_alive_self()
        # Our pair may have changed: watch every partner we now have.
        for m in self._members.values():
            if m.state == MemberState.ALIVE and self._is_partner(m):
                self._pair.ensure_partner(m.name, now)

    def receive(self, now: float, src: Addr, msgs: Sequence[Message]) -> None:
        """Handle the messages of one received UDP packet from ``src``."""
        self.stats.packets_received += 1
        for msg in msgs:
            self._dispatch(now, src, msg)

    def tcp_ping_result(self, now: float, seq: int, ok: bool, refused: bool = False) -> None:
        """Outcome of a :class:`TcpPing` action; ``refused``: nobody listens on that port."""
        if ok:
            self._on_ack(now, Ack(seq, ""))
            return
        if refused:
            self._pair.refused(seq)

    def local_state(self, join: bool) -> PushPull:
        """Our full state for a push-pull exchange."""
        entries = tuple(
            PushPullEntry(m.name, m.addr, m.incarnation, m.state, m.meta)
            for m in self._members.values()
        )
        return PushPull(join, entries)

    def merge_remote(self, now: float, remote: PushPull) -> None:
        """Merge a peer's full state (memberlist ``mergeState``)."""
        for e in remote.entries:
            if e.state == MemberState.ALIVE:
                self._on_alive(now, Alive(e.incarnation, e.name, e.addr, e.meta))
            elif e.state == MemberState.LEFT:
                self._on_dead(now, Dead(e.incarnation, e.name, e.name))
            else:
                # Learn the member first so the suspicion has something to attach to.
                if e.name not in self._members and e.state == MemberState.SUSPECT:
                    self._on_alive(now, Alive(e.incarnation, e.name, e.addr, e.meta))
                # A remote "dead" is only a suspicion here: we want our own evidence.
                self._on_suspect(now, Suspect(e.incarnation, e.name, self.name))

    def report_loop_lag(self, now: float, lag: float) -> None:
        """The transport measured that the event loop ran ``lag`` seconds late."""
        if lag > self.config.stall_threshold and self.config.lifeguard:
            self._adjust_health(+1)

    def tick(self, now: float) -> None:
        """Run every timer that is due. Call at least every ``config.tick_interval``."""
        gap = now - self._last_tick
        self._last_tick = now
        if gap > self.config.stall_threshold and self.started:
            self.stats.stalls += 1
            if self.config.lifeguard:
                self._adjust_health(+1)
                self._shift_timers(gap - self.config.tick_interval)
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback(now)

    def next_deadline(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def drain_actions(self) -> list[Action]:
        out, self._actions = self._actions, []
        return out

    def drain_events(self) -> list[MemberEvent]:
        out, self._events = self._events, []
        return out

    def members(self) -> list[MemberView]:
        return [m.view() for m in self._members.values()]

    def member(self, name: str) -> MemberView | None:
        m = self._members.get(name)
        return m.view() if m else None

    def pending_broadcasts(self) -> int:
        return len(self._broadcasts)

    def num_members(self) -> int:
        """Members counted for the formulas: everyone not known to have left."""
        return sum(1 for m in self._members.values() if m.state != MemberState.LEFT)

    # ------------------------------------------------------------------ timers
    def _schedule(self, deadline: float, callback: Callable[[float], None]) -> _Timer:
        timer = _Timer(deadline, callback)
        heapq.heappush(self._timers, (deadline, next(self._timer_seq), timer))
        return timer

    def _shift_timers(self, by: float) -> None:
        if by <= 0:
            return
        shifted = []
        for deadline, seq, timer in self._timers:
            if not timer.cancelled:
                timer.deadline = deadline + by
                shifted.append((timer.deadline, seq, timer))
        heapq.heapify(shifted)
        self._timers = shifted
        for s in self._suspicions.values():
            s.start += by
        self._pair.shift(by)

    def _scaled(self, t: float) -> float:
        if not self.config.lifeguard:
            return t
        return formulas.scale_by_health(t, self.health)

    def _adjust_health(self, delta: int) -> None:
        top = self.config.awareness_max_multiplier - 1
        self.health = min(top, max(0, self.health + delta))
        self.stats.health = self.health

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & _MAX_SEQ
        return self._seq

    # ------------------------------------------------------------------ sending
    def _send(self, addr: Addr, msgs: list[Message], piggyback: bool = True) -> None:
        if piggyback:
            size = sum(len(encode_message(m)) for m in msgs)
            budget = (
                self.config.udp_buffer_size - size - _COMPOUND_HEADER - PART_OVERHEAD * len(msgs)
            )
            msgs = msgs + self._broadcasts.get(budget, self._retransmit_limit())
        self.stats.packets_sent += 1
        self._actions.append(SendPacket(addr, tuple(msgs)))

    def _retransmit_limit(self) -> int:
        return formulas.retransmit_limit(self.config.retransmit_mult, self.num_members())

    def _push_pull_interval(self) -> float:
        return formulas.push_pull_scale(self.config.push_pull_interval, self.num_members())

    def _queue_alive_self(self) -> None:
        self._broadcasts.queue(self.name, Alive(self.incarnation, self.name, self.addr, self.meta))

    def _emit(
        self, kind: EventKind, m: Member, now: float, witnesses: frozenset[str] = frozenset()
    ) -> None:
        self._events.append(MemberEvent(kind, m.view(), now, witnesses))

    def _live_members(self, exclude: Sequence[str] = ()) -> list[Member]:
        return [
            m
            for m in self._members.values()
            if m.state in (MemberState.ALIVE, MemberState.SUSPECT) and m.name not in exclude
        ]

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, now: float, src: Addr, msg: Message) -> None:
        if isinstance(msg, Ping):
            self._on_ping(now, src, msg)
        elif isinstance(msg, Ack):
            self._on_ack(now, msg)
        elif isinstance(msg, Nack):
            self._on_nack(now, msg)
        elif isinstance(msg, IndirectPing):
            self._on_indirect_ping(now, msg)
        elif isinstance(msg, Alive):
            self._on_alive(now, msg)
        elif isinstance(msg, Suspect):
            self._on_suspect(now, msg)
        elif isinstance(msg, Dead):
            self._on_dead(now, msg)
        elif isinstance(msg, PairHeartbeat):
            self._on_pair_heartbeat(now, msg)
        # PushPull arrives over streams only (merge_remote); ignore it in a packet.

    def _maybe_sync_unknown(self, now: float, name: str, addr: Addr) -> None:
        """A member we have never heard of talks to us: pull its state (rate-limited).

        pairq addition: it means some join broadcast missed us; waiting for the
        periodic push-pull would leave the views split for up to a minute.
        """
        if name == self.name or name in self._members or self.leaving:
            return
        last = self._unknown_synced.get(name, float("-inf"))
        if now - last < 5.0:
            return
        self._unknown_synced[name] = now
        if len(self._unknown_synced) > 1024:
            self._unknown_synced.clear()
        self._actions.append(PushPullRequest(addr, False))

    def _on_ping(self, now: float, src: Addr, ping: Ping) -> None:
        if ping.target and ping.target != self.name:
            return  # meant for a previous owner of this address
        if self.leaving:
            return
        self._maybe_sync_unknown(now, ping.source, ping.source_addr)
        reply: list[Message] = [Ack(ping.seq, self.name)]
        # Tell a pinger we hold an accusation against it, so it can refute to us.
        m = self._members.get(ping.source)
        if m is not None:
            if m.state == MemberState.SUSPECT:
                reply.append(Suspect(m.incarnation, m.name, self.name))
            elif m.state == MemberState.DEAD:
                reply.append(Dead(m.incarnation, m.name, self.name))
        self._heard_from(now, ping.source)
        self._send(src, reply)

    def _on_ack(self, now: float, ack: Ack) -> None:
        probe = self._probes.get(ack.seq)
        if probe is not None:
            probe.acked = True
            self._heard_from(now, probe.target)
            return
        relay = self._relays.pop(ack.seq, None)
        if relay is not None:
            relay.done = True
            self._send(relay.source_addr, [Ack(relay.seq, self.name)])
            return
        partner = self._pair.acked(ack.seq)
        if partner is not None:
            self._heard_from(now, partner)
            return
        if ack.source:
            self._heard_from(now, ack.source)

    def _on_nack(self, now: float, nack: Nack) -> None:
        probe = self._probes.get(nack.seq)
        if probe is not None:
            probe.nacks += 1
            return
        self._pair.nacked(nack.seq, nack.source)

    def _on_indirect_ping(self, now: float, req: IndirectPing) -> None:
        if self.leaving:
            return
        self._maybe_sync_unknown(now, req.source, req.source_addr)
        seq = self._next_seq()
        relay = _Relay(req.source_addr, req.seq, req.nack)
        self._relays[seq] = relay
        self._send(req.target_addr, [Ping(seq, req.target, self.name, self.addr)])
        self.stats.indirect_probes += 1

        def expire(t: float) -> None:
            if not relay.done and relay.nack:
                self._send(relay.source_addr, [Nack(relay.seq, self.name)])
            self._relays.pop(seq, None)

        # Nack a little before the requester's own deadline (memberlist: 80 %).
        self._schedule(now + self._scaled(self.config.probe_timeout) * 0.8, expire)

    # ------------------------------------------------------------------ membership
    def _on_alive(self, now: float, a: Alive) -> None:
        if a.node == self.name:
            if self.leaving:
                return
            if a.incarnation > self.incarnation or (
                a.incarnation == self.incarnation and (a.addr != self.addr or a.meta != self.meta)
            ):
                self._refute(now, a.incarnation)
            return
        m = self._members.get(a.node)
        if m is None:
            m = Member(a.node, a.addr, a.meta, a.incarnation, MemberState.ALIVE, now)
            self._members[a.node] = m
            # Random insertion point keeps the probe order a fresh shuffle (memberlist).
            self._probe_order.insert(self.rng.randint(0, len(self._probe_order)), a.node)
            self._emit(EventKind.JOIN, m, now)
            self._broadcasts.queue(a.node, a)
            self._pair_alive(now, m)
            return
        reclaim = False
        if a.addr != m.addr:
            dead_long = now - m.state_change >= self.config.dead_node_reclaim_time
            if m.state == MemberState.LEFT or (m.state == MemberState.DEAD and dead_long):
                reclaim = True
            else:
                self.stats.extra["address_conflicts"] = (
                    self.stats.extra.get("address_conflicts", 0) + 1
                )
                return
        if a.incarnation <= m.incarnation and not reclaim:
            return
        old_state = m.state
        meta_changed = a.meta != m.meta
        m.incarnation = a.incarnation
        m.addr = a.addr
        m.meta = a.meta
        s = self._suspicions.pop(m.name, None)
        if s is not None and s.timer is not None:
            s.timer.cancel()
        if old_state != MemberState.ALIVE:
            m.state = MemberState.ALIVE
            m.state_change = now
            if m.name not in self._probe_order:
                self._probe_order.insert(self.rng.randint(0, len(self._probe_order)), m.name)
            self._emit(EventKind.ALIVE, m, now)
            if meta_changed:
                self._emit(EventKind.UPDATE, m, now)
            self._pair_alive(now, m)
        elif meta_changed:
            self._emit(EventKind.UPDATE, m, now)
            if m.name not in self._pair:
                self._pair_alive(now, m)  # it may have just become our partner
        self._broadcasts.queue(a.node, a)

    def _on_suspect(self, now: float, s: Suspect) -> None:
        if s.node == self.name:
            if self.leaving:
                return
            if s.incarnation < self.incarnation:
                self._stale_accusation(now, s.sender)
                return
            self._refute(now, s.incarnation)
            return
        m = self._members.get(s.node)
        if m is None or s.incarnation < m.incarnation:
            return
        if m.state == MemberState.SUSPECT:
            sus = self._suspicions.get(m.name)
            if (
                sus is not None
                and s.incarnation == sus.incarnation
                and s.sender not in sus.confirmers
            ):
                sus.confirmers.add(s.sender)
                self._broadcasts.queue(m.name, s)
                self._arm_suspicion(now, m.name, sus)
            return
        if m.state in (MemberState.DEAD, MemberState.LEFT):
            return
        m.state = MemberState.SUSPECT
        m.incarnation = s.incarnation
        m.state_change = now
        n = self.num_members()
        min_t = formulas.suspicion_timeout(
            self.config.suspicion_mult, n, self.config.probe_interval
        )
        if self.config.lifeguard:
            k = formulas.suspicion_confirmations(self.config.suspicion_mult, n)
            max_t = self.config.suspicion_max_timeout_mult * min_t
        else:
            k, max_t = 0, min_t
        sus = _Suspicion(s.incarnation, now, k, min_t, max_t, {s.sender})
        self._suspicions[m.name] = sus
        self._arm_suspicion(now, m.name, sus)
        self.stats.suspects += 1
        self._emit(EventKind.SUSPECT, m, now)
        self._broadcasts.queue(m.name, s)

    def _arm_suspicion(self, now: float, name: str, sus: _Suspicion) -> None:
        if sus.timer is not None:
            sus.timer.cancel()

        def fire(t: float) -> None:
            m = self._members.get(name)
            if m is None or self._suspicions.get(name) is not sus:
                return
            if m.state == MemberState.SUSPECT and m.incarnation == sus.incarnation:
                self._on_dead(t, Dead(m.incarnation, name, self.name))

        sus.timer = self._schedule(max(now, sus.deadline()), fire)

    def _on_dead(self, now: float, d: Dead) -> None:
        if d.node == self.name:
            if self.leaving:
                return
            if d.incarnation < self.incarnation:
                self._stale_accusation(now, d.sender)
                return
            self._refute(now, d.incarnation)
            return
        m = self._members.get(d.node)
        if m is None:
            return
        if d.incarnation < m.incarnation:
            # Someone saw it die at an incarnation we have already seen it outbid.
            # Ignoring that (memberlist) leaves us on round-robin SWIM for a member
            # that may really be gone: probe it now instead.
            if (
                m.state == MemberState.ALIVE
                and d.sender != d.node
                and not self.leaving
                and not any(p.target == m.name for p in self._probes.values())
            ):
                self.stats.extra["verify_probes"] = self.stats.extra.get("verify_probes", 0) + 1
                self._probe(now, m, self._scaled(self.config.probe_interval))
            return
        if m.state in (MemberState.DEAD, MemberState.LEFT):
            return
        m.incarnation = d.incarnation
        m.state_change = now
        s = self._suspicions.pop(m.name, None)
        if s is not None and s.timer is not None:
            s.timer.cancel()
        w = self._pair.pop(m.name)
        witnesses = {d.sender} | (s.confirmers if s is not None else set())
        if w is not None:
            witnesses |= w.nackers
        witnesses -= {self.name, m.name}
        if d.sender == d.node:
            m.state = MemberState.LEFT
            self._emit(EventKind.LEFT, m, now)
        else:
            m.state = MemberState.DEAD
            self.stats.deaths += 1
            self._emit(EventKind.DEAD, m, now, frozenset(witnesses))
        self._broadcasts.queue(m.name, d)

    def _refute(self, now: float, accused: int) -> None:
        """Someone says we are suspect/dead at our incarnation or above: outbid it."""
        self.incarnation = max(self.incarnation, accused) + 1
        me = self._members[self.name]
        me.incarnation = self.incarnation
        self._queue_alive_self()
        self.stats.refutations += 1
        if self.config.lifeguard:
            # Being accused is a hint that we are the slow one (Lifeguard).
            self._adjust_health(+1)

    def _stale_accusation(self, now: float, accuser: str) -> None:
        """An old accusation against us is still circulating: answer it again."""
        last = self._stale_refuted.get(accuser, float("-inf"))
        if now - last < self.config.stale_refute_interval:
            return
        self._stale_refuted[accuser] = now
        self.stats.stale_refutes += 1
        alive = Alive(self.incarnation, self.name, self.addr, self.meta)
        self._broadcasts.queue(self.name, alive)
        m = self._members.get(accuser)
        if m is not None and accuser != self.name:
            self._send(m.addr, [alive], piggyback=False)

    # ------------------------------------------------------------------ SWIM probe
    def _next_target(self) -> Member | None:
        for _ in range(len(self._probe_order) + 1):
            if self._probe_index >= len(self._probe_order):
                self._reset_probe_order()
                self._probe_index = 0
                if not self._probe_order:
                    return None
            name = self._probe_order[self._probe_index]
            self._probe_index += 1
            m = self._members.get(name)
            if m is not None and m.state in (MemberState.ALIVE, MemberState.SUSPECT):
                return m
        return None

    def _reset_probe_order(self) -> None:
        """Forget long-dead members and reshuffle (memberlist ``resetNodes``)."""
        now = self._last_tick
        for name, m in list(self._members.items()):
            if (
                name != self.name
                and m.state in (MemberState.DEAD, MemberState.LEFT)
                and now - m.state_change > self.config.reap_after
            ):
                del self._members[name]
        self._probe_order = [
            n for n, m in self._members.items() if n != self.name and m.state != MemberState.LEFT
        ]
        self.rng.shuffle(self._probe_order)

    def _probe_tick(self, now: float) -> None:
        self.stats.extra["members_alive"] = sum(
            1 for m in self._members.values() if m.state == MemberState.ALIVE
        )
        interval = self._scaled(self.config.probe_interval)
        self._schedule(now + interval, self._probe_tick)
        if self.leaving:
            return
        target = self._next_target()
        if target is None:
            return
        self._probe(now, target, interval)

    def _probe(self, now: float, target: Member, interval: float) -> None:
        seq = self._next_seq()
        probe = _Probe(seq, target.name, now)
        self._probes[seq] = probe
        self.stats.probes += 1
        msgs: list[Message] = [Ping(seq, target.name, self.name, self.addr)]
        if target.state == MemberState.SUSPECT:
            # Buddy system: tell the suspect straight away so it can refute.
            msgs.append(Suspect(target.incarnation, target.name, self.name))
        self._send(target.addr, msgs)
        self._schedule(
            now + self._scaled(self.config.probe_timeout),
            lambda t: self._probe_timeout(t, probe, interval),
        )

    def _probe_timeout(self, now: float, probe: _Probe, interval: float) -> None:
        if probe.acked:
            self._probes.pop(probe.seq, None)
            if self.config.lifeguard:
                self._adjust_health(-1)
            return
        target = self._members.get(probe.target)
        if target is None or target.state not in (MemberState.ALIVE, MemberState.SUSPECT):
            self._probes.pop(probe.seq, None)
            return
        helpers = self._live_members(exclude=(self.name, target.name))
        self.rng.shuffle(helpers)
        helpers = [h for h in helpers if h.state == MemberState.ALIVE][
            : self.config.indirect_checks
        ]
        want_nack = self.config.lifeguard
        req = IndirectPing(probe.seq, target.name, target.addr, want_nack, self.name, self.addr)
        for h in helpers:
            self._send(h.addr, [req])
        probe.expected_nacks = len(helpers) if want_nack else 0
        if self.config.tcp_fallback:
            self._actions.append(
                TcpPing(target.addr, Ping(probe.seq, target.name, self.name, self.addr))
            )
        end = max(now + self.config.tick_interval, probe.started + interval)
        self._schedule(end, lambda t: self._probe_end(t, probe))

    def _probe_end(self, now: float, probe: _Probe) -> None:
        self._probes.pop(probe.seq, None)
        if probe.acked:
            return
        if self.config.lifeguard:
            if probe.expected_nacks > 0:
                self._adjust_health(max(0, probe.expected_nacks - probe.nacks))
            else:
                self._adjust_health(+1)
        self.stats.probe_failures += 1
        target = self._members.get(probe.target)
        if target is None or (
            target.state != MemberState.ALIVE and target.state != MemberState.SUSPECT
        ):
            return
        self._on_suspect(now, Suspect(target.incarnation, target.name, self.name))

    # ------------------------------------------------------------------ gossip
    def _gossip_tick(self, now: float) -> None:
        self._schedule(now + self.config.gossip_interval, self._gossip_tick)
        if not len(self._broadcasts):
            return
        candidates = [
            m
            for m in self._members.values()
            if m.name != self.name
            and (
                m.state in (MemberState.ALIVE, MemberState.SUSPECT)
                or (
                    m.state == MemberState.DEAD
                    and now - m.state_change < self.config.gossip_to_the_dead_time
                )
            )
        ]
        self.rng.shuffle(candidates)
        limit = self._retransmit_limit()
        for m in candidates[: self.config.gossip_nodes]:
            msgs = self._broadcasts.get(self.config.udp_buffer_size - _COMPOUND_HEADER, limit)
            if not msgs:
                break
            self.stats.packets_sent += 1
            self._actions.append(SendPacket(m.addr, tuple(msgs)))

    def _push_pull_tick(self, now: float) -> None:
        interval = self._push_pull_interval()
        self._schedule(now + interval * (0.75 + 0.5 * self.rng.random()), self._push_pull_tick)
        if self.leaving:
            return
        peers = [
            m
            for m in self._members.values()
            if m.name != self.name and m.state == MemberState.ALIVE
        ]
        if peers:
            self._actions.append(PushPullRequest(self.rng.choice(peers).addr, False))

    def _reconnect_tick(self, now: float) -> None:
        """Reach across healed partitions (Serf's reconnect; memberlist has none).

        Push-pull and gossip only go to live members, so two sides that declared
        each other dead would stay apart once the dead broadcasts ran out. Every
        ``reconnect_interval`` we push-pull with one random DEAD member (not LEFT):
        if it is back, it sees its death in our state and refutes, and we merge its
        view. While we know no live member at all, we retry our join seeds too.
        """
        self._schedule(
            now + self.config.reconnect_interval * (0.75 + 0.5 * self.rng.random()),
            self._reconnect_tick,
        )
        if self.leaving:
            return
        dead = [m for m in self._members.values() if m.state == MemberState.DEAD]
        if dead:
            self._actions.append(PushPullRequest(self.rng.choice(dead).addr, False))
        if self._seeds and not self._live_members(exclude=(self.name,)):
            for a in sorted(self._seeds):
                self._actions.append(PushPullRequest(a, True))

    # ------------------------------------------------------------------ pair fast path
    # The rules live in pairwatch.py; here they meet the membership and the wire.
    def _pair_period(self) -> float:
        return min(self.config.pair_heartbeat_interval, self.config.pair_probe_interval) / 2

    def _is_partner(self, m: Member) -> bool:
        return bool(self.meta.pair) and m.meta.pair == self.meta.pair and m.name != self.name

    def _pair_alive(self, now: float, m: Member) -> None:
        if self._is_partner(m):
            self._pair.watch_partner(m.name, now)

    def _heard_from(self, now: float, name: str) -> None:
        self._pair.heard_from(name, now)

    def _pair_tick(self, now: float) -> None:
        """Drive the pair fast path and the watch of unpaired members
        (:mod:`pairq.gossip.pairwatch` states every rule): send the heartbeats that
        are due, drop watches that ended, probe silent members and turn a verdict
        into a DEAD whose event names the witnesses."""
        self._schedule(now + self._pair_period(), self._pair_tick)
        if self.leaving:
            return
        self._pair.expire(now)
        send_hb = now >= self._next_heartbeat
        if send_hb:
            self._next_heartbeat = now + self.config.pair_heartbeat_interval
        if not self.meta.pair and self.config.watchers > 0 and now >= self._next_watch_heartbeat:
            self._next_watch_heartbeat = now + self.config.watch_heartbeat_interval
            for watcher in self._my_watchers():
                self.stats.extra["watch_heartbeats"] = (
                    self.stats.extra.get("watch_heartbeats", 0) + 1
                )
                self._actions.append(
                    SendPacket(
                        watcher.addr,
                        (PairHeartbeat(self._next_seq(), self.name, self.incarnation),),
                    )
                )
        cfg = self.config
        for name, w in self._pair.items():
            m = self._members.get(name)
            if m is None or not keep(
                w,
                now,
                live=m.state in (MemberState.ALIVE, MemberState.SUSPECT),
                partner=self._is_partner(m),
                unpaired=not m.meta.pair,
                watch_expire=cfg.watch_expire,
            ):
                self._pair.pop(name)
                continue
            if send_hb and not w.watched:
                self.stats.extra["pair_heartbeats"] = self.stats.extra.get("pair_heartbeats", 0) + 1
                self._actions.append(
                    SendPacket(
                        m.addr, (PairHeartbeat(self._next_seq(), self.name, self.incarnation),)
                    )
                )
            limits = (
                Thresholds(cfg.watch_suspect_after, cfg.watch_dead_after)
                if w.watched
                else Thresholds(cfg.pair_suspect_after, cfg.pair_dead_after)
            )
            if not self._pair.silent(w, now, limits):
                continue  # the common case: nothing to count
            helpers = sum(
                1
                for o in self._live_members(exclude=(self.name, m.name))
                if not self._is_partner(o)
            )
            step = self._pair.assess(
                w,
                now,
                limits,
                probe_interval=cfg.pair_probe_interval,
                helpers_available=helpers,
                tcp_fallback=cfg.tcp_fallback,
            )
            if step is Step.PROBE:
                self._pair_probe(now, m)
                step = self._pair.assess(
                    w,
                    now,
                    limits,
                    probe_interval=cfg.pair_probe_interval,
                    helpers_available=helpers,
                    tcp_fallback=cfg.tcp_fallback,
                    probing=True,
                )
            if step in (Step.DEAD, Step.DEAD_REFUSED):
                key = "watch_deaths" if w.watched else "pair_deaths"
                if w.watched:
                    self.stats.extra[key] = self.stats.extra.get(key, 0) + 1
                else:
                    self.stats.pair_deaths += 1
                if step is Step.DEAD_REFUSED:
                    self.stats.extra[key + "_refused"] = (
                        self.stats.extra.get(key + "_refused", 0) + 1
                    )
                self._on_dead(now, Dead(m.incarnation, m.name, self.name))

    def _my_watchers(self) -> list[Member]:
        """The live members that follow us on a hash ring: spread evenly, stable across views."""
        me = zlib.crc32(self.name.encode())
        live = [
            m
            for m in self._members.values()
            if m.name != self.name and m.state == MemberState.ALIVE
        ]
        live.sort(key=lambda m: ((zlib.crc32(m.name.encode()) - me) % 2**32, m.name))
        return live[: self.config.watchers]

    def _on_pair_heartbeat(self, now: float, hb: PairHeartbeat) -> None:
        m = self._members.get(hb.source)
        if m is None or m.state not in (MemberState.ALIVE, MemberState.SUSPECT):
            return
        w = self._pair.heartbeat(
            hb.source, now, may_watch=not m.meta.pair and self.config.watchers > 0
        )
        if w is not None:
            if hb.incarnation > m.incarnation:
                # We missed an alive of our partner/watched member; our verdict on it
                # would carry a stale incarnation that up-to-date members ignore.
                self._sync_with(now, m)
        self._heard_from(now, hb.source)

    def _sync_with(self, now: float, m: Member) -> None:
        last = self._unknown_synced.get(m.name, float("-inf"))
        if now - last >= 1.0:
            self._unknown_synced[m.name] = now
            self._actions.append(PushPullRequest(m.addr, False))

    def _pair_probe(self, now: float, m: Member) -> None:
        w = self._pair.get(m.name)
        asked = w.helpers_asked if w is not None else set()
        seq = self._next_seq()
        self._pair.probe_sent(m.name, seq, now)
        ping = Ping(seq, m.name, self.name, self.addr)
        self._send(m.addr, [ping], piggyback=False)
        others = [
            o
            for o in self._live_members(exclude=(self.name, m.name))
            if o.state == MemberState.ALIVE and not self._is_partner(o)
        ]
        self.rng.shuffle(others)
        # Prefer helpers not asked yet, so the evidence comes from several members.
        others.sort(key=lambda o: o.name in asked)
        req = IndirectPing(seq, m.name, m.addr, True, self.name, self.addr)
        for h in others[: self.config.pair_probe_helpers]:
            self._send(h.addr, [req], piggyback=False)
            self._pair.helper_asked(m.name, h.name)
        if self.config.tcp_fallback:
            self._actions.append(TcpPing(m.addr, ping))
            self._pair.tcp_probe_sent(m.name)
