"""A channel: the asyncio glue between the pure delivery core, the store and subscribers.

``ChannelCore`` (pure, in ``channel_core.py``) decides who gets what and
when; this object feeds it entries (fresh from the topic's fan-out, or read
back from disk when the channel lags), sends what it decides to
subscribers, and persists what must survive a restart:

* progress: a ``floor`` (every seq below it is finished) plus the sparse set
  of finished seqs above it. FINs are coalesced and flushed once per loop
  turn, so in-order consumption costs one floor write per flush, not one
  write per message.
* requeue state: attempts and due time of requeued/deferred messages, so a
  REQ with delay keeps its due time across restarts.
* dead letters: a copy of the message, so the body survives the topic's
  cleanup; dead letters can be listed and replayed.

After a crash, everything at or above the floor that is not marked finished
is deliverable again (at-least-once).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, cast

from pairq.broker import wire
from pairq.broker.channel_core import DEAD, ChannelCore, Entry
from pairq.broker.logs import ChannelLog, TopicLog
from pairq.broker.ports import Context, Replicator
from pairq.broker.schema import ChannelMeta
from pairq.broker.store import Write

if TYPE_CHECKING:
    from pairq.broker.subscriber import Subscriber

log = logging.getLogger("pairq.channel")

# Read from disk in chunks of this many records when the channel lags.
READ_CHUNK = 2000
# At most this many seqs missing from the log are reported for repair per read.
MISSING_REPORT = 1000
# Split deliveries into stream messages of at most about this many bytes.
MAX_DELIVERY_BYTES = 1024 * 1024
# Keys < 0 are dead letters replayed into the channel: -(dlq seq) - 1.
_REPLAY_BASE = -1
# High bit of a dead letter's stored attempts: it is being replayed (back in the channel).
REPLAYING = 0x80000000


def wall_to_mono(due_ns: int) -> float:
    if due_ns <= 0:
        return 0.0
    return due_ns / 1e9 - time.time() + time.monotonic()


def mono_to_wall_ns(due: float) -> int:
    if due <= 0:
        return 0
    return int((due - time.monotonic() + time.time()) * 1e9)


class ChannelHost(Protocol):
    """What a channel needs of its topic."""

    name: str
    paused: bool
    dropped: int  # records an ephemeral topic could not hold

    @property
    def committed_seq(self) -> int: ...

    @property
    def first_seq(self) -> int: ...

    def delete_channel(self, name: str) -> None: ...

    def on_floor_advanced(self) -> None: ...


class Channel:
    """One channel of a topic: ``topic`` is its host, ``log`` the topic's log (read
    back when the channel lags), ``progress`` where its own progress is kept, and
    ``replicator`` the partner that hears of it (``ports.SOLO`` for none)."""

    def __init__(
        self,
        topic: ChannelHost,
        meta: ChannelMeta,
        *,
        log: TopicLog,
        progress: ChannelLog,
        replicator: Replicator,
        ctx: Context,
        ephemeral: bool,
    ) -> None:
        self.topic = topic
        self.meta = meta
        self.name = meta.name
        self.ephemeral = ephemeral
        self.log = log
        self.plog = progress
        self.durable = progress.durable
        self.replicator = replicator
        self._fence = ctx.fence
        self._hooks = ctx.telemetry
        self._ident = ident = ctx.ident
        limits = ctx.limits
        self._max_backlog = limits.max_backlog
        self.core = ChannelCore(
            max_attempts=limits.max_attempts,
            max_rdy=limits.max_rdy_count,
            max_backlog=limits.max_backlog,
        )
        if meta.paused or topic.paused:
            self.core.pause()
        self.floor = meta.floor
        self.read_pos = meta.floor  # next seq to load from the topic log
        self.fin_mem: set[int] = set()  # finished seqs >= floor (persisted or not)
        self.fin_disk: set[int] = set()  # the subset with a key in ``fins``
        self.fin_dirty: list[int] = []  # finished since the last flush
        self.gaps: list[tuple[int, int]] = []  # sorted [lo, hi) ranges holding no message
        self.states: dict[int, tuple[int, int]] = {}  # seq -> (attempts, due_ns) on disk
        self.state_dirty: dict[int, tuple[int, int] | None] = {}
        self.dlq_count = 0
        self.subscribers: dict[int, Subscriber] = {}
        self.deleted = False
        self._pump_scheduled = False
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._loop = asyncio.get_running_loop()
        self._suffix = wire.broker_fields(ident.node_id, ident.epoch)
        self._suffix_epoch = ident.epoch
        self._load_state()

    # ------------------------------------------------------------ startup
    def _load_state(self) -> None:
        for seq in self.plog.finished():
            if seq >= self.floor:
                self.fin_mem.add(seq)
                self.fin_disk.add(seq)
        self.states.update(self.plog.states())
        self.dlq_count = self._reload_replays()
        self._advance_floor_mem()

    def _entry(self, key: int, rec: bytes, attempts: int, due_ns: int) -> Entry:
        return Entry(
            key=key,
            id=rec[:16],
            attempts=attempts,
            due=wall_to_mono(due_ns or wire.record_due_ns(rec)),
            payload=rec[wire.HEADER_SIZE :],
        )

    # ------------------------------------------------------------ supply
    def offer(self, first_seq: int, records: list[tuple[bytes, float, bytes]]) -> None:
        """Freshly committed messages from the topic, in seq order, decoded once by
        the topic for all its channels: (id, due (monotonic), message bytes)."""
        if self.deleted:
            return
        room = self.core.wants()
        if self.read_pos != first_seq or room < len(records) or not self.subscribers:
            if self.log.retains:
                # Behind, full, or nobody to deliver to: leave it in the log and read
                # it back when a consumer needs it, so idle channels cost a publish
                # nothing (publish cost must not grow with the channel count).
                if self.subscribers:
                    self.schedule_pump()  # the refill reads them back from the log
                return
            # Ephemeral topic: nothing on disk to fall back on (NSQ drops too).
            self.topic.dropped += len(records) - max(0, room)
            records = records[: max(0, room)]
            self.read_pos = first_seq
        now = time.monotonic()
        entries = []
        seq = first_seq
        fin = self.fin_mem
        states = self.states
        for msg_id, due, payload in records:
            if not fin or seq not in fin:
                state = states.get(seq) if states else None
                if state is None:
                    entries.append(Entry(seq, msg_id, 0, due, payload))
                else:  # requeue state carried over from the partner by a takeover
                    entries.append(
                        Entry(seq, msg_id, state[0], max(due, wall_to_mono(state[1])), payload)
                    )
            seq += 1
        if entries:
            self.core.push(entries, now)
        self.read_pos = first_seq + len(records)
        self.schedule_pump()

    def _refill(self) -> None:
        if not self.log.retains or not self.subscribers:
            return
        want = self.core.wants()
        head = self.topic.committed_seq
        if want < min(READ_CHUNK // 2, self._max_backlog // 2) and self.core.depth > 0:
            return
        if self.read_pos < self.topic.first_seq:
            # Cleaned up below us (only possible for ephemeral channels).
            self.read_pos = self.topic.first_seq
        now = time.monotonic()
        while want > 0 and self.read_pos < head:
            limit = min(want, READ_CHUNK)
            got = self.log.read(self.read_pos, head, limit)
            rows = got.rows
            corrupt = got.corrupt[0] if got.corrupt else None
            if not rows and corrupt is None:
                # Nothing left below the head: failed appends, if known as such.
                if self._explained(self.read_pos, head):
                    self._mark_gap(self.read_pos, head)
                    self.read_pos = head
                break
            entries = []
            fin = self.fin_mem
            states = self.states
            prev = self.read_pos
            stopped = False
            for seq, rec in rows:
                if seq != prev:
                    # Seqs missing from the log: failed appends or a restart's skipped
                    # range if a gap says so; anything else vanished from the store.
                    if not self._explained(prev, seq):
                        stopped = True
                        break
                    self._mark_gap(prev, seq)
                prev = seq + 1
                if seq in fin:
                    continue
                state = states.get(seq)
                if state is not None:
                    entries.append(self._entry(seq, rec, state[0], state[1]))
                else:
                    entries.append(self._entry(seq, rec, 0, 0))
            if not stopped:
                self.read_pos = prev
            if entries:
                self.core.push(entries, now)
            want -= len(entries)
            if stopped:
                break
            if corrupt is not None:
                # A record failed its checksum: never delivered. Reading resumes there
                # once it is repaired from the partner (or quarantined: then a gap).
                if not self._explained(prev, corrupt):
                    break
                self._mark_gap(prev, corrupt)
                self.read_pos = max(prev, corrupt)
                self.log.report_corrupt(corrupt)
                break
            if len(rows) < limit and self.read_pos < head:
                # The read stopped short of its limit, so nothing else is below the
                # head: the remaining seqs are failed appends, if known as such.
                if not self._explained(self.read_pos, head):
                    break
                self._mark_gap(self.read_pos, head)
                self.read_pos = head

    def _covered(self, seq: int) -> bool:
        """A known gap (failed append, restart's skipped range, a seq missing on both
        brokers) or a finished seq holds ``seq``."""
        if seq < self.floor or seq in self.fin_mem:
            return True
        gaps = self.gaps
        i = bisect.bisect_right(gaps, (seq, 1 << 62)) - 1
        return i >= 0 and gaps[i][0] <= seq < gaps[i][1]

    def _explained(self, lo: int, hi: int) -> bool:
        """Are the seqs [lo, hi), missing from a read of the log, known holes? If not,
        the first unexplained one becomes the read position and the unexplained ones
        (up to MISSING_REPORT) go to the repair path, as a record failing its checksum
        does: they are fetched from the partner and rewritten, or, if no broker has
        them, made known holes (``mark_hole``). Taking them for failed appends would
        finish them unseen: a damaged store (a flipped bit in LMDB's own pages, which
        it does not checksum) loses records from reads without any checksum failing."""
        seq = max(lo, self.floor)
        gaps = self.gaps
        i = max(0, bisect.bisect_right(gaps, (seq, 1 << 62)) - 1)
        while seq < hi:  # skip what the known gaps and finished seqs cover
            while i < len(gaps) and gaps[i][1] <= seq:
                i += 1
            if i < len(gaps) and gaps[i][0] <= seq:
                seq = gaps[i][1]
            elif seq in self.fin_mem:
                seq += 1
            else:
                break
        if seq >= hi:
            return True
        self.read_pos = seq
        missing = [s for s in range(seq, min(hi, seq + MISSING_REPORT)) if not self._covered(s)]
        self.log.report_missing(missing)
        return False

    def mark_hole(self, seq: int) -> None:
        """No broker has ``seq`` (checked after it went missing from the log): a gap."""
        self.skip_gap(seq, seq + 1)
        self.schedule_pump()

    def _mark_gap(self, lo: int, hi: int) -> None:
        """Seqs [lo, hi) hold no message (failed appends, or the range a restarted
        broker skips): finished as a range, never one by one (it can be large)."""
        lo = max(lo, self.floor)
        if lo >= hi:
            return
        gaps = self.gaps
        i = bisect.bisect_left(gaps, (lo, hi))
        gaps.insert(i, (lo, hi))
        # Merge overlapping or adjacent ranges.
        merged: list[tuple[int, int]] = []
        for g in gaps:
            if merged and g[0] <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], g[1]))
            else:
                merged.append(g)
        self.gaps = merged
        self.schedule_flush()

    def mark_finished_seqs(self, seqs: list[int]) -> None:
        """Seqs finished elsewhere (on the partner, before a takeover)."""
        for seq in seqs:
            self._finished_seq(seq)
        if seqs:
            self.schedule_flush()

    def skip_gap(self, lo: int, hi: int) -> None:
        """Seqs [lo, hi) were never used (a restart skips up to the high-water mark):
        finished, so they count in no depth."""
        self._mark_gap(lo, hi)
        if self.read_pos >= lo:
            self.read_pos = max(self.read_pos, hi)

    def drop_below(self, upto: int) -> bool:
        """Forget every seq below ``upto`` (the partner took them over); True if the
        channel had any."""
        if self.floor >= upto:
            return False
        self.core.empty()
        self.fin_mem = {s for s in self.fin_mem if s >= upto}
        self.gaps = [(max(lo, upto), hi) for lo, hi in self.gaps if hi > upto]
        self.fin_dirty = [s for s in self.fin_dirty if s >= upto]
        old_disk = [s for s in self.fin_disk if s < upto]
        self.fin_disk -= set(old_disk)
        self.floor = upto
        self.read_pos = upto
        for seq in [s for s in self.states if s < upto]:
            del self.states[seq]
            self.state_dirty[seq] = None
        if self.durable:
            batch = self.plog.batch()
            batch.floor(upto)
            for s in old_disk:
                batch.forget_finished(s)
            self.plog.post(batch)
            self._reload_replays()
        self.schedule_flush()
        self.schedule_pump()
        return True

    def _reload_replays(self) -> int:
        """Push dead letters being replayed back into the core; return how many
        dead letters are not being replayed."""
        replays = []
        dead = 0
        for seq, attempts, rec in self.plog.dead_letters():
            if attempts & REPLAYING:
                replays.append(self._entry(_REPLAY_BASE - seq, rec, 0, 0))
            else:
                dead += 1
        if replays:
            self.core.push(replays, time.monotonic())
        return dead

    def mark_failed(self, first_seq: int, count: int) -> None:
        """An append that failed left a gap in the log: treat it as finished."""
        if self.read_pos == first_seq:
            self.read_pos = first_seq + count
        self._mark_gap(first_seq, first_seq + count)

    # ------------------------------------------------------------ delivery
    def schedule_pump(self) -> None:
        if not self._pump_scheduled and not self.deleted:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self.deleted:
            return
        now = time.monotonic()
        self._handle_outcomes(self.core.tick(now))
        self._refill()
        if not self._fence.may_deliver():
            # Fenced: no live lease from the partner (see pairq.broker.pair). The broker
            # pumps every channel again when the lease is renewed.
            self._arm_timer()
            return
        ident = self._ident
        if self._suffix_epoch != ident.epoch:
            self._suffix_epoch = ident.epoch
            self._suffix = wire.broker_fields(ident.node_id, ident.epoch)
        fence = self._fence.fence
        delivered = self._hooks.on_delivered
        for cid, entries in self.core.take(now):
            sub = self.subscribers.get(cid)
            if sub is None:  # pragma: no cover - core and glue disagree
                continue
            if delivered is not None:  # tracing: one deliver span for the batch
                delivered(self.topic.name, self.name, entries)
            encode = sub.encode or self._encode
            # Keep each stream message well under clients' default 4 MiB limit.
            start = 0
            size = 0
            for i, e in enumerate(entries):
                size += len(cast(bytes, e.payload))
                if size > MAX_DELIVERY_BYTES and i > start:
                    sub.send_deliveries(encode(entries[start:i]), i - start, fence)
                    start = i
                    size = len(cast(bytes, e.payload))
            sub.send_deliveries(encode(entries[start:]), len(entries) - start, fence)
        self._arm_timer()

    def _encode(self, entries: list[Entry]) -> bytes:
        return wire.encode_deliveries(
            ((cast(bytes, e.payload), e.attempts) for e in entries), self._suffix
        )

    def _arm_timer(self) -> None:
        at = self.core.next_wakeup()
        if at is None:
            return
        if self._timer is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(self._loop_time(at), self._on_timer)

    def _loop_time(self, mono: float) -> float:
        return self._loop.time() + (mono - time.monotonic())

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = 0.0
        self._pump()

    def _handle_outcomes(self, outcomes: Iterable[Any]) -> None:
        for out in outcomes:
            entry = out.entry
            if out.kind == DEAD:
                self._dead_letter(entry)
            else:
                self._persist_requeue(entry)
        self.schedule_flush()

    def _persist_requeue(self, entry: Entry) -> None:
        if not self.durable:
            return
        if entry.key >= 0:
            value = (entry.attempts, mono_to_wall_ns(entry.due))
            self.states[entry.key] = value
            self.state_dirty[entry.key] = value

    def _dead_letter(self, entry: Entry) -> None:
        self.dlq_count += 1
        rec = wire.encode_prefix(entry.id) + cast(bytes, entry.payload)
        if entry.key >= 0:
            if self.durable:
                self.state_dirty[entry.key] = None
                self.states.pop(entry.key, None)
            self.plog.put_dead(entry.key, entry.attempts, rec)
            self._finished_seq(entry.key)
        else:
            self.plog.put_dead(_REPLAY_BASE - entry.key, entry.attempts, rec)

    # ------------------------------------------------------------ consumer commands
    def finish(self, cid: int, ids: list[bytes]) -> list[bytes]:
        done, unknown = self.core.finish(cid, ids, time.monotonic())
        if done and self._hooks.on_finished is not None:  # end-to-end latency
            self._hooks.on_finished(self.topic.name, self.name, done)
        for e in done:
            if e.key >= 0:
                self._finished_seq(e.key)
            else:
                self.plog.delete_dead(_REPLAY_BASE - e.key)
        if done:
            self.schedule_flush()
            self.schedule_pump()
        return unknown

    def requeue(self, cid: int, ids: list[bytes], delay: float) -> list[bytes]:
        outcomes, unknown = self.core.requeue(cid, ids, delay, time.monotonic())
        self._handle_outcomes(outcomes)
        self.schedule_pump()
        return unknown

    def touch(self, cid: int, ids: list[bytes]) -> list[bytes]:
        unknown = self.core.touch(cid, ids, time.monotonic())
        return list(unknown)

    def set_ready(self, cid: int, count: int) -> None:
        self.core.set_ready(cid, count)
        self.schedule_pump()

    def add_subscriber(self, sub: Subscriber) -> None:
        self.subscribers[sub.cid] = sub
        self.core.add_client(sub.cid, sub.msg_timeout)
        cid = sub.cid

        def on_hold(held: bool) -> None:
            if cid in self.subscribers:
                self.core.hold(cid, held)
                if not held:
                    self.schedule_pump()

        sub.on_hold = on_hold

    def remove_subscriber(self, sub: Subscriber) -> None:
        if self.subscribers.pop(sub.cid, None) is None:
            return
        self._handle_outcomes(self.core.remove_client(sub.cid, time.monotonic()))
        self.schedule_pump()
        if self.ephemeral and not self.subscribers:
            self.topic.delete_channel(self.name)

    # ------------------------------------------------------------ progress
    def _finished_seq(self, seq: int) -> None:
        if seq >= self.floor and seq not in self.fin_mem:
            self.fin_mem.add(seq)
            self.fin_dirty.append(seq)

    def _advance_floor_mem(self) -> list[int]:
        """Advance the floor past finished seqs; return those that had a fins key."""
        removed: list[int] = []
        floor = self.floor
        fin = self.fin_mem
        gaps = self.gaps
        while True:
            if floor in fin:
                fin.discard(floor)
                if floor in self.fin_disk:
                    self.fin_disk.discard(floor)
                    removed.append(floor)
                floor += 1
            elif gaps and gaps[0][0] <= floor:
                _lo, hi = gaps.pop(0)
                floor = max(floor, hi)
            else:
                break
        self.floor = floor
        return removed

    def schedule_flush(self) -> None:
        if not self._flush_scheduled and not self.deleted:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Persist progress (coalesced): floor, finished-above-floor keys, requeue state."""
        self._flush_scheduled = False
        if self.deleted:
            return
        old_floor = self.floor
        removed = self._advance_floor_mem()
        dirty = self.fin_dirty
        self.fin_dirty = []
        if not self.durable:
            self.state_dirty.clear()
            return
        batch = self.plog.batch()
        if self.floor != old_floor:
            batch.floor(self.floor)
        for seq in removed:
            batch.forget_finished(seq)
        floor = self.floor
        for seq in dirty:
            if seq >= floor and seq in self.fin_mem and seq not in self.fin_disk:
                self.fin_disk.add(seq)
                batch.finished(seq)
        replicate_states = dict(self.state_dirty) if self.state_dirty else None
        if self.state_dirty:
            for seq, value in self.state_dirty.items():
                if value is None or seq < floor or seq in self.fin_mem:
                    if seq in self.states or value is None:
                        batch.forget_state(seq)
                    self.states.pop(seq, None)
                else:
                    batch.state(seq, *value)
            self.state_dirty.clear()
        # Drop state records of seqs now below the floor.
        if self.states and self.floor != old_floor:
            for seq in [s for s in self.states if s < floor]:
                del self.states[seq]
                batch.forget_state(seq)
        self.plog.post(batch)
        if dirty or self.floor != old_floor or replicate_states:
            self.replicator.progress(
                self.topic.name,
                self.name,
                self.floor,
                [s for s in dirty if s >= floor],
                replicate_states,
            )
        if self.floor != old_floor:
            self.topic.on_floor_advanced()

    # ------------------------------------------------------------ admin
    def pause(self) -> None:
        self.core.pause()

    def unpause(self) -> None:
        self.core.unpause()
        self.schedule_pump()

    def empty(self) -> None:
        """Drop every queued, deferred and in-flight message (NSQ's channel empty)."""
        self.core.empty()
        head = self.topic.committed_seq
        self.read_pos = head
        old = self.floor
        self.floor = head
        self.fin_mem.clear()
        self.fin_dirty.clear()
        self.gaps = []
        if self.durable and head != old:
            self.plog.reset(head)
            self.fin_disk.clear()
            self.states.clear()
            self.state_dirty.clear()
            self.topic.on_floor_advanced()

    def close(self, reason: str) -> None:
        """The channel is going away (delete or shutdown): end its subscriptions."""
        self.deleted = True
        if self._timer is not None:
            self._timer.cancel()
        for sub in list(self.subscribers.values()):
            sub.terminate(reason)
        self.subscribers.clear()

    # ------------------------------------------------------------ dead letters
    def list_dead(self, limit: int) -> list[tuple[int, int, bytes]]:
        """(dlq seq, attempts, record) of dead letters, oldest first."""
        out = []
        for seq, attempts, rec in self.plog.dead_letters():
            if attempts & REPLAYING:
                continue
            out.append((seq, attempts, rec))
            if len(out) >= limit:
                break
        return out

    async def replay_dead(self, ids: set[bytes] | None) -> int:
        """Put dead letters back into the channel with attempts reset."""
        replays: list[Entry] = []
        marked: list[tuple[int, int, bytes]] = []
        for seq, _attempts, rec in self.list_dead(1 << 30):
            if ids is not None and rec[:16] not in ids:
                continue
            replays.append(self._entry(_REPLAY_BASE - seq, rec, 0, 0))
            marked.append((seq, REPLAYING, rec))
        if not replays:
            return 0
        await self.plog.replaying(marked)
        self.dlq_count -= len(replays)
        self.core.push(replays, time.monotonic())
        self.schedule_pump()
        return len(replays)

    def needs(self, seq: int) -> bool:
        """Whether ``seq`` is still to be delivered or finished here."""
        if seq < self.floor or seq in self.fin_mem:
            return False
        return not any(lo <= seq < hi for lo, hi in self.gaps)

    async def purge_dead(self, ids: set[bytes] | None) -> int:
        """Delete dead letters for good (all, or those with the given ids); returns how
        many. Dead letters being replayed are back in the channel and not touched."""
        dead = [(seq, rec) for seq, _a, rec in self.list_dead(1 << 30)]
        gone = [seq for seq, rec in dead if ids is None or rec[:16] in ids]
        for seq in gone:
            self.plog.delete_dead(seq)
        self.dlq_count -= len(gone)
        return len(gone)

    # ------------------------------------------------------------ peek
    def peek(self, limit: int) -> list[tuple[int, int, bytes]]:
        """(seq, attempts so far, record) of the oldest messages this channel has not
        finished, read back from the topic's log: queued, deferred or in flight,
        oldest first. Changes nothing (no attempt, no cursor moves). A topic that
        keeps no log (ephemeral) has nothing to peek at."""
        if not self.log.retains or limit <= 0:
            return []
        out: list[tuple[int, int, bytes]] = []
        pos, head = max(self.floor, self.topic.first_seq), self.topic.committed_seq
        while pos < head and len(out) < limit:
            got = self.log.read(pos, head, READ_CHUNK)
            rows = got.rows
            if got.corrupt and not rows:  # failed its checksum: shown once repaired
                self.log.report_corrupt(got.corrupt[0])
                pos = got.corrupt[0] + 1
                continue
            if not rows:
                break
            for seq, rec in rows:
                if seq in self.fin_mem:
                    continue
                state = self.states.get(seq)
                out.append((seq, state[0] if state else 0, rec))
                if len(out) >= limit:
                    break
            pos = rows[-1][0] + 1
        return out

    def adopt_states(self, states: dict[int, tuple[int, int]]) -> Write | None:
        """Requeue states (attempts, due_ns) of seqs taken over from the partner: kept
        here, and the write that stores them (None when nothing persists)."""
        if not self.durable or not states:
            return None
        self.states.update(states)
        batch = self.plog.batch()
        for seq, (attempts, due_ns) in states.items():
            batch.state(seq, attempts, due_ns)
        return batch.write()

    def progress_snapshot(self) -> tuple[int, set[int], dict[int, tuple[int, int]]]:
        """(floor, finished seqs above it, requeue states): what the partner's standby
        copy of this channel must match."""
        return self.floor, set(self.fin_mem), dict(self.states)

    # ------------------------------------------------------------ stats
    @property
    def depth(self) -> int:
        """Queued in memory plus what still waits on disk."""
        if not self.durable:
            return int(self.core.depth)
        # Below the floor everything is finished; the floor can pass the read position
        # over a gap (a restart's skipped range once the partner took over the rest).
        pos, head = max(self.read_pos, self.floor), self.topic.committed_seq
        # Seqs known to hold nothing (failed appends, a restart's skipped range) are
        # not messages waiting.
        empty = sum(min(hi, head) - max(lo, pos) for lo, hi in self.gaps if hi > pos and lo < head)
        return int(self.core.depth) + max(0, head - pos - empty)


def decode_records(records: list[bytes]) -> list[tuple[bytes, float, bytes]]:
    """(id, due as monotonic time, message bytes) of stored records, for ``offer``."""
    out = []
    for rec in records:
        due_ns = wire.record_due_ns(rec)
        out.append((rec[:16], wall_to_mono(due_ns) if due_ns else 0.0, rec[wire.HEADER_SIZE :]))
    return out
