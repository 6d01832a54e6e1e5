"""nsqlookupd's HTTP API on the lookup (``--http-address``), from its
:class:`~pairq.lookup.registry.Registry`, so NSQ clients given
``lookupd_http_addresses`` (pynsq, nsqjs, go-nsq) find pairq brokers.

Routes (nsqlookupd v1.x; answers and errors as ``pairq.nsqapi`` describes):

=====================================  ====  =============================================
``/ping``                              GET   ``OK``
``/info``                              GET   ``{"version"}``
``/lookup?topic=T``                    GET   ``{"channels": [...], "producers": [...]}``;
                                             400 ``MISSING_ARG_TOPIC``, 404 ``TOPIC_NOT_FOUND``
``/topics``                            GET   ``{"topics": [...]}``
``/channels?topic=T``                  GET   ``{"channels": [...]}``
``/nodes``                             GET   ``{"producers": [...]}``, each with ``topics``
                                             and ``tombstones`` (one flag per topic)
``/topic/create|delete?topic=T``       POST  operator registrations, as nsqlookupd's
``/channel/VERB?topic=T&channel=C``    POST  VERB: create, delete (404 ``CHANNEL_NOT_FOUND``)
``/topic/tombstone?topic=T&node=N``    POST  N: ``HOST:HTTP_PORT`` as /nodes lists it
                                             (or a node id / gRPC address)
=====================================  ====  =============================================

Who is a producer (the rules NSQ clients rely on):

- A producer is a broker that serves NSQ's TCP protocol (its registration carries
  an ``nsq_tcp_address``): a broker without ``--nsq-tcp-address`` cannot be used
  by an NSQ client, so ``/lookup`` never lists it (``/nodes`` lists it if it
  serves the HTTP API, with ``tcp_port`` -1).
- ``/lookup?topic=T`` lists **both brokers of every pair holding T**, whichever
  of them registered the topic: only the owner of a message delivers it, and
  after a takeover the partner delivers the backlog it took over, so an NSQ
  consumer must be connected to both.
- A broker the registry answers DEAD is left out at once (a ``kill -9`` is seen
  within milliseconds: its stream closes and its port refuses; a silent one
  after 3 heartbeat intervals, see ``registry.py``); SUSPECT brokers stay listed
  (clients keep using them, as with gRPC lookups); a broker tombstoned for T is
  left out of ``/lookup?topic=T`` (nsqlookupd's rule) but stays in ``/nodes``.
- Fields: ``broadcast_address`` and ``tcp_port`` are the broker's advertised NSQ
  TCP address, ``http_port`` its nsqd HTTP API port (-1 when off),
  ``remote_address`` its gRPC address, ``hostname`` and ``version`` from its
  registration; ``topology_zone`` and ``topology_region`` are empty.

Authentication: with the lookup's ``--auth-file``, the same tokens and rules
as its gRPC service (``LOOKUP_RULES``): ``/lookup`` and ``/channels`` need
publish or subscribe on the topic, ``/topics`` and ``/nodes`` a known token,
the operator verbs admin on the topic. ``/ping`` and ``/info`` are open. NSQ
clients send no token to lookupds, so a lookup with ``--auth-file`` is
reachable only by tools that can add the header.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from pairq import __version__
from pairq.lookup.registry import (
    BrokerIdentity,
    Liveness,
    NodeAnswer,
    Registry,
    TopicAnswer,
    UnknownNodeError,
)
from pairq.names import is_valid_name
from pairq.nsqapi import HttpError, Listener, errors, ok, require, server_ssl, topic_channel_args
from pairq.options import parse_hostport
from pairq.security.auth import ADMIN, ANY_CHANNEL, Authenticator
from pairq.security.tls import TLSFiles

__all__ = ["NsqLookupHttpServer", "lookup_answer", "node_key", "nodes_answer", "producer"]

log = logging.getLogger("pairq.lookup.nsqhttp")

LOOKUP_PERMS = "publish|subscribe"


def _port(address: str) -> int:
    return parse_hostport(address)[1] if address else -1


def producer(i: BrokerIdentity) -> dict[str, Any]:
    """nsqlookupd's ``PeerInfo`` of a broker."""
    host, tcp_port = parse_hostport(i.nsq_tcp_address) if i.nsq_tcp_address else ("", -1)
    if not host and i.http_address:
        host = parse_hostport(i.http_address)[0]
    return {
        "remote_address": i.grpc_address,
        "hostname": i.hostname,
        "broadcast_address": host,
        "tcp_port": tcp_port,
        "http_port": _port(i.http_address),
        "version": i.version,
        "topology_zone": "",
        "topology_region": "",
    }


def node_key(i: BrokerIdentity) -> str:
    """How nsqlookupd names a node in ``/topic/tombstone``: ``broadcast_address:http_port``."""
    p = producer(i)
    return f"{p['broadcast_address']}:{p['http_port']}"


def lookup_answer(ans: TopicAnswer) -> dict[str, Any]:
    """``/lookup``'s answer for a known topic: its channels, and as producers every
    broker of every pair holding it that serves NSQ TCP, is not DEAD and is not
    tombstoned for it (the module docstring's rules)."""
    producers = [
        producer(b.status.identity)
        for p in ans.pairs
        for b in p.brokers
        if b.status.identity.nsq_tcp_address
        and b.status.liveness is not Liveness.DEAD
        and not b.tombstoned
    ]
    return {"channels": list(ans.channels), "producers": producers}


def nodes_answer(nodes: Iterable[NodeAnswer]) -> dict[str, Any]:
    """``/nodes``: every broker that is not DEAD and serves NSQ TCP or the HTTP API,
    with its topics and, per topic, whether it is tombstoned there."""
    out = []
    for n in nodes:
        i = n.status.identity
        if n.status.liveness is Liveness.DEAD or not (i.nsq_tcp_address or i.http_address):
            continue
        stoned = {t for t, _ in n.tombstones}
        topics = [t for t, _ in n.topics]
        out.append({**producer(i), "tombstones": [t in stoned for t in topics], "topics": topics})
    return {"producers": out}


class NsqLookupHttpServer:
    """nsqlookupd's HTTP API over ``registry`` (driven with ``clock``, the lookup's
    monotonic clock): ``await start(address)`` returns the bound HOST:PORT."""

    TITLE = "nsqlookupd HTTP API"

    def __init__(
        self,
        registry: Registry,
        *,
        clock: Callable[[], float],
        auth: Authenticator | None = None,
        tls: TLSFiles | None = None,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.auth = auth
        self.address = ""
        self.app = web.Application(middlewares=[errors(log)])
        self._listener = Listener(
            self.app, what="--http-address", ssl_context=server_ssl(tls), grace=1.0
        )
        r = self.app.router
        r.add_get("/ping", self.ping, allow_head=False)
        r.add_get("/info", self.info, allow_head=False)
        r.add_get("/lookup", self.lookup, allow_head=False)
        r.add_get("/topics", self.topics, allow_head=False)
        r.add_get("/channels", self.channels, allow_head=False)
        r.add_get("/nodes", self.nodes, allow_head=False)
        r.add_post("/topic/create", self.topic_create)
        r.add_post("/topic/delete", self.topic_delete)
        r.add_post("/topic/tombstone", self.topic_tombstone)
        r.add_post("/channel/create", self.channel_create)
        r.add_post("/channel/delete", self.channel_delete)

    # ------------------------------------------------------------ lifecycle
    async def start(self, address: str) -> str:
        self.address = await self._listener.start(address)
        log.info("%s listening on http://%s/", self.TITLE, self.address)
        return self.address

    async def stop(self) -> None:
        await self._listener.stop()

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _topic(request: web.Request) -> str:
        if "topic" not in request.query:
            raise HttpError(400, "MISSING_ARG_TOPIC")
        return request.query.getone("topic")

    # ------------------------------------------------------------ queries
    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def info(self, request: web.Request) -> web.Response:
        return ok({"version": __version__})

    async def lookup(self, request: web.Request) -> web.Response:
        topic = self._topic(request)
        require(self.auth, request, LOOKUP_PERMS, topic, ANY_CHANNEL)
        ans = self.registry.lookup_topic(topic, self.clock())
        if not ans.known:
            raise HttpError(404, "TOPIC_NOT_FOUND")
        return ok(lookup_answer(ans))

    async def topics(self, request: web.Request) -> web.Response:
        require(self.auth, request, "", "")
        return ok({"topics": self.registry.topics(self.clock())})

    async def channels(self, request: web.Request) -> web.Response:
        topic = self._topic(request)
        require(self.auth, request, LOOKUP_PERMS, topic, ANY_CHANNEL)
        return ok({"channels": self.registry.channels(topic, self.clock())})

    async def nodes(self, request: web.Request) -> web.Response:
        require(self.auth, request, "", "")
        return ok(nodes_answer(self.registry.nodes(self.clock())))

    # ------------------------------------------------------------ operator verbs
    async def topic_create(self, request: web.Request) -> web.Response:
        topic = self._topic(request)
        if not is_valid_name(topic):
            raise HttpError(400, "INVALID_ARG_TOPIC")
        require(self.auth, request, ADMIN, topic)
        self.registry.create_topic(topic)
        return ok()

    async def topic_delete(self, request: web.Request) -> web.Response:
        topic = self._topic(request)
        require(self.auth, request, ADMIN, topic)
        self.registry.delete_topic(topic)
        return ok()

    async def topic_tombstone(self, request: web.Request) -> web.Response:
        topic = self._topic(request)
        if "node" not in request.query:
            raise HttpError(400, "MISSING_ARG_NODE")
        node = request.query.getone("node")
        require(self.auth, request, ADMIN, topic)
        now = self.clock()
        # nsqlookupd names nodes by broadcast_address:http_port and ignores a node it
        # does not know; a node id or gRPC address (pairq's names) works too.
        target = next(
            (
                n.status.identity.node_id
                for n in self.registry.nodes(now)
                if node_key(n.status.identity) == node
            ),
            node,
        )
        try:
            self.registry.tombstone(topic, target, now)
        except UnknownNodeError:
            pass
        return ok()

    async def channel_create(self, request: web.Request) -> web.Response:
        topic, channel = topic_channel_args(request)
        require(self.auth, request, ADMIN, topic, channel)
        self.registry.create_channel(topic, channel)
        return ok()

    async def channel_delete(self, request: web.Request) -> web.Response:
        topic, channel = topic_channel_args(request)
        require(self.auth, request, ADMIN, topic, channel)
        if channel not in self.registry.channels(topic, self.clock()):
            raise HttpError(404, "CHANNEL_NOT_FOUND")
        self.registry.delete_channel(topic, channel)
        return ok()
