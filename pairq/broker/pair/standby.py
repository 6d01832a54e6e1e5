"""Standby copies: what this broker holds of its partner's messages.

The partner streams what is published to it (``sender.py`` on its side);
``receiver.py`` here checks each batch (``validate_batch``), turns it into
store writes and index updates (``StandbyStore.apply_batch``) and
acknowledges it once they are fsynced. The copies wait there, with each
channel's floor, finished seqs and requeue states, until the partner's
progress drops them or a takeover (``takeover.py``) makes them ours. The
data lives in LMDB; this module keeps the in-memory index of it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pairq.broker import checksum, wire
from pairq.broker.store import Store, Write
from pairq.names import is_valid_name
from pairq.v1 import replication_pb2 as rpb

# Most records in one committed range of a replication batch (the sender merges
# ranges up to it, the receiver refuses a batch above it).
MAX_BATCH_RECORDS = 20000


@dataclass
class StandbyChannel:
    floor: int = 0
    fins: set[int] = field(default_factory=set)
    states: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (attempts, due_ns)


@dataclass
class StandbyTopic:
    name: str
    first_seq: int = 0
    next_seq: int = 0  # one past the highest origin seq held
    taken_upto: int = 0
    channels: dict[str, StandbyChannel] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return max(0, self.next_seq - max(self.first_seq, self.taken_upto))

    def min_floor(self) -> int | None:
        if not self.channels:
            return None
        return min(c.floor for c in self.channels.values())


class StandbyStore:
    """In-memory index of the partner's standby copies (the data lives in LMDB).

    Unconfirmed copies. The partner replicates a live publish in parallel with
    its own commit (``ReplicaAppend.uncommitted``) and confirms it later
    (``ReplicaBatch.committed``). Until then the copy is kept (and taken over
    if the partner dies) but its id is not indexed for idempotency: if the
    partner's commit failed or it crashed first, the copy is an orphan that
    nobody acknowledged, and a retry of that id must be stored afresh rather
    than answered "already stored" (the orphan is dropped once the partner's
    floor passes it). A publish here of an unconfirmed id waits for the
    confirmation (``wait_confirmed``). This bookkeeping is memory only: a new
    stream or a restart forgets it, which at worst stores a retry twice.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.partner_id = ""
        self.topics: dict[str, StandbyTopic] = {}
        # topic -> first seq of a run of unconfirmed copies -> their ids (runs, not
        # single seqs: the bookkeeping costs a few C-level set operations per batch)
        self.unconfirmed: dict[str, dict[int, list[bytes]]] = {}
        self.unconfirmed_ids: set[bytes] = set()
        self._waiters: dict[bytes, list[asyncio.Future[bool]]] = {}

    def load(self) -> None:
        img = self.store.standby.load()
        self.partner_id = img.partner_id
        for name, upto in img.taken.items():
            t = self.topic(name)
            t.taken_upto = upto
            t.first_seq = t.next_seq = max(t.next_seq, upto)
        for name, (first, last) in img.held.items():
            t = self.topic(name)
            t.first_seq = first
            t.next_seq = max(t.next_seq, last + 1)
            if t.taken_upto > t.first_seq:
                t.first_seq = t.taken_upto
        for (tname, cname), floor in img.floors.items():
            self.topic(tname).channels[cname] = StandbyChannel(floor=floor)
        for tname, cname, seq in img.finished:
            self.topic(tname).channels.setdefault(cname, StandbyChannel()).fins.add(seq)
        for tname, cname, seq, state in img.states:
            self.topic(tname).channels.setdefault(cname, StandbyChannel()).states[seq] = state
        for t in self.topics.values():
            floors = [c.floor for c in t.channels.values()]
            if floors:
                t.next_seq = max(t.next_seq, *floors)
                t.first_seq = (
                    max(t.first_seq, min(floors)) if t.first_seq < min(floors) else t.first_seq
                )

    def topic(self, name: str) -> StandbyTopic:
        t = self.topics.get(name)
        if t is None:
            t = self.topics[name] = StandbyTopic(name)
        return t

    # ------------------------------------------------------------ unconfirmed copies
    def _resolve(self, ids: list[bytes], stored: bool) -> None:
        self.unconfirmed_ids.difference_update(ids)
        if self._waiters:
            for i in ids:
                for f in self._waiters.pop(i, ()):
                    if not f.done():
                        f.set_result(stored)

    def _cut(self, topic: str, lo: int, hi: int) -> list[bytes]:
        """Remove and return the ids of unconfirmed seqs in [lo, hi) of ``topic``."""
        runs = self.unconfirmed.get(topic)
        if not runs:
            return []
        out: list[bytes] = []
        for start in [q for q, ids in runs.items() if q < hi and q + len(ids) > lo]:
            ids = runs.pop(start)
            a = max(lo, start) - start
            b = min(hi, start + len(ids)) - start
            out += ids[a:b]
            if a > 0:
                runs[start] = ids[:a]
            if b < len(ids):
                runs[start + b] = ids[b:]
        if not runs:
            del self.unconfirmed[topic]
        return out

    def confirm_after(self, fut: asyncio.Future[Any], ids: list[bytes]) -> None:
        """Tell waiters these ids are stored once ``fut`` (their batch's commit) is done."""
        if ids:
            fut.add_done_callback(
                lambda f: self._resolve(ids, not f.cancelled() and f.exception() is None)
            )

    def forget_unconfirmed(self, topic: str | None = None, *, taken_over: bool = False) -> None:
        """Drop the unconfirmed bookkeeping (of one topic, or all): on a new or ended
        stream their fate is unknown (waiters hear "not stored"); after a takeover
        they are owned here (waiters hear "stored")."""
        names = [topic] if topic is not None else list(self.unconfirmed)
        for name in names:
            runs = self.unconfirmed.pop(name, None)
            if runs:
                self._resolve([i for ids in runs.values() for i in ids], taken_over)

    async def wait_confirmed(self, ids: list[bytes], timeout: float) -> set[bytes]:
        """Of ``ids`` (unconfirmed standby copies), those confirmed within ``timeout``."""
        loop = asyncio.get_running_loop()
        waits: list[tuple[bytes, asyncio.Future[bool]]] = []
        for i in ids:
            if i in self.unconfirmed_ids:
                f: asyncio.Future[bool] = loop.create_future()
                self._waiters.setdefault(i, []).append(f)
                waits.append((i, f))
        if not waits:
            return set()
        await asyncio.wait([f for _, f in waits], timeout=timeout)
        out = set()
        for i, f in waits:
            if f.done():
                if f.result():
                    out.add(i)
            else:
                f.cancel()
                lst = self._waiters.get(i)
                if lst is not None and f in lst:
                    lst.remove(f)
                    if not lst:
                        del self._waiters[i]
        return out

    def apply_batch(self, batch: rpb.ReplicaBatch) -> tuple[list[Write], list[bytes]]:
        """Update the index; return the store writes for one replicated batch and
        the ids it confirms (stored for idempotency once those writes commit)."""
        sb = self.store.standby
        ops: list[Write] = []
        # Each protobuf field is read once, and empty repeated fields are not
        # iterated (every read builds a wrapper: this runs once per batch).
        for a in batch.appends:
            recs = list(a.records)
            n = len(recs)
            if n == 0:
                continue
            topic = a.topic
            t = self.topic(topic)
            first = a.first_seq
            uncommitted = a.uncommitted
            # Verified by validate_batch when the sender sent them; computed here otherwise.
            got = a.crcs
            crcs = list(got) if len(got) == n else checksum.crcs(recs)
            if first < t.taken_upto:  # already ours: skip the overlap
                skip = min(n, t.taken_upto - first)
                first += skip
                recs = recs[skip:]
                crcs = crcs[skip:]
            if not recs:
                continue
            ops.append(sb.append(topic, first, recs, crcs, index=not uncommitted))
            if uncommitted:
                ids = [rec[:16] for rec in recs]
                self.unconfirmed.setdefault(topic, {})[first] = ids
                self.unconfirmed_ids.update(ids)
            if t.next_seq <= t.first_seq and first > t.next_seq:
                t.first_seq = first
            t.next_seq = max(t.next_seq, first + len(recs))
        confirmed: list[bytes] = []
        committed = batch.committed
        if committed:
            for r in committed:
                first = r.first_seq
                confirmed += self._cut(r.topic, first, first + r.count)
            if confirmed:
                ops.append(sb.index_ids(confirmed))
        progress = batch.progress
        for p in progress if progress else ():
            t = self.topic(p.topic)
            if p.deleted:
                c = t.channels.pop(p.channel, None)
                ops.append(sb.drop_channel(p.topic, p.channel))
            else:
                c = t.channels.get(p.channel)
                new = c is None
                if c is None:
                    c = t.channels[p.channel] = StandbyChannel(floor=p.floor)
                if new or p.floor > c.floor:
                    for seq in [s for s in c.fins if s < p.floor]:
                        c.fins.discard(seq)
                        ops.append(sb.forget_finished(p.topic, p.channel, seq))
                    c.floor = max(c.floor, p.floor)
                    ops.append(sb.put_floor(p.topic, p.channel, c.floor))
                    for seq in [s for s in c.states if s < c.floor]:
                        del c.states[seq]
                        ops.append(sb.forget_state(p.topic, p.channel, seq))
                for rs in p.states:
                    if rs.cleared or rs.seq < c.floor:
                        if c.states.pop(rs.seq, None) is not None:
                            ops.append(sb.forget_state(p.topic, p.channel, rs.seq))
                    else:
                        c.states[rs.seq] = (rs.attempts, rs.due_ns)
                        ops.append(sb.put_state(p.topic, p.channel, rs.seq, rs.attempts, rs.due_ns))
                for seq in p.finished:
                    if seq >= c.floor and seq not in c.fins:
                        c.fins.add(seq)
                        ops.append(sb.put_finished(p.topic, p.channel, seq))
            low = t.min_floor()
            if low is not None and p.topic in self.unconfirmed:
                # Below the partner's floor: never confirmed means its commit failed.
                self._resolve(self._cut(p.topic, 0, low), False)
            if low is not None and low > t.first_seq:
                ops.append(sb.trim(p.topic, t.first_seq, low))
                t.first_seq = low
        deleted = batch.deleted_topics
        for name in deleted if deleted else ():
            ops.append(sb.drop_topic(name))
            self.topics.pop(name, None)
            self.forget_unconfirmed(name)
        return ops, confirmed

    def holdings(self) -> list[rpb.ReplicaHolding]:
        return [
            rpb.ReplicaHolding(topic=t.name, next_seq=t.next_seq, taken_upto=t.taken_upto)
            for t in self.topics.values()
        ]

    def count(self) -> int:
        return sum(t.count for t in self.topics.values())


# Topic names validate_batch has already accepted (bounded: cleared when full).
_VALID_NAMES: set[str] = set()


def _name_ok(name: str) -> bool:
    if name in _VALID_NAMES:
        return True
    if not is_valid_name(name):
        return False
    if len(_VALID_NAMES) >= 4096:
        _VALID_NAMES.clear()
    _VALID_NAMES.add(name)
    return True


def validate_batch(batch: rpb.ReplicaBatch, max_msg_size: int) -> str:
    """Why a replicated batch is unacceptable ("" if it is fine): names that would
    corrupt standby keys, impossible seqs, malformed records.

    On the partner's hot path (once per batch, most batches hold one append):
    every protobuf field read costs a wrapper or a copy, so each field is read
    once and an empty repeated field is skipped without iterating it."""
    appends = batch.appends
    if appends:
        lo, hi = wire.HEADER_SIZE + 20, max_msg_size + 65536 + 128
        for a in appends:
            topic = a.topic
            if not _name_ok(topic):
                return f"invalid topic name {topic[:80]!r}"
            first_seq = a.first_seq
            if first_seq > 2**62:
                return f"seq {first_seq} out of range"
            records = a.records
            if not records:
                continue
            sizes = list(map(len, records))
            if min(sizes) < lo or max(sizes) > hi:
                return "malformed record (size out of range)"
            crcs = a.crcs
            if crcs:
                if len(crcs) != len(sizes):
                    return f"{len(crcs)} checksums for {len(sizes)} records"
                got = checksum.crcs(list(records))  # one C call; the index on failure
                if crcs != got:
                    i = next(i for i, (g, c) in enumerate(zip(got, crcs, strict=True)) if g != c)
                    return (
                        f"record {first_seq + i} of topic {topic[:80]!r} failed its "
                        "checksum in transit"
                    )
    progress = batch.progress
    if progress:
        for p in progress:
            if not _name_ok(p.topic) or not _name_ok(p.channel):
                return f"invalid name {p.topic[:80]!r}/{p.channel[:80]!r}"
            if p.floor > 2**62 or any(s > 2**62 for s in p.finished):
                return "seq out of range"
    deleted = batch.deleted_topics
    if deleted:
        for name in deleted:
            if not _name_ok(name):
                return f"invalid topic name {name[:80]!r}"
    committed = batch.committed
    if committed:
        for r in committed:
            if not _name_ok(r.topic):
                return f"invalid topic name {r.topic[:80]!r}"
            if r.first_seq > 2**62 or r.count > MAX_BATCH_RECORDS:
                return "committed range out of bounds"
    return ""
