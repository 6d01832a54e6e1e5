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

from pairq.broker import store as st
from pairq.broker import wire
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

    def __init__(self, store: st.Store) -> None:
        self.store = store
        self.partner_id = ""
        self.topics: dict[str, StandbyTopic] = {}
        # topic -> first seq of a run of unconfirmed copies -> their ids (runs, not
        # single seqs: the bookkeeping costs a few C-level set operations per batch)
        self.unconfirmed: dict[str, dict[int, list[bytes]]] = {}
        self.unconfirmed_ids: set[bytes] = set()
        self._waiters: dict[bytes, list[asyncio.Future[bool]]] = {}

    def load(self) -> None:
        s = self.store
        pid = s.get(st.SB_META, b"partner")
        self.partner_id = pid.decode() if pid else ""
        with s.env.begin() as txn:
            cur = txn.cursor(db=s.dbs[st.SB_META])
            if cur.set_range(b"taken:"):
                for k, v in cur:
                    if not k.startswith(b"taken:"):
                        break
                    name = bytes(k[6:]).decode()
                    t = self.topic(name)
                    t.taken_upto = st.unpack_q(v)
                    t.first_seq = t.next_seq = max(t.next_seq, t.taken_upto)
            cur = txn.cursor(db=s.dbs[st.SB_MSGS])
            ok = cur.first()
            while ok:
                k = bytes(cur.key())
                name = k[:-9].decode()
                t = self.topic(name)
                t.first_seq = st.unpack_q(k[-8:])
                if cur.set_range(k[:-8] + b"\xff" * 8):
                    ok = cur.prev()
                else:
                    ok = cur.last()
                last = st.unpack_q(bytes(cur.key())[-8:])
                t.next_seq = max(t.next_seq, last + 1)
                if t.taken_upto > t.first_seq:
                    t.first_seq = t.taken_upto
                ok = cur.set_range(k[:-9] + b"\x01")
            for k, v in txn.cursor(db=s.dbs[st.SB_FLOORS]):
                tb, _, cb = bytes(k).partition(b"\0")
                self.topic(tb.decode()).channels[cb.decode()] = StandbyChannel(floor=st.unpack_q(v))
            for k, _v in txn.cursor(db=s.dbs[st.SB_FINS]):
                kb = bytes(k)
                tb, _, rest = kb[:-9].partition(b"\0")
                t = self.topic(tb.decode())
                c = t.channels.setdefault(rest.decode(), StandbyChannel())
                c.fins.add(st.unpack_q(kb[-8:]))
            for k, v in txn.cursor(db=s.dbs[st.SB_STATES]):
                kb = bytes(k)
                tb, _, rest = kb[:-9].partition(b"\0")
                c = self.topic(tb.decode()).channels.setdefault(rest.decode(), StandbyChannel())
                c.states[st.unpack_q(kb[-8:])] = st.unpack_state(bytes(v))
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

    def apply_batch(self, batch: rpb.ReplicaBatch) -> tuple[list[st.Op], list[bytes]]:
        """Update the index; return the store writes for one replicated batch and
        the ids it confirms (stored for idempotency once those writes commit)."""
        ops: list[st.Op] = []
        for a in batch.appends:
            t = self.topic(a.topic)
            n = len(a.records)
            if n == 0:
                continue
            first = a.first_seq
            recs = list(a.records)
            if first < t.taken_upto:  # already ours: skip the overlap
                skip = min(n, t.taken_upto - first)
                first += skip
                recs = recs[skip:]
            if not recs:
                continue
            ops.append(("sb_append", a.topic, first, recs, not a.uncommitted))
            if a.uncommitted:
                ids = [rec[:16] for rec in recs]
                self.unconfirmed.setdefault(a.topic, {})[first] = ids
                self.unconfirmed_ids.update(ids)
            if t.next_seq <= t.first_seq and first > t.next_seq:
                t.first_seq = first
            t.next_seq = max(t.next_seq, first + len(recs))
        confirmed: list[bytes] = []
        for r in batch.committed:
            confirmed += self._cut(r.topic, r.first_seq, r.first_seq + r.count)
        if confirmed:
            ops.append(("index_ids", confirmed))
        for p in batch.progress:
            t = self.topic(p.topic)
            key = st.sb_channel_key(p.topic, p.channel)
            if p.deleted:
                c = t.channels.pop(p.channel, None)
                ops.append(("del", st.SB_FLOORS, key))
                ops.append(("drop", st.SB_FINS, key + b"\0"))
                ops.append(("drop", st.SB_STATES, key + b"\0"))
            else:
                c = t.channels.get(p.channel)
                new = c is None
                if c is None:
                    c = t.channels[p.channel] = StandbyChannel(floor=p.floor)
                if new or p.floor > c.floor:
                    for seq in [s for s in c.fins if s < p.floor]:
                        c.fins.discard(seq)
                        ops.append(("del", st.SB_FINS, st.sb_fin_key(p.topic, p.channel, seq)))
                    c.floor = max(c.floor, p.floor)
                    ops.append(("put", st.SB_FLOORS, key, st.pack_q(c.floor)))
                    for seq in [s for s in c.states if s < c.floor]:
                        del c.states[seq]
                        ops.append(("del", st.SB_STATES, st.sb_fin_key(p.topic, p.channel, seq)))
                for rs in p.states:
                    skey = st.sb_fin_key(p.topic, p.channel, rs.seq)
                    if rs.cleared or rs.seq < c.floor:
                        if c.states.pop(rs.seq, None) is not None:
                            ops.append(("del", st.SB_STATES, skey))
                    else:
                        c.states[rs.seq] = (rs.attempts, rs.due_ns)
                        ops.append(
                            ("put", st.SB_STATES, skey, st.pack_state(rs.attempts, rs.due_ns))
                        )
                for seq in p.finished:
                    if seq >= c.floor and seq not in c.fins:
                        c.fins.add(seq)
                        ops.append(("put", st.SB_FINS, st.sb_fin_key(p.topic, p.channel, seq), b""))
            low = t.min_floor()
            if low is not None and p.topic in self.unconfirmed:
                # Below the partner's floor: never confirmed means its commit failed.
                self._resolve(self._cut(p.topic, 0, low), False)
            if low is not None and low > t.first_seq:
                ops.append(
                    (
                        "range_del",
                        st.SB_MSGS,
                        st.sb_msg_key(p.topic, t.first_seq),
                        st.sb_msg_key(p.topic, low),
                    )
                )
                t.first_seq = low
        for name in batch.deleted_topics:
            ops.extend(self.drop_topic_ops(name))
            self.topics.pop(name, None)
            self.forget_unconfirmed(name)
        return ops, confirmed

    @staticmethod
    def drop_topic_ops(name: str) -> list[st.Op]:
        prefix = st.sb_topic_prefix(name)
        return [
            ("drop", st.SB_MSGS, prefix),
            ("drop", st.SB_FLOORS, prefix),
            ("drop", st.SB_FINS, prefix),
            ("drop", st.SB_STATES, prefix),
        ]

    def holdings(self) -> list[rpb.ReplicaHolding]:
        return [
            rpb.ReplicaHolding(topic=t.name, next_seq=t.next_seq, taken_upto=t.taken_upto)
            for t in self.topics.values()
        ]

    def count(self) -> int:
        return sum(t.count for t in self.topics.values())


def validate_batch(batch: rpb.ReplicaBatch, max_msg_size: int) -> str:
    """Why a replicated batch is unacceptable ("" if it is fine): names that would
    corrupt standby keys, impossible seqs, malformed records."""
    from pairq.names import is_valid_name

    for a in batch.appends:
        if not is_valid_name(a.topic):
            return f"invalid topic name {a.topic[:80]!r}"
        if a.first_seq > 2**62:
            return f"seq {a.first_seq} out of range"
        if a.records:
            sizes = list(map(len, a.records))
            if min(sizes) < wire.HEADER_SIZE + 20 or max(sizes) > max_msg_size + 65536 + 128:
                return "malformed record (size out of range)"
    for p in batch.progress:
        if not is_valid_name(p.topic) or not is_valid_name(p.channel):
            return f"invalid name {p.topic[:80]!r}/{p.channel[:80]!r}"
        if p.floor > 2**62 or any(s > 2**62 for s in p.finished):
            return "seq out of range"
    for name in batch.deleted_topics:
        if not is_valid_name(name):
            return f"invalid topic name {name[:80]!r}"
    for r in batch.committed:
        if not is_valid_name(r.topic):
            return f"invalid topic name {r.topic[:80]!r}"
        if r.first_seq > 2**62 or r.count > MAX_BATCH_RECORDS:
            return "committed range out of bounds"
    return ""
