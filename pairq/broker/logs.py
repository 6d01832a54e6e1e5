"""Where a topic's messages and a channel's progress live: durable, or in memory.

A topic talks to a ``TopicLog`` and a channel to a ``ChannelLog``; each has a
durable implementation over the store and an in-memory twin for ephemeral
topics and channels (names ending in ``#ephemeral``), so neither object
branches on durability. The two differ only in what the twin cannot do:

- ``TopicLog.retains``: records can be read back later. Without it a channel
  that is full or behind drops what it cannot hold (NSQ's ephemeral rule).
- ``TopicLog.copies``: durable copies the local append makes (1, or 0).
- ``ChannelLog.durable``: progress and requeue state survive a restart.

Dead letters of an ephemeral channel stay with the channel (the twin keeps the
last ``MEMORY_DEAD_LETTERS``) and go away with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol

from pairq.broker.ports import NO_REPAIR, IdAllocator, IntegrityPort
from pairq.broker.schema import ChannelMeta
from pairq.broker.store import LogRead, ProgressBatch, Store, Write

log = logging.getLogger("pairq.broker")

MEMORY_DEAD_LETTERS = 1000


class TopicLog(Protocol):
    copies: int
    retains: bool

    def append(
        self, seq: int, records: list[bytes], crcs: list[int]
    ) -> asyncio.Future[None] | None:
        """Store records (with their crc32c) at seq, seq + 1, ...; None when they are
        stored already."""
        ...

    def read(self, from_seq: int, to_seq: int, limit: int, max_bytes: int = 0) -> LogRead:
        """Good records from the log; one failing its checksum ends the read."""
        ...

    def report_corrupt(self, seq: int) -> None:
        """The record at ``seq`` failed its checksum: have it repaired."""
        ...

    def report_missing(self, seqs: list[int]) -> None:
        """Records a read expected and the log no longer has: have them repaired."""
        ...

    def trim(self, lo: int, hi: int) -> None:
        """Forget records with lo <= seq < hi (finished by every channel)."""
        ...

    def commit(self, *writes: Write) -> asyncio.Future[None] | None:
        """Commit catalog and progress writes of this topic (None: nothing to wait for)."""
        ...

    def post(self, *writes: Write) -> None: ...

    def channel_log(self, channel_id: int, *, ephemeral: bool) -> ChannelLog: ...

    def created_channel(self, meta: ChannelMeta, ids: IdAllocator) -> list[Write]:
        """Writes that record a new channel (empty for the twin)."""
        ...

    def deleted_channel(self, meta: ChannelMeta) -> list[Write]: ...

    def paused(self, paused: bool) -> list[Write]: ...

    def channel_paused(self, meta: ChannelMeta) -> list[Write]: ...


class ChannelLog(Protocol):
    durable: bool

    def finished(self) -> list[int]: ...

    def states(self) -> dict[int, tuple[int, int]]: ...

    def batch(self) -> ProgressBatch: ...

    def post(self, batch: ProgressBatch) -> None: ...

    def reset(self, floor: int) -> None:
        """Everything below ``floor`` finished, nothing above (the channel was emptied)."""
        ...

    def dead_letters(self) -> list[tuple[int, int, bytes]]:
        """(seq, attempts, record), oldest first."""
        ...

    def put_dead(self, seq: int, attempts: int, record: bytes) -> None: ...

    def delete_dead(self, seq: int) -> None: ...

    async def replaying(self, items: list[tuple[int, int, bytes]]) -> None:
        """These dead letters go back into the channel (``attempts`` flags them)."""
        ...


# ------------------------------------------------------------ durable
class DurableTopicLog:
    copies = 1
    retains = True

    def __init__(
        self, store: Store, topic_id: int, name: str = "", integrity: IntegrityPort = NO_REPAIR
    ) -> None:
        self._store = store
        self._tid = topic_id
        self._name = name
        self._integrity = integrity

    def report_corrupt(self, seq: int) -> None:
        self._integrity.report_owned(self._name, self._tid, seq)

    def report_missing(self, seqs: list[int]) -> None:
        new = self._store.log.mark_missing(self._tid, seqs)
        if new:
            log.error(
                "%d record(s) of topic %s missing from the store (seqs %d..%d), though no "
                "failed append or restart explains them: a damaged store; fetching them "
                "from the partner",
                len(new),
                self._name,
                new[0],
                new[-1],
            )
        for q in seqs:
            self._integrity.report_owned(self._name, self._tid, q)

    def append(
        self, seq: int, records: list[bytes], crcs: list[int]
    ) -> asyncio.Future[None] | None:
        s = self._store
        return s.commit(s.log.append(self._tid, seq, records, crcs))

    def read(self, from_seq: int, to_seq: int, limit: int, max_bytes: int = 0) -> LogRead:
        return self._store.log.read(self._tid, from_seq, to_seq, limit, max_bytes)

    def trim(self, lo: int, hi: int) -> None:
        self._store.post(self._store.log.delete_range(self._tid, lo, hi))

    def commit(self, *writes: Write) -> asyncio.Future[None] | None:
        return self._store.commit(*writes) if writes else None

    def post(self, *writes: Write) -> None:
        self._store.post(*writes)

    def channel_log(self, channel_id: int, *, ephemeral: bool) -> ChannelLog:
        if ephemeral:
            return MemoryChannelLog()
        return DurableChannelLog(self._store, channel_id)

    def created_channel(self, meta: ChannelMeta, ids: IdAllocator) -> list[Write]:
        s = self._store
        batch = s.progress.batch(meta.id)
        batch.floor(meta.floor)
        first = batch.write()
        assert first is not None
        return [
            s.catalog.put_channel(self._tid, meta.name, meta.id, False, meta.created_ns),
            first,
            s.catalog.put_next_ids(ids.next_topic, ids.next_channel),
        ]

    def deleted_channel(self, meta: ChannelMeta) -> list[Write]:
        s = self._store
        return [s.catalog.delete_channel(self._tid, meta.name), s.progress.drop(meta.id)]

    def paused(self, paused: bool) -> list[Write]:
        return []  # the topic's own entry is the broker's (Broker.set_paused)

    def channel_paused(self, meta: ChannelMeta) -> list[Write]:
        return [
            self._store.catalog.put_channel(
                self._tid, meta.name, meta.id, meta.paused, meta.created_ns
            )
        ]


class DurableChannelLog:
    durable = True

    def __init__(self, store: Store, channel_id: int) -> None:
        self._store = store
        self._cid = channel_id

    def finished(self) -> list[int]:
        return self._store.progress.finished(self._cid)

    def states(self) -> dict[int, tuple[int, int]]:
        return self._store.progress.states(self._cid)

    def batch(self) -> ProgressBatch:
        return self._store.progress.batch(self._cid)

    def post(self, batch: ProgressBatch) -> None:
        w = batch.write()
        if w is not None:
            self._store.post(w)

    def reset(self, floor: int) -> None:
        self._store.post(self._store.progress.reset(self._cid, floor))

    def dead_letters(self) -> list[tuple[int, int, bytes]]:
        good, bad = self._store.dead.scan(self._cid)
        if bad:  # a dead letter has no other copy: set it aside
            self._store.post(*(self._store.dead.quarantine(self._cid, seq) for seq in bad))
        return good

    def put_dead(self, seq: int, attempts: int, record: bytes) -> None:
        self._store.post(self._store.dead.put(self._cid, seq, attempts, record))

    def delete_dead(self, seq: int) -> None:
        self._store.post(self._store.dead.delete(self._cid, seq))

    async def replaying(self, items: list[tuple[int, int, bytes]]) -> None:
        await self._store.commit(self._store.dead.put_many(self._cid, items))


# ------------------------------------------------------------ in memory
class _NullBatch(ProgressBatch):
    """Progress of an ephemeral channel: nothing to write."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(0)

    def floor(self, seq: int) -> None:
        return None

    def finished(self, seq: int) -> None:
        return None

    def forget_finished(self, seq: int) -> None:
        return None

    def state(self, seq: int, attempts: int, due_ns: int) -> None:
        return None

    def forget_state(self, seq: int) -> None:
        return None


class MemoryTopicLog:
    """An ephemeral topic: records go straight to the channels (nothing kept)."""

    copies = 0
    retains = False

    def append(
        self, seq: int, records: list[bytes], crcs: list[int]
    ) -> asyncio.Future[None] | None:
        return None

    def read(self, from_seq: int, to_seq: int, limit: int, max_bytes: int = 0) -> LogRead:
        return LogRead()

    def report_corrupt(self, seq: int) -> None:
        return None

    def report_missing(self, seqs: list[int]) -> None:
        return None

    def trim(self, lo: int, hi: int) -> None:
        return None

    def commit(self, *writes: Write) -> asyncio.Future[None] | None:
        return None

    def post(self, *writes: Write) -> None:
        return None

    def channel_log(self, channel_id: int, *, ephemeral: bool) -> ChannelLog:
        return MemoryChannelLog()

    def created_channel(self, meta: ChannelMeta, ids: IdAllocator) -> list[Write]:
        return []

    def deleted_channel(self, meta: ChannelMeta) -> list[Write]:
        return []

    def paused(self, paused: bool) -> list[Write]:
        return []

    def channel_paused(self, meta: ChannelMeta) -> list[Write]:
        return []


class MemoryChannelLog:
    """An ephemeral channel (or any channel of an ephemeral topic)."""

    durable = False

    def __init__(self) -> None:
        self._dead: deque[tuple[int, int, bytes]] = deque(maxlen=MEMORY_DEAD_LETTERS)
        self._dead_seq = 0

    def finished(self) -> list[int]:
        return []

    def states(self) -> dict[int, tuple[int, int]]:
        return {}

    def batch(self) -> ProgressBatch:
        return _NullBatch()

    def post(self, batch: ProgressBatch) -> None:
        return None

    def reset(self, floor: int) -> None:
        return None

    def dead_letters(self) -> list[tuple[int, int, bytes]]:
        return list(self._dead)

    def put_dead(self, seq: int, attempts: int, record: bytes) -> None:
        # Seqs of their own: an ephemeral channel's dead letters are numbered here.
        self._dead.append((self._dead_seq, attempts, record))
        self._dead_seq += 1

    def delete_dead(self, seq: int) -> None:
        return None  # a replayed dead letter left the list when it was replayed

    async def replaying(self, items: list[tuple[int, int, bytes]]) -> None:
        gone = {seq for seq, _, _ in items}
        kept = [d for d in self._dead if d[0] not in gone]
        self._dead.clear()
        self._dead.extend(kept)
