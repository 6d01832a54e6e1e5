"""The channel's delivery state machine: pure, sans-IO, driven by the broker.

Every delivery rule of a channel lives here (NSQ semantics, see DESIGN.md
"Messages, topics, channels"): RDY credit, in-flight timeouts, FIN / REQ with
delay / TOUCH, attempts and dead-lettering, deferred entries, pause and empty.
The object does no I/O, starts no tasks and never reads a clock: every method
that needs time takes ``now`` (seconds, any epoch, non-decreasing; a smaller
value than one seen before is treated as the latest one seen). The broker owns
the streams, the timer (``next_wakeup``) and the store, and persists whatever
the return values say.

Interface::

    core = ChannelCore(max_attempts=0, max_rdy=2500, max_backlog=10_000)

    # subscribers (cid: the broker's int id for one Subscribe stream)
    core.add_client(cid, msg_timeout)              # ValueError: duplicate cid, bad timeout
    core.set_ready(cid, count)                     # RdyError if count < 0 or > max_rdy
    core.hold(cid, held)                           # held: its stream is backed up
    core.remove_client(cid, now) -> list[Outcome]  # its in-flight go back (front of queue)

    # supply
    core.wants() -> int                            # max_backlog - queued, >= 0
    core.push(entries, now)                        # ready queue, or deferred heap if due > now

    # delivery; one call per stream message, ids batched
    core.take(now) -> list[tuple[cid, list[Entry]]]
    core.finish(cid, ids, now) -> (finished entries, unknown ids)
    core.requeue(cid, ids, delay, now) -> (outcomes, unknown ids)   # DelayError if delay < 0
    core.touch(cid, ids, now) -> unknown ids
    core.tick(now) -> list[Outcome]                # timeouts + due deferred entries
    core.next_wakeup() -> float | None             # when ``tick`` next has work

The core never delivers on its own: call ``take`` after anything that adds
entries or frees credit (push, FIN, REQ, RDY, tick, remove_client, unpause).

    core.pause(); core.unpause(); core.paused
    core.empty() -> list[Entry]                    # everything dropped, returned

    # O(1) stats: depth, in_flight, deferred, requeued, timed_out, dead_lettered,
    # delivered, finished; core.client(cid) / core.clients -> ClientState
    # (rdy, in_flight, delivered, finished, requeued, timed_out)

Outcomes: ``Outcome(entry, REQUEUED)`` means the entry is back in this core
(``entry.due`` is its new due time, 0.0 for "now"; the caller persists
``attempts`` and ``due``). ``Outcome(entry, DEAD)`` means the entry failed its
``max_attempts``-th delivery (timeout, REQ or its client going away) and has
left the core: the caller moves it to the dead-letter list.

Rules (the tests in tests/unit/test_channel_core*.py check each one):

- ``take`` first moves due deferred entries to the back of the ready queue,
  then (unless paused) hands queued entries to clients with credit
  (``rdy - in_flight``), spread evenly, the tie-break rotating per call. A
  delivered entry gets ``attempts += 1``, ``client = cid`` and
  ``deadline = now + msg_timeout`` of that client. A client never gets more
  than its credit; RDY 0 stops delivery to it.
- A *held* client (``hold(cid, True)``: the broker could not write its stream
  fast enough) gets nothing from ``take`` until released; its RDY, in-flight
  entries and their timeouts are unchanged (a timed-out entry goes to another
  client), so a consumer that stops reading never has more queued for it.
- FIN / REQ / TOUCH of an id that the given client does not hold in flight
  (never delivered, already finished, timed out, delivered to another client)
  is *unknown*: it is returned, never raised, and changes nothing.
- REQ with ``delay > 0`` defers the entry to ``now + delay``; REQ with 0 puts it
  at the back of the ready queue; a timeout requeues at the back with no delay;
  a removed client's in-flight entries go to the front, in delivery order.
  Each of these is a failed delivery: when ``max_attempts > 0`` and
  ``attempts >= max_attempts`` the entry is DEAD instead. (Counting a vanished
  client as a failure is deliberate: a poison message that crashes its
  consumer must still reach the dead-letter list.)
- TOUCH resets the deadline to ``now + msg_timeout``.
- Paused: ``take`` delivers nothing; FIN / REQ / TOUCH, timeouts and deferred
  promotion still happen.
- ``empty`` drops queued, deferred and in-flight entries; later FINs of them
  are unknown.

Performance: O(1) amortized per entry, no per-entry heap operation for
in-flight timeouts. Deadlines are ``now + msg_timeout`` with a non-decreasing
``now``, so one deque per distinct ``msg_timeout`` value is sorted by
construction. ``take`` appends one ``(deadline, entries)`` record per delivery
batch and TOUCH one per touched batch; FIN / REQ / TOUCH just mark the entry
(``client = -1`` or a new ``deadline``) and the stale record is skipped when it
surfaces. Stale records are compacted away once they outnumber live in-flight
entries, so memory stays proportional to what is in flight. Only deferred
entries use a heap.

Entries belong to one core: the caller builds one ``Entry`` per (channel,
message) and does not push an entry that is already in the core.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "DEAD",
    "REQUEUED",
    "ChannelCore",
    "ClientState",
    "DelayError",
    "Entry",
    "Outcome",
    "OutcomeKind",
    "RdyError",
]


@dataclass(slots=True, eq=False)
class Entry:
    """One message as one channel sees it."""

    key: int
    """Opaque unique key within the channel (the store's seq); never interpreted here."""
    id: bytes
    """16-byte message id; FIN / REQ / TOUCH address entries by it."""
    attempts: int = 0
    """Deliveries so far; incremented by the core on each delivery."""
    due: float = 0.0
    """Deliver no earlier than this (deferred); 0.0 means now."""
    payload: object = None
    """Opaque to the core (the broker's record)."""
    client: int = -1
    """Core-managed: the client holding it in flight, -1 if none."""
    deadline: float = 0.0
    """Core-managed: when the current delivery times out (valid while in flight)."""


class OutcomeKind(enum.Enum):
    REQUEUED = "requeued"
    """Back in the core; persist ``entry.attempts`` and ``entry.due``."""
    DEAD = "dead"
    """Left the core after ``max_attempts`` failed deliveries; dead-letter it."""


REQUEUED = OutcomeKind.REQUEUED
DEAD = OutcomeKind.DEAD


class Outcome(NamedTuple):
    entry: Entry
    kind: OutcomeKind


class RdyError(ValueError):
    """A RDY count outside ``0..max_rdy`` (the client's fault; the state is unchanged)."""

    def __init__(self, count: int, max_rdy: int) -> None:
        super().__init__(f"RDY {count} is outside 0..{max_rdy}")
        self.count = count
        self.max_rdy = max_rdy


class DelayError(ValueError):
    """A REQ delay that is negative or not finite (the state is unchanged)."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"requeue delay {delay!r} must be a finite number >= 0")
        self.delay = delay


@dataclass(slots=True, eq=False)
class ClientState:
    """One subscriber's credit and counters. Read it; only the core writes it."""

    cid: int
    msg_timeout: float
    rdy: int = 0
    in_flight: int = 0
    delivered: int = 0
    finished: int = 0
    requeued: int = 0
    """Entries this client sent back with REQ (including ones that went DEAD)."""
    timed_out: int = 0
    held: bool = False
    """Delivery to it is suspended (its stream is backed up); see ``ChannelCore.hold``."""


# (deadline, entries delivered or touched together with that deadline)
_Record = tuple[float, tuple[Entry, ...]]


class ChannelCore:
    """Delivery state of one channel. See the module docstring for the rules."""

    # Compact the timeout deques when stale references exceed the live
    # in-flight entries by this much: O(1) amortized per FIN, bounded memory.
    compact_slack = 1024

    __slots__ = (
        "_clients",
        "_dead_lettered",
        "_deferred",
        "_delivered",
        "_finished",
        "_heap_seq",
        "_in_flight",
        "_now",
        "_paused",
        "_queue",
        "_recorded",
        "_requeued",
        "_rr",
        "_timed_out",
        "_timeouts",
        "max_attempts",
        "max_backlog",
        "max_rdy",
    )

    def __init__(
        self, *, max_attempts: int = 0, max_rdy: int = 2500, max_backlog: int = 10_000
    ) -> None:
        if max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0 (0 = unlimited), got {max_attempts}")
        if max_rdy < 1:
            raise ValueError(f"max_rdy must be >= 1, got {max_rdy}")
        if max_backlog < 1:
            raise ValueError(f"max_backlog must be >= 1, got {max_backlog}")
        self.max_attempts = max_attempts
        self.max_rdy = max_rdy
        self.max_backlog = max_backlog
        self._clients: dict[int, ClientState] = {}
        self._queue: deque[Entry] = deque()
        self._deferred: list[tuple[float, int, Entry]] = []
        self._heap_seq = 0
        self._in_flight: dict[bytes, Entry] = {}
        self._timeouts: dict[float, deque[_Record]] = {}
        self._recorded = 0  # entry references held by all timeout records
        self._now = -math.inf
        self._paused = False
        self._rr = 0
        self._requeued = 0
        self._timed_out = 0
        self._dead_lettered = 0
        self._delivered = 0
        self._finished = 0

    # ------------------------------------------------------------------ time

    def _advance(self, now: float) -> float:
        if now > self._now:
            self._now = now
        return self._now

    # ----------------------------------------------------------- subscribers

    def add_client(self, cid: int, msg_timeout: float) -> None:
        """Register a subscriber with RDY 0 and its per-delivery timeout (seconds)."""
        if cid in self._clients:
            raise ValueError(f"client {cid} is already subscribed")
        if not (msg_timeout > 0 and math.isfinite(msg_timeout)):
            raise ValueError(f"msg_timeout must be a finite number > 0, got {msg_timeout!r}")
        self._clients[cid] = ClientState(cid, float(msg_timeout))

    def remove_client(self, cid: int, now: float) -> list[Outcome]:
        """Unsubscribe; its in-flight entries go to the front of the queue (or DEAD)."""
        self._advance(now)
        c = self._clients.pop(cid)
        if not c.in_flight:
            return []
        inflight = self._in_flight
        mine = [e for e in inflight.values() if e.client == cid]  # delivery order
        outcomes: list[Outcome] = []
        back: list[Entry] = []
        limit = self.max_attempts
        for e in mine:
            del inflight[e.id]
            e.client = -1
            if limit and e.attempts >= limit:
                outcomes.append(Outcome(e, DEAD))
            else:
                e.due = 0.0
                back.append(e)
                outcomes.append(Outcome(e, REQUEUED))
        self._queue.extendleft(reversed(back))
        self._requeued += len(back)
        self._dead_lettered += len(mine) - len(back)
        self._maybe_compact()
        return outcomes

    def set_ready(self, cid: int, count: int) -> None:
        """Set a client's RDY credit; 0 stops delivery to it."""
        if not 0 <= count <= self.max_rdy:
            raise RdyError(count, self.max_rdy)
        self._clients[cid].rdy = count

    def hold(self, cid: int, held: bool) -> None:
        """Suspend (``held``) or resume delivery to a client, keeping its RDY."""
        self._clients[cid].held = held

    def client(self, cid: int) -> ClientState:
        """The live state of one client (KeyError if unknown)."""
        return self._clients[cid]

    @property
    def clients(self) -> tuple[ClientState, ...]:
        return tuple(self._clients.values())

    # ---------------------------------------------------------------- supply

    def wants(self) -> int:
        """How many more entries the core would like queued (for reads from the store)."""
        n = self.max_backlog - len(self._queue)
        return n if n > 0 else 0

    def push(self, entries: Iterable[Entry], now: float) -> None:
        """Add new entries: to the ready queue, or the deferred heap if ``due > now``."""
        now = self._advance(now)
        append = self._queue.append
        for e in entries:
            if e.due > now:
                self._heap_seq += 1
                heapq.heappush(self._deferred, (e.due, self._heap_seq, e))
            else:
                append(e)

    def _promote(self, now: float) -> None:
        heap = self._deferred
        append = self._queue.append
        pop = heapq.heappop
        while heap and heap[0][0] <= now:
            append(pop(heap)[2])

    # -------------------------------------------------------------- delivery

    def take(self, now: float) -> list[tuple[int, list[Entry]]]:
        """Deliver queued entries to clients with credit; ``[(cid, entries), ...]``."""
        now = self._advance(now)
        if self._deferred and self._deferred[0][0] <= now:
            self._promote(now)
        queue = self._queue
        if self._paused or not queue or not self._clients:
            return []
        clients = list(self._clients.values())
        n = len(clients)
        start = self._rr % n
        self._rr += 1
        eligible: list[tuple[int, ClientState]] = []
        credit = 0
        for i in range(n):
            c = clients[(start + i) % n]
            avail = c.rdy - c.in_flight
            if avail > 0 and not c.held:
                eligible.append((avail, c))
                credit += avail
        if not eligible:
            return []
        shares = self._shares(eligible, credit, len(queue))
        out: list[tuple[int, list[Entry]]] = []
        inflight = self._in_flight
        popleft = queue.popleft
        total = 0
        for (_, c), share in zip(eligible, shares, strict=True):
            if not share:
                continue
            cid = c.cid
            deadline = now + c.msg_timeout
            batch = [popleft() for _ in range(share)]
            for e in batch:
                e.attempts += 1
                e.client = cid
                e.deadline = deadline
                inflight[e.id] = e
            c.in_flight += share
            c.delivered += share
            total += share
            self._record(c.msg_timeout, deadline, tuple(batch))
            out.append((cid, batch))
        self._delivered += total
        return out

    @staticmethod
    def _shares(eligible: list[tuple[int, ClientState]], credit: int, supply: int) -> list[int]:
        """Split ``supply`` over clients (in rotated order) as evenly as credit allows."""
        if supply >= credit:
            return [avail for avail, _ in eligible]
        k = len(eligible)
        if k == 1:
            return [supply]
        # Water-fill: the smallest credits are served in full first, the rest
        # share what is left evenly; the remainder goes one each in rotated
        # order, so with scarce supply the lucky clients rotate per call.
        shares = [0] * k
        order = sorted(range(k), key=lambda j: eligible[j][0])
        remaining = supply
        left = k
        for j in order:
            share = min(eligible[j][0], remaining // left)
            shares[j] = share
            remaining -= share
            left -= 1
        j = 0
        while remaining:
            if shares[j] < eligible[j][0]:
                shares[j] += 1
                remaining -= 1
            j = (j + 1) % k
        return shares

    def _record(self, timeout: float, deadline: float, entries: tuple[Entry, ...]) -> None:
        dq = self._timeouts.get(timeout)
        if dq is None:
            dq = self._timeouts[timeout] = deque()
        dq.append((deadline, entries))
        self._recorded += len(entries)

    def finish(self, cid: int, ids: Sequence[bytes], now: float) -> tuple[list[Entry], list[bytes]]:
        """FIN: ``(finished entries, ids this client does not hold in flight)``."""
        self._advance(now)
        c = self._clients[cid]
        inflight = self._in_flight
        get = inflight.get
        done: list[Entry] = []
        unknown: list[bytes] = []
        for i in ids:
            e = get(i)
            if e is None or e.client != cid:
                unknown.append(i)
                continue
            del inflight[i]
            e.client = -1
            done.append(e)
        n = len(done)
        c.in_flight -= n
        c.finished += n
        self._finished += n
        if self._recorded > 2 * len(inflight) + self.compact_slack:
            self._compact()
        return done, unknown

    def requeue(
        self, cid: int, ids: Sequence[bytes], delay: float, now: float
    ) -> tuple[list[Outcome], list[bytes]]:
        """REQ: back to the queue (delay 0), deferred (delay > 0), or DEAD at max_attempts."""
        if not (delay >= 0 and math.isfinite(delay)):
            raise DelayError(delay)
        now = self._advance(now)
        c = self._clients[cid]
        inflight = self._in_flight
        limit = self.max_attempts
        due = now + delay if delay > 0 else 0.0
        outcomes: list[Outcome] = []
        unknown: list[bytes] = []
        dead = 0
        for i in ids:
            e = inflight.get(i)
            if e is None or e.client != cid:
                unknown.append(i)
                continue
            del inflight[i]
            e.client = -1
            if limit and e.attempts >= limit:
                dead += 1
                outcomes.append(Outcome(e, DEAD))
                continue
            e.due = due
            if delay > 0:
                self._heap_seq += 1
                heapq.heappush(self._deferred, (due, self._heap_seq, e))
            else:
                self._queue.append(e)
            outcomes.append(Outcome(e, REQUEUED))
        n = len(outcomes)
        c.in_flight -= n
        c.requeued += n
        self._requeued += n - dead
        self._dead_lettered += dead
        self._maybe_compact()
        return outcomes, unknown

    def touch(self, cid: int, ids: Sequence[bytes], now: float) -> list[bytes]:
        """TOUCH: reset the deadline of held entries to now + msg_timeout; unknown ids."""
        now = self._advance(now)
        c = self._clients[cid]
        get = self._in_flight.get
        deadline = now + c.msg_timeout
        touched: list[Entry] = []
        unknown: list[bytes] = []
        for i in ids:
            e = get(i)
            if e is None or e.client != cid:
                unknown.append(i)
            elif e.deadline != deadline:
                e.deadline = deadline
                touched.append(e)
        if touched:
            self._record(c.msg_timeout, deadline, tuple(touched))
            self._maybe_compact()
        return unknown

    def tick(self, now: float) -> list[Outcome]:
        """Time out in-flight entries whose deadline passed; promote due deferred ones."""
        now = self._advance(now)
        outcomes: list[Outcome] = []
        inflight = self._in_flight
        clients = self._clients
        queue = self._queue
        limit = self.max_attempts
        for dq in self._timeouts.values():
            while dq and dq[0][0] <= now:
                deadline, batch = dq.popleft()
                self._recorded -= len(batch)
                for e in batch:
                    if e.client < 0 or e.deadline != deadline:
                        continue  # finished, requeued or touched since
                    c = clients[e.client]
                    c.in_flight -= 1
                    c.timed_out += 1
                    self._timed_out += 1
                    del inflight[e.id]
                    e.client = -1
                    if limit and e.attempts >= limit:
                        self._dead_lettered += 1
                        outcomes.append(Outcome(e, DEAD))
                    else:
                        e.due = 0.0
                        queue.append(e)
                        outcomes.append(Outcome(e, REQUEUED))
        if self._deferred and self._deferred[0][0] <= now:
            self._promote(now)
        return outcomes

    def next_wakeup(self) -> float | None:
        """The earliest in-flight deadline or deferred due time; None if there is none."""
        best = self._deferred[0][0] if self._deferred else math.inf
        for dq in self._timeouts.values():
            while dq:
                deadline, batch = dq[0]
                first = batch[0]
                if first.client >= 0 and first.deadline == deadline:
                    best = min(best, deadline)
                    break
                # Trim the stale head so the next call is O(1) again.
                live = tuple(e for e in batch if e.client >= 0 and e.deadline == deadline)
                self._recorded -= len(batch) - len(live)
                if live:
                    dq[0] = (deadline, live)
                    best = min(best, deadline)
                    break
                dq.popleft()
        return None if best == math.inf else best

    def _maybe_compact(self) -> None:
        if self._recorded > 2 * len(self._in_flight) + self.compact_slack:
            self._compact()

    def _compact(self) -> None:
        recorded = 0
        for timeout, dq in list(self._timeouts.items()):
            kept: deque[_Record] = deque()
            for deadline, batch in dq:
                live = tuple(e for e in batch if e.client >= 0 and e.deadline == deadline)
                if live:
                    kept.append((deadline, live))
                    recorded += len(live)
            if kept:
                self._timeouts[timeout] = kept
            else:
                del self._timeouts[timeout]
        self._recorded = recorded

    # ----------------------------------------------------------------- admin

    def pause(self) -> None:
        """Stop delivering; everything else (FIN, REQ, TOUCH, timeouts) goes on."""
        self._paused = True

    def unpause(self) -> None:
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def empty(self) -> list[Entry]:
        """Drop every queued, deferred and in-flight entry; return them (queue order first)."""
        dropped = list(self._queue)
        dropped.extend(t[2] for t in sorted(self._deferred))
        for e in self._in_flight.values():
            e.client = -1
            dropped.append(e)
        self._queue.clear()
        self._deferred.clear()
        self._in_flight.clear()
        self._timeouts.clear()
        self._recorded = 0
        for c in self._clients.values():
            c.in_flight = 0
        return dropped

    # ----------------------------------------------------------------- stats

    @property
    def depth(self) -> int:
        """Entries queued ready for delivery (not deferred, not in flight)."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def deferred(self) -> int:
        return len(self._deferred)

    @property
    def requeued(self) -> int:
        """Entries put back by REQ or by their client going away (not timeouts)."""
        return self._requeued

    @property
    def timed_out(self) -> int:
        """Deliveries that timed out (whether requeued or dead-lettered)."""
        return self._timed_out

    @property
    def dead_lettered(self) -> int:
        return self._dead_lettered

    @property
    def delivered(self) -> int:
        """Deliveries, counting redeliveries."""
        return self._delivered

    @property
    def finished(self) -> int:
        return self._finished

    # ------------------------------------------------------------ debugging

    def check_invariants(self) -> None:
        """Verify the internal bookkeeping; O(size), for tests. Raises AssertionError."""

        def fail(msg: str) -> None:
            raise AssertionError(msg)

        seen: dict[int, str] = {}
        for where, entries in (
            ("queued", list(self._queue)),
            ("deferred", [t[2] for t in self._deferred]),
            ("in flight", list(self._in_flight.values())),
        ):
            for e in entries:
                if id(e) in seen:
                    fail(f"entry {e.id!r} is both {seen[id(e)]} and {where}")
                seen[id(e)] = where
                if where != "in flight" and e.client != -1:
                    fail(f"{where} entry {e.id!r} claims client {e.client}")
        per_client: dict[int, int] = {}
        live_records: set[int] = set()
        for dq in self._timeouts.values():
            prev = -math.inf
            for deadline, batch in dq:
                if deadline < prev:
                    fail("timeout deque out of order")
                prev = deadline
                live_records.update(
                    id(e) for e in batch if e.client >= 0 and e.deadline == deadline
                )
        for key, e in self._in_flight.items():
            if key != e.id:
                fail(f"in-flight entry {e.id!r} filed under {key!r}")
            if e.client not in self._clients:
                fail(f"in-flight entry {e.id!r} held by unknown client {e.client}")
            if id(e) not in live_records:
                fail(f"in-flight entry {e.id!r} has no timeout record")
            per_client[e.client] = per_client.get(e.client, 0) + 1
        for cid, c in self._clients.items():
            if c.in_flight != per_client.get(cid, 0):
                fail(f"client {cid} counts {c.in_flight} in flight, holds {per_client.get(cid, 0)}")
        if self._recorded != sum(len(b) for dq in self._timeouts.values() for _, b in dq):
            fail("recorded count drifted")
        heap = self._deferred
        for i in range(1, len(heap)):
            if heap[(i - 1) // 2] > heap[i]:
                fail("deferred heap order broken")
