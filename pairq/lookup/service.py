"""The lookup's gRPC service (``pairq.v1.LookupService``) over a :class:`Registry`.

Every RPC validates its input and answers a clear status with a stable
``ErrorInfo.reason`` (the broker's ``ErrorCode`` names); the registry itself
never sees bad input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

from pairq.errors import PairqError, Undecodable, decoder, echo, guard_unary, serve_rpc
from pairq.lookup.registry import (
    BrokerIdentity,
    BrokerStatus,
    Registry,
    UnknownNodeError,
)
from pairq.names import check_channel, check_topic
from pairq.options import parse_hostport
from pairq.v1 import broker_pb2
from pairq.v1 import lookup_pb2 as pb

__all__ = ["SERVICE", "LookupService", "status_to_pb"]

log = logging.getLogger("pairq.lookup")

SERVICE = "pairq.v1.LookupService"
MAX_TOPICS_PER_NODE = 100_000
MAX_CHANNELS_PER_TOPIC = 10_000
MAX_ID_LEN = 255
PROBE_TIMEOUT = 1.0
PROBE_ATTEMPTS = 5  # at 0, 50, 150, 350, 750 ms after the stream closed


def _invalid(message: str, code: int = broker_pb2.ERROR_CODE_INVALID) -> PairqError:
    return PairqError(message, code=code)


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def identity_from_pb(b: pb.BrokerIdentity) -> BrokerIdentity:
    if not b.node_id or len(b.node_id) > MAX_ID_LEN:
        raise _invalid("hello.broker.node_id must be 1-255 characters")
    if not b.grpc_address:
        raise _invalid("hello.broker.grpc_address is required (HOST:PORT clients connect to)")
    for what, value in (
        ("grpc_address", b.grpc_address),
        ("gossip_address", b.gossip_address),
        ("partner_address", b.partner_address),
        ("nsq_tcp_address", b.nsq_tcp_address),
        ("http_address", b.http_address),
    ):
        if value:
            try:
                parse_hostport(value, what=what)
            except ValueError as exc:
                raise _invalid(f"hello.broker.{exc}") from None
    if len(b.pair) > MAX_ID_LEN or len(b.version) > MAX_ID_LEN or len(b.hostname) > MAX_ID_LEN:
        raise _invalid("hello.broker: pair, version and hostname are at most 255 characters")
    return BrokerIdentity(
        node_id=b.node_id,
        grpc_address=b.grpc_address,
        pair=b.pair,
        gossip_address=b.gossip_address,
        version=b.version,
        partner_address=b.partner_address,
        hostname=b.hostname,
        start_time_ns=b.start_time_ns,
        nsq_tcp_address=b.nsq_tcp_address,
        http_address=b.http_address,
    )


def topics_from_pb(topics: Any) -> dict[str, list[str]]:
    if len(topics) > MAX_TOPICS_PER_NODE:
        raise _invalid(f"at most {MAX_TOPICS_PER_NODE} topics per registration")
    out: dict[str, list[str]] = {}
    for t in topics:
        check_topic(t.name)
        if len(t.channels) > MAX_CHANNELS_PER_TOPIC:
            raise _invalid(f"at most {MAX_CHANNELS_PER_TOPIC} channels per topic")
        for c in t.channels:
            check_channel(c)
        out[t.name] = list(t.channels)
    return out


def identity_to_pb(i: BrokerIdentity) -> pb.BrokerIdentity:
    return pb.BrokerIdentity(
        node_id=i.node_id,
        pair=i.pair,
        grpc_address=i.grpc_address,
        gossip_address=i.gossip_address,
        version=i.version,
        partner_address=i.partner_address,
        hostname=i.hostname,
        start_time_ns=i.start_time_ns,
        nsq_tcp_address=i.nsq_tcp_address,
        http_address=i.http_address,
    )


def status_to_pb(s: BrokerStatus) -> pb.BrokerStatus:
    return pb.BrokerStatus(
        broker=identity_to_pb(s.identity),
        liveness=cast(Any, int(s.liveness)),
        gossip_state=s.gossip_state,
        connected=s.connected,
        last_seen_ms_ago=_ms(s.last_seen_ago),
    )


class LookupService:
    """gRPC handlers; ``clock`` is the same monotonic clock the registry is driven with."""

    def __init__(
        self,
        registry: Registry,
        *,
        lookup_id: str,
        clock: Callable[[], float],
        gossip_enabled: bool = False,
    ) -> None:
        self.registry = registry
        self.lookup_id = lookup_id
        self.clock = clock
        self.gossip_enabled = gossip_enabled
        self.streams = 0
        self._probes: set[asyncio.Task[None]] = set()

    async def _call(self, context: Any, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await serve_rpc(context, fn)

    # ------------------------------------------------------------ registration
    def _ack(self, seq: int) -> pb.RegisterResponse:
        reg = self.registry
        return pb.RegisterResponse(
            seq=seq,
            lookup_id=self.lookup_id,
            heartbeat_interval_ms=_ms(reg.heartbeat_interval),
            inactivity_timeout_ms=_ms(reg.inactivity_timeout),
        )

    async def Register(
        self, requests: AsyncIterator[pb.RegisterRequest], context: Any
    ) -> AsyncIterator[pb.RegisterResponse]:
        node_id = ""
        token = 0
        address = ""
        self.streams += 1
        try:
            async for req in requests:
                if isinstance(req, Undecodable):
                    await req.error().abort(context)
                kind = req.WhichOneof("kind")
                try:
                    if not node_id:
                        if kind != "hello":
                            raise _invalid(
                                "the first message of a Register stream must be a hello",
                                code=broker_pb2.ERROR_CODE_NOT_IDENTIFIED,
                            )
                        identity = identity_from_pb(req.hello.broker)
                        topics = topics_from_pb(req.hello.topics)
                        token = self.registry.connect(identity, topics, self.clock())
                        node_id = identity.node_id
                        address = identity.grpc_address
                        log.info(
                            "broker %s (%s, pair %r) registered",
                            node_id,
                            identity.grpc_address,
                            identity.pair,
                        )
                    elif kind == "hello":
                        raise _invalid("hello sent twice on one Register stream")
                    elif kind == "state":
                        if not self.registry.update(
                            node_id, token, topics_from_pb(req.state.topics), self.clock()
                        ):
                            raise self._forgotten(node_id)
                    elif kind == "heartbeat":
                        if not self.registry.heartbeat(node_id, token, self.clock()):
                            raise self._forgotten(node_id)
                    else:
                        raise _invalid("a RegisterRequest must carry hello, state or heartbeat")
                except PairqError as exc:
                    await exc.abort(context)
                yield self._ack(req.seq)
        finally:
            self.streams -= 1
            if node_id:
                self.registry.disconnect(node_id, token, self.clock())
                log.info("broker %s registration stream closed", node_id)
                task = asyncio.get_running_loop().create_task(self._probe(node_id, token, address))
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)

    def _forgotten(self, node_id: str) -> PairqError:
        """The stream outlived its registration: it expired (the broker was silent for the
        inactivity timeout, e.g. paused, with the stream still open) or a newer stream of
        the same node replaced it. Heartbeats on it would be acknowledged and ignored, leaving
        the broker missing from every answer for good, so end the stream: the registrar
        reconnects with a full hello."""
        log.info("broker %s: registration expired or replaced; ending its old stream", node_id)
        return _invalid(
            f"the registration of {node_id!r} expired (silent for {self.registry.inactivity_timeout:g} s) "
            "or was replaced by a newer stream: open a new Register stream with a hello",
            code=broker_pb2.ERROR_CODE_NOT_IDENTIFIED,
        )

    async def close(self) -> None:
        """Cancel probes still running (the lookup is stopping)."""
        for t in list(self._probes):
            t.cancel()
        await asyncio.gather(*self._probes, return_exceptions=True)

    async def _probe(self, node_id: str, token: int, address: str) -> None:
        """After a stream closed: is anything still listening on the broker's port?
        A refused connect means the process is gone (a pause or a partition never refuses).
        A dying process may close its streams a moment before its listening socket, so an
        accepted connect is retried a few times while the registration stays closed; so is a
        connect reset (the listener closed with our connection still in its accept queue:
        the process is going, and the next connect is refused)."""
        try:
            host, port = parse_hostport(address)
        except ValueError:
            return
        delay = 0.05
        outcome = "still accepts connections"
        for _ in range(PROBE_ATTEMPTS):
            if not self.registry.closed(node_id, token):
                return  # reconnected, or replaced by a newer registration
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), PROBE_TIMEOUT
                )
            except ConnectionRefusedError:
                self.registry.refused(node_id, token)
                log.info(
                    "broker %s: connection refused after its stream closed: answering dead", node_id
                )
                return
            except (ConnectionResetError, ConnectionAbortedError) as exc:
                outcome = f"reset the connect ({exc!r})"
            except (OSError, TimeoutError) as exc:
                # unreachable host or timeout: leave it to gossip and the timers
                log.info(
                    "broker %s: probe of %s after its stream closed failed (%r): "
                    "liveness left to gossip and heartbeats",
                    node_id,
                    address,
                    exc,
                )
                return
            else:
                outcome = "still accepts connections"
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            await asyncio.sleep(delay)
            delay *= 2
        log.info(
            "broker %s: %s %s %d times after its stream closed: liveness left to gossip "
            "and heartbeats",
            node_id,
            address,
            outcome,
            PROBE_ATTEMPTS,
        )

    # ------------------------------------------------------------ queries
    async def LookupTopic(
        self, request: pb.LookupTopicRequest, context: Any
    ) -> pb.LookupTopicResponse:
        async def run() -> pb.LookupTopicResponse:
            check_topic(request.topic)
            ans = self.registry.lookup_topic(request.topic, self.clock())
            resp = pb.LookupTopicResponse(known=ans.known, channels=list(ans.channels))
            for p in ans.pairs:
                tp = resp.pairs.add(pair=p.pair)
                for b in p.brokers:
                    tp.brokers.add(
                        status=status_to_pb(b.status),
                        tombstoned=b.tombstoned,
                        has_topic=b.has_topic,
                    )
            return resp

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def ListTopics(
        self, request: pb.ListTopicsRequest, context: Any
    ) -> pb.ListTopicsResponse:
        return pb.ListTopicsResponse(topics=self.registry.topics(self.clock()))

    async def ListChannels(
        self, request: pb.ListChannelsRequest, context: Any
    ) -> pb.ListChannelsResponse:
        async def run() -> pb.ListChannelsResponse:
            check_topic(request.topic)
            return pb.ListChannelsResponse(
                channels=self.registry.channels(request.topic, self.clock())
            )

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def ListNodes(self, request: pb.ListNodesRequest, context: Any) -> pb.ListNodesResponse:
        resp = pb.ListNodesResponse(lookup_id=self.lookup_id, gossip_enabled=self.gossip_enabled)
        for n in self.registry.nodes(self.clock()):
            info = resp.nodes.add(
                status=status_to_pb(n.status), registered_ms_ago=_ms(n.registered_ago)
            )
            for name, chans in n.topics:
                info.topics.add(name=name, channels=list(chans))
            for topic, left in n.tombstones:
                info.tombstones.add(topic=topic, expires_in_ms=_ms(left))
        return resp

    # ------------------------------------------------------------ operators
    async def CreateTopicRegistration(
        self, request: pb.CreateTopicRegistrationRequest, context: Any
    ) -> pb.CreateTopicRegistrationResponse:
        async def run() -> pb.CreateTopicRegistrationResponse:
            self.registry.create_topic(check_topic(request.topic))
            return pb.CreateTopicRegistrationResponse()

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def DeleteTopicRegistration(
        self, request: pb.DeleteTopicRegistrationRequest, context: Any
    ) -> pb.DeleteTopicRegistrationResponse:
        async def run() -> pb.DeleteTopicRegistrationResponse:
            self.registry.delete_topic(check_topic(request.topic))
            return pb.DeleteTopicRegistrationResponse()

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def CreateChannelRegistration(
        self, request: pb.CreateChannelRegistrationRequest, context: Any
    ) -> pb.CreateChannelRegistrationResponse:
        async def run() -> pb.CreateChannelRegistrationResponse:
            self.registry.create_channel(check_topic(request.topic), check_channel(request.channel))
            return pb.CreateChannelRegistrationResponse()

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def DeleteChannelRegistration(
        self, request: pb.DeleteChannelRegistrationRequest, context: Any
    ) -> pb.DeleteChannelRegistrationResponse:
        async def run() -> pb.DeleteChannelRegistrationResponse:
            self.registry.delete_channel(check_topic(request.topic), check_channel(request.channel))
            return pb.DeleteChannelRegistrationResponse()

        return await self._call(context, run)  # type: ignore[no-any-return]

    async def TombstoneTopic(
        self, request: pb.TombstoneTopicRequest, context: Any
    ) -> pb.TombstoneTopicResponse:
        async def run() -> pb.TombstoneTopicResponse:
            check_topic(request.topic)
            if not request.node:
                raise _invalid("node is required (a broker's node id or gRPC address)")
            now = self.clock()
            try:
                node_id, expires = self.registry.tombstone(request.topic, request.node, now)
            except UnknownNodeError:
                raise PairqError(
                    f"no broker {echo(request.node)} is registered with this lookup "
                    "(give a node id or gRPC address from `pairq nodes`)",
                    code=broker_pb2.ERROR_CODE_NOT_FOUND,
                ) from None
            log.info("tombstoned topic %r on %s for %.0f s", request.topic, node_id, expires - now)
            return pb.TombstoneTopicResponse(node_id=node_id, expires_in_ms=_ms(expires - now))

        return await self._call(context, run)  # type: ignore[no-any-return]

    # ------------------------------------------------------------ wiring
    def generic_handler(self) -> Any:
        def unary(name: str) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                guard_unary(getattr(self, name)),
                request_deserializer=decoder(getattr(pb, name + "Request")),
                response_serializer=getattr(pb, name + "Response").SerializeToString,
            )

        handlers = {
            "Register": grpc.stream_stream_rpc_method_handler(
                self.Register,
                request_deserializer=decoder(pb.RegisterRequest),
                response_serializer=pb.RegisterResponse.SerializeToString,
            ),
        }
        for name in (
            "LookupTopic",
            "ListTopics",
            "ListChannels",
            "ListNodes",
            "CreateTopicRegistration",
            "DeleteTopicRegistration",
            "CreateChannelRegistration",
            "DeleteChannelRegistration",
            "TombstoneTopic",
        ):
            handlers[name] = unary(name)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)
