"""The NSQ TCP protocol V2 server (``--nsq-tcp-address``): one task per connection.

``protocol.py`` decides everything about the protocol; this module owns the
sockets, the clock and the tasks, and maps commands to the broker:

* **Publishing.** PUB, DPUB (one message) and MPUB (one batch) go through the
  broker's ``Publisher``, exactly as a gRPC publish: the same validation,
  --max-publish-rate, --auth-file publish permission, pair durability and
  --min-copies. ``OK`` is sent only once the publish is acknowledged (durable).
  A client may pipeline commands (pynsq's Writer does): up to
  ``MAX_PENDING`` publishes (``MAX_PENDING_BYTES``) of one connection run at
  once, and their answers are written in the order of the commands; beyond
  that, or with ``MAX_PENDING`` answers unwritten (a client that does not read
  them), the connection is not read (TCP holds the client back). Consecutive PUBs to one topic read before
  the first of them starts are stored as one batch (one append, one fsync),
  each still answered OK in its place. A failed publish is fatal, as in nsqd.
* **Consuming.** SUB makes the connection a channel subscriber like a gRPC
  Subscribe stream, through the same pieces (``BrokerService.admit / joined /
  left / grant / fence_allows``): --max-clients, RDY within --max-rdy-count
  and the broker's --max-rdy-total (a cut grant is not an NSQ error: the
  client simply gets less), the delivery fence re-checked right before the
  bytes leave (a broker whose lease lapsed never delivers), msg timeout,
  attempts, deferral and dead letters from the channel. The channel encodes
  deliveries with this connection's encoder (``Subscriber.encode``): NSQ
  message frames straight from the stored record (``wire.body_and_timestamp``)
  with the NSQ id of ``protocol.nsq_id``, no protobuf in between. Memory per
  connection is bounded as for gRPC: queued deliveries count against
  --max-subscriber-buffer-bytes (then the channel holds the subscriber) and
  the writer waits for the socket to drain before taking more.
* **TLS.** With --tls-cert, an IDENTIFY asking for ``tls_v1`` is answered, the
  connection upgraded in place (``StreamWriter.start_tls``, the broker's
  certificate and CA, reloaded on SIGHUP; a client certificate required as
  --tls-require-client-cert says) and ``OK`` sent over TLS; the session then
  requires TLS for every other command (``protocol.py``). Deflate (zlib, raw)
  follows, inside TLS when both: every write is compressed and sync-flushed,
  and compressed input is inflated at most ``READ_SIZE`` at a time.
* **Liveness.** Every connection with heartbeats on gets ``_heartbeat_`` each
  interval; a client that sent nothing for two intervals is disconnected (its
  in-flight messages requeued at once), whether or not it reads its socket.
* **Shutdown.** ``stop`` stops accepting, answers what was accepted, and
  closes every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import zlib
from typing import TYPE_CHECKING, Any, Protocol

from pairq import __version__
from pairq.broker import wire
from pairq.broker.nsq import protocol as p
from pairq.broker.subscriber import Subscriber, Terminate
from pairq.errors import PairqError
from pairq.options import parse_hostport
from pairq.security import auth

if TYPE_CHECKING:
    from pairq.broker.channel import Channel
    from pairq.broker.channel_core import Entry
    from pairq.broker.options import BrokerOptions
    from pairq.broker.publishing import Publisher
    from pairq.broker.service import BrokerService
    from pairq.broker.topic import Topic
    from pairq.security.server import ServerSecurity

log = logging.getLogger("pairq.nsq")

# Publishes of one connection being served (accepted, not yet answered): at most this
# many commands and this many body bytes, and at most this many answers waiting to be
# written; then the connection is not read until some are answered.
MAX_PENDING = 1024
MAX_PENDING_BYTES = 8 * 1024 * 1024
READ_SIZE = 256 * 1024
STOP_GRACE = 5.0


class NsqHost(Protocol):
    """What the server asks of the broker (``Broker``) besides publishing and the
    subscription bookkeeping (``BrokerService``)."""

    options: BrokerOptions
    security: ServerSecurity

    def check_serving(self) -> None: ...

    async def get_topic(self, name: str, *, create: bool = True) -> Topic: ...


class NsqMessage:
    """A message as ``Publisher`` takes it: NSQ's carry a body and maybe a delay."""

    __slots__ = ("body", "defer_ms")

    id = b""  # broker-assigned
    headers = None

    def __init__(self, body: bytes, defer_ms: int = 0) -> None:
        self.body = body
        self.defer_ms = defer_ms


class Upgrade:
    """Queued as an answer: write ``frame`` (IDENTIFY's, saying tls_v1), upgrade the
    connection to TLS, send OK over it, then resolve ``done``."""

    __slots__ = ("done", "frame")

    def __init__(self, frame: bytes, done: asyncio.Future[None]) -> None:
        self.frame = frame
        self.done = done


class PubGroup:
    """PUBs of one connection published as one batch (``Connection._publish_task``)."""

    __slots__ = ("bodies", "nbytes", "started", "task", "topic")

    def __init__(self, topic: str, body: bytes) -> None:
        self.topic = topic
        self.bodies = [body]
        self.nbytes = len(body)
        self.started = False
        self.task: asyncio.Task[bytes]


class NsqTcpServer:
    def __init__(self, broker: NsqHost, service: BrokerService, publisher: Publisher) -> None:
        self.broker = broker
        self.service = service
        self.publisher = publisher
        opts = broker.options
        self.config = p.Config(
            max_rdy_count=opts.max_rdy_count,
            msg_timeout_ms=opts.msg_timeout_ms,
            max_msg_timeout_ms=opts.max_msg_timeout_ms,
            heartbeat_interval_ms=opts.heartbeat_interval_ms,
            max_defer_ms=opts.max_defer_ms,
            auth_required=broker.security.auth is not None,
            version=f"pairq-{__version__}",
            tls=broker.security.tls is not None,
        )
        self.ssl: ssl.SSLContext | None = None
        tls = broker.security.tls
        if tls is not None:
            self.ssl = tls.server_context()  # reloaded with the files on SIGHUP
            self.ssl.verify_mode = (
                ssl.CERT_REQUIRED
                if tls.require_client_cert
                else (ssl.CERT_OPTIONAL if tls.ca else ssl.CERT_NONE)
            )
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self.address = ""
        self.port = 0

    async def start(self) -> None:
        opts = self.broker.options
        addr = opts.nsq_tcp_address
        host, port = parse_hostport(addr, what="--nsq-tcp-address")
        try:
            self._server = await asyncio.start_server(self._serve, host, port, limit=READ_SIZE)
        except OSError as exc:
            raise OSError(
                f"cannot listen on --nsq-tcp-address {addr}: {exc.strerror or exc}"
            ) from exc
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.address = f"{host}:{self.port}"
        log.info("NSQ TCP protocol V2 on %s", self.address)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        conns = list(self.connections)
        for c in conns:
            c.shutdown()
        tasks = {c.task: c for c in conns if c.task is not None}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=STOP_GRACE)
            for t in late:
                tasks[t].abort("broker stopping")
            if late:
                await asyncio.wait(late, timeout=1.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(self, reader, writer)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)


class Connection:
    """One client connection (see the module docstring)."""

    def __init__(
        self, server: NsqTcpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.service = server.service
        self.reader = reader
        self.writer = writer
        opts = server.broker.options
        self.session = p.Session(server.config)
        self.decoder = p.Decoder(
            max_msg_size=opts.max_msg_size,
            max_batch=opts.max_batch,
            max_batch_bytes=opts.max_batch_bytes,
        )
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        # Answers in command order: a frame, or (a publish's task whose result is one,
        # its body bytes).
        self.answers: asyncio.Queue[bytes | tuple[asyncio.Task[bytes], int] | Upgrade | None] = (
            asyncio.Queue()
        )
        # SUB's OK is written before any message (deliveries wait for it)
        self.sub_answered = asyncio.Event()
        self.identified = asyncio.Event()  # wakes the heartbeat task for the new interval
        self._sub_ok = p.frame(p.FRAME_RESPONSE, p.OK)  # SUB's OK (the same bytes, its own object)
        self.pending = 0  # publishes accepted and not answered yet
        self.pending_bytes = 0  # ... and their body bytes
        self.room = asyncio.Event()  # set while under both limits
        self.room.set()
        self.last_seen = time.monotonic()
        self.principal: auth.Principal | None = None
        self.sub: Subscriber | None = None
        self.channel: Channel | None = None
        self.task: asyncio.Task[Any] | None = None
        self.closed = False
        self.answering = False  # closing after the queued answers are written
        self._reading: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._group: PubGroup | None = None  # PUBs still joining one batch
        self._deflate: Any = None  # zlib compressor / decompressor once deflate is on
        self._inflate: Any = None

    # ---------------------------------------------------------- lifecycle
    async def run(self) -> None:
        self.task = asyncio.current_task()
        answers = asyncio.create_task(self._write_answers())
        self._tasks.append(asyncio.create_task(self._heartbeats()))
        self._reading = asyncio.create_task(self._read())
        try:
            await asyncio.wait({answers, self._reading}, return_when=asyncio.FIRST_COMPLETED)
            if not answers.done() and self.answering:
                # a fatal error or shutdown: what was accepted is answered, then the error
                await asyncio.wait({answers}, timeout=STOP_GRACE)
            # else the client closed (or the read failed): nothing more to answer to
        finally:
            self.closed = True
            for t in (self._reading, answers, *self._tasks):
                t.cancel()
            if self.sub is not None and self.channel is not None:
                self.service.left(self.sub, self.channel)
            with contextlib.suppress(Exception):
                self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    def shutdown(self) -> None:
        """Broker stopping: read no more; answer what was accepted, then close."""
        self.answering = True
        if self._reading is not None:
            self._reading.cancel()
        self.answers.put_nowait(None)
        if self.sub is not None:
            self.sub.finish_stream()

    def abort(self, why: str) -> None:
        """Close at once, whatever is unwritten (a client that stopped reading)."""
        log.info("NSQ client %s (%s): %s", self.session.client_id[:64], self.peer, why)
        self.closed = True
        self.writer.transport.abort()
        if self._reading is not None:
            self._reading.cancel()  # ``run`` then closes (its own task is never cancelled:
            # asyncio's server logs a cancelled connection task as an error)

    def _fatal(self, err: p.ProtocolError) -> None:
        log.info("NSQ client %s (%s): %s", self.session.client_id[:64], self.peer, err)
        self.answering = True
        self.answers.put_nowait(err.frame())
        self.answers.put_nowait(None)

    def _send(self, data: bytes) -> None:
        """Write frames (deflated once negotiated: every write is one sync-flushed block,
        so the compressed stream follows the order of the writes)."""
        c = self._deflate
        if c is not None:
            data = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
        self.writer.write(data)

    # ---------------------------------------------------------- reading
    async def _read(self) -> None:
        try:
            await self._read_commands()
        except Exception as exc:  # a bug: end this connection, not the broker
            log.exception("NSQ connection %s failed", self.peer)
            self._fatal(p.ProtocolError("E_INVALID", f"internal error ({exc}); reconnect"))

    async def _read_commands(self) -> None:
        decoder = self.decoder
        while True:
            try:
                data = await self.reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                return
            if not data:
                return
            self.last_seen = time.monotonic()
            if self.sub is not None:
                self.sub.last_seen = self.last_seen
            while True:
                # Deflated input is taken a piece of at most READ_SIZE at a time: a small
                # compressed read may stand for far more.
                inflate = self._inflate
                if inflate is None:
                    piece, data = data, b""
                else:
                    try:
                        piece = inflate.decompress(data, READ_SIZE)
                    except zlib.error as exc:
                        self._fatal(p.ProtocolError("E_BAD_BODY", f"bad deflate stream: {exc}"))
                        return
                    data = inflate.unconsumed_tail
                if not piece and not data:
                    break
                decoder.feed(piece)
                while True:
                    try:
                        cmd = decoder.next_command()
                        if cmd is None:
                            break
                        await self._handle(cmd)
                    except p.ProtocolError as err:
                        if err.fatal:
                            self._fatal(err)
                            return
                        self.answers.put_nowait(err.frame())

    def _has_room(self) -> bool:
        return (
            self.pending < MAX_PENDING
            and self.pending_bytes < MAX_PENDING_BYTES
            and self.answers.qsize() < MAX_PENDING
        )

    async def _handle(self, cmd: p.Command) -> None:
        # A client that does not read its answers is not read either (TCP holds it back)
        while not self._has_room():
            self.room.clear()
            await self.room.wait()
        if not isinstance(cmd, p.Pub):
            self._group = None  # a PUB after this one starts a batch of its own
        out = self.session.accept(cmd)
        if isinstance(cmd, p.Identify):
            self.identified.set()
            if self.session.upgrading or self.session.deflating:
                assert isinstance(out, bytes)
                await self._upgrade(out)
                return
        if isinstance(out, bytes):
            if out:
                self.answers.put_nowait(out)
            return
        if isinstance(out, p.Resolved):
            self._resolved(out)
        elif isinstance(out, p.Pub | p.Dpub | p.Mpub):
            nbytes = sum(map(len, out.bodies)) if isinstance(out, p.Mpub) else len(out.body)
            self.pending += 1
            self.pending_bytes += nbytes
            self.answers.put_nowait((self._publish_task(out), nbytes))
        elif isinstance(out, p.Rdy):
            assert self.sub is not None and self.channel is not None
            granted, cut = self.service.grant(self.sub, out.count)
            if cut:
                log.debug("NSQ client %s: %s", self.peer, cut)
            self.channel.set_ready(self.sub.cid, granted)
        elif isinstance(out, p.Sub):
            await self._subscribe(out)
        elif isinstance(out, p.Auth):
            self._auth(out.secret)

    async def _upgrade(self, answer: bytes) -> None:
        """IDENTIFY said tls_v1 or deflate: answer, then TLS, then deflate (nothing is
        read meanwhile)."""
        if self.decoder.buffered:
            raise p.ProtocolError(
                "E_INVALID", "bytes after IDENTIFY (tls_v1, deflate) before the upgrade"
            )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.answers.put_nowait(Upgrade(answer, done))
        await done

    def _certified(self) -> None:
        """With --auth-file: the principal of the verified client certificate, if any."""
        authn = self.server.broker.security.auth
        cert = self.writer.get_extra_info("peercert")
        if authn is None or not cert:
            return
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                principal = authn.table.by_cn.get(value) if key == "commonName" else None
                if principal is not None:
                    self.principal = principal
                    self.session.certified(principal.name, principal.allows)
                    return

    def _auth(self, secret: bytes) -> None:
        authn = self.server.broker.security.auth
        assert authn is not None  # the session refuses AUTH without --auth-file
        principal = authn.table.by_token.get(auth.hash_token(secret.decode("utf-8", "replace")))
        count = 0
        if principal is not None:
            count = len(principal.publish) + len(principal.subscribe) + len(principal.admin)
        frame = self.session.authenticated(
            principal.name if principal else "",
            principal.allows if principal else None,
            count,
        )
        self.principal = principal
        self.answers.put_nowait(frame)

    # ---------------------------------------------------------- publishing
    def _publish_task(self, cmd: p.Pub | p.Dpub | p.Mpub) -> asyncio.Task[bytes]:
        """The task whose result answers ``cmd``. Consecutive PUBs to one topic that
        arrive before the first of them has started (a pipelining client's) are
        published as one batch, within --max-batch and --max-batch-bytes: one durable
        append for all of them, each answered OK (in its place) once it is done."""
        if not isinstance(cmd, p.Pub):
            return asyncio.create_task(self._publish(cmd))
        opts = self.server.broker.options
        g = self._group
        if (
            g is not None
            and not g.started
            and g.topic == cmd.topic
            and len(g.bodies) < opts.max_batch
            and g.nbytes + len(cmd.body) <= opts.max_batch_bytes
        ):
            g.bodies.append(cmd.body)
            g.nbytes += len(cmd.body)
            return g.task
        g = self._group = PubGroup(cmd.topic, cmd.body)
        g.task = asyncio.create_task(self._publish_group(g))
        return g.task

    async def _publish_group(self, g: PubGroup) -> bytes:
        g.started = True
        if self._group is g:
            self._group = None
        return await self._publish(p.Mpub(g.topic, g.bodies), name="PUB")

    async def _publish(self, cmd: p.Pub | p.Dpub | p.Mpub, name: str = "") -> bytes:
        name = name or type(cmd).__name__.upper()
        auth.CURRENT.set(self.principal)  # this task's context: check_publish sees it
        try:
            publisher = self.server.publisher
            if isinstance(cmd, p.Mpub):
                self.service.check_rate(self.peer, len(cmd.bodies))
                await publisher.publish_messages(cmd.topic, [NsqMessage(b) for b in cmd.bodies])
            else:
                self.service.check_rate(self.peer, 1)
                defer = cmd.defer_ms if isinstance(cmd, p.Dpub) else 0
                await publisher.publish_one(cmd.topic, NsqMessage(cmd.body, defer))
            return p.OK_FRAME
        except PairqError as exc:
            raise p.ProtocolError(f"E_{name}_FAILED", f"{name} failed {exc.message}") from None
        except Exception as exc:
            log.exception("NSQ %s failed", name)
            raise p.ProtocolError(f"E_{name}_FAILED", f"{name} failed: internal error") from exc

    async def _write_answers(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):  # the client is gone
            await self._write_answers_until_closed()

    async def _write_answers_until_closed(self) -> None:
        writer = self.writer
        answers = self.answers
        while True:
            if answers.empty():
                await writer.drain()  # once per run of ready answers, not per answer
            item = await answers.get()
            if item is None:
                await writer.drain()
                return
            if self._has_room():
                self.room.set()
            if isinstance(item, Upgrade):
                self._send(item.frame)
                if self.session.upgrading:
                    ctx = self.server.ssl
                    assert ctx is not None  # the session offers tls_v1 only with one
                    try:
                        await writer.start_tls(ctx, ssl_handshake_timeout=10.0)
                    except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
                        item.done.set_exception(
                            p.ProtocolError("E_IDENTIFY_FAILED", f"TLS handshake failed: {exc}")
                        )
                        return
                    self._send(self.session.upgraded())
                    self._certified()
                if self.session.deflating:
                    level = self.session.deflating
                    self._deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
                    self._inflate = zlib.decompressobj(-15)
                    self._send(self.session.deflated())
                item.done.set_result(None)
                continue
            if isinstance(item, tuple):
                task, nbytes = item
                try:
                    data = await task
                except p.ProtocolError as err:
                    self._send(err.frame())
                    await writer.drain()
                    return  # fatal: the connection closes
                finally:
                    self.pending -= 1
                    self.pending_bytes -= nbytes
                    if self._has_room():
                        self.room.set()
            else:
                data = item
            self._send(data)
            if data is self._sub_ok:
                await writer.drain()
                self.sub_answered.set()

    # ---------------------------------------------------------- consuming
    async def _subscribe(self, cmd: p.Sub) -> None:
        broker = self.server.broker
        try:
            broker.check_serving()
            self.service.admit()
            topic = await broker.get_topic(cmd.topic)
            channel = await topic.get_channel(cmd.channel)
        except PairqError as exc:
            raise p.ProtocolError("E_SUB_FAILED", f"SUB failed {exc.message}") from None
        s = self.session
        sub = Subscriber(
            client_id=s.client_id,
            hostname=s.hostname,
            user_agent=s.user_agent or "nsq",
            remote_address=self.peer,
            msg_timeout=s.msg_timeout_ms / 1000.0,
            heartbeat_interval=s.heartbeat_ms / 1000.0,
            max_queued_bytes=broker.options.max_subscriber_buffer_bytes,
        )
        sub.encode = self._encode
        self.sub, self.channel = sub, channel
        self.service.joined(sub, channel)
        self._tasks.append(asyncio.create_task(self._deliver(sub)))
        self.answers.put_nowait(self._sub_ok)

    def _encode(self, entries: list[Entry]) -> bytes:
        delivered = self.session.delivered
        frames = []
        for e in entries:
            body, ts = wire.body_and_timestamp(e.payload)  # type: ignore[arg-type]
            frames.append(p.message_frame(ts, e.attempts, delivered(e.id), body))
        return b"".join(frames)

    def _resolved(self, r: p.Resolved) -> None:
        assert self.sub is not None and self.channel is not None
        cid, ch = self.sub.cid, self.channel
        if r.cmd == "FIN":
            unknown = ch.finish(cid, [r.pairq_id])
        elif r.cmd == "REQ":
            unknown = ch.requeue(cid, [r.pairq_id], r.delay_ms / 1000.0)
        else:
            unknown = ch.touch(cid, [r.pairq_id])
        if unknown:
            self.answers.put_nowait(r.failed().frame())

    async def _deliver(self, sub: Subscriber) -> None:
        """Write what the channel queued for this subscriber (fence re-checked)."""
        with contextlib.suppress(ConnectionError, OSError):  # the client is gone
            await self._deliver_until_closed(sub)

    async def _deliver_until_closed(self, sub: Subscriber) -> None:
        writer = self.writer
        q = sub.queue
        await self.sub_answered.wait()
        while True:
            item = await q.get()
            if item is None:
                return  # the broker is stopping (``shutdown`` closes the connection)
            if isinstance(item, Terminate):  # channel deleted or closed
                self.abort(f"subscription ended: {item.message}")
                return
            if isinstance(item, tuple):
                data, fence = item
                sub.taken(len(data))
                if not await self.service.fence_allows(sub, fence):
                    continue
            else:
                data = item
            self._send(data)
            await writer.drain()

    async def _heartbeats(self) -> None:
        while True:
            hb = self.session.heartbeat_ms
            if hb <= 0:  # disabled by IDENTIFY (no SUB then)
                return
            self.identified.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.identified.wait(), hb / 1000.0)
                continue  # IDENTIFY set the interval: start again with it
            silent = time.monotonic() - self.last_seen
            if silent > 2 * hb / 1000.0:
                self.abort(
                    f"nothing received for {silent:.1f} s (two heartbeat intervals): "
                    "disconnected, in-flight messages requeued"
                )
                return
            if (self.sub is None or not self.sub.held) and not self.session.upgrading:
                self._send(p.HEARTBEAT_FRAME)
