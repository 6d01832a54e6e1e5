"""Redundant pairs: replication to the partner, standby copies, leases and takeover.

Each broker of a pair *owns* what is published to it and streams it to its
partner over one long-lived session (outbound: ``_outbound_loop``); the
partner stores it as *standby* copies (``StandbyStore`` + the ``Replicate``
handler, inbound) and acknowledges each batch once it is fsynced. A publish
is acknowledged to the producer only after both the local commit and the
partner's acknowledgement (``copies=2``), unless ``--min-copies=1`` lets it
through alone.

Transport. The session starts as the ``Replicate`` gRPC stream (hello,
welcome); when the partner offers its plain TCP link (``link.py``,
``--replication-address``), both directions move there, carrying the same
messages at a fraction of gRPC's cost per message.

Parallel replication. A live publish is sent to the partner while the local
commit is still running, so the pair's latency is the slower of the two
fsyncs rather than their sum. Such copies are *unconfirmed* on the partner
until the owner confirms its commit (``StandbyStore`` explains why and what
that changes).

Leases fence delivery. Every partner acknowledgement renews the sender's
lease until ``sent_time + lease``; an owner delivers only while its lease
is live. The partner promises not to take over until ``ack_time + lease``
(``ack_time >= sent_time``), so the two never deliver the same message
under live leases. When the lease lapses and the partner stays silent (a
kill, a pause, a partition), the survivor *takes over*: it appends every
unfinished standby message to its own log (one transaction that also
records ``taken_upto`` and drops the standby copies) and delivers alone
(``solo``) until the partner is back and acknowledging again.

Reconcile: a returning broker says hello; the answer tells it, per topic,
what the partner already holds (replication resumes there, so publishes
accepted during the outage are replicated) and what was taken over (it
marks those finished and never delivers them again). A partner that
returns with an empty disk has a new node id: it holds nothing, so the
survivor re-fills it from its log (re-silvering).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from pairq import grpcopts
from pairq.broker import store as st
from pairq.broker import wire
from pairq.broker.pair import core as pc
from pairq.broker.pair.link import TOKEN_BYTES, FramedLink, LinkError, read_token
from pairq.errors import PairqError, UnavailableError
from pairq.options import parse_hostport
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import replication_pb2 as rpb
from pairq.v1 import replication_pb2_grpc as rpbg

if TYPE_CHECKING:
    from pairq.broker.broker import Broker
    from pairq.broker.topic import Topic

log = logging.getLogger("pairq.pair")

CATCHUP_CHUNK = 2000
REFILL_LOG_EVERY = 2.0  # seconds between re-fill progress lines ...
REFILL_LOG_MSGS = 100_000  # ... or messages, whichever comes first
# A partner never heard from since this broker started is taken over only after
# this many leases of silence (the second broker of a pair often starts later).
STARTUP_GRACE_LEASES = 4
# A seq is sent to the partner only below a persisted high-water mark, raised
# this far ahead at a time (one extra commit per HWM_STEP seqs): a restarted
# broker starts above it, so it never reuses a seq the partner may hold.
HWM_STEP = 100_000
MAX_BATCHES_IN_FLIGHT = 16
MAX_BATCH_RECORDS = 20000
# Most record bytes in one replication batch: a batch the broker accepts (up
# to --max-batch bodies of --max-msg-size) is split into frames well under the
# link's frame limit (grpcopts.frame_limit), and a slow partner acknowledges
# each in turn (back-pressure through the in-flight window, not a takeover).
MAX_BATCH_BYTES = 8 * 1024 * 1024
# Longest a confirmation of a parallel-replicated publish waits for a batch to
# ride on before it is sent alone (see Pair.committed).
CONFIRM_DELAY = 0.005


# --------------------------------------------------------------------------- standby
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
                t.first_seq = max(t.first_seq, min(floors)) if t.first_seq < min(floors) else t.first_seq

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
            fut.add_done_callback(lambda f: self._resolve(
                ids, not f.cancelled() and f.exception() is None))

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
                        ops.append(("put", st.SB_STATES, skey, st.pack_state(rs.attempts, rs.due_ns)))
                for seq in p.finished:
                    if seq >= c.floor and seq not in c.fins:
                        c.fins.add(seq)
                        ops.append(("put", st.SB_FINS, st.sb_fin_key(p.topic, p.channel, seq), b""))
            low = t.min_floor()
            if low is not None and p.topic in self.unconfirmed:
                # Below the partner's floor: never confirmed means its commit failed.
                self._resolve(self._cut(p.topic, 0, low), False)
            if low is not None and low > t.first_seq:
                ops.append(("range_del", st.SB_MSGS, st.sb_msg_key(p.topic, t.first_seq),
                            st.sb_msg_key(p.topic, low)))
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


def _merge_appends(pending: list[tuple[str, int, list[bytes], bool]]) -> list[rpb.ReplicaAppend]:
    """One ReplicaAppend per contiguous run of seqs of a topic (fewer submessages)."""
    if len(pending) == 1:
        topic, seq, recs, unc = pending[0]
        return [rpb.ReplicaAppend(topic=topic, first_seq=seq, records=recs, uncommitted=unc)]
    out: list[rpb.ReplicaAppend] = []
    runs: list[tuple[str, int, list[bytes], bool]] = []
    for topic, seq, recs, unc in sorted(pending, key=lambda x: (x[0], x[1])):
        if runs and runs[-1][0] == topic and runs[-1][3] == unc and runs[-1][1] + len(runs[-1][2]) == seq:
            runs[-1][2].extend(recs)
        else:
            runs.append((topic, seq, list(recs), unc))
    for topic, seq, recs, unc in runs:
        out.append(rpb.ReplicaAppend(topic=topic, first_seq=seq, records=recs, uncommitted=unc))
    return out


def _split_appends(pending: list[tuple[str, int, list[bytes], bool]]) -> list[list[rpb.ReplicaAppend]]:
    """The appends of one round, merged (``_merge_appends``) and cut into frames of at
    most MAX_BATCH_BYTES of records each (a record larger than that goes alone)."""
    frames: list[list[rpb.ReplicaAppend]] = []
    cur: list[rpb.ReplicaAppend] = []
    size = 0
    for a in _merge_appends(pending):
        total = sum(map(len, a.records))
        if size + total <= MAX_BATCH_BYTES:  # the common case: the whole run fits
            cur.append(a)
            size += total
            continue
        recs = list(a.records)
        start = 0
        for i, rec in enumerate(recs):
            if size and size + len(rec) > MAX_BATCH_BYTES:
                if i > start:
                    cur.append(rpb.ReplicaAppend(topic=a.topic, first_seq=a.first_seq + start,
                                                 records=recs[start:i], uncommitted=a.uncommitted))
                frames.append(cur)
                cur, size, start = [], 0, i
            size += len(rec)
        cur.append(rpb.ReplicaAppend(topic=a.topic, first_seq=a.first_seq + start,
                                     records=recs[start:], uncommitted=a.uncommitted))
    frames.append(cur)
    return frames


def _progress_msg(topic: str, channel: str, pr: _Progress) -> rpb.ReplicaProgress:
    return rpb.ReplicaProgress(
        topic=topic, channel=channel, floor=pr.floor, finished=sorted(pr.finished), deleted=pr.deleted,
        states=[
            rpb.ReplicaState(seq=seq, cleared=True) if v is None
            else rpb.ReplicaState(seq=seq, attempts=v[0], due_ns=v[1])
            for seq, v in pr.states.items()
        ],
    )


def _merge_ranges(ranges: list[tuple[str, int, int]]) -> list[rpb.ReplicaRange]:
    out: list[tuple[str, int, int]] = []
    for topic, seq, n in sorted(ranges):
        if out and out[-1][0] == topic and out[-1][1] + out[-1][2] == seq and out[-1][2] + n <= MAX_BATCH_RECORDS:
            out[-1] = (topic, out[-1][1], out[-1][2] + n)
        else:
            out.append((topic, seq, n))
    return [rpb.ReplicaRange(topic=t, first_seq=q, count=n) for t, q, n in out]


async def _end(context: Any, link: Any, code: grpc.StatusCode, message: str) -> None:
    """End an inbound session: close the TCP link (if any), then abort the stream."""
    if isinstance(link, FramedLink):
        link.close()
    await context.abort(code, message)


class _RefillLog:
    """Start, progress (every REFILL_LOG_EVERY s or REFILL_LOG_MSGS messages) and end
    of a re-fill, in the log."""

    def __init__(self, what: str, total: int, topics: int) -> None:
        self.what = what
        self.t0 = self.last = time.monotonic()
        self.msgs = self.bytes = 0
        self.logged_msgs = 0
        self.remaining = total
        log.info("%s: %d seq(s) to go%s", what, total, f" in {topics} topic(s)" if topics else "")

    def add(self, msgs: int, nbytes: int, remaining: int) -> None:
        self.msgs += msgs
        self.bytes += nbytes
        self.remaining = remaining
        now = time.monotonic()
        if remaining and (now - self.last >= REFILL_LOG_EVERY
                          or self.msgs - self.logged_msgs >= REFILL_LOG_MSGS):
            self.last, self.logged_msgs = now, self.msgs
            log.info("%s: %d message(s), %.1f MB so far (%.0f msg/s), %d seq(s) to go",
                     self.what, self.msgs, self.bytes / 1e6, self.msgs / max(1e-6, now - self.t0),
                     remaining)

    def done(self) -> None:
        dt = max(1e-6, time.monotonic() - self.t0)
        log.info("%s: done, %d message(s), %.1f MB in %.2f s (%.0f msg/s)",
                 self.what, self.msgs, self.bytes / 1e6, dt, self.msgs / dt)

    def stopped(self, why: str) -> None:
        log.warning("%s: stopped after %d message(s) with %d seq(s) to go: %s",
                    self.what, self.msgs, self.remaining, why)


# --------------------------------------------------------------------------- outbound
@dataclass
class _Progress:
    """A channel's progress not yet sent to the partner."""

    floor: int
    finished: set[int]  # finished seqs >= floor
    deleted: bool
    states: dict[int, tuple[int, int] | None]  # seq -> (attempts, due_ns); None: cleared


@dataclass
class _Pending:
    batch_id: int
    sent_at: float
    futures: list[asyncio.Future[None]]
    count: int = 0


class Pair:
    """Both directions of one broker's pair link, its lease and takeover."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        o = broker.options
        self.name = o.pair
        self.partner_address = o.partner
        self.min_copies = o.min_copies
        self.lease = o.lease_ms / 1000.0
        self.heartbeat = o.heartbeat_ms / 1000.0
        self.standby = StandbyStore(broker.store)
        # Every decision about the partner (lease, silence, pauses, takeover,
        # the catalog gate) is the pure core's; this object carries them out.
        self.core = pc.PairCore(lease=self.lease, ack_timeout=max(1.0, 2 * self.lease),
                                now=time.monotonic(), startup_grace=STARTUP_GRACE_LEASES * self.lease)
        # Bumped whenever deliveries already queued for subscribers became invalid
        # (the partner took messages of ours over): the service drops queued
        # deliveries of an older fence, and holds the others while the lease is
        # lapsed.
        self.fence = 0
        self._epoch_pending = 0  # new epochs not yet durable: no delivery meanwhile
        self._fence_waiters: list[asyncio.Future[None]] = []
        # outbound
        self.connected = False
        self._batch_id = 0
        self._appends: list[tuple[str, int, list[bytes], bool]] = []  # (topic, seq, records, uncommitted)
        self._confirms: list[tuple[str, int, int]] = []  # committed here since sent uncommitted
        self._confirm_timer: asyncio.TimerHandle | None = None
        self._link: Any = None  # the outbound session's gRPC call or FramedLink
        self._tcp_server: asyncio.Server | None = None
        self._tcp_port = 0
        self._tcp_waiters: dict[bytes, asyncio.Future[FramedLink]] = {}
        # Inbound TCP links: a takeover closes them (a partner silent long enough to
        # be taken over may be gone without a reset; its session must not linger).
        self._inbound_links: set[FramedLink] = set()
        # (topic, channel) -> (floor, finished above it, deleted, requeue states (None: cleared))
        self._progress: dict[tuple[str, str], _Progress] = {}  # (topic, channel) -> unsent progress
        self._deleted: list[str] = []
        self._futures: list[asyncio.Future[None]] = []
        self._in_flight: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._window = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT)
        self._unacked_msgs = 0
        # inbound
        # Inbound sessions from the partner now being served: normally one, but an old
        # one on a half-dead connection may end after its successor began.
        self._inbound_live = 0
        self.took_over_at = 0.0
        self._taking_over: asyncio.Task[None] | None = None
        self._inbound_fenced = False  # set during a takeover: apply/ack nothing from the partner
        self._generation = 0  # bumped by every takeover: the inbound sessions before it are over
        self._closing = asyncio.Event()  # set by stop(): inbound streams end
        self._tasks: list[asyncio.Task[Any]] = []
        self._catchup: list[tuple[Topic, int, int]] = []
        self._catalog: list[rpb.ReplicaProgress] = []
        self.refill_sending = 0  # seqs of our log the running catch-up has still to send
        self.refill_receiving = 0  # seqs of the partner's log it says are still coming
        self._running = False
        self.catalog_event = asyncio.Event()

    # ------------------------------------------------------------ lifecycle
    def load(self) -> None:
        self.standby.load()
        # A store that never had the pair's catalog (new, or wiped) waits for it.
        self.core.catalog_ready = self.broker.store.get(st.META, b"catalog") is not None
        if self.core.catalog_ready:
            self.catalog_event.set()

    @property
    def partner_connected(self) -> bool:
        """Whether the partner's replication stream to this broker is up."""
        return self._inbound_live > 0

    @property
    def solo(self) -> bool:
        return self.core.mode == pc.SOLO

    @property
    def takeovers(self) -> int:
        return self.core.takeovers

    @property
    def lease_until(self) -> float:
        return self.core.lease_until

    def start(self) -> None:
        self._running = True
        old = self.core
        self.core = pc.PairCore(lease=self.lease, ack_timeout=old.ack_timeout, now=time.monotonic(),
                                catalog_ready=old.catalog_ready, startup_grace=old.startup_grace)
        self.core.witnesses_exist = old.witnesses_exist
        self._tasks = [
            asyncio.create_task(self._outbound_loop(), name="pair-outbound"),
            asyncio.create_task(self._monitor(), name="pair-monitor"),
        ]

    async def stop(self) -> None:
        """Stop both directions now (the partner's long-lived stream would otherwise
        hold the gRPC server open for the whole shutdown grace period)."""
        self._running = False
        self._closing.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_pending(UnavailableError("broker is shutting down"))
        if self._tcp_server is not None:
            self._tcp_server.close()
            self._tcp_server = None

    # ------------------------------------------------------------ delivery fence
    def may_deliver(self) -> bool:
        return not self._epoch_pending and self.core.may_deliver(time.monotonic())

    def _new_epoch(self) -> None:
        """Move to a new epoch now (deliveries carry it) and fence delivery until it
        is durable, so a restart can never reuse it."""
        fut = self.broker.next_epoch()
        self._epoch_pending += 1

        def done(f: asyncio.Future[Any]) -> None:
            self._epoch_pending -= 1
            if not f.cancelled() and f.exception() is not None:
                log.error("cannot persist the new epoch: %s", f.exception())
            self.broker.on_lease_renewed()

        fut.add_done_callback(done)

    def lease_remaining(self) -> float:
        return self.core.lease_remaining(time.monotonic())

    async def fence_moved(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the next lease renewal or fence change."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fence_waiters.append(fut)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, timeout)

    def _kick_fence_waiters(self) -> None:
        waiters, self._fence_waiters = self._fence_waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)

    # ------------------------------------------------------------ publish side
    def check_catalog(self) -> None:
        """Refuse publishes and new channels until the pair's catalog is here (a new or
        wiped store would otherwise create topics without the pair's channels)."""
        if not self.core.catalog_ready:
            raise PairqError(
                f"this broker's store is new and it has not yet received the pair's topics and "
                f"channels from partner {self.partner_address}; retry shortly, or use the partner",
                code=pb.ERROR_CODE_UNAVAILABLE,
            )

    def check_accepting(self) -> None:
        self.check_catalog()
        if self.min_copies >= 2 and not self.connected:
            raise PairqError(
                f"partner {self.partner_address} of pair {self.name!r} is unreachable and this broker "
                "requires 2 durable copies (--min-copies=2); publish to another pair, or retry later",
                code=pb.ERROR_CODE_UNAVAILABLE,
            )

    def replicate(self, topic: str, seq0: int, records: list[bytes], *,
                  uncommitted: bool = False) -> asyncio.Future[None] | None:
        """Queue records for the partner; the future resolves on its acknowledgement.

        ``uncommitted``: our own commit of them is still running (a live
        publish); call ``committed`` once it succeeds. While disconnected
        nothing is queued (memory stays bounded): the next connection catches
        the partner up from the log.
        """
        if not self.connected:
            return None
        self._appends.append((topic, seq0, records, uncommitted))
        self._unacked_msgs += len(records)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.append(fut)
        self._wake.set()
        return fut

    def committed(self, topic: str, seq0: int, n: int) -> None:
        """Records sent ``uncommitted`` are now durable here. The confirmation
        rides on the next batch; only if none goes out within CONFIRM_DELAY does
        it get a batch of its own (a steady publisher pays nothing for it)."""
        if not self.connected:
            return  # that stream is gone; the partner forgot what it was waiting for
        self._confirms.append((topic, seq0, n))
        if self._confirm_timer is None:
            self._confirm_timer = asyncio.get_running_loop().call_later(CONFIRM_DELAY, self._confirm_due)

    def _confirm_due(self) -> None:
        self._confirm_timer = None
        if self._confirms:
            self._wake.set()

    async def wait_replicated(self) -> None:
        """Wait (at most an ack timeout) until the partner acknowledged everything
        queued so far. A link that is down or breaks meanwhile is fine: every new
        session sends the whole catalog before anything else."""
        fut = self.barrier()
        if fut is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(fut), self.core.ack_timeout)
        if not fut.done():
            fut.cancel()
        elif not fut.cancelled():
            fut.exception()  # retrieved

    def barrier(self) -> asyncio.Future[None] | None:
        """A future resolved once the partner acknowledged everything queued so far
        (catch-up included); None while disconnected."""
        if not self.connected:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.append(fut)
        self._wake.set()
        return fut

    def progress(self, topic: str, channel: str, floor: int, finished: list[int],
                 states: dict[int, tuple[int, int] | None] | None = None) -> None:
        if not self.connected:
            return  # the next connection sends a full progress snapshot
        key = (topic, channel)
        cur = self._progress.get(key)
        fins = set(finished) if cur is None else cur.finished | set(finished)
        merged = dict(cur.states) if cur is not None else {}
        if states:
            merged.update(states)
        self._progress[key] = _Progress(floor, {s for s in fins if s >= floor}, False, merged)
        self._wake.set()

    def channel_deleted(self, topic: str, channel: str) -> None:
        self._progress[(topic, channel)] = _Progress(0, set(), True, {})
        self._wake.set()

    def topic_deleted(self, topic: str) -> None:
        self._deleted.append(topic)
        self._appends = [a for a in self._appends if a[0] != topic]
        self._confirms = [c for c in self._confirms if c[0] != topic]
        self._wake.set()

    def _fail_pending(self, exc: BaseException) -> None:
        for p in self._in_flight:
            for f in p.futures:
                if not f.done():
                    f.set_exception(exc)
        self._in_flight.clear()
        for f in self._futures:
            if not f.done():
                f.set_exception(exc)
        self._futures = []

    async def _outbound_loop(self) -> None:
        backoff = 0.05
        while self._running:
            channel = grpc.aio.insecure_channel(
                self.partner_address, options=grpcopts.client_options(self.broker.options.max_msg_size)
            )
            try:
                stub = rpbg.ReplicationServiceStub(channel)
                call = stub.Replicate()
                # The whole handshake is bounded: a stopped partner accepts the TCP
                # connection (its kernel does) but never answers.
                resp = await asyncio.wait_for(self._handshake(call), timeout=max(2.0, 3 * self.lease))
                if resp is grpc.aio.EOF or resp.WhichOneof("kind") != "welcome":
                    raise ConnectionError("partner did not welcome us")
                link = await self._open_tcp_link(resp.welcome) or call
                self._link = link
                await self._on_welcome(link, resp.welcome)
                backoff = 0.05
                reader = asyncio.create_task(self._read_acks(link))
                try:
                    await self._send_loop(link, reader)
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected:
                    log.warning("replication stream to %s lost: %s", self.partner_address, exc)
                else:
                    log.debug("cannot reach partner %s: %s", self.partner_address, exc)
            finally:
                was = self.connected
                self.connected = False
                self.refill_sending = 0
                self._fail_pending(UnavailableError(
                    f"lost the replication stream to partner {self.partner_address}"))
                self._window = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT)
                if was:
                    log.info("partner %s disconnected", self.partner_address)
                if isinstance(self._link, FramedLink):
                    self._link.close()
                self._link = None
                with contextlib.suppress(Exception):
                    await channel.close(grace=None)
            if self._running:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)

    async def _handshake(self, call: Any) -> Any:
        await call.write(rpb.ReplicateRequest(hello=rpb.ReplicaHello(
            node_id=self.broker.store_id, pair=self.name, tcp=True)))
        return await call.read()

    async def _open_tcp_link(self, welcome: rpb.ReplicaWelcome) -> FramedLink | None:
        """Switch to the partner's plain TCP link if it offered one (None: stay on gRPC)."""
        if not welcome.tcp_port or len(welcome.tcp_token) != TOKEN_BYTES:
            return None
        host, _ = parse_hostport(self.partner_address)
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, welcome.tcp_port), 2.0)
        except (OSError, TimeoutError) as exc:
            log.warning("cannot open the TCP replication link to %s:%d (%s); replicating over gRPC",
                        host, welcome.tcp_port, exc)
            return None
        with contextlib.suppress(Exception):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = FramedLink(r, w, rpb.ReplicateResponse.FromString,
                          grpcopts.frame_limit(self.broker.options.max_msg_size))
        await link.write_raw(welcome.tcp_token)
        return link

    async def _on_welcome(self, call: Any, welcome: rpb.ReplicaWelcome) -> None:
        """Reconcile with the partner's holdings, then catch it up from our log."""
        holdings = {h.topic: h for h in welcome.holdings}
        broker = self.broker
        # 1. Everything the partner took over is its now: never deliver it here again.
        dropped = False
        for h in welcome.holdings:
            topic = broker.topics.get(h.topic)
            if topic is not None and h.taken_upto > 0:
                dropped = topic.drop_taken_over(h.taken_upto) or dropped
        if dropped:
            self.fence += 1  # deliveries queued before this are of messages no longer ours
            self._kick_fence_waiters()
        # 2. Queue our un-replicated state: the catalog (every channel with its
        #    progress) first, then appends from what it holds to our head.
        self._appends = []
        self._confirms = []
        self._progress = {}
        self._futures = []
        self._deleted = []
        self._unacked_msgs = 0
        for h in welcome.holdings:
            if h.topic not in broker.topics or broker.topics[h.topic].ephemeral:
                self._deleted.append(h.topic)
        self.connected = True
        log.info("replicating to partner %s (%s)", self.partner_address, welcome.node_id)
        catchup: list[tuple[Topic, int, int]] = []
        catalog: list[rpb.ReplicaProgress] = []
        for topic in list(broker.topics.values()):
            if topic.ephemeral:
                continue
            held = holdings.get(topic.name)
            start = max(held.next_seq if held is not None else 0, topic.first_seq)
            # Every seq reserved from now on is replicated live (connected is set);
            # the catch-up covers everything below, committed or still committing.
            live_from = topic.next_seq
            if start < live_from:
                catchup.append((topic, start, live_from))
                self._unacked_msgs += live_from - start
            for ch in topic.channels.values():
                if ch.durable:
                    catalog.append(_progress_msg(topic.name, ch.name, _Progress(
                        ch.floor, set(ch.fin_mem), False, dict(ch.states))))
        self._catalog = catalog
        self._catchup = catchup
        self._wake.set()

    async def _send_loop(self, call: Any, reader: asyncio.Task[None]) -> None:
        # The catalog first: the partner creates every channel before it holds a
        # message of ours (and a new store may accept publishes only after it).
        catalog, self._catalog = self._catalog, []
        for i in range(0, max(1, len(catalog)), 1000):
            await self._send(call, reader, [], catalog[i:i + 1000], list(self._deleted), [],
                             catalog=i + 1000 >= len(catalog))
            self._deleted = []
        # Catch-up next (no futures: the producers were acknowledged long ago).
        remaining = sum(end - start for _, start, end in self._catchup)
        self.refill_sending = remaining
        refill_log = _RefillLog(f"re-filling partner {self.partner_address}", remaining,
                                len(self._catchup)) if remaining else None
        for topic, start, end in self._catchup:
            pos = start
            while pos < end and not topic.deleted:
                if pos >= topic.committed_seq:
                    await asyncio.sleep(0.001)  # reserved before we connected, still committing
                    continue
                top = min(end, topic.committed_seq)
                rows = self.broker.store.read_msgs(topic.meta.id, pos, top, CATCHUP_CHUNK,
                                                   max_bytes=MAX_BATCH_BYTES)
                if not rows:
                    self._unacked_msgs = max(0, self._unacked_msgs - (top - pos))
                    remaining -= top - pos
                    pos = top  # a gap: failed appends
                    continue
                # Send contiguous runs (gaps are failed appends).
                run: list[bytes] = []
                run_start = rows[0][0]
                appends: list[rpb.ReplicaAppend] = []
                expect = run_start
                for seq, rec in rows:
                    if seq != expect and run:
                        appends.append(rpb.ReplicaAppend(topic=topic.name, first_seq=run_start, records=run))
                        run = []
                        run_start = seq
                    run.append(rec)
                    expect = seq + 1
                if run:
                    appends.append(rpb.ReplicaAppend(topic=topic.name, first_seq=run_start, records=run))
                # The lag counts seqs: a chunk settles the whole span it covers.
                span = rows[-1][0] + 1 - pos
                remaining = max(0, remaining - span)
                self.refill_sending = remaining
                await self._send(call, reader, appends, [], [], [], span=span,
                                 catchup_remaining=remaining)
                if refill_log is not None:
                    refill_log.add(len(rows), sum(len(r) for _, r in rows), remaining)
                pos = rows[-1][0] + 1
            remaining -= max(0, end - pos)  # a deleted topic: the rest is not sent
        self._catchup = []
        self.refill_sending = 0
        if refill_log is not None:
            refill_log.done()
        # Live: whatever accumulated, plus heartbeats.
        while True:
            if not (self._appends or self._progress or self._deleted or self._futures):
                # Sleep until there is something to send or a heartbeat is due (a
                # timer, not wait_for: that costs a task per batch on the hot path).
                self._wake.clear()
                timer = asyncio.get_running_loop().call_later(self.heartbeat, self._wake.set)
                await self._wake.wait()
                timer.cancel()
            if reader.done():
                reader.result()
                raise ConnectionError("ack stream ended")
            pending = self._appends
            confirms = _merge_ranges(self._confirms) if self._confirms else []
            progress = [_progress_msg(t, c, pr) for (t, c), pr in self._progress.items()]
            deleted = self._deleted
            futures = self._futures
            self._appends, self._progress, self._deleted, self._futures = [], {}, [], []
            self._confirms = []
            if self._confirm_timer is not None:  # they ride on this batch
                self._confirm_timer.cancel()
                self._confirm_timer = None
            frames = _split_appends(pending) if pending else [[]]
            # Everything but the appends rides on the last frame, whose ack (acks are
            # cumulative) resolves every future of this round.
            for appends in frames[:-1]:
                await self._send(call, reader, appends, [], [], [])
            await self._send(call, reader, frames[-1], progress, deleted, futures, confirms)

    async def _send(self, call: Any, reader: asyncio.Task[None], appends: list[rpb.ReplicaAppend],
                    progress: list[rpb.ReplicaProgress], deleted: list[str],
                    futures: list[asyncio.Future[None]],
                    confirms: list[rpb.ReplicaRange] | None = None, *,
                    catalog: bool = False, span: int | None = None,
                    catchup_remaining: int | None = None) -> None:
        raise_hwm: list[st.Op] = []
        for a in appends:
            topic = self.broker.topics.get(a.topic)
            top = a.first_seq + len(a.records)
            if topic is not None and top > topic.hwm:
                topic.hwm = top + HWM_STEP
                raise_hwm.append(("put", st.META, st.hwm_key(topic.meta.id), st.pack_q(topic.hwm)))
        if raise_hwm:
            await self.broker.store.submit_many(raise_hwm)
        # Wait for room in the window, but never past the session's end: a reader
        # that died (the partner reset, stopped or was partitioned) ends the wait.
        if self._window.locked():
            acquire = asyncio.ensure_future(self._window.acquire())
            try:
                await asyncio.wait({acquire, reader}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not acquire.done():
                    acquire.cancel()
            if not acquire.done() or acquire.cancelled():
                for f in futures:
                    if not f.done():
                        f.set_exception(UnavailableError(
                            f"lost the replication stream to partner {self.partner_address}"))
                raise ConnectionError("replication session ended while waiting for acknowledgements")
        else:
            await self._window.acquire()
        self._batch_id += 1
        pending = _Pending(self._batch_id, time.monotonic(), futures)
        self._in_flight.append(pending)
        pending.count = span if span is not None else sum(len(a.records) for a in appends)
        await call.write(rpb.ReplicateRequest(batch=rpb.ReplicaBatch(
            batch_id=pending.batch_id, appends=appends, progress=progress, deleted_topics=deleted,
            committed=confirms, catalog=catalog, catchup=catchup_remaining is not None,
            catchup_remaining=catchup_remaining or 0)))

    async def _read_acks(self, call: Any) -> None:
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                raise ConnectionError("partner closed the replication stream")
            if resp.WhichOneof("kind") != "ack":
                continue
            ack = resp.ack
            lease = ack.lease_ms / 1000.0 if ack.lease_ms else self.lease
            now = time.monotonic()
            sent_at = 0.0
            while self._in_flight and self._in_flight[0].batch_id <= ack.batch_id:
                p = self._in_flight.popleft()
                self._window.release()
                self._unacked_msgs = max(0, self._unacked_msgs - p.count)
                sent_at = p.sent_at
                for f in p.futures:
                    if not f.done():
                        f.set_result(None)
            if sent_at:
                for action in self.core.on_ack(sent_at, lease, now):
                    if action.kind == pc.LEFT_SOLO:
                        log.info("partner %s is back and acknowledging: leaving solo mode",
                                 self.partner_address)
                    elif action.kind == pc.EPOCH:
                        self._new_epoch()
            self.broker.on_lease_renewed()
            if self._fence_waiters:
                self._kick_fence_waiters()


    # ------------------------------------------------------------ inbound (service)
    async def Replicate(self, request_iterator: Any, context: Any) -> None:
        if not self._running:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "broker is shutting down")
            return
        hello = await context.read()
        if hello is grpc.aio.EOF or hello.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "first message must be hello")
            return
        h = hello.hello
        if h.pair != self.name:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"pair name mismatch: this broker is in pair {self.name!r}, the peer in {h.pair!r}",
            )
            return
        if self._taking_over is not None:
            await asyncio.shield(self._taking_over)
        if self.standby.partner_id and self.standby.partner_id != h.node_id:
            # A new identity (e.g. the partner's disk was wiped): whatever we hold of
            # the old one is ours now, then we start afresh for the new one.
            if self.standby.count():
                log.warning("partner came back as %s (was %s): taking over the old standby copies",
                            h.node_id, self.standby.partner_id)
                for action in self.core.on_new_identity(time.monotonic()):
                    if action.kind == pc.TAKE_OVER:
                        await self._run_takeover(action.reason)
                if self._taking_over is not None:
                    await asyncio.shield(self._taking_over)
            await self._reset_standby(h.node_id)
        elif not self.standby.partner_id:
            await self._reset_standby(h.node_id)
        token = b""
        tcp_fut: asyncio.Future[FramedLink] | None = None
        if h.tcp and self._tcp_server is not None:
            token = os.urandom(TOKEN_BYTES)
            tcp_fut = asyncio.get_running_loop().create_future()
            self._tcp_waiters[token] = tcp_fut
        await context.write(rpb.ReplicateResponse(welcome=rpb.ReplicaWelcome(
            node_id=self.broker.store_id, holdings=self.standby.holdings(),
            tcp_port=self._tcp_port if tcp_fut is not None else 0, tcp_token=token)))
        # Whatever the last stream left unconfirmed is of unknown fate (the partner
        # may have crashed before committing it): never count it as stored.
        self.standby.forget_unconfirmed()
        # The partner has one outbound session at a time: a hello means any older
        # inbound link is dead (a partition, a reset its side saw first).
        for old in list(self._inbound_links):
            old.close()
        self._inbound_live += 1
        self.core.on_heard(time.monotonic())
        # The link: the partner's TCP connection if it makes one (link.py), else
        # this stream. Its first message over either decides.
        link: Any = context
        first: Any = None
        idle_read: asyncio.Future[Any] | None = None  # the gRPC stream, idle while on TCP
        if tcp_fut is not None:
            idle_read = asyncio.ensure_future(context.read())
            try:
                await asyncio.wait({tcp_fut, idle_read}, timeout=max(2.0, 3 * self.lease),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._tcp_waiters.pop(token, None)
            if tcp_fut.done() and not tcp_fut.cancelled():
                link = tcp_fut.result()
            elif idle_read.done():
                done_read, idle_read = idle_read, None
                try:
                    first = done_read.result()
                except Exception:  # the partner's stream broke before anything came
                    first = grpc.aio.EOF
            tcp_fut.cancel()
            if link is context and first is None:
                self._inbound_live -= 1
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no replication traffic after welcome")
                return
        # On shutdown, end the partner's stream at once (it reconnects to us or
        # takes over) instead of holding the server open for the whole grace.
        watcher = asyncio.ensure_future(self._abort_on_close(context, link))
        acks: asyncio.Queue[tuple[int, asyncio.Future[Any]] | None] = asyncio.Queue()
        # A takeover ends this stream: the partner must reconnect and learn what
        # was taken over before it may deliver again.
        generation = self._generation
        writer = asyncio.create_task(self._write_acks(context, link, acks, generation))
        tcp_acks = (functools.partial(self._ack_now, context, link, generation, acks)
                    if isinstance(link, FramedLink) else None)
        refill: _RefillLog | None = None
        try:
            while True:
                if first is not None:
                    req, first = first, None
                else:
                    try:
                        req = await link.read()
                    except LinkError as exc:
                        log.error("closing the replication link from %s: %s", h.node_id, exc)
                        break
                if req is grpc.aio.EOF:
                    break
                if self._fenced(generation):
                    break
                self.core.on_heard(time.monotonic())
                if req.WhichOneof("kind") != "batch":
                    continue
                problem = validate_batch(req.batch, self.broker.options.max_msg_size)
                if problem:
                    log.error("rejecting a replication batch from %s: %s", h.node_id, problem)
                    await _end(context, link, grpc.StatusCode.INVALID_ARGUMENT, f"bad replication batch: {problem}")
                    return
                ops, confirmed = self.standby.apply_batch(req.batch)
                if req.batch.catchup:
                    refill = self._note_refill(refill, req.batch)
                if req.batch.progress or req.batch.catalog:
                    # Channels are pair state: adopt the partner's before acknowledging.
                    await self._adopt_channels(req.batch)
                fut = self.broker.store.submit_many(ops) if ops else self.broker.store.barrier()
                self.standby.confirm_after(fut, confirmed)
                if tcp_acks is not None:
                    # On TCP the ack goes out from the commit's callback: no task
                    # switch between our fsync and the partner hearing of it.
                    fut.add_done_callback(functools.partial(tcp_acks, req.batch.batch_id))
                else:
                    acks.put_nowait((req.batch.batch_id, fut))
                if writer.done():
                    break
        finally:
            watcher.cancel()
            acks.put_nowait(None)
            with contextlib.suppress(BaseException):
                await writer
            if isinstance(link, FramedLink):
                link.close()
                self._inbound_links.discard(link)
            if idle_read is not None:
                idle_read.cancel()
                with contextlib.suppress(BaseException):
                    await idle_read
            self._inbound_live -= 1
            self.refill_receiving = 0
            if refill is not None and refill.remaining:
                refill.stopped("the partner's session ended")

    async def _abort_on_close(self, context: Any, link: Any) -> None:
        await self._closing.wait()
        with contextlib.suppress(BaseException):
            await _end(context, link, grpc.StatusCode.UNAVAILABLE, "broker is shutting down")

    async def _write_acks(self, context: Any, link: Any,
                          acks: asyncio.Queue[tuple[int, asyncio.Future[Any]] | None],
                          generation: int) -> None:
        while True:
            item = await acks.get()
            if item is None:
                return
            bid, fut = item
            try:
                await fut
            except Exception as exc:
                log.error("cannot store the partner's batch: %s", exc)
                await _end(context, link, grpc.StatusCode.RESOURCE_EXHAUSTED, f"partner store: {exc}")
                return
            if self._fenced(generation):
                await _end(context, link, grpc.StatusCode.UNAVAILABLE,
                           "this broker took over your messages; reconnect to re-sync")
                return
            await link.write(self._grant_ack(bid))

    def _note_refill(self, refill: _RefillLog | None, batch: rpb.ReplicaBatch) -> _RefillLog | None:
        """Log and expose the re-fill the partner is sending us (its catch-up batches)."""
        n = sum(len(a.records) for a in batch.appends)
        if refill is None:
            refill = _RefillLog(f"being re-filled by partner {self.partner_address}",
                                batch.catchup_remaining + n, 0)
        refill.add(n, sum(len(r) for a in batch.appends for r in a.records), batch.catchup_remaining)
        self.refill_receiving = batch.catchup_remaining
        if not batch.catchup_remaining:
            refill.done()
            return None
        return refill

    async def _adopt_channels(self, batch: rpb.ReplicaBatch) -> None:
        """Create (or delete) on our own topics the channels the partner reports, so a
        channel exists on both brokers before any later publish is acknowledged; the
        first complete catalog lifts a new store's gate (``check_catalog``)."""
        broker = self.broker
        for p in batch.progress:
            topic = broker.topics.get(p.topic)
            if p.deleted:
                if topic is not None and p.channel in topic.channels:
                    log.info("partner deleted channel %s/%s: deleting it here too", p.topic, p.channel)
                    topic.delete_channel(p.channel)
                continue
            if topic is None or p.channel not in topic.channels:
                try:
                    topic = await broker.get_topic(p.topic, from_partner=True)
                    await topic.get_channel(p.channel, from_partner=True)
                except PairqError as exc:  # a limit (--max-topics/--max-channels) here
                    log.error("cannot create the partner's channel %s/%s here: %s",
                              p.topic, p.channel, exc)
        if batch.catalog and not self.core.catalog_ready:
            await broker.store.submit_many([("put", st.META, b"catalog", b"1")])
            self.core.on_catalog(time.monotonic())
            self.catalog_event.set()
            log.info("received the pair's catalog from partner %s (%d channel(s)): accepting "
                     "publishes", self.partner_address, len(batch.progress))

    def _fenced(self, generation: int) -> bool:
        """A takeover happened (or is running) since the session of ``generation`` began."""
        return self._generation != generation or self._inbound_fenced

    def _grant_ack(self, bid: int) -> rpb.ReplicateResponse:
        """The ack of batch ``bid``, granting the lease from now: we promise not to take
        over before now + lease."""
        self.core.on_grant(time.monotonic())
        return rpb.ReplicateResponse(ack=rpb.ReplicaAck(batch_id=bid, lease_ms=int(self.lease * 1000)))

    def _ack_now(self, context: Any, link: FramedLink, generation: int,
                 acks: asyncio.Queue[tuple[int, asyncio.Future[Any]] | None],
                 bid: int, fut: asyncio.Future[Any]) -> None:
        """``_write_acks`` for the TCP link, run as the commit's done-callback (commits
        complete in order, so acks go out in order); failures go to the writer task."""
        if link.closed:
            return
        if fut.cancelled() or fut.exception() is not None or self._fenced(generation):
            # Acks are cumulative: nothing may be acknowledged after this one. Close
            # the link now; the task ends the session with the right status.
            link.close()
            acks.put_nowait((bid, fut))
            return
        link.send(self._grant_ack(bid))

    # ------------------------------------------------------------ TCP link (inbound)
    async def start_tcp(self) -> None:
        """Listen for the partner's TCP replication link (``--replication-address``)."""
        o = self.broker.options
        if o.replication_address == "off":
            return
        if o.replication_address == "auto":
            host, port = parse_hostport(self.broker.address)[0], 0
        else:
            host, port = parse_hostport(o.replication_address, what="--replication-address")
        self._tcp_server = await asyncio.start_server(self._on_tcp, host, port)
        self._tcp_port = self._tcp_server.sockets[0].getsockname()[1]
        log.info("replication link listening on %s:%d", host, self._tcp_port)

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        token = await read_token(reader, timeout=5.0)
        fut = self._tcp_waiters.pop(token, None) if token else None
        if fut is None or fut.done():
            writer.close()  # not a session of ours: garbage, a stale or a reused token
            return
        with contextlib.suppress(Exception):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        link = FramedLink(reader, writer, rpb.ReplicateRequest.FromString,
                          grpcopts.frame_limit(self.broker.options.max_msg_size))
        self._inbound_links.add(link)
        fut.set_result(link)

    async def _reset_standby(self, node_id: str) -> None:
        ops: list[st.Op] = [("put", st.SB_META, b"partner", node_id.encode())]
        if self.standby.partner_id and self.standby.partner_id != node_id:
            ops += [("drop", st.SB_MSGS, b""), ("drop", st.SB_FLOORS, b""), ("drop", st.SB_FINS, b""),
                    ("drop", st.SB_STATES, b""), ("drop", st.SB_META, b"taken:")]
            self.standby.topics.clear()
        self.standby.partner_id = node_id
        await self.broker.store.submit_many(ops)

    # ------------------------------------------------------------ takeover
    def gossip_partner_dead(self, dead: bool, *, witnessed: bool = False) -> None:
        """Gossip's view of the partner (with other members, takeover needs a witnessed
        verdict on top of the lapsed lease, see pair_core)."""
        self.core.on_gossip(dead, witnessed=witnessed)

    def gossip_has_witnesses(self) -> None:
        """Gossip knows a member besides the pair: from now on takeover is witnessed."""
        if not self.core.witnesses_exist:
            log.info("gossip knows members besides the pair: takeover needs their witness")
        self.core.witnesses_exist = True

    async def _monitor(self) -> None:
        """Feed the core the clock and carry out what it decides."""
        while self._running:
            await asyncio.sleep(min(0.02, self.heartbeat / 2))
            now = time.monotonic()
            for action in self.core.tick(now, unacked=bool(self._in_flight)):
                if action.kind == pc.RESUMED:
                    log.log(logging.WARNING if action.gap >= self.lease / 2 else logging.INFO,
                            "this broker was stopped for %.2f s (paused process, suspended host "
                            "or a stalled loop): not judging the partner's silence across the gap",
                            action.gap)
                elif action.kind == pc.RESET_LINK:
                    link = self._link
                    if link is not None:
                        log.warning("partner %s: %s; dropping the replication session and "
                                    "reconnecting", self.partner_address, action.reason)
                        self._reset_session()
                elif action.kind == pc.TAKE_OVER:
                    await self._run_takeover(action.reason)

    def _reset_session(self) -> None:
        """End the outbound session now: close its link and fail whatever waits on it."""
        link = self._link
        if isinstance(link, FramedLink):
            link.close()
        elif link is not None:
            link.cancel()
        self._fail_pending(UnavailableError(
            f"partner {self.partner_address} stopped acknowledging; retry"))

    async def _run_takeover(self, reason: str) -> None:
        self._taking_over = asyncio.create_task(self.take_over(reason))
        try:
            await self._taking_over
        except Exception:
            log.exception("takeover failed; will retry")
            self.core.on_takeover_failed(time.monotonic())
        finally:
            self._taking_over = None

    async def take_over(self, reason: str) -> None:
        """Promote every unfinished standby copy to owned and deliver alone (the core
        decided; see pair_core)."""
        t0 = time.monotonic()
        moved = 0
        # Stop applying and acknowledging the partner's batches, and let every
        # standby write already queued commit, so what we read is all we hold.
        self._inbound_fenced = True
        try:
            await self.broker.store.barrier()
            for sb in list(self.standby.topics.values()):
                moved += await self._take_over_topic(sb)
            self._generation += 1
            for link in list(self._inbound_links):
                link.close()
        finally:
            self._inbound_fenced = False
        self.took_over_at = time.monotonic()
        for action in self.core.on_takeover_done(self.took_over_at):
            if action.kind == pc.EPOCH:
                self._new_epoch()
        self.broker.on_lease_renewed()
        log.warning("took over %d message(s) from partner %s in %.3f s: %s",
                    moved, self.standby.partner_id or self.partner_address,
                    time.monotonic() - t0, reason)

    async def _take_over_topic(self, sb: StandbyTopic) -> int:
        start = max(sb.first_seq, sb.taken_upto)
        end = sb.next_seq
        if end <= start and not sb.channels:
            return 0
        topic = await self.broker.get_topic(sb.name, from_partner=True)
        for ch_name in sb.channels:
            await topic.get_channel(ch_name, from_partner=True)
        rows: list[tuple[int, bytes]] = []
        prefix = st.sb_topic_prefix(sb.name)
        s = self.broker.store
        with s.env.begin(buffers=False) as txn:
            cur = txn.cursor(db=s.dbs[st.SB_MSGS])
            if cur.set_range(st.sb_msg_key(sb.name, start)):
                for k, v in cur:
                    if not k.startswith(prefix) or len(k) != len(prefix) + 8:
                        break
                    seq = st.unpack_q(k[-8:])
                    if seq >= end:
                        break
                    rows.append((seq, v))
        records: list[bytes] = []
        finished_for: dict[str, list[int]] = {}
        states_for: dict[str, dict[int, tuple[int, int]]] = {}
        names = list(topic.channels)
        def finished(name: str, seq: int) -> bool:
            c = sb.channels.get(name)
            if c is None:
                # A channel the partner never had (made here while apart) starts at
                # the head, so it was never given the partner's messages; with no
                # channel at all there, every message waited for the first channel.
                return bool(sb.channels)
            return seq < c.floor or seq in c.fins

        for seq, rec in rows:
            done = [n for n in names if finished(n, seq)]
            if names and len(done) == len(names):
                continue
            idx = len(records)
            records.append(rec)
            for n in done:
                finished_for.setdefault(n, []).append(idx)
            for n, c in sb.channels.items():
                state = c.states.get(seq)
                if state is not None and n not in done:
                    states_for.setdefault(n, {})[idx] = state
        extra: list[st.Op] = [
            ("put", st.SB_META, b"taken:" + sb.name.encode(), st.pack_q(end)),
            *StandbyStore.drop_topic_ops(sb.name),
        ]
        await topic.append_owned(records, extra_ops=extra, finished_for=finished_for,
                                 states_for=states_for)
        self.standby.forget_unconfirmed(sb.name, taken_over=True)  # owned (and indexed) here now
        sb.taken_upto = end
        sb.first_seq = end
        sb.next_seq = end  # the partner resends anything above from its log
        sb.channels.clear()
        return len(records)

    # ------------------------------------------------------------ stats
    def stats(self) -> pb.PairStats:
        return pb.PairStats(
            pair=self.name,
            partner_address=self.partner_address,
            partner_id=self.standby.partner_id,
            connected=self.connected,
            lease_remaining_ms=int(self.lease_remaining() * 1000),
            solo=self.solo,
            epoch=self.broker.epoch,
            replication_lag=self._unacked_msgs,
            standby_messages=self.standby.count(),
            min_copies=self.min_copies,
            takeovers=self.takeovers,
            partner_connected=self.partner_connected,
            link=("" if not self.connected or self._link is None
                  else "tcp" if isinstance(self._link, FramedLink) else "grpc"),
            refill_sending=self.refill_sending,
            refill_receiving=self.refill_receiving,
        )

    def generic_handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            "pairq.v1.ReplicationService",
            {
                "Replicate": grpc.stream_stream_rpc_method_handler(
                    self.Replicate,
                    request_deserializer=rpb.ReplicateRequest.FromString,
                    response_serializer=rpb.ReplicateResponse.SerializeToString,
                )
            },
        )
