"""nsqd's HTTP API on the broker (``--http-address``), so ``curl`` scripts and tools
written for nsqd keep working against pairq.

Routes (nsqd v1.x; any other method is 405, any other path 404):

========================================  ====  ===================================================
``/ping``                                 GET   ``OK`` (text); 500 ``NOK - reason`` while publishes
                                                would be refused (store full, partner down …)
``/info``                                 GET   version, ports, start time (JSON)
``/pub?topic=T[&defer=MS]``               POST  body = one message
``/mpub?topic=T[&binary=true]``           POST  newline-separated messages, or binary: a 4-byte
                                                count, then a 4-byte size + body each
``/stats[?format=json&topic=&channel=]``  GET   nsqd's stats shape (text without ``format=json``;
                                                ``include_clients=false`` leaves clients out)
``/topic/VERB?topic=T``                   POST  VERB: create, delete, empty, pause, unpause
``/channel/VERB?topic=T&channel=C``       POST  the same verbs on a channel (``actions.Actions``)
========================================  ====  ===================================================

``/dpub?topic=T&defer=MS`` (POST) is ``/pub`` with a required ``defer`` (400
``MISSING_ARG_DEFER`` without it): nsqd v1 has no such endpoint (its deferred HTTP
publish is ``/pub?defer=MS``; DPUB is a TCP command), but scripts written for the
TCP command's name find it here.

Answers, as nsqd's ``V1`` responses: 200 with ``OK`` (publishes) or an empty
body (verbs) or JSON; an error is ``{"message": CODE}`` with nsqd's status and
code for every case nsqd has (``MISSING_ARG_TOPIC``, ``INVALID_TOPIC``,
``INVALID_ARG_TOPIC``, ``MSG_EMPTY``, ``MSG_TOO_BIG``, ``BODY_TOO_BIG``,
``BAD_BODY``, ``BAD_MESSAGE``, ``INVALID_DEFER``, ``TOPIC_NOT_FOUND``,
``CHANNEL_NOT_FOUND``, ``NOT_FOUND``, ``METHOD_NOT_ALLOWED``, ``INTERNAL_ERROR``);
every V1 answer carries ``X-NSQ-Content-Type: nsq; version=1.0``. Failures nsqd
does not have are ``{"message": "PAIRQ_CODE: what happened and what to do"}``
(the ``ErrorCode`` name without its prefix):

- ``UNAVAILABLE`` 503: shutting down, or the partner did not take its copy under
  ``--min-copies=2`` (the message may be stored: retry; consumers de-duplicate);
- ``STORE_FULL`` 503: the store is full (the reason says how full and why);
- ``TOO_MANY`` 429: a limit such as ``--max-publish-rate`` or ``--max-topics``;
- ``BAD_BATCH`` 413: an ``/mpub`` over ``--max-batch`` or ``--max-batch-bytes``;
- ``UNAUTHENTICATED`` 401 / ``PERMISSION_DENIED`` 403: see below.

A publish answers 200 only once it is durable (on both brokers of a pair,
``publishing.Publisher``); the answer carries ``X-Pairq-Copies`` (durable
copies) and, for ``/pub``, ``X-Pairq-Message-Id`` (hex).

Authentication: nsqd's HTTP API has none. With ``--auth-file`` this one asks
for the same tokens as gRPC (``Authorization: Bearer TOKEN``) with the same
permissions (``pairq.security.auth``): publish on the topic for ``/pub`` and
``/mpub``; admin on the topic (or ``TOPIC:CHANNEL``) for the verbs and for
``/stats?topic=``, admin on ``*`` for the whole broker's ``/stats``. ``/ping``
and ``/info`` are open, like gRPC health checks. Without ``--auth-file`` it is
open, like nsqd.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from pairq import __version__
from pairq.broker.actions import Actions
from pairq.broker.options import BrokerOptions
from pairq.broker.publishing import Publisher
from pairq.broker.registration import advertised
from pairq.errors import PairqError
from pairq.names import is_valid_name
from pairq.nsqapi import (
    HttpError,
    Listener,
    errors,
    ok,
    require,
    server_ssl,
    topic_channel_args,
)
from pairq.options import parse_hostport
from pairq.security.auth import ADMIN, PUBLISH, Authenticator
from pairq.security.tls import TLSFiles
from pairq.v1 import broker_pb2 as pb

__all__ = ["HttpHost", "NsqHttpServer", "nsq_stats", "parse_mpub_binary", "parse_mpub_text"]

log = logging.getLogger("pairq.nsqhttp")

_BOOL = {"true": True, "1": True, "false": False, "0": False}

# pairq error code -> (HTTP status, the code's name in answers)
_STATUS: dict[int, tuple[int, str]] = {
    pb.ERROR_CODE_UNAVAILABLE: (503, "UNAVAILABLE"),
    pb.ERROR_CODE_STORE_FULL: (503, "STORE_FULL"),
    pb.ERROR_CODE_TOO_MANY: (429, "TOO_MANY"),
    pb.ERROR_CODE_BAD_BATCH: (413, "BAD_BATCH"),
    pb.ERROR_CODE_BAD_MESSAGE: (400, "BAD_MESSAGE"),
    pb.ERROR_CODE_PERMISSION_DENIED: (403, "PERMISSION_DENIED"),
    pb.ERROR_CODE_INVALID: (400, "INVALID"),
    pb.ERROR_CODE_BAD_TOPIC: (400, "INVALID_TOPIC"),
    pb.ERROR_CODE_BAD_CHANNEL: (400, "INVALID_CHANNEL"),
    pb.ERROR_CODE_DELETED: (404, "TOPIC_NOT_FOUND"),
}


def from_pairq(exc: PairqError, not_found: str = "TOPIC_NOT_FOUND") -> HttpError:
    """The nsqd-style answer for a pairq error (see the module docstring)."""
    if exc.code == pb.ERROR_CODE_NOT_FOUND:
        return HttpError(404, not_found)
    status, name = _STATUS.get(exc.code, (500, "INTERNAL_ERROR"))
    return HttpError(status, f"{name}: {exc.message}")


# ---------------------------------------------------------------- pure parsing
def _translate(exc: Exception) -> HttpError | None:
    return from_pairq(exc) if isinstance(exc, PairqError) else None


def parse_mpub_text(body: bytes, max_msg_size: int) -> list[bytes]:
    """``/mpub`` text mode: messages separated by ``\\n`` (empty ones dropped, as nsqd
    does); a message over ``max_msg_size`` is 413 ``MSG_TOO_BIG``."""
    msgs = [m for m in body.split(b"\n") if m]
    if any(len(m) > max_msg_size for m in msgs):
        raise HttpError(413, "MSG_TOO_BIG")
    return msgs


def parse_mpub_binary(body: bytes, max_msg_size: int, max_count: int) -> list[bytes]:
    """``/mpub?binary=true``: a big-endian 4-byte count, then per message a 4-byte
    size and that many bytes. nsqd's answers: 413 ``BAD_BODY`` for a count that is
    unreadable, not positive or above ``max_count``; 413 ``BAD_MESSAGE`` for a size
    that is unreadable, not positive or above ``max_msg_size``, or a short body.
    Bytes after the last message are ignored, as nsqd ignores them."""
    if len(body) < 4:
        raise HttpError(413, "BAD_BODY")
    (count,) = struct.unpack_from(">i", body, 0)
    if count <= 0 or count > max_count:
        raise HttpError(413, "BAD_BODY")
    pos = 4
    msgs: list[bytes] = []
    for _ in range(count):
        if pos + 4 > len(body):
            raise HttpError(413, "BAD_MESSAGE")
        (size,) = struct.unpack_from(">i", body, pos)
        pos += 4
        if size <= 0 or size > max_msg_size or pos + size > len(body):
            raise HttpError(413, "BAD_MESSAGE")
        msgs.append(body[pos : pos + size])
        pos += size
    return msgs


def parse_bool(value: str | None, default: bool) -> bool:
    """nsqd's boolean parameters: true/1/false/0; anything else is ``default``."""
    return default if value is None else _BOOL.get(value, default)


# ---------------------------------------------------------------- the server
@dataclass(frozen=True, slots=True)
class _Message:
    """One message to publish, shaped like the protobuf ``PublishItem``."""

    body: bytes
    defer_ms: int = 0
    id: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class HttpHost(Protocol):
    """What the HTTP API reads of its broker."""

    options: BrokerOptions
    start_time_ns: int
    address: str

    @property
    def nsq_tcp_address(self) -> str: ...

    @property
    def node_id(self) -> str: ...

    def check_serving(self) -> None: ...

    def stats(
        self, topic: str = "", channel: str = "", clients: bool = True
    ) -> pb.GetStatsResponse: ...


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class NsqHttpServer:
    """nsqd's HTTP API over a broker: ``await start(address)`` returns the bound
    HOST:PORT; ``await stop()``."""

    TITLE = "NSQ HTTP API"

    def __init__(
        self,
        host: HttpHost,
        publisher: Publisher,
        actions: Actions,
        *,
        auth: Authenticator | None = None,
        tls: TLSFiles | None = None,
        check_rate: Callable[[str, int], None] | None = None,
        unhealthy: Callable[[], str] | None = None,
    ) -> None:
        self.host = host
        self.opts = host.options
        self.publisher = publisher
        self.actions = actions
        self.auth = auth
        self.check_rate = check_rate
        # why publishes would be refused now ("" when they would not): pairq.broker.health
        self.unhealthy = unhealthy
        self.address = ""
        self.app = web.Application(middlewares=[errors(log, _translate)])
        self._listener = Listener(
            self.app, what="--http-address", ssl_context=server_ssl(tls), grace=2.0
        )
        r = self.app.router
        r.add_get("/ping", self.ping, allow_head=False)
        r.add_get("/info", self.info, allow_head=False)
        r.add_post("/pub", self.pub)
        r.add_post("/dpub", self.dpub)
        r.add_post("/mpub", self.mpub)
        r.add_get("/stats", self.stats, allow_head=False)
        for verb in ("create", "delete", "empty", "pause", "unpause"):
            r.add_post(f"/topic/{verb}", self._topic_verb(verb))
            r.add_post(f"/channel/{verb}", self._channel_verb(verb))

    # ------------------------------------------------------------ lifecycle
    async def start(self, address: str) -> str:
        self.address = await self._listener.start(address)
        log.info("%s listening on http://%s/", self.TITLE, self.address)
        return self.address

    async def stop(self) -> None:
        await self._listener.stop()

    # ------------------------------------------------------------ auth
    def _require(self, request: web.Request, perm: str, topic: str, channel: str = "") -> None:
        require(self.auth, request, perm, topic, channel)

    # ------------------------------------------------------------ /ping, /info
    def _health(self) -> str:
        """nsqd's health string: ``OK``, or ``NOK - reason`` while publishes here would
        be refused (shutting down, store full, and in a pair the partner unreachable
        under --min-copies=2 or the pair's catalog missing: ``pairq.broker.health``)."""
        try:
            self.host.check_serving()
        except PairqError as exc:
            return f"NOK - {exc.message}"
        if self.unhealthy is not None:
            reason = self.unhealthy()
        else:
            health = self.host.stats(clients=False).health
            reason = "" if health == "ok" else health
        return f"NOK - {reason}" if reason else "OK"

    async def ping(self, request: web.Request) -> web.Response:
        health = self._health()
        if health != "OK":
            return web.Response(status=500, text=health)
        return web.Response(text="OK")

    async def info(self, request: web.Request) -> web.Response:
        opts = self.opts
        broadcast, http_port = _split(advertised(self.address))
        _, tcp_port = _split(advertised(self.host.nsq_tcp_address))
        return ok(
            {
                "version": __version__,
                "broadcast_address": broadcast,
                "hostname": socket.gethostname(),
                "http_port": http_port,
                "tcp_port": tcp_port,
                "start_time": self.host.start_time_ns // 1_000_000_000,
                # nsqd reports these as Go durations (nanoseconds)
                "max_heartbeat_interval": 600_000 * 1_000_000,
                "max_output_buffer_size": 0,
                "max_output_buffer_timeout": 0,
                "max_deflate_level": 0,
                "topology_zone": "",
                "topology_region": "",
                "pairq": {
                    "node_id": self.host.node_id,
                    "pair": opts.pair,
                    "partner": opts.partner,
                    "grpc_address": self.host.address,
                    "min_copies": opts.min_copies,
                    "max_msg_size": opts.max_msg_size,
                    "max_batch": opts.max_batch,
                    "max_batch_bytes": opts.max_batch_bytes,
                    "max_defer_ms": opts.max_defer_ms,
                },
            }
        )

    # ------------------------------------------------------------ publishing
    @staticmethod
    async def _read(request: web.Request, limit: int) -> bytes | None:
        """The body, or None if it is longer than ``limit`` bytes (read no further)."""
        if request.content_length is not None and request.content_length > limit:
            return None
        data = bytearray()
        while len(data) <= limit:
            chunk = await request.content.read(min(1 << 16, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
        return None if len(data) > limit else bytes(data)

    @staticmethod
    def _pub_topic(request: web.Request) -> str:
        if "topic" not in request.query:
            raise HttpError(400, "MISSING_ARG_TOPIC")
        topic = request.query.getone("topic")
        if not is_valid_name(topic):
            raise HttpError(400, "INVALID_TOPIC")
        return topic

    def _rate(self, request: web.Request, n: int) -> None:
        if self.check_rate is not None:
            self.check_rate(f"http:{request.remote or ''}", n)

    async def pub(self, request: web.Request) -> web.Response:
        body = await self._read(request, self.opts.max_msg_size)
        if body is None:
            raise HttpError(413, "MSG_TOO_BIG")
        if not body:
            raise HttpError(400, "MSG_EMPTY")
        topic = self._pub_topic(request)
        defer_ms = 0
        if "defer" in request.query:
            try:
                defer_ms = int(request.query.getone("defer"))
            except ValueError:
                raise HttpError(400, "INVALID_DEFER") from None
            if defer_ms < 0 or defer_ms > self.opts.max_defer_ms:
                raise HttpError(400, "INVALID_DEFER")
        self._require(request, PUBLISH, topic)
        self._rate(request, 1)
        msg_id, copies = await self.publisher.publish_one(topic, _Message(body, defer_ms))
        resp = ok("OK")
        resp.headers["X-Pairq-Copies"] = str(copies)
        resp.headers["X-Pairq-Message-Id"] = msg_id.hex()
        return resp

    async def dpub(self, request: web.Request) -> web.Response:
        if "defer" not in request.query:
            raise HttpError(400, "MISSING_ARG_DEFER")
        return await self.pub(request)

    async def mpub(self, request: web.Request) -> web.Response:
        opts = self.opts
        # the framing's worst case: a count, then a size per message
        limit = opts.max_batch_bytes + 4 + 4 * opts.max_batch
        if request.content_length is not None and request.content_length > limit:
            raise HttpError(413, "BODY_TOO_BIG")
        topic = self._pub_topic(request)
        binary = parse_bool(request.query.get("binary"), "binary" in request.query)
        body = await self._read(request, limit)
        if body is None:
            raise HttpError(413, "BODY_TOO_BIG")
        if binary:
            msgs = parse_mpub_binary(body, opts.max_msg_size, opts.max_batch)
        else:
            msgs = parse_mpub_text(body, opts.max_msg_size)
        self._require(request, PUBLISH, topic)
        if not msgs:
            # nsqd answers OK to an empty text /mpub (and creates the topic)
            await self.actions.create_topic(topic)
            return ok("OK")
        self._rate(request, len(msgs))
        _, copies, _ = await self.publisher.publish_messages(topic, [_Message(m) for m in msgs])
        resp = ok("OK")
        resp.headers["X-Pairq-Copies"] = str(copies)
        return resp

    # ------------------------------------------------------------ topic and channel verbs
    def _topic_verb(self, verb: str) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            if "topic" not in request.query:
                raise HttpError(400, "MISSING_ARG_TOPIC")
            topic = request.query.getone("topic")
            # nsqd checks the name for create and empty; delete and (un)pause only
            # look the topic up, so an invalid name is simply not found there.
            if verb in ("create", "empty") and not is_valid_name(topic):
                raise HttpError(400, "INVALID_TOPIC")
            if not is_valid_name(topic):
                raise HttpError(404, "TOPIC_NOT_FOUND")
            self._require(request, ADMIN, topic)
            a = self.actions
            try:
                if verb == "create":
                    await a.create_topic(topic)
                elif verb == "delete":
                    await a.delete_topic(topic)
                elif verb == "empty":
                    await a.empty_topic(topic)
                else:
                    await a.pause_topic(topic, verb == "pause")
            except PairqError as exc:
                raise from_pairq(exc) from None
            return ok()

        return handle

    def _channel_verb(self, verb: str) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            topic, channel = topic_channel_args(request)
            self._require(request, ADMIN, topic, channel)
            a = self.actions
            try:
                await a.topic(topic)  # nsqd: the topic must exist, even to create a channel
            except PairqError as exc:
                raise from_pairq(exc) from None
            try:
                if verb == "create":
                    await a.create_channel(topic, channel)
                elif verb == "delete":
                    await a.delete_channel(topic, channel)
                elif verb == "empty":
                    await a.empty_channel(topic, channel)
                else:
                    await a.pause_channel(topic, channel, verb == "pause")
            except PairqError as exc:
                raise from_pairq(exc, "CHANNEL_NOT_FOUND") from None
            return ok()

        return handle

    # ------------------------------------------------------------ /stats
    async def stats(self, request: web.Request) -> web.Response:
        q = request.query
        topic = q.get("topic", "")
        channel = q.get("channel", "")
        clients = parse_bool(q.get("include_clients"), True)
        self._require(request, ADMIN, topic)
        data = nsq_stats(self.host.stats(topic, "", True), topic, channel, clients)
        data["health"] = self._health()
        if q.get("format") == "json":
            return ok(data)
        return web.Response(text=stats_text(data, self.host.start_time_ns))


# ---------------------------------------------------------------- stats shape
def _latency() -> dict[str, Any]:
    return {"count": 0, "percentiles": None}  # pairq keeps no e2e quantiles


def nsq_stats(
    resp: pb.GetStatsResponse, topic: str, channel: str, include_clients: bool
) -> dict[str, Any]:
    """nsqd's ``/stats?format=json`` from a ``GetStatsResponse``: topics sorted by
    name, each with its channels sorted; ``topic=`` keeps that topic only (none if
    absent), ``channel=`` that channel only and drops topics without it; without
    ``include_clients`` the ``clients`` lists are null, as nsqd has them."""
    topics: list[dict[str, Any]] = []
    for t in sorted(resp.topics, key=lambda t: t.name):
        if topic and t.name != topic:
            continue
        chans = [c for c in sorted(t.channels, key=lambda c: c.name)]
        if channel:
            chans = [c for c in chans if c.name == channel]
            if not chans:
                continue
        topics.append(
            {
                "topic_name": t.name,
                "channels": [_channel_stats(c, include_clients) for c in chans],
                "depth": t.depth,
                "backend_depth": 0 if t.ephemeral else t.depth,
                "message_count": t.message_count,
                "message_bytes": 0,
                "paused": t.paused,
                "e2e_processing_latency": _latency(),
            }
        )
    return {
        "version": resp.version,
        "health": "OK" if resp.health == "ok" else f"NOK - {resp.health}",
        "start_time": resp.start_time_ns // 1_000_000_000,
        "topics": topics,
        "producers": None,  # pairq does not list publishing connections
    }


def _channel_stats(c: Any, include_clients: bool) -> dict[str, Any]:
    return {
        "channel_name": c.name,
        "depth": c.depth,
        "backend_depth": 0 if c.ephemeral else c.depth,
        "in_flight_count": c.in_flight,
        "deferred_count": c.deferred,
        "message_count": c.message_count,
        "requeue_count": c.requeued,
        "timeout_count": c.timed_out,
        "client_count": len(c.clients),
        "clients": [_client_stats(s) for s in c.clients] if include_clients else None,
        "paused": c.paused,
        "e2e_processing_latency": _latency(),
    }


def _client_stats(s: Any) -> dict[str, Any]:
    return {
        "client_id": s.client_id,
        "hostname": s.hostname,
        "version": "V2",
        "remote_address": s.remote_address,
        "state": 3,  # nsqd's stateSubscribed
        "ready_count": s.ready_count,
        "in_flight_count": s.in_flight,
        "message_count": s.message_count,
        "finish_count": s.finish_count,
        "requeue_count": s.requeue_count,
        "connect_ts": s.connected_at_ns // 1_000_000_000,
        "sample_rate": 0,
        "deflate": False,
        "snappy": False,
        "user_agent": s.user_agent,
        "tls": False,
        "tls_cipher_suite": "",
        "tls_version": "",
        "tls_negotiated_protocol": "",
        "tls_negotiated_protocol_is_mutual": False,
        "topology_zone": "",
        "topology_region": "",
    }


def stats_text(data: dict[str, Any], start_time_ns: int, now: float | None = None) -> str:
    """nsqd's plain-text ``/stats``, from :func:`nsq_stats`' data."""
    now = time.time() if now is None else now
    start = start_time_ns / 1e9
    lines = [
        f"pairq v{data['version']} (nsqd HTTP API)",
        "start_time " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
        f"uptime {max(0.0, now - start):.0f}s",
        "",
        f"Health: {data['health']}",
        "",
    ]
    if not data["topics"]:
        lines.append("Topics: None")
    else:
        lines.append("Topics:")
    for t in data["topics"]:
        p = "*P " if t["paused"] else "   "
        lines.append(
            f"{p}[{t['topic_name']:<15}] depth: {t['depth']:<5} be-depth: {t['backend_depth']:<5} "
            f"msgs: {t['message_count']:<8} e2e%: "
        )
        for c in t["channels"]:
            p = "   *P " if c["paused"] else "      "
            lines.append(
                f"{p}[{c['channel_name']:<25}] depth: {c['depth']:<5} be-depth: "
                f"{c['backend_depth']:<5} inflt: {c['in_flight_count']:<4} "
                f"def: {c['deferred_count']:<4} re-q: {c['requeue_count']:<5} "
                f"timeout: {c['timeout_count']:<5} msgs: {c['message_count']:<8} e2e%: "
            )
            for s in c["clients"] or ():
                lines.append(
                    f"        [V2 {s['hostname']} {s['user_agent']}] state: 3 "
                    f"inflt: {s['in_flight_count']:<4} rdy: {s['ready_count']:<4} "
                    f"fin: {s['finish_count']:<8} re-q: {s['requeue_count']:<8} "
                    f"msgs: {s['message_count']:<8}"
                )
    lines += ["", "Producers: None", ""]
    return "\n".join(lines)


def _split(address: str) -> tuple[str, int]:
    """(host, port) of a bound HOST:PORT; ("", -1) when the listener is off (nsqd
    reports -1 for a port it does not listen on)."""
    if not address:
        return "", -1
    host, port = parse_hostport(address)
    return host, port
