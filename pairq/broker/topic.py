"""A topic: an append-only log of messages (stored once) fanned out to its channels.

Publishing (``publishing.py``) reserves consecutive seqs here, appends the
records to the topic's log and hands them back through ``settle`` once they
are durable; the topic then gives them to every channel, in seq order, so
nothing is delivered before it is durable. A topic with no channel keeps
everything it receives; its first channel starts at the oldest retained
message, later channels at the head (NSQ semantics). Bodies below the lowest
floor of the durable channels are deleted in the background.

A topic is given a ``ports.Context`` (the store, the pair's ``Replicator``,
limits, the id allocator, a topology callback), never the broker; its log is
durable or, for an ephemeral topic, the in-memory twin (``logs.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from pairq.broker.channel import Channel, decode_records
from pairq.broker.limits import limit_exceeded
from pairq.broker.logs import ChannelLog, DurableTopicLog, MemoryTopicLog, TopicLog
from pairq.broker.ports import SOLO, Context, Replicator
from pairq.broker.schema import ChannelMeta, TopicMeta
from pairq.broker.store import Write
from pairq.errors import PairqError
from pairq.names import is_ephemeral
from pairq.v1 import broker_pb2

log = logging.getLogger("pairq.topic")

GC_DELAY = 0.2  # seconds: batch body deletions


class Topic:
    def __init__(self, ctx: Context, meta: TopicMeta) -> None:
        self.ctx = ctx
        self.meta = meta
        self.name = meta.name
        self.ephemeral = is_ephemeral(meta.name)
        self.log: TopicLog = (
            MemoryTopicLog()
            if self.ephemeral
            else DurableTopicLog(ctx.store, meta.id, meta.name, ctx.integrity)
        )
        # Ephemeral topics are never replicated.
        self.replicator: Replicator = SOLO if self.ephemeral else ctx.replicator
        self.paused = meta.paused
        self.channels: dict[str, Channel] = {}
        self.next_seq = meta.next_seq  # next seq to reserve
        self.committed_seq = meta.next_seq  # every seq below is committed (or failed)
        self.first_seq = meta.first_seq  # lowest retained seq
        # Seqs up to the persisted high-water mark may have reached the partner
        # without committing here before a crash: never reuse them (pair/sender.py).
        self.hwm = meta.hwm
        # [lo, hi): the seqs a restart skipped; they hold nothing.
        self.gap = (0, 0)
        if meta.hwm > self.next_seq:
            self.gap = (self.next_seq, meta.hwm)
            self.next_seq = self.committed_seq = meta.hwm
        self._pending: dict[int, tuple[int, list[bytes] | None]] = {}
        self._waiting: tuple[int, float] | None = None  # (committed_seq, since): stalled()
        self.message_count = 0
        self.dropped = 0
        self.deleted = False
        # Ephemeral topic with no channel yet: hold messages in memory (bounded).
        self._mem: deque[tuple[int, bytes]] = deque(maxlen=ctx.limits.max_backlog)
        self._gc_handle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ publish
    def check_open(self) -> None:
        if self.deleted:
            raise PairqError(f"topic {self.name!r} was deleted", code=broker_pb2.ERROR_CODE_DELETED)

    def reserve(self, n: int) -> int:
        """The first of ``n`` consecutive seqs for records about to be appended; every
        reserved range must come back through ``settle``."""
        self.check_open()
        seq0 = self.next_seq
        self.next_seq += n
        return seq0

    def settle(self, seq0: int, n: int, records: list[bytes] | None) -> None:
        """Reserved seqs [seq0, seq0 + n) are committed (``records``) or failed (None):
        fan them out, strictly in seq order."""
        self._complete(seq0, n, records)

    def raise_hwm(self, top: int, step: int) -> Write | None:
        """Seqs below ``top`` are about to reach the partner: the write that moves the
        persisted high-water mark past them (None if it already is)."""
        if top <= self.hwm or self.ephemeral:
            return None
        self.hwm = top + step
        return self.ctx.store.meta.put_hwm(self.meta.id, self.hwm)

    async def append_owned(
        self,
        records: list[bytes],
        crcs: list[int],
        *,
        extra: list[Write],
        finished_for: dict[str, list[int]],
        states_for: dict[str, dict[int, tuple[int, int]]] | None = None,
    ) -> None:
        """Append taken-over records as owned, in one transaction with ``extra``.

        ``finished_for`` maps channel name -> indexes into ``records`` that the
        channel had already finished on the partner; ``states_for`` channel name ->
        index -> the partner's requeue state (attempts, due time).
        """
        assert not self.ephemeral, "ephemeral topics are never replicated"
        n = len(records)
        seq0 = self.next_seq
        self.next_seq += n
        store = self.ctx.store
        writes: list[Write] = (
            [store.log.append(self.meta.id, seq0, records, crcs)] if records else []
        )
        for name, states in (states_for or {}).items():
            ch = self.channels.get(name)
            if ch is not None:
                w = ch.adopt_states({seq0 + idx: state for idx, state in states.items()})
                if w is not None:
                    writes.append(w)
        fut = store.commit(*writes, *extra)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(
                lambda f: self._complete(
                    seq0, n, records if not f.cancelled() and f.exception() is None else None
                )
            )
            raise
        except BaseException:
            self._complete(seq0, n, None)
            raise
        for name, idxs in finished_for.items():
            ch = self.channels.get(name)
            if ch is not None:
                ch.mark_finished_seqs([seq0 + i for i in idxs])
        self._complete(seq0, n, records)
        if records:
            remote = self.replicator.replicate(self.name, seq0, records, crcs)
            if remote is not None:  # nobody waits: a lost session re-sends them from the log
                remote.add_done_callback(lambda f: f.cancelled() or f.exception())

    def mark_hole(self, seq: int) -> None:
        """No broker has ``seq`` (see ``Channel._explained``): a gap for every channel."""
        for ch in self.channels.values():
            ch.mark_hole(seq)

    def repaired(self) -> None:
        """A record of this topic that failed its checksum was repaired or set aside:
        channels read on."""
        for ch in self.channels.values():
            ch.schedule_pump()

    def drop_taken_over(self, upto: int) -> bool:
        """The partner took over every seq below ``upto``: never deliver them here.
        True if any channel had something below it."""
        dropped = False
        for ch in self.channels.values():
            dropped = ch.drop_below(upto) or dropped
        self.on_floor_advanced()
        return dropped

    @property
    def waiting_ranges(self) -> int:
        """Settled ranges waiting for an earlier one before they fan out."""
        return len(self._pending)

    def stalled(self, now: float) -> float:
        """Seconds the committed head has waited at one seq while later ranges were
        settled behind it (0: it is not waiting). Every reserved range must settle
        (``reserve``); one that never does holds every later fan-out and the
        partner's re-fill, while the publishes behind it are still acknowledged.
        The broker logs it (``Broker._watch_commits``): a bug, never a state."""
        if not self._pending:
            self._waiting = None
            return 0.0
        if self._waiting is None or self._waiting[0] != self.committed_seq:
            self._waiting = (self.committed_seq, now)
            return 0.0
        return now - self._waiting[1]

    def _complete(self, seq0: int, n: int, records: list[bytes] | None) -> None:
        # Commits resolve in order, but keep fan-out strictly in seq order anyway.
        if seq0 != self.committed_seq:
            self._pending[seq0] = (n, records)
            return
        self._fan_out(seq0, n, records)
        while self.committed_seq in self._pending:
            s = self.committed_seq
            n2, recs = self._pending.pop(s)
            self._fan_out(s, n2, recs)

    def _fan_out(self, seq0: int, n: int, records: list[bytes] | None) -> None:
        self.committed_seq = seq0 + n
        if self.deleted:
            return
        if records is None:
            for ch in self.channels.values():
                ch.mark_failed(seq0, n)
            return
        self.message_count += n
        if not self.channels:
            if not self.log.retains:
                self._mem.extend(zip(range(seq0, seq0 + n), records, strict=True))
            return
        decoded = decode_records(records)
        for ch in self.channels.values():
            ch.offer(seq0, decoded)

    # ------------------------------------------------------------ channels
    async def get_channel(
        self, name: str, *, create: bool = True, from_partner: bool = False, created_ns: int = 0
    ) -> Channel:
        """The channel, created if needed (NSQ's starting point: the first channel at the
        oldest retained message, later ones at the head).

        In a pair a channel is pair state: a new durable channel's existence and
        starting point reach the partner, which creates it on its own topic too,
        before this returns (``from_partner``: the partner is why we create it, so
        neither the new-store gate nor that wait applies; ``created_ns``: when it was
        first created there, kept here too, ``pair/catalog.py``).
        """
        ch = self.channels.get(name)
        if ch is not None:
            return ch
        if not create:
            raise PairqError(
                f"channel {name!r} of topic {self.name!r} does not exist",
                code=broker_pb2.ERROR_CODE_NOT_FOUND,
            )
        ephemeral = is_ephemeral(name)
        durable = not ephemeral and not self.ephemeral
        replicator = self.replicator if durable else SOLO
        if not from_partner:
            replicator.check_catalog()
        limit = self.ctx.limits.max_channels
        if len(self.channels) >= limit:
            raise limit_exceeded(
                "max_channels",
                limit,
                f"topic {self.name!r} already has {len(self.channels)} channels",
            )
        first = not self.channels
        start = self.first_seq if first else self.committed_seq
        meta = ChannelMeta(
            id=self.ctx.ids.channel(),
            name=name,
            floor=start,
            created_ns=created_ns or time.time_ns(),
        )
        clog = self.log.channel_log(meta.id, ephemeral=ephemeral)
        if clog.durable:
            await self._persist(self.log.created_channel(meta, self.ctx.ids))
            existing = self.channels.get(name)
            if existing is not None:  # created concurrently
                return existing
            start = self.first_seq if not self.channels else start
            meta.floor = start
        ch = self._new_channel(meta, clog, ephemeral=ephemeral)
        self.channels[name] = ch
        self.ctx.topology_changed()
        if first and self._mem:
            for seq, rec in list(self._mem):
                ch.read_pos = seq
                ch.offer(seq, decode_records([rec]))
            self._mem.clear()
        if clog.durable:
            replicator.channel_created(self.name, name, ch.floor, meta.created_ns)
            if not from_partner:
                await replicator.wait_replicated()
        ch.schedule_pump()
        return ch

    def _new_channel(self, meta: ChannelMeta, clog: ChannelLog, *, ephemeral: bool) -> Channel:
        ch = Channel(
            self,
            meta,
            log=self.log,
            progress=clog,
            replicator=self.replicator if clog.durable else SOLO,
            ctx=self.ctx,
            ephemeral=ephemeral,
        )
        if self.gap[1] > self.gap[0]:
            # The restart's skipped seqs hold nothing: a known gap for every channel,
            # so a read through them is not taken for records gone missing.
            ch.skip_gap(*self.gap)
        return ch

    def add_loaded_channel(self, meta: ChannelMeta) -> Channel:
        clog = self.log.channel_log(meta.id, ephemeral=False)
        ch = self._new_channel(meta, clog, ephemeral=False)
        self.channels[meta.name] = ch
        return ch

    def delete_channel(self, name: str, deleted_ns: int = 0) -> None:
        """Delete a channel; a durable one leaves a tombstone (``pair/catalog.py``) at
        ``deleted_ns`` (the partner's time when it deleted it first; default now)."""
        ch = self.channels.pop(name, None)
        if ch is None:
            return
        self.ctx.topology_changed()
        ch.close("channel deleted")
        if ch.durable:
            deleted_ns = deleted_ns or time.time_ns()
            self.ctx.tombstone(self.name, name, deleted_ns)
            ch.replicator.channel_deleted(self.name, name, deleted_ns)
        self.log.post(*self.log.deleted_channel(ch.meta) if ch.durable else ())
        self.on_floor_advanced()

    async def set_channel_paused(self, ch: Channel, paused: bool) -> None:
        ch.meta.paused = paused
        if paused:
            ch.pause()
        elif not self.paused:
            ch.unpause()
        if ch.durable:
            await self._persist(self.log.channel_paused(ch.meta))

    async def _persist(self, writes: list[Write]) -> None:
        fut = self.log.commit(*writes)
        if fut is not None:
            await fut

    def deletion(self) -> list[Write]:
        """The writes that remove this topic's records and channels from the store."""
        if self.ephemeral:
            return []
        store = self.ctx.store
        writes = [
            store.catalog.delete_topic(self.name, self.meta.id),
            store.log.drop_topic(self.meta.id),
        ]
        writes += [store.progress.drop(ch.meta.id) for ch in self.channels.values()]
        return writes

    # ------------------------------------------------------------ cleanup
    def on_floor_advanced(self) -> None:
        if self._gc_handle is None and self.log.retains and not self.deleted:
            self._gc_handle = asyncio.get_running_loop().call_later(GC_DELAY, self._gc)

    def _gc(self) -> None:
        self._gc_handle = None
        if self.deleted:
            return
        floors = [c.floor for c in self.channels.values() if c.durable]
        if not floors:
            return
        low = min(floors)
        if low > self.first_seq:
            self.log.trim(self.first_seq, low)
            self.first_seq = low

    # ------------------------------------------------------------ admin
    def pause(self) -> None:
        self.paused = True
        for ch in self.channels.values():
            ch.pause()

    def unpause(self) -> None:
        self.paused = False
        for ch in self.channels.values():
            if not ch.meta.paused:
                ch.unpause()

    def empty(self) -> None:
        for ch in self.channels.values():
            ch.empty()
        self._mem.clear()
        if self.log.retains and self.committed_seq > self.first_seq:
            self.log.trim(self.first_seq, self.committed_seq)
            self.first_seq = self.committed_seq

    def close(self, reason: str) -> None:
        self.deleted = True
        if self._gc_handle is not None:
            self._gc_handle.cancel()
        for ch in self.channels.values():
            ch.close(reason)

    @property
    def depth(self) -> int:
        if not self.log.retains:
            return len(self._mem)
        # Messages some durable channel has not finished (all retained ones while the
        # topic has no channel), less the seqs a restart skipped.
        floors = [c.floor for c in self.channels.values() if c.durable]
        low = max(self.first_seq, min(floors)) if floors else self.first_seq
        lo, hi = self.gap
        skipped = max(0, min(hi, self.committed_seq) - max(lo, low))
        return max(0, self.committed_seq - low - skipped)
