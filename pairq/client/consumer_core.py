"""The consumer's bookkeeping: pure, sans-IO, driven by ``pairq.client.consumer``.

Every rule of a consumer that is not about sockets or tasks lives here: RDY
credit and its redistribution over the Subscribe sessions, in-flight
accounting, REQ backoff, de-duplication (which deliveries run, which wait,
which are dropped as duplicates, which ids to record), and what becomes of an
answer whose session has ended. The object does no I/O, starts no tasks and
never reads a clock: methods that need time take ``now`` (seconds, the same
clock as the window's; ``time.monotonic`` for the default window). The
consumer owns the streams, the handler workers, the timers and the window's
executor, and carries out what the core leaves in the outboxes.

Interface::

    core = ConsumerCore(max_in_flight=200, requeue_base_ms=1000, requeue_max_ms=60_000,
                        fin_batch_size=256, window=MemoryDedupe())   # window=None: no dedupe

    # sessions: one Outbox per Subscribe stream (a reconnect is a new Outbox)
    core.open(box) -> list[Outbox]           # boxes whose RDY must be (re)sent
    core.close(box) -> list[Outbox]
    core.set_max_in_flight(n) -> list[Outbox]
    core.stop() -> list[Outbox]              # RDY 0 everywhere; later deliveries are refused

    # deliveries (one call per stream message) and outcomes (one per message)
    core.admit(box, msgs, now) -> list[msg]  # the ones to hand to the handler / iterator
    core.finish(msg, now)                    # FIN (after recording the id, with a window)
    core.finish_many(msgs, now)              # the same for a batch (one window record)
    core.requeue(msg, delay_ms, now)         # REQ; delay_ms None: backoff by attempts
    core.touch(msg) -> bool                  # TOUCH
    core.take_records() -> list[msg]         # windows with an executor: ids to record
    core.recorded(msgs)                      # ... and the report that they are recorded
    core.woken                               # boxes answered for another box's message

    core.in_flight; core.stats; core.check_invariants()

Answers are *actions left in outboxes*: ``box.fins`` (ids), ``box.reqs``
(delay ms -> ids), ``box.touches`` (ids) and ``box.rdy`` (a count to send, or
None). The consumer writes them to the box's stream and empties them; it
tells the core what it sent as RDY through ``box.sent_rdy``.

Rules (tests/unit/client/test_consumer_core*.py check each one):

- Credit (NSQ's rule): each open session gets ``rdy_per_connection(max_in_flight,
  open sessions, box.max_rdy)``, i.e. ``max(1, max_in_flight // n)`` capped by
  the broker's max RDY, and 0 for every session once stopping or while
  ``max_in_flight`` is 0. It is recomputed on ``open``, ``close``,
  ``set_max_in_flight`` and ``stop``; a box's ``rdy`` is set when its share
  differs from what was last sent (or a send is already pending). FIN/REQ
  free credit at the broker, so RDY is not re-sent per answer. A box's
  ``fin_threshold`` (when the consumer should write its FINs at once) is a
  quarter of its credit, at least 1, at most ``fin_batch_size``.
- In flight: every delivered message counts from ``admit`` until it is
  answered (FIN or REQ, by the handler's outcome, by the iterator's user, or
  as a duplicate). Deliveries while stopping are refused: REQ with delay 0 at
  once, never counted in flight.
- Answer once: a message is PENDING until its first ``finish`` / ``requeue``;
  later ones are ignored (``finish`` and ``requeue`` return without effect).
- Backoff: ``requeue(msg, None, now)`` uses ``requeue_delay_ms(msg.attempts)``:
  ``requeue_base_ms * 2**(attempts-1)`` capped by ``requeue_max_ms``. The
  consumer has no max attempts of its own: the broker counts attempts and
  moves a message that failed its ``max_attempts``-th delivery to the
  channel's dead letters.
- Ended sessions: an answer (FIN, REQ, TOUCH, duplicate FIN) for a message
  whose box is closed is dropped (the broker requeued everything in flight
  on that stream when it ended), but still counts as an answer: in-flight
  accounting, stats and the window are updated exactly as if it was sent.
- De-duplication (``window`` not None): ``admit`` hands a message on only if
  its id is neither being handled now nor recorded in the window within its
  ttl. An id being handled makes the new delivery *wait*: it is answered
  like the run in progress (FIN'd as a duplicate when that run's id is
  recorded, REQ'd with the same delay when it is requeued). A recorded id
  is FIN'd at once as a duplicate (``stats.duplicates``) and never handled.
  ``finish`` records the id, then FINs: with an in-memory window (no
  ``executor``) both happen in the call; otherwise the message waits in
  ``take_records()`` until ``recorded()`` reports the batch committed (or
  failed: ``stats.dedupe_errors``; FIN'd anyway). A failing window lookup
  counts as not seen (``dedupe_errors``): a broken window never stops
  consumption. ``requeue`` records nothing.
- Duplicates answered on another box than the message given land in
  ``woken`` (the consumer wakes their writers and clears the list).

Performance: O(1) per message, and no Python-level work per message for the
window in the common case. ``admit`` checks a whole batch with set operations
(``isdisjoint`` against the ids being handled and the ``MemoryDedupe`` window,
one ``update``) and returns the list it was given; only a batch with a
duplicate is walked one message at a time. ``finish_many`` records a batch of
ids in the window with one ``record_many`` (one set update and one mark). Other
windows are asked per id (``contains``, ``add_many``).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Protocol, TypeVar

from pairq.client._policy import rdy_per_connection, requeue_delay_ms
from pairq.client.dedupe import DedupeWindow, MemoryDedupe

__all__ = [
    "FINISHED",
    "PENDING",
    "REQUEUED",
    "ConsumerCore",
    "ConsumerStats",
    "Delivery",
    "Outbox",
]

# Answer states of a delivery.
PENDING = 0
FINISHED = 1
REQUEUED = 2


class ConsumerStats:
    """Live counters of a Consumer (plain ints, read them any time)."""

    __slots__ = (
        "connections",
        "dedupe_errors",
        "duplicates",
        "errors",
        "finished",
        "handler_errors",
        "heartbeats",
        "received",
        "reconnects",
        "requeued",
        "touched",
    )

    def __init__(self) -> None:
        self.received = 0
        """Deliveries received (duplicates included)."""
        self.finished = 0
        """Messages FIN'd after the handler succeeded (duplicates not included)."""
        self.requeued = 0
        """Messages REQ'd (handler failures, requeue(), messages refused while stopping)."""
        self.duplicates = 0
        """Deliveries FIN'd without running the handler because their id was already handled."""
        self.handler_errors = 0
        """Handler runs that raised."""
        self.touched = 0
        """TOUCH requests sent."""
        self.errors = 0
        """Non-fatal SubscribeError events from brokers (e.g. FIN of a timed-out message)."""
        self.reconnects = 0
        """Streams reopened after a failure."""
        self.heartbeats = 0
        """Heartbeats received from brokers (each answered with a nop)."""
        self.connections = 0
        """Streams currently accepted by a broker."""
        self.dedupe_errors = 0
        """Failures to record ids in the dedupe window (the messages were FIN'd anyway)."""

    def as_dict(self) -> dict[str, int]:
        """The counters as a dict."""
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        return f"ConsumerStats({self.as_dict()})"


class Outbox:
    """The answers waiting to be written to one Subscribe session, and its credit.

    ``open`` is True from ``ConsumerCore.open`` to ``close``; answers for a
    closed box are dropped. The consumer's session class extends it.
    """

    __slots__ = ("fin_threshold", "fins", "max_rdy", "open", "rdy", "reqs", "sent_rdy", "touches")

    def __init__(self, max_rdy: int = 0) -> None:
        self.max_rdy = max_rdy
        """The broker's max RDY count (0: unknown, no cap)."""
        self.open = False
        self.fins: list[bytes] = []
        self.reqs: dict[int, list[bytes]] = {}
        self.touches: list[bytes] = []
        self.rdy: int | None = None
        """A credit to send, or None."""
        self.sent_rdy = 0
        """The credit last sent (set by the consumer when it writes ``rdy``)."""
        self.fin_threshold = 1

    def has_answers(self) -> bool:
        """Whether FINs, REQs or TOUCHes wait to be written."""
        return bool(self.fins or self.reqs or self.touches)

    def answered(self) -> None:
        """Hook for the driver: answers were added to this box (the core never calls it)."""


class Delivery(Protocol):
    """What the core needs of a delivered message (``pairq.client.message.Message``)."""

    id: bytes
    _state: int
    _box: Outbox

    @property
    def attempts(self) -> int: ...


D = TypeVar("D", bound=Delivery)


class ConsumerCore:
    """RDY credit, in-flight accounting, backoff and de-duplication of one consumer."""

    def __init__(
        self,
        *,
        max_in_flight: int,
        requeue_base_ms: int,
        requeue_max_ms: int,
        fin_batch_size: int = 256,
        window: DedupeWindow | None = None,
        stats: ConsumerStats | None = None,
    ) -> None:
        if max_in_flight < 0:
            raise ValueError("max_in_flight must be >= 0")
        self.max_in_flight = max_in_flight
        self.requeue_base_ms = requeue_base_ms
        self.requeue_max_ms = requeue_max_ms
        self.fin_batch_size = max(1, fin_batch_size)
        self.window = window
        self.stats = stats if stats is not None else ConsumerStats()
        self.sessions: list[Outbox] = []
        self.in_flight = 0
        self.stopping = False
        self.woken: list[Outbox] = []
        # Ids being handled now (admitted, not yet answered or recorded); None: no window.
        self._handling: set[bytes] | None = set() if window is not None else None
        # Deliveries waiting for the run of the same id (answered like it).
        self._waiting: dict[bytes, list[Delivery]] = {}
        self.window_errors: list[tuple[str, bytes, Exception]] = []
        """Window failures ("lookup" or "record", an id, the error) for the driver to log."""
        self._memory: MemoryDedupe | None = window if isinstance(window, MemoryDedupe) else None
        self._executor: Executor | None = window.executor if window is not None else None
        self.to_record: list[Delivery] = []
        """Finished messages whose ids the window's executor must record (read-only)."""

    # -- credit ---------------------------------------------------------------------

    def open(self, box: Outbox) -> list[Outbox]:
        """A session was accepted: it gets a share of the credit (as does every other)."""
        if box.open:
            raise ValueError("box already open")
        box.open = True
        box.fins, box.reqs, box.touches = [], {}, []
        box.rdy, box.sent_rdy = None, 0
        self.sessions.append(box)
        return self._redistribute()

    def close(self, box: Outbox) -> list[Outbox]:
        """A session ended: its unsent answers are dropped, the others share its credit."""
        if not box.open:
            return []
        box.open = False
        box.fins, box.reqs, box.touches = [], {}, []
        box.rdy = None
        self.sessions.remove(box)
        return self._redistribute()

    def set_max_in_flight(self, max_in_flight: int) -> list[Outbox]:
        """Change the total credit (0 pauses delivery)."""
        if max_in_flight < 0:
            raise ValueError("max_in_flight must be >= 0")
        self.max_in_flight = max_in_flight
        return self._redistribute()

    def stop(self) -> list[Outbox]:
        """Stopping: RDY 0 on every session; later deliveries are refused (REQ 0)."""
        self.stopping = True
        return self._redistribute()

    def _redistribute(self) -> list[Outbox]:
        live = self.sessions
        n = len(live)
        changed = []
        for box in live:
            rdy = 0 if self.stopping else rdy_per_connection(self.max_in_flight, n, box.max_rdy)
            # Send FINs in quarters of the credit, so the broker refills this
            # stream while the rest of the batch is still being handled.
            box.fin_threshold = max(1, min(self.fin_batch_size, rdy // 4))
            if rdy != box.sent_rdy or box.rdy is not None:
                box.rdy = rdy
                changed.append(box)
        return changed

    # -- deliveries -----------------------------------------------------------------

    def admit(self, box: Outbox, msgs: list[D], now: float) -> list[D]:
        """Deliveries from ``box``: return the ones to handle (``msgs`` itself when all)."""
        n = len(msgs)
        if not n:
            return msgs
        self.stats.received += n
        if self.stopping:
            self.stats.requeued += n
            if box.open:
                box.reqs.setdefault(0, []).extend(m.id for m in msgs)
            return []
        self.in_flight += n
        handling = self._handling
        if handling is None:
            return msgs
        mem = self._memory
        if mem is not None:
            # The common case in C loops: no id of the batch is recorded (fresh or
            # expired), being handled, or twice in the batch.
            ids = [m.id for m in msgs]
            if handling.isdisjoint(ids) and mem.disjoint(ids, now):
                before = len(handling)
                handling.update(ids)
                if len(handling) == before + n:
                    return msgs
                handling.difference_update(ids)  # an id twice in the batch
        return self._admit_each(msgs, now)

    def _admit_each(self, msgs: list[D], now: float) -> list[D]:
        handling = self._handling
        assert handling is not None and self.window is not None
        mem = self._memory
        window = self.window
        out = []
        for msg in msgs:
            mid = msg.id
            if mid in handling:
                self._waiting.setdefault(mid, []).append(msg)  # answered like the run
                continue
            if mem is not None:
                seen = mem.seen(mid, now)
            else:
                try:
                    seen = window.contains(mid)
                except Exception as exc:  # a broken window must not stop consumption
                    self.stats.dedupe_errors += 1
                    self.window_errors.append(("lookup", mid, exc))
                    seen = False
            if seen:
                msg._state = FINISHED
                self.stats.duplicates += 1
                self.in_flight -= 1
                box = msg._box
                if box.open:
                    box.fins.append(mid)
                continue
            handling.add(mid)
            out.append(msg)
        return out

    # -- outcomes -------------------------------------------------------------------

    def finish(self, msg: Delivery, now: float) -> None:
        """FIN ``msg`` (with a window: record its id first). Ignored if already answered."""
        self.finish_many((msg,), now)

    def finish_many(self, msgs: Sequence[Delivery], now: float) -> None:
        """``finish`` each of ``msgs`` (one record batch for the window)."""
        handling = self._handling
        if handling is not None and self._executor is not None:
            for msg in msgs:
                if msg._state == PENDING:
                    msg._state = FINISHED
                    self.to_record.append(msg)  # FIN'd by recorded()
            return
        ids = []
        for msg in msgs:
            if msg._state != PENDING:
                continue
            msg._state = FINISHED
            mid = msg.id
            ids.append(mid)
            box = msg._box
            if box.open:
                box.fins.append(mid)
        if not ids:
            return
        n = len(ids)
        self.in_flight -= n
        self.stats.finished += n
        if handling is None:
            return
        handling.difference_update(ids)
        mem = self._memory
        if mem is not None:
            mem.record_many(ids, now)
        else:
            assert self.window is not None
            try:
                self.window.add_many(ids)
            except Exception as exc:
                self.stats.dedupe_errors += len(ids)
                self.window_errors.append(("record", ids[0], exc))
        waiting = self._waiting
        if waiting:
            for mid in ids:
                dups = waiting.pop(mid, None)
                if dups:
                    self._finish_duplicates(dups)

    def _finish_duplicates(self, dups: list[Delivery]) -> None:
        stats = self.stats
        for dup in dups:
            dup._state = FINISHED
            stats.duplicates += 1
            self.in_flight -= 1
            box = dup._box
            if box.open:
                box.fins.append(dup.id)
                self.woken.append(box)

    def requeue(self, msg: Delivery, delay_ms: int | None, now: float) -> None:
        """REQ ``msg`` after ``delay_ms`` (None: backoff by attempts); with it, its waiters."""
        if msg._state != PENDING:
            return
        msg._state = REQUEUED
        if delay_ms is None:
            delay_ms = requeue_delay_ms(
                msg.attempts, base_ms=self.requeue_base_ms, max_ms=self.requeue_max_ms
            )
        self._requeue(msg, delay_ms)
        handling = self._handling
        if handling is not None:
            handling.discard(msg.id)
            for dup in self._waiting.pop(msg.id, ()):
                dup._state = REQUEUED
                self._requeue(dup, delay_ms)
                if dup._box.open:
                    self.woken.append(dup._box)

    def _requeue(self, msg: Delivery, delay_ms: int) -> None:
        self.stats.requeued += 1
        self.in_flight -= 1
        box = msg._box
        if box.open:
            box.reqs.setdefault(delay_ms, []).append(msg.id)

    def touch(self, msg: Delivery) -> bool:
        """TOUCH ``msg`` if it is unanswered and its session open; whether it was queued."""
        box = msg._box
        if msg._state != PENDING or not box.open:
            return False
        box.touches.append(msg.id)
        self.stats.touched += 1
        return True

    def take_records(self) -> list[Delivery]:
        """Messages whose ids the executor must record (then ``recorded``); emptied."""
        out, self.to_record = self.to_record, []
        return out

    def recorded(self, msgs: Sequence[Delivery], ok: bool = True) -> None:
        """The ids of ``msgs`` (from ``take_records``) are recorded (``ok``) or failed: FIN."""
        handling = self._handling
        assert handling is not None
        stats = self.stats
        if not ok:
            stats.dedupe_errors += len(msgs)
        waiting = self._waiting
        for msg in msgs:
            self.in_flight -= 1
            stats.finished += 1
            box = msg._box
            if box.open:
                box.fins.append(msg.id)
                self.woken.append(box)
            handling.discard(msg.id)
            dups = waiting.pop(msg.id, None)
            if dups:
                self._finish_duplicates(dups)

    # -- checks ---------------------------------------------------------------------

    @property
    def handling(self) -> int:
        """Ids being handled now (admitted, not yet answered or recorded)."""
        return len(self._handling) if self._handling is not None else 0

    def check_invariants(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (for tests)."""

        def fail(msg: str) -> None:
            raise AssertionError(msg)

        if self.in_flight < 0:
            fail(f"in_flight {self.in_flight} < 0")
        if len({id(b) for b in self.sessions}) != len(self.sessions):
            fail("a session is listed twice")
        for box in self.sessions:
            if not box.open:
                fail("a closed box is listed as a session")
        n = len(self.sessions)
        for box in self.sessions:
            want = 0 if self.stopping else rdy_per_connection(self.max_in_flight, n, box.max_rdy)
            have = box.rdy if box.rdy is not None else box.sent_rdy
            if have != want:
                fail(f"box credit {have} != share {want}")
        if self._handling is None:
            if self.to_record or self._waiting:
                fail("records or waiters without a window")
        else:
            waiting = sum(len(w) for w in self._waiting.values())
            if self.in_flight != len(self._handling) + waiting:
                fail(
                    f"in_flight {self.in_flight} != {len(self._handling)} being handled"
                    f" + {waiting} waiting"
                )
            for mid in self._waiting:
                if mid not in self._handling:
                    fail("deliveries wait for an id that is not being handled")
            for msg in self.to_record:
                if msg.id not in self._handling:
                    fail("a record pending for an id not being handled")
                if msg._state != FINISHED:
                    fail("a record pending for an unfinished message")
