"""The inbound side of the pair: the partner's sessions to this broker.

The partner opens a session with a hello on the ``Replicate`` gRPC stream
(``Receiver.Replicate``); the answer (welcome) tells it what we hold of
its messages (``StandbyStore.holdings``) and offers our TCP link (``link.py``,
``start_tcp``) with a one-time token. Each batch that arrives, over either,
is checked (``validate_batch``), applied to the standby copies, and
acknowledged once its writes are fsynced; every ack grants the partner a
lease (we promise not to take over before now + lease). Channels the
partner reports are created here too before the ack (``_adopt_channels``),
so a channel exists on both brokers before a publish to it is acknowledged.
A takeover fences these sessions (``takeover.SessionFence``); a partner that
returns with a new identity has its old copies taken over first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import grpc

from pairq import grpcopts
from pairq.broker.pair import catalog
from pairq.broker.pair import core as pc
from pairq.broker.pair.link import (
    TOKEN_BYTES,
    FramedLink,
    LinkError,
    ReplicaLink,
    read_frame,
    read_token,
)
from pairq.broker.pair.refill import RefillLog
from pairq.broker.pair.standby import validate_batch
from pairq.errors import PairqError
from pairq.options import parse_hostport
from pairq.security import pairauth
from pairq.v1 import replication_pb2 as rpb

if TYPE_CHECKING:
    from pairq.broker.pair.state import PairState
    from pairq.broker.pair.takeover import Takeover

log = logging.getLogger("pairq.pair")


async def _end(context: Any, link: ReplicaLink, code: grpc.StatusCode, message: str) -> None:
    """End an inbound session: close the TCP link (if any), then abort the stream."""
    if isinstance(link, FramedLink):
        link.close()
    await context.abort(code, message)


def _end_spans(spans: list[Any], fut: asyncio.Future[Any]) -> None:
    """End replicate spans when the batch's commit is done (an error if it failed)."""
    exc = None if fut.cancelled() else fut.exception()
    for span in spans:
        if exc is not None:
            span.record_exception(exc)
        span.end()


class Receiver:
    """Serves the partner's sessions to this broker (the ``Replicate`` handler and
    the TCP link listener)."""

    def __init__(self, state: PairState, takeover: Takeover) -> None:
        self._s = state
        self.broker = state.broker
        self._takeover = takeover
        self._sessions = takeover.sessions
        self._tcp_server: asyncio.Server | None = None
        self.tcp_port = 0
        self._tcp_waiters: dict[bytes, asyncio.Future[FramedLink]] = {}
        # Inbound sessions from the partner now being served: normally one, but an old
        # one on a half-dead connection may end after its successor began.
        self.live = 0
        self._closing = asyncio.Event()  # set by close(): inbound streams end
        self.refill_receiving = 0  # seqs of the partner's log it says are still coming

    @property
    def links(self) -> set[FramedLink]:
        """The inbound sessions' TCP links (a takeover or a new hello closes them)."""
        return self._sessions.links

    def close(self) -> None:
        """End every inbound session now (the broker is shutting down)."""
        self._closing.set()

    def stop_listening(self) -> None:
        if self._tcp_server is not None:
            self._tcp_server.close()
            self._tcp_server = None

    async def Replicate(self, request_iterator: Any, context: Any) -> None:
        """One session of the partner's (the ``Replicate`` RPC), until it ends."""
        if not self._s.running:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "broker is shutting down")
            return
        hello = await context.read()
        if hello is grpc.aio.EOF or hello.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "first message must be hello")
            return
        h = hello.hello
        # The pair secret first: a peer that cannot prove it learns nothing and
        # changes nothing (no takeover, no reset, no store write).
        if not await self._authenticate(context, h):
            return
        if h.pair != self._s.name:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"pair name mismatch: this broker is in pair {self._s.name!r}, the peer in {h.pair!r}",
            )
            return
        await self._takeover.wait()
        if self._s.standby.partner_id and self._s.standby.partner_id != h.node_id:
            # A new identity (e.g. the partner's disk was wiped): whatever we hold of
            # the old one is ours now, then we start afresh for the new one.
            if self._s.standby.count():
                log.warning(
                    "partner came back as %s (was %s): taking over the old standby copies",
                    h.node_id,
                    self._s.standby.partner_id,
                )
                for action in self._s.core.on_new_identity(time.monotonic()):
                    if action.kind == pc.TAKE_OVER:
                        await self._takeover.run(action.reason)
                await self._takeover.wait()
            await self._reset_standby(h.node_id)
        elif not self._s.standby.partner_id:
            await self._reset_standby(h.node_id)
        # The partner has one outbound session at a time: a hello means any older
        # inbound link is dead (a partition, a reset its side saw first). Closed
        # before the welcome goes out: after it, this session's own TCP link may
        # already be among them (the partner connects as soon as it reads the
        # welcome), and closing it ended the session it had just begun.
        for old in list(self.links):
            old.close()
        token = b""
        tcp_fut: asyncio.Future[FramedLink] | None = None
        if h.tcp and self._tcp_server is not None:
            token = os.urandom(TOKEN_BYTES)
            tcp_fut = asyncio.get_running_loop().create_future()
            self._tcp_waiters[token] = tcp_fut
        await context.write(
            rpb.ReplicateResponse(
                welcome=rpb.ReplicaWelcome(
                    node_id=self.broker.store_id,
                    holdings=self._s.standby.holdings(),
                    tcp_port=self.tcp_port if tcp_fut is not None else 0,
                    tcp_token=token,
                )
            )
        )
        # Whatever the last stream left unconfirmed is of unknown fate (the partner
        # may have crashed before committing it): never count it as stored.
        self._s.standby.forget_unconfirmed()
        self.live += 1
        self._s.core.on_heard(time.monotonic())
        # The link: the partner's TCP connection if it makes one (link.py), else
        # this stream. Its first message over either decides.
        link: ReplicaLink = context
        first: Any = None
        idle_read: asyncio.Future[Any] | None = None  # the gRPC stream, idle while on TCP
        if tcp_fut is not None:
            idle_read = asyncio.ensure_future(context.read())
            try:
                await asyncio.wait(
                    {tcp_fut, idle_read},
                    timeout=max(2.0, 3 * self._s.lease),
                    return_when=asyncio.FIRST_COMPLETED,
                )
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
            if not isinstance(link, FramedLink) and first is None:  # neither came
                self.live -= 1
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "no replication traffic after welcome"
                )
                return
        # On shutdown, end the partner's stream at once (it reconnects to us or
        # takes over) instead of holding the server open for the whole grace.
        watcher = asyncio.ensure_future(self._abort_on_close(context, link))
        acks: asyncio.Queue[tuple[int, asyncio.Future[Any]] | None] = asyncio.Queue()
        # A takeover ends this stream: the partner must reconnect and learn what
        # was taken over before it may deliver again.
        generation = self._sessions.generation
        writer = asyncio.create_task(self._write_acks(context, link, acks, generation))
        tcp_acks = (
            functools.partial(self._ack_now, context, link, generation, acks)
            if isinstance(link, FramedLink)
            else None
        )
        if isinstance(link, FramedLink):
            link.on_progress = functools.partial(self._heard_part, generation)
        refill: RefillLog | None = None
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
                if self._sessions.fenced(generation):
                    break
                self._s.core.on_heard(time.monotonic())
                if req.WhichOneof("kind") != "batch":
                    continue
                batch = req.batch  # read once: each protobuf field read builds a wrapper
                problem = validate_batch(batch, self.broker.options.max_msg_size)
                if problem:
                    log.error("rejecting a replication batch from %s: %s", h.node_id, problem)
                    await _end(
                        context,
                        link,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"bad replication batch: {problem}",
                    )
                    return
                # Tracing: one replicate span for the batch, until our commit is done.
                spans = self._replicate_spans(batch) if batch.traces else None
                ops, confirmed = self._s.standby.apply_batch(batch)
                if batch.catchup:
                    refill = self._note_refill(refill, batch)
                if batch.progress or batch.catalog:
                    # Channels are pair state: adopt the partner's before acknowledging.
                    await self._adopt_channels(batch)
                fut = self.broker.store.commit(*ops) if ops else self.broker.store.barrier()
                self._s.standby.confirm_after(fut, confirmed)
                if spans:
                    fut.add_done_callback(functools.partial(_end_spans, spans))
                if tcp_acks is not None:
                    # On TCP the ack goes out from the commit's callback: no task
                    # switch between our fsync and the partner hearing of it.
                    fut.add_done_callback(functools.partial(tcp_acks, batch.batch_id))
                else:
                    acks.put_nowait((batch.batch_id, fut))
                if writer.done():
                    break
        finally:
            watcher.cancel()
            acks.put_nowait(None)
            with contextlib.suppress(BaseException):
                await writer
            if isinstance(link, FramedLink):
                link.close()
                self.links.discard(link)
            if idle_read is not None:
                idle_read.cancel()
                with contextlib.suppress(BaseException):
                    await idle_read
            self.live -= 1
            self.refill_receiving = 0
            if refill is not None and refill.remaining:
                refill.stopped("the partner's session ended")

    def _heard_part(self, generation: int) -> None:
        """A chunk of a big frame arrived (``FramedLink.on_progress``): the partner is
        heard, as for a whole frame, unless a takeover fenced this session."""
        if not self._sessions.fenced(generation):
            self._s.core.on_heard(time.monotonic())

    async def _authenticate(self, context: Any, h: rpb.ReplicaHello) -> bool:
        """The challenge-response of ``pairauth`` on the gRPC stream (True: proven, or
        no secret on either side). A failure is counted, logged and refused."""
        secret = self._s.secret
        peer = str(context.peer())
        if secret is None:
            if h.nonce:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this broker has no --pair-secret-file but the peer has one: give both the same secret",
                )
                return False
            return True
        if len(h.nonce) != pairauth.NONCE_BYTES:
            self._s.auth_failed(peer, "its hello carries no pair-secret challenge")
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "this pair requires the pair secret: start the partner with the same --pair-secret-file",
            )
            return False
        nr = pairauth.new_nonce()
        await context.write(
            rpb.ReplicateResponse(
                challenge=rpb.ReplicaChallenge(
                    nonce=nr,
                    proof=pairauth.proof(
                        secret.current, pairauth.RECEIVER, h.pair, h.node_id, h.nonce, nr
                    ),
                )
            )
        )
        try:
            msg = await asyncio.wait_for(context.read(), timeout=max(2.0, 3 * self._s.lease))
        except TimeoutError:
            msg = grpc.aio.EOF
        if (
            msg is grpc.aio.EOF
            or msg.WhichOneof("kind") != "proof"
            or not pairauth.verify(
                secret, msg.proof.proof, pairauth.SENDER, h.pair, h.node_id, h.nonce, nr
            )
        ):
            self._s.auth_failed(
                peer, f"it failed the pair-secret proof (claimed node {h.node_id!r})"
            )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "pair secret proof failed")
            return False
        return True

    async def _abort_on_close(self, context: Any, link: ReplicaLink) -> None:
        await self._closing.wait()
        with contextlib.suppress(BaseException):
            await _end(context, link, grpc.StatusCode.UNAVAILABLE, "broker is shutting down")

    async def _write_acks(
        self,
        context: Any,
        link: ReplicaLink,
        acks: asyncio.Queue[tuple[int, asyncio.Future[Any]] | None],
        generation: int,
    ) -> None:
        while True:
            item = await acks.get()
            if item is None:
                return
            bid, fut = item
            try:
                await fut
            except Exception as exc:
                log.error("cannot store the partner's batch: %s", exc)
                await _end(
                    context, link, grpc.StatusCode.RESOURCE_EXHAUSTED, f"partner store: {exc}"
                )
                return
            if self._sessions.fenced(generation):
                await _end(
                    context,
                    link,
                    grpc.StatusCode.UNAVAILABLE,
                    "this broker took over your messages; reconnect to re-sync",
                )
                return
            await link.write(self._grant_ack(bid))

    def _replicate_spans(self, batch: rpb.ReplicaBatch) -> list[Any]:
        """Open ONE ``pairq replicate`` span for ``batch``, in the trace of its first
        traced publish and linked to the others (none while this broker does not
        record spans)."""
        tracer = self.broker.tracer
        if tracer is None:
            return []
        from pairq.telemetry import replicate_span

        records = sum(len(a.records) for a in batch.appends)
        return [replicate_span(tracer, batch.traces, records, self.broker.node_id)]

    def _note_refill(self, refill: RefillLog | None, batch: rpb.ReplicaBatch) -> RefillLog | None:
        """Log and expose the re-fill the partner is sending us (its catch-up batches)."""
        n = sum(len(a.records) for a in batch.appends)
        if refill is None:
            refill = RefillLog(
                f"being re-filled by partner {self._s.partner_address}",
                batch.catchup_remaining + n,
                0,
            )
        refill.add(
            n, sum(len(r) for a in batch.appends for r in a.records), batch.catchup_remaining
        )
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
        ctx = broker.ctx
        assert ctx is not None  # sessions are served once the broker has started
        tombstones = ctx.tombstones
        for p in batch.progress:
            topic = broker.topics.get(p.topic)
            if p.deleted:  # a live deletion, or a tombstone of the partner's catalog
                ch = topic.channels.get(p.channel) if topic is not None else None
                if ch is not None and topic is not None and ch.durable:
                    if catalog.delete(ch.meta.created_ns, p.deleted_ns):
                        log.info(
                            "partner deleted channel %s/%s: deleting it here too",
                            p.topic,
                            p.channel,
                        )
                        topic.delete_channel(p.channel, p.deleted_ns)
                    continue  # created again after that deletion: it stays
                keep = catalog.keep(tombstones.get((p.topic, p.channel)), p.deleted_ns)
                if keep is not None:
                    ctx.tombstone(p.topic, p.channel, keep)
                continue
            if topic is None or p.channel not in topic.channels:
                if not catalog.adopt(p.created_ns, tombstones.get((p.topic, p.channel))):
                    log.info(
                        "partner has channel %s/%s, deleted here since: not recreating it "
                        "(our catalog tells the partner to delete it)",
                        p.topic,
                        p.channel,
                    )
                    continue
                try:
                    topic = await broker.get_topic(p.topic, from_partner=True)
                    await topic.get_channel(p.channel, from_partner=True, created_ns=p.created_ns)
                except PairqError as exc:  # a limit (--max-topics/--max-channels) here
                    log.error(
                        "cannot create the partner's channel %s/%s here: %s",
                        p.topic,
                        p.channel,
                        exc,
                    )
        if batch.catalog and not self._s.core.catalog_ready:
            await broker.store.commit(broker.store.meta.put_catalog_ready())
            self._s.core.on_catalog(time.monotonic())
            self._s.catalog_event.set()
            log.info(
                "received the pair's catalog from partner %s (%d channel(s)): accepting publishes",
                self._s.partner_address,
                len(batch.progress),
            )

    def _grant_ack(self, bid: int) -> rpb.ReplicateResponse:
        """The ack of batch ``bid``, granting the lease from now: we promise not to take
        over before now + lease."""
        self._s.core.on_grant(time.monotonic())
        return rpb.ReplicateResponse(
            ack=rpb.ReplicaAck(batch_id=bid, lease_ms=int(self._s.lease * 1000))
        )

    def _ack_now(
        self,
        context: Any,
        link: FramedLink,
        generation: int,
        acks: asyncio.Queue[tuple[int, asyncio.Future[Any]] | None],
        bid: int,
        fut: asyncio.Future[Any],
    ) -> None:
        """``_write_acks`` for the TCP link, run as the commit's done-callback (commits
        complete in order, so acks go out in order); failures go to the writer task."""
        failed = fut.cancelled() or fut.exception() is not None  # (retrieved, also when closed)
        if link.closed:
            return
        if failed or self._sessions.fenced(generation):
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
        tls = self._s.security.tls
        self._tcp_server = await asyncio.start_server(
            self._on_tcp, host, port, ssl=tls.server_context() if tls is not None else None
        )
        self.tcp_port = self._tcp_server.sockets[0].getsockname()[1]
        log.info("replication link listening on %s:%d", host, self.tcp_port)

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        secret = self._s.secret
        nonce = b""
        if secret is not None:  # pairauth: a fresh challenge before the token
            nonce = pairauth.new_nonce()
            writer.write(len(nonce).to_bytes(4, "big") + nonce)
        token = await read_token(reader, timeout=5.0)
        if secret is not None and token in self._tcp_waiters:
            got = await read_frame(reader, pairauth.PROOF_BYTES, timeout=5.0)
            if not pairauth.verify(secret, got, pairauth.LINK, self._s.name, token, nonce):
                peer = writer.get_extra_info("peername")
                self._s.auth_failed(f"tcp:{peer}", "its TCP link failed the pair-secret proof")
                writer.close()
                return
        fut = self._tcp_waiters.pop(token, None) if token else None
        if fut is None or fut.done():
            writer.close()  # not a session of ours: garbage, a stale or a reused token
            return
        with contextlib.suppress(Exception):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        link = FramedLink(
            reader,
            writer,
            rpb.ReplicateRequest.FromString,
            grpcopts.frame_limit(self.broker.options.max_msg_size),
        )
        self.links.add(link)
        fut.set_result(link)

    async def _reset_standby(self, node_id: str) -> None:
        copies = self.broker.store.standby
        writes = [copies.set_partner(node_id)]
        if self._s.standby.partner_id and self._s.standby.partner_id != node_id:
            writes.append(copies.drop_all())
            self._s.standby.topics.clear()
        self._s.standby.partner_id = node_id
        await self.broker.store.commit(*writes)
