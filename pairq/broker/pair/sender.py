"""The outbound side of the pair: this broker's session to its partner.

One long-lived session at a time (``Sender.run``): a hello on the
``Replicate`` gRPC stream, the partner's welcome (what it holds of ours,
what it took over, maybe a TCP link to move to, ``link.py``), then the
reconcile (``_on_welcome``: drop what the partner took over, queue the
catalog and the catch-up from our log), and the send loop: the catalog
first, then the catch-up (re-fill), then live appends, confirmations,
channel progress and deletions as they come, and a heartbeat when idle.
Every batch waits for room in a window of MAX_BATCHES_IN_FLIGHT; the
partner's cumulative acks (``_read_acks``) resolve the publishers' futures
and renew the lease (``PairCore.on_ack``).

Parallel replication. A live publish is sent while the local commit is
still running (``uncommitted``) and confirmed once it succeeded
(``committed``): the pair's latency is the slower of the two fsyncs rather
than their sum (``standby.StandbyStore`` explains the partner's side).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import grpc

from pairq import grpcopts
from pairq.broker.pair import core as pc
from pairq.broker.pair.link import TOKEN_BYTES, FramedLink, ReplicaLink, read_frame
from pairq.broker.pair.refill import RefillLog
from pairq.broker.pair.standby import MAX_BATCH_RECORDS
from pairq.broker.ports import publish_traces
from pairq.broker.store import Write
from pairq.errors import UnavailableError
from pairq.options import parse_hostport
from pairq.security import pairauth
from pairq.v1 import replication_pb2 as rpb
from pairq.v1 import replication_pb2_grpc as rpbg

if TYPE_CHECKING:
    from pairq.broker.pair.state import PairState
    from pairq.broker.topic import Topic

log = logging.getLogger("pairq.pair")

CATCHUP_CHUNK = 2000
# A seq is sent to the partner only below a persisted high-water mark, raised
# this far ahead at a time (one extra commit per HWM_STEP seqs): a restarted
# broker starts above it, so it never reuses a seq the partner may hold.
HWM_STEP = 100_000
MAX_BATCHES_IN_FLIGHT = 16
# Most record bytes in one replication batch: a batch the broker accepts (up
# to --max-batch bodies of --max-msg-size) is split into frames well under the
# link's frame limit (grpcopts.frame_limit), and a slow partner acknowledges
# each in turn (back-pressure through the in-flight window, not a takeover).
MAX_BATCH_BYTES = 8 * 1024 * 1024


@dataclass
class _Progress:
    """A channel's progress not yet sent to the partner."""

    floor: int
    finished: set[int]  # finished seqs >= floor
    deleted: bool
    states: dict[int, tuple[int, int] | None]  # seq -> (attempts, due_ns); None: cleared
    created_ns: int = 0  # a new channel's creation time (pair/catalog.py)
    deleted_ns: int = 0  # with deleted: when


@dataclass
class _Pending:
    batch_id: int
    sent_at: float
    futures: list[asyncio.Future[None]]
    count: int = 0


# (topic, first seq, records, their crc32c, uncommitted)
Pending = tuple[str, int, list[bytes], list[int], bool]


def _merge_appends(pending: list[Pending]) -> list[Pending]:
    """One run per contiguous range of seqs of a topic (fewer submessages)."""
    if len(pending) == 1:
        return pending
    runs: list[Pending] = []
    for topic, seq, recs, crcs, unc in sorted(pending, key=lambda x: (x[0], x[1])):
        if (
            runs
            and runs[-1][0] == topic
            and runs[-1][4] == unc
            and runs[-1][1] + len(runs[-1][2]) == seq
        ):
            runs[-1][2].extend(recs)
            runs[-1][3].extend(crcs)
        else:
            runs.append((topic, seq, list(recs), list(crcs), unc))
    return runs


def _split_appends(pending: list[Pending]) -> list[list[Pending]]:
    """The appends of one round, merged (``_merge_appends``) and cut into frames of at
    most MAX_BATCH_BYTES of records each (a record larger than that goes alone).

    Plain lists, not protobuf: ``_frame_msgs`` builds each frame's messages just
    before it is sent. Built here all at once, a 60 MiB round cost four copies of
    every byte (each read of a protobuf ``bytes`` field is one) in one stretch of
    the event loop, long enough on a loaded host for the partner to hear nothing
    for a lease and take over."""
    frames: list[list[Pending]] = []
    cur: list[Pending] = []
    size = 0
    for run in _merge_appends(pending):
        topic, seq0, recs, crcs, unc = run
        total = sum(map(len, recs))
        if size + total <= MAX_BATCH_BYTES:  # the common case: the whole run fits
            cur.append(run)
            size += total
            continue
        start = 0
        for i, rec in enumerate(recs):
            if size and size + len(rec) > MAX_BATCH_BYTES:
                if i > start:
                    cur.append((topic, seq0 + start, recs[start:i], crcs[start:i], unc))
                frames.append(cur)
                cur, size, start = [], 0, i
            size += len(rec)
        cur.append((topic, seq0 + start, recs[start:], crcs[start:], unc))
    frames.append(cur)
    return frames


def _frame_msgs(frame: list[Pending]) -> list[rpb.ReplicaAppend]:
    return [
        rpb.ReplicaAppend(topic=t, first_seq=q, records=r, crcs=c, uncommitted=u)
        for t, q, r, c, u in frame
    ]


def _progress_msg(topic: str, channel: str, pr: _Progress) -> rpb.ReplicaProgress:
    return rpb.ReplicaProgress(
        topic=topic,
        channel=channel,
        floor=pr.floor,
        finished=sorted(pr.finished),
        deleted=pr.deleted,
        created_ns=pr.created_ns,
        deleted_ns=pr.deleted_ns,
        states=[
            rpb.ReplicaState(seq=seq, cleared=True)
            if v is None
            else rpb.ReplicaState(seq=seq, attempts=v[0], due_ns=v[1])
            for seq, v in pr.states.items()
        ],
    )


def _merge_ranges(ranges: list[tuple[str, int, int]]) -> list[rpb.ReplicaRange]:
    out: list[tuple[str, int, int]] = []
    for topic, seq, n in sorted(ranges):
        if (
            out
            and out[-1][0] == topic
            and out[-1][1] + out[-1][2] == seq
            and out[-1][2] + n <= MAX_BATCH_RECORDS
        ):
            out[-1] = (topic, out[-1][1], out[-1][2] + n)
        else:
            out.append((topic, seq, n))
    return [rpb.ReplicaRange(topic=t, first_seq=q, count=n) for t, q, n in out]


class Sender:
    """This broker's outbound session to its partner, and what waits to be sent on it."""

    def __init__(self, state: PairState) -> None:
        self._s = state
        self.broker = state.broker
        self.connected = False
        self._batch_id = 0
        self._appends: list[Pending] = []
        # Trace context of traced publishes among _appends (ports.publish_traces).
        self._traces: list[rpb.ReplicaTrace] = []
        self._confirms: list[tuple[str, int, int]] = []  # committed here since sent uncommitted
        self._hb_timer: asyncio.TimerHandle | None = None  # see _heartbeat_due
        self._last_send = 0.0  # loop time the last batch went out
        self.link: ReplicaLink | None = None  # the session's gRPC call or FramedLink
        # (topic, channel) -> (floor, finished above it, deleted, requeue states (None: cleared))
        self._progress: dict[tuple[str, str], _Progress] = {}  # (topic, channel) -> unsent progress
        self._deleted: list[str] = []
        self._futures: list[asyncio.Future[None]] = []
        self.in_flight: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._window = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT)
        self.unacked_msgs = 0
        self._catchup: list[tuple[Topic, int, int]] = []
        self._catalog: list[rpb.ReplicaProgress] = []
        self.refill_sending = 0  # seqs of our log the running catch-up has still to send
        self._client_ssl: ssl.SSLContext | None = None  # the TCP link's, with TLS
        self._auth_warned = False  # the partner's refusal of our proof was logged once

    def replicate(
        self,
        topic: str,
        seq0: int,
        records: list[bytes],
        crcs: list[int],
        *,
        uncommitted: bool = False,
    ) -> asyncio.Future[None] | None:
        """Queue records for the partner; the future resolves on its acknowledgement.

        ``uncommitted``: our own commit of them is still running (a live
        publish); call ``committed`` once it succeeds. While disconnected
        nothing is queued (memory stays bounded): the next connection catches
        the partner up from the log.
        """
        if not self.connected:
            return None
        self._appends.append((topic, seq0, records, crcs, uncommitted))
        traced = publish_traces.get()
        if traced:  # tracing on and this publish is traced: its context rides along
            self._traces.extend(
                rpb.ReplicaTrace(topic=t, message_id=i, traceparent=tp) for t, i, tp in traced
            )
            traced.clear()  # once: a later append of the same publish carries none
        self.unacked_msgs += len(records)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures.append(fut)
        self._wake.set()
        return fut

    def committed(self, topic: str, seq0: int, n: int) -> None:
        """Records sent ``uncommitted`` are now durable here. The confirmation
        rides on the next batch, at the latest the next heartbeat: it never costs
        a frame, a partner commit or a lease round trip of its own.

        What waits for it is rare and can wait a heartbeat: only the partner's
        idempotency index (a retry of these ids published to the partner waits for
        the confirmation, ``StandbyStore.wait_confirmed``); the copies themselves
        are kept and taken over without it. Sent alone after 5 ms of silence, as
        until session 14, it cost every publish more than 5 ms after the previous
        one a second frame each way and a second fsync'd commit on the partner (at
        50/s, 3,380-3,740 us of CPU per publish for both brokers against 2,440-2,660
        now; at 200/s and above the next publish always left within 5 ms)."""
        if not self.connected:
            return  # that stream is gone; the partner forgot what it was waiting for
        self._confirms.append((topic, seq0, n))

    def _heartbeat_due(self) -> None:
        """The heartbeat timer: one per idle heartbeat interval, not one per batch (a
        timer armed and cancelled around every wait cost each lone publish a
        TimerHandle and left the loop's heap full of cancelled ones). It wakes the
        send loop only once ``heartbeat`` has passed since the last batch went out;
        otherwise it re-arms itself for then."""
        loop = asyncio.get_running_loop()
        due = self._last_send + self._s.heartbeat
        if loop.time() >= due - 0.001:
            self._hb_timer = None
            self._wake.set()
        else:
            self._hb_timer = loop.call_at(due, self._heartbeat_due)

    async def wait_replicated(self) -> None:
        """Wait (at most an ack timeout) until the partner acknowledged everything
        queued so far. A link that is down or breaks meanwhile is fine: every new
        session sends the whole catalog before anything else."""
        fut = self.barrier()
        if fut is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(fut), self._s.core.ack_timeout)
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

    def progress(
        self,
        topic: str,
        channel: str,
        floor: int,
        finished: list[int],
        states: dict[int, tuple[int, int] | None] | None = None,
    ) -> None:
        if not self.connected:
            return  # the next connection sends a full progress snapshot
        key = (topic, channel)
        cur = self._progress.get(key)
        fins = set(finished) if cur is None else cur.finished | set(finished)
        merged = dict(cur.states) if cur is not None else {}
        if states:
            merged.update(states)
        created = cur.created_ns if cur is not None else 0
        self._progress[key] = _Progress(
            floor, {s for s in fins if s >= floor}, False, merged, created_ns=created
        )
        self._wake.set()

    def channel_created(self, topic: str, channel: str, floor: int, created_ns: int) -> None:
        if not self.connected:
            return  # the next connection's catalog carries it
        self._progress[(topic, channel)] = _Progress(floor, set(), False, {}, created_ns=created_ns)
        self._wake.set()

    def channel_deleted(self, topic: str, channel: str, deleted_ns: int) -> None:
        self._progress[(topic, channel)] = _Progress(0, set(), True, {}, deleted_ns=deleted_ns)
        self._wake.set()

    def topic_deleted(self, topic: str) -> None:
        self._deleted.append(topic)
        self._appends = [a for a in self._appends if a[0] != topic]
        self._confirms = [c for c in self._confirms if c[0] != topic]
        self._wake.set()

    def fail_pending(self, exc: BaseException) -> None:
        """Fail every future waiting for the partner's acknowledgement."""
        for p in self.in_flight:
            for f in p.futures:
                if not f.done():
                    f.set_exception(exc)
        self.in_flight.clear()
        for f in self._futures:
            if not f.done():
                f.set_exception(exc)
        self._futures = []

    @staticmethod
    def _fail(futures: list[asyncio.Future[None]], why: str) -> None:
        for f in futures:
            if not f.done():
                f.set_exception(UnavailableError(why))

    def reset_session(self) -> None:
        """End the session now: close its link and fail whatever waits on it."""
        link = self.link
        if isinstance(link, FramedLink):
            link.close()
        elif link is not None:
            cast(Any, link).cancel()  # the gRPC call
        self.fail_pending(
            UnavailableError(f"partner {self._s.partner_address} stopped acknowledging; retry")
        )

    async def run(self) -> None:
        """Keep a session to the partner open while the pair runs, reconnecting
        after a loss."""
        backoff = 0.05
        while self._s.running:
            channel = self._s.security.channel(
                self._s.partner_address,
                grpcopts.client_options(self.broker.options.max_msg_size),
            )
            try:
                stub = rpbg.ReplicationServiceStub(channel)
                call = stub.Replicate()
                # The whole handshake is bounded: a stopped partner accepts the TCP
                # connection (its kernel does) but never answers.
                resp = await asyncio.wait_for(
                    self._handshake(call), timeout=max(2.0, 3 * self._s.lease)
                )
                if resp is grpc.aio.EOF or resp.WhichOneof("kind") != "welcome":
                    raise ConnectionError("partner did not welcome us")
                self._auth_warned = False  # a later refusal is news again
                link = await self._open_tcp_link(resp.welcome) or call
                self.link = link
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
                    log.warning("replication stream to %s lost: %s", self._s.partner_address, exc)
                else:
                    log.debug("cannot reach partner %s: %s", self._s.partner_address, exc)
            finally:
                was = self.connected
                self.connected = False
                self.refill_sending = 0
                self.fail_pending(
                    UnavailableError(
                        f"lost the replication stream to partner {self._s.partner_address}"
                    )
                )
                self._window = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT)
                if was:
                    log.info("partner %s disconnected", self._s.partner_address)
                if isinstance(self.link, FramedLink):
                    self.link.close()
                self.link = None
                with contextlib.suppress(Exception):
                    await channel.close(grace=None)
            if self._s.running:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)

    async def _handshake(self, call: Any) -> Any:
        """Hello, and the pair-secret challenge-response when there is a secret
        (``pairauth``); the partner's answer to it (a welcome, or EOF)."""
        secret = self._s.secret
        ns = pairauth.new_nonce() if secret is not None else b""
        node_id, pair = self.broker.store_id, self._s.name
        await call.write(
            rpb.ReplicateRequest(
                hello=rpb.ReplicaHello(node_id=node_id, pair=pair, tcp=True, nonce=ns)
            )
        )
        try:
            resp = await call.read()
            kind = None if resp is grpc.aio.EOF else resp.WhichOneof("kind")
            if secret is None:
                if kind == "challenge":
                    raise ConnectionError(
                        "the partner requires the pair secret: give this broker the same --pair-secret-file"
                    )
                return resp
            if kind != "challenge":
                self._s.auth_failed(
                    self._s.partner_address,
                    "it answered without proving the pair secret (is --pair-secret-file set there?)",
                )
                raise ConnectionError("the partner did not prove the pair secret")
            c = resp.challenge
            if len(c.nonce) != pairauth.NONCE_BYTES or not pairauth.verify(
                secret, c.proof, pairauth.RECEIVER, pair, node_id, ns, c.nonce
            ):
                self._s.auth_failed(self._s.partner_address, "it failed the pair-secret proof")
                raise ConnectionError("the partner failed the pair-secret proof")
            await call.write(
                rpb.ReplicateRequest(
                    proof=rpb.ReplicaProof(
                        proof=pairauth.proof(
                            secret.current, pairauth.SENDER, pair, node_id, ns, c.nonce
                        )
                    )
                )
            )
            return await call.read()
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                if not self._auth_warned:
                    self._auth_warned = True
                    log.warning(
                        "partner %s refused this broker: %s", self._s.partner_address, exc.details()
                    )
                raise ConnectionError(f"partner refused us: {exc.details()}") from None
            raise

    async def _open_tcp_link(self, welcome: rpb.ReplicaWelcome) -> FramedLink | None:
        """Switch to the partner's plain TCP link if it offered one (None: stay on gRPC)."""
        if not welcome.tcp_port or len(welcome.tcp_token) != TOKEN_BYTES:
            return None
        host, _ = parse_hostport(self._s.partner_address)
        try:
            tls = self._s.security.tls
            ssl_ctx = None
            if tls is not None:
                if self._client_ssl is None:
                    self._client_ssl = tls.client_context()
                ssl_ctx = self._client_ssl
            r, w = await asyncio.wait_for(
                asyncio.open_connection(
                    host, welcome.tcp_port, ssl=ssl_ctx, server_hostname=host if ssl_ctx else None
                ),
                2.0,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning(
                "cannot open the TCP replication link to %s:%d (%s); replicating over gRPC",
                host,
                welcome.tcp_port,
                exc,
            )
            return None
        with contextlib.suppress(Exception):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        proof = b""
        if self._s.secret is not None:  # pairauth: answer the link's challenge
            nonce = await read_frame(r, pairauth.NONCE_BYTES, timeout=2.0)
            if not nonce:
                w.close()
                log.warning(
                    "the TCP replication link to %s:%d sent no pair-secret challenge; replicating over gRPC",
                    host,
                    welcome.tcp_port,
                )
                return None
            proof = pairauth.proof(
                self._s.secret.current, pairauth.LINK, self._s.name, welcome.tcp_token, nonce
            )
        link = FramedLink(
            r,
            w,
            rpb.ReplicateResponse.FromString,
            grpcopts.frame_limit(self.broker.options.max_msg_size),
        )
        await link.write_raw(welcome.tcp_token)
        if proof:
            await link.write_raw(proof)
        return link

    async def _on_welcome(self, call: ReplicaLink, welcome: rpb.ReplicaWelcome) -> None:
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
            self._s.move_fence()  # deliveries queued before this are of messages no longer ours
        # 2. Queue our un-replicated state: the catalog (every channel with its
        #    progress) first, then appends from what it holds to our head.
        self._appends = []
        self._traces = []
        self._confirms = []
        self._progress = {}
        self._futures = []
        self._deleted = []
        self.unacked_msgs = 0
        for h in welcome.holdings:
            if h.topic not in broker.topics or broker.topics[h.topic].ephemeral:
                self._deleted.append(h.topic)
        self.connected = True
        log.info("replicating to partner %s (%s)", self._s.partner_address, welcome.node_id)
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
                self.unacked_msgs += live_from - start
            for ch in topic.channels.values():
                if ch.durable:
                    floor, finished, states = ch.progress_snapshot()
                    catalog.append(
                        _progress_msg(
                            topic.name,
                            ch.name,
                            _Progress(
                                floor, finished, False, dict(states), created_ns=ch.meta.created_ns
                            ),
                        )
                    )
        # Our tombstones ride in the catalog too, ahead of the live channels
        # (pair/catalog.py): a channel deleted while the partner was away must not
        # come back with the partner's catalog, and one created again since must
        # replace the partner's old one.
        tombs = broker.ctx.tombstones if broker.ctx is not None else {}
        self._catalog = [
            rpb.ReplicaProgress(topic=t, channel=c, deleted=True, deleted_ns=ns)
            for (t, c), ns in tombs.items()
        ] + catalog
        self._catchup = catchup
        self._wake.set()

    async def _send_loop(self, call: ReplicaLink, reader: asyncio.Task[None]) -> None:
        # The catalog first: the partner creates every channel before it holds a
        # message of ours (and a new store may accept publishes only after it).
        catalog, self._catalog = self._catalog, []
        for i in range(0, max(1, len(catalog)), 1000):
            await self._send(
                call,
                reader,
                [],
                catalog[i : i + 1000],
                list(self._deleted),
                [],
                catalog=i + 1000 >= len(catalog),
            )
            self._deleted = []
        # Catch-up next (no futures: the producers were acknowledged long ago).
        remaining = sum(end - start for _, start, end in self._catchup)
        self.refill_sending = remaining
        refill_log = (
            RefillLog(
                f"re-filling partner {self._s.partner_address}", remaining, len(self._catchup)
            )
            if remaining
            else None
        )
        told_remaining: int | None = None  # catchup_remaining of the last catch-up batch
        for topic, start, end in self._catchup:
            pos = start
            while pos < end and not topic.deleted:
                if pos >= topic.committed_seq:
                    await asyncio.sleep(0.001)  # reserved before we connected, still committing
                    continue
                top = min(end, topic.committed_seq)
                got = topic.log.read(pos, top, CATCHUP_CHUNK, max_bytes=MAX_BATCH_BYTES)
                rows = got.rows
                if not rows and got.corrupt:
                    # Our record at ``pos`` failed its checksum: it is never sent. Wait
                    # for its repair (or quarantine, after which it reads as a gap).
                    topic.log.report_corrupt(got.corrupt[0])
                    await asyncio.sleep(0.05)
                    continue
                if not rows:
                    self.unacked_msgs = max(0, self.unacked_msgs - (top - pos))
                    remaining -= top - pos
                    pos = top  # a gap: failed appends
                    continue
                # Send contiguous runs (gaps are failed appends).
                run: list[bytes] = []
                run_crcs: list[int] = []
                run_start = rows[0][0]
                appends: list[rpb.ReplicaAppend] = []
                expect = run_start
                for (seq, rec), crc in zip(rows, got.crcs, strict=True):
                    if seq != expect and run:
                        appends.append(
                            rpb.ReplicaAppend(
                                topic=topic.name, first_seq=run_start, records=run, crcs=run_crcs
                            )
                        )
                        run = []
                        run_crcs = []
                        run_start = seq
                    run.append(rec)
                    run_crcs.append(crc)
                    expect = seq + 1
                if run:
                    appends.append(
                        rpb.ReplicaAppend(
                            topic=topic.name, first_seq=run_start, records=run, crcs=run_crcs
                        )
                    )
                # The lag counts seqs: a chunk settles the whole span it covers.
                span = rows[-1][0] + 1 - pos
                remaining = max(0, remaining - span)
                self.refill_sending = remaining
                await self._send(
                    call, reader, appends, [], [], [], span=span, catchup_remaining=remaining
                )
                told_remaining = remaining
                if refill_log is not None:
                    refill_log.add(len(rows), sum(len(r) for _, r in rows), remaining)
                pos = rows[-1][0] + 1
            remaining -= max(0, end - pos)  # a deleted topic: the rest is not sent
        if told_remaining:
            # The range ended in seqs that hold nothing (failed appends, the span a
            # restart skipped): nothing was sent for them, so say the re-fill is over,
            # or the partner shows it in progress forever.
            await self._send(call, reader, [], [], [], [], span=0, catchup_remaining=0)
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
                if self._hb_timer is None:
                    self._hb_timer = asyncio.get_running_loop().call_at(
                        self._last_send + self._s.heartbeat, self._heartbeat_due
                    )
                await self._wake.wait()
            if reader.done():
                reader.result()
                raise ConnectionError("ack stream ended")
            pending = self._appends
            confirms = _merge_ranges(self._confirms) if self._confirms else []
            progress = [_progress_msg(t, c, pr) for (t, c), pr in self._progress.items()]
            deleted = self._deleted
            futures = self._futures
            traces = self._traces
            if traces:
                self._traces = []
            self._appends, self._progress, self._deleted, self._futures = [], {}, [], []
            self._confirms = []
            frames = _split_appends(pending) if pending else [[]]
            # Everything but the appends rides on the last frame, whose ack (acks are
            # cumulative) resolves every future of this round. Until that frame is
            # in flight only this loop holds the futures: a session lost between
            # frames must fail them here, or their publishes wait forever, and with
            # them the topic's committed head (Topic._complete) and the re-fill.
            try:
                for frame in frames[:-1]:
                    await self._send(call, reader, _frame_msgs(frame), [], [], [])
                await self._send(
                    call,
                    reader,
                    _frame_msgs(frames[-1]),
                    progress,
                    deleted,
                    futures,
                    confirms,
                    traces=traces,
                )
            except BaseException:
                self._fail(
                    futures, f"lost the replication stream to partner {self._s.partner_address}"
                )
                raise

    async def _send(
        self,
        call: ReplicaLink,
        reader: asyncio.Task[None],
        appends: list[rpb.ReplicaAppend],
        progress: list[rpb.ReplicaProgress],
        deleted: list[str],
        futures: list[asyncio.Future[None]],
        confirms: list[rpb.ReplicaRange] | None = None,
        *,
        catalog: bool = False,
        span: int | None = None,
        catchup_remaining: int | None = None,
        traces: list[rpb.ReplicaTrace] | None = None,
    ) -> None:
        raise_hwm: list[Write] = []
        for a in appends:
            topic = self.broker.topics.get(a.topic)
            if topic is not None:
                w = topic.raise_hwm(a.first_seq + len(a.records), HWM_STEP)
                if w is not None:
                    raise_hwm.append(w)
        if raise_hwm:
            await self.broker.store.commit(*raise_hwm)
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
                # (the live loop fails the futures of the round)
                raise ConnectionError(
                    "replication session ended while waiting for acknowledgements"
                )
        else:
            await self._window.acquire()
        self._batch_id += 1
        self._last_send = asyncio.get_running_loop().time()
        pending = _Pending(self._batch_id, time.monotonic(), futures)
        self.in_flight.append(pending)
        pending.count = span if span is not None else sum(len(a.records) for a in appends)
        await call.write(
            rpb.ReplicateRequest(
                batch=rpb.ReplicaBatch(
                    batch_id=pending.batch_id,
                    appends=appends,
                    progress=progress,
                    deleted_topics=deleted,
                    committed=confirms,
                    catalog=catalog,
                    catchup=catchup_remaining is not None,
                    catchup_remaining=catchup_remaining or 0,
                    traces=traces,
                )
            )
        )

    async def _read_acks(self, call: ReplicaLink) -> None:
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                raise ConnectionError("partner closed the replication stream")
            if resp.WhichOneof("kind") != "ack":
                continue
            ack = resp.ack
            lease = ack.lease_ms / 1000.0 if ack.lease_ms else self._s.lease
            now = time.monotonic()
            sent_at = 0.0
            while self.in_flight and self.in_flight[0].batch_id <= ack.batch_id:
                p = self.in_flight.popleft()
                self._window.release()
                self.unacked_msgs = max(0, self.unacked_msgs - p.count)
                sent_at = p.sent_at
                for f in p.futures:
                    if not f.done():
                        f.set_result(None)
            if sent_at:
                for action in self._s.core.on_ack(sent_at, lease, now):
                    if action.kind == pc.LEFT_SOLO:
                        log.info(
                            "partner %s is back and acknowledging: leaving solo mode",
                            self._s.partner_address,
                        )
                    elif action.kind == pc.EPOCH:
                        self._s.new_epoch()
                    elif action.kind == pc.STALE_VERDICT:
                        log.info(
                            "partner %s acknowledged after gossip declared it dead: "
                            "that verdict is set aside until gossip speaks again "
                            "(%.1f s at most)",
                            self._s.partner_address,
                            self._s.core.stale_grace,
                        )
            self.broker.on_lease_renewed()
            self._s.kick_fence_waiters()
