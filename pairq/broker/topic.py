"""A topic: an append-only log of messages (stored once) fanned out to its channels.

Publishing reserves consecutive seqs, appends the records through the store's
group commit, and only after the commit hands them to every channel, in seq
order, so nothing is delivered before it is durable. A topic with no channel
keeps everything it receives; its first channel starts at the oldest retained
message, later channels at the head (NSQ semantics). Bodies below the lowest
floor of the durable channels are deleted in the background.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from pairq.broker import store as st
from pairq.broker.channel import Channel, decode_records
from pairq.errors import PairqError, UnavailableError
from pairq.names import is_ephemeral
from pairq.v1 import broker_pb2

if TYPE_CHECKING:
    from pairq.broker.broker import Broker

log = logging.getLogger("pairq.topic")

GC_DELAY = 0.2  # seconds: batch body deletions


class Topic:
    def __init__(self, broker: Broker, meta: st.TopicMeta) -> None:
        self.broker = broker
        self.meta = meta
        self.name = meta.name
        self.ephemeral = is_ephemeral(meta.name)
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
        self.message_count = 0
        self.dropped = 0
        self.deleted = False
        # Ephemeral topic with no channel yet: hold messages in memory (bounded).
        self._mem: deque[tuple[int, bytes]] = deque(maxlen=broker.options.max_backlog)
        self._gc_handle: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ publish
    async def publish(self, records: list[bytes]) -> tuple[int, int]:
        """Store ``records`` durably (here and, in a pair, on the partner), then fan
        them out. Returns (first seq, durable copies)."""
        if self.deleted:
            raise PairqError(f"topic {self.name!r} was deleted", code=broker_pb2.ERROR_CODE_DELETED)
        n = len(records)
        if self.ephemeral:
            seq0 = self.next_seq
            self.next_seq += n
            self._complete(seq0, n, records)
            return seq0, 0
        pair = self.broker.pair
        if pair is not None:
            pair.check_accepting()
        seq0 = self.next_seq
        self.next_seq += n
        fut = self.broker.store.submit(("append", self.meta.id, seq0, records))
        assert fut is not None
        # The partner gets the records at once, in parallel with our commit (the
        # pair's latency is then the slower of the two fsyncs, not their sum),
        # marked uncommitted: it keeps them but does not count their ids as
        # stored until we confirm our commit (pair.StandbyStore explains why:
        # a crash or a failed commit here would otherwise leave an orphan copy
        # that an idempotent retry to the partner took for a stored message).
        #
        # The outcome (fan-out, or a gap for a failed append) follows the commits
        # through callbacks, not the caller: a cancelled RPC must not turn a
        # committed record into a gap. Callbacks also spare a task and a loop
        # turn per publish.
        remote = (
            pair.replicate(self.name, seq0, records, uncommitted=True) if pair is not None else None
        )
        result: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        local_ok = False  # set once the local commit is done
        settled = False  # fanned out (exactly once, whatever became of the caller)

        def settle() -> None:
            nonlocal settled
            if not local_ok or (remote is not None and not remote.done()) or settled:
                return
            settled = True
            if remote is None:
                copies = 1
            else:
                copies = 2 if not remote.cancelled() and remote.exception() is None else 1
            # Even when the caller is gone (a cancelled RPC cancels ``result``): a
            # committed record skipped here would hold committed_seq, and with it
            # every later fan-out and the partner's catch-up, forever.
            self._complete(seq0, n, records)
            if not result.done():
                result.set_result(copies)

        def on_local(f: asyncio.Future[Any]) -> None:
            nonlocal local_ok
            exc = BaseException("cancelled") if f.cancelled() else f.exception()
            if exc is not None:
                self._complete(seq0, n, None)
                if not result.done():
                    result.set_exception(exc)
                return
            if remote is not None and pair is not None:
                pair.committed(self.name, seq0, n)
            local_ok = True
            settle()

        def on_remote(f: asyncio.Future[None]) -> None:
            if not f.cancelled():
                f.exception()  # retrieved (settle reads the outcome)
            settle()

        fut.add_done_callback(on_local)
        if remote is not None:
            remote.add_done_callback(on_remote)
        copies = await result
        if pair is not None and pair.min_copies >= 2 and copies < 2:
            # Stored here (and delivered), but not acknowledged: the producer
            # retries with the same id and idempotency/de-duplication absorb it.
            raise UnavailableError(
                f"partner {pair.partner_address} did not acknowledge the copy "
                "(--min-copies=2 requires 2 durable copies); retry"
            )
        return seq0, copies

    async def append_owned(
        self,
        records: list[bytes],
        *,
        extra_ops: list[st.Op],
        finished_for: dict[str, list[int]],
        states_for: dict[str, dict[int, tuple[int, int]]] | None = None,
    ) -> None:
        """Append taken-over records as owned (one transaction with ``extra_ops``).

        ``finished_for`` maps channel name -> indexes into ``records`` that the
        channel had already finished on the partner.
        """
        n = len(records)
        seq0 = self.next_seq
        self.next_seq += n
        ops: list[st.Op] = [("append", self.meta.id, seq0, records)] if records else []
        # Requeue state (attempts, due time) from the partner, under the new seqs.
        for name, states in (states_for or {}).items():
            ch = self.channels.get(name)
            if ch is None or not ch.durable:
                continue
            for idx, (attempts, due_ns) in states.items():
                ch.states[seq0 + idx] = (attempts, due_ns)
                ops.append(
                    (
                        "put",
                        st.STATES,
                        st.seq_key(ch.meta.id, seq0 + idx),
                        st.pack_state(attempts, due_ns),
                    )
                )
        fut = self.broker.store.submit_many(ops + extra_ops)
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
        pair = self.broker.pair
        if pair is not None and records:
            remote = pair.replicate(self.name, seq0, records)
            if remote is not None:  # nobody waits: a lost session re-sends them from the log
                remote.add_done_callback(lambda f: f.cancelled() or f.exception())

    def drop_taken_over(self, upto: int) -> bool:
        """The partner took over every seq below ``upto``: never deliver them here.
        True if any channel had something below it."""
        dropped = False
        for ch in self.channels.values():
            dropped = ch.drop_below(upto) or dropped
        self.on_floor_advanced()
        return dropped

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
            if self.ephemeral:
                self._mem.extend(zip(range(seq0, seq0 + n), records, strict=True))
            return
        decoded = decode_records(records)
        for ch in self.channels.values():
            ch.offer(seq0, decoded)

    # ------------------------------------------------------------ channels
    async def get_channel(
        self, name: str, *, create: bool = True, from_partner: bool = False
    ) -> Channel:
        """The channel, created if needed (NSQ's starting point: the first channel at the
        oldest retained message, later ones at the head).

        In a pair a channel is pair state: a new durable channel's existence and
        starting point reach the partner, which creates it on its own topic too,
        before this returns (``from_partner``: the partner is why we create it, so
        neither the new-store gate nor that wait applies).
        """
        ch = self.channels.get(name)
        if ch is not None:
            return ch
        if not create:
            raise PairqError(
                f"channel {name!r} of topic {self.name!r} does not exist",
                code=broker_pb2.ERROR_CODE_NOT_FOUND,
            )
        pair = self.broker.pair
        durable = not is_ephemeral(name) and not self.ephemeral
        if pair is not None and durable and not from_partner:
            pair.check_catalog()
        if len(self.channels) >= self.broker.options.max_channels:
            raise PairqError(
                f"topic {self.name!r} already has {len(self.channels)} channels "
                f"(--max-channels={self.broker.options.max_channels})",
                code=broker_pb2.ERROR_CODE_TOO_MANY,
            )
        first = not self.channels
        start = self.first_seq if first else self.committed_seq
        meta = st.ChannelMeta(id=self.broker.alloc_channel_id(), name=name, floor=start)
        ephemeral = is_ephemeral(name)
        if not ephemeral and not self.ephemeral:
            fut = self.broker.store.submit_many(
                [
                    (
                        "put",
                        st.CATALOG,
                        st.catalog_channel_key(self.meta.id, name),
                        st.pack_catalog(meta.id, False),
                    ),
                    ("put", st.FLOORS, st.floor_key(meta.id), st.pack_floor(start)),
                    ("put", st.META, b"ids", self.broker.packed_ids()),
                ]
            )
            await fut
            existing = self.channels.get(name)
            if existing is not None:  # created concurrently
                return existing
            start = self.first_seq if not self.channels else start
            meta.floor = start
        ch = Channel(self, meta, ephemeral=ephemeral)
        self.channels[name] = ch
        self.broker.topology_changed()
        if self.ephemeral and first and self._mem:
            for seq, rec in list(self._mem):
                ch.read_pos = seq
                ch.offer(seq, decode_records([rec]))
            self._mem.clear()
        if pair is not None and ch.durable:
            pair.progress(self.name, name, ch.floor, [])
            if not from_partner:
                await pair.wait_replicated()
        ch.schedule_pump()
        return ch

    def add_loaded_channel(self, meta: st.ChannelMeta) -> Channel:
        ch = Channel(self, meta, ephemeral=False)
        self.channels[meta.name] = ch
        if self.gap[1] > self.gap[0]:
            ch.skip_gap(*self.gap)
        return ch

    def delete_channel(self, name: str) -> None:
        ch = self.channels.pop(name, None)
        if ch is None:
            return
        self.broker.topology_changed()
        ch.close("channel deleted")
        if self.broker.pair is not None and ch.durable:
            self.broker.pair.channel_deleted(self.name, name)
        if ch.durable:
            cid = ch.meta.id
            self.broker.store.submit(
                (
                    "multi",
                    [
                        ("del", st.CATALOG, st.catalog_channel_key(self.meta.id, name)),
                        ("del", st.FLOORS, st.floor_key(cid)),
                        ("drop", st.FINS, st.prefix(cid)),
                        ("drop", st.STATES, st.prefix(cid)),
                        ("drop", st.DLQ, st.prefix(cid)),
                    ],
                ),
                wait=False,
            )
        self.on_floor_advanced()

    # ------------------------------------------------------------ cleanup
    def on_floor_advanced(self) -> None:
        if self._gc_handle is None and not self.ephemeral and not self.deleted:
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
            self.broker.store.submit(("gc", self.meta.id, self.first_seq, low), wait=False)
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
        if not self.ephemeral and self.committed_seq > self.first_seq:
            self.broker.store.submit(
                ("gc", self.meta.id, self.first_seq, self.committed_seq), wait=False
            )
            self.first_seq = self.committed_seq

    def close(self, reason: str) -> None:
        self.deleted = True
        if self._gc_handle is not None:
            self._gc_handle.cancel()
        for ch in self.channels.values():
            ch.close(reason)

    @property
    def depth(self) -> int:
        if self.ephemeral:
            return len(self._mem)
        # Messages some durable channel has not finished (all retained ones while the
        # topic has no channel), less the seqs a restart skipped.
        floors = [c.floor for c in self.channels.values() if c.durable]
        low = max(self.first_seq, min(floors)) if floors else self.first_seq
        lo, hi = self.gap
        skipped = max(0, min(hi, self.committed_seq) - max(lo, low))
        return max(0, self.committed_seq - low - skipped)
