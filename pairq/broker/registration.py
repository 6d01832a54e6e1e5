"""``LookupRegistrar``: keeps a broker registered with every lookup.

One long-lived ``LookupService.Register`` stream per lookup, each in its own
task: a hello with the broker's identity and every topic (with channels), then
the full topic state whenever it changes (the broker's topics are polled every
``poll_interval`` seconds, or at once after :meth:`LookupRegistrar.notify`), and
heartbeats in between at the interval the lookup asks for. A stream that breaks
or stops acknowledging is reopened with exponential backoff (with jitter),
forever.

A lookup that is down, slow or wrong never affects publishing or consuming:
the registrar only reads ``broker.topics`` and runs in its own tasks; every
failure is caught, logged and retried.

    registrar = LookupRegistrar(broker, ["127.0.0.1:4160", "127.0.0.1:4161"])
    registrar.start()         # after broker.start() (needs broker.address)
    ...
    await registrar.stop()    # before broker.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import grpc

from pairq import __version__, grpcopts
from pairq.broker.options import BrokerOptions, read_token_file
from pairq.broker.pair import Pair
from pairq.broker.topic import Topic
from pairq.v1 import lookup_pb2 as pb


class RegistrationHost(Protocol):
    """What the registrar reads of its broker."""

    options: BrokerOptions
    address: str
    start_time_ns: int

    # Bound HOST:PORT of the NSQ TCP listener and of nsqd's HTTP API; "" when off.
    @property
    def nsq_tcp_address(self) -> str: ...

    @property
    def http_address(self) -> str: ...

    @property
    def node_id(self) -> str: ...

    @property
    def pair(self) -> Pair | None: ...

    @property
    def topics(self) -> Mapping[str, Topic]: ...


__all__ = ["LookupRegistrar", "advertised"]

log = logging.getLogger("pairq.registration")

_METHOD = "/pairq.v1.LookupService/Register"
TopicState = tuple[tuple[str, tuple[str, ...]], ...]


_WILDCARD = ("", "0.0.0.0", "::", "[::]")


def advertised(address: str) -> str:
    """A bound HOST:PORT as clients should dial it: a wildcard host (``0.0.0.0``,
    ``::``) becomes this machine's host name; "" stays "" (the listener is off)."""
    if not address:
        return ""
    host, _, port = address.rpartition(":")
    if host in _WILDCARD:
        host = socket.gethostname()
    return f"{host}:{port}"


class LookupRegistrar:
    """Registers ``broker`` with each of ``lookup_addresses`` (HOST:PORT)."""

    def __init__(
        self,
        broker: RegistrationHost,
        lookup_addresses: Sequence[str],
        *,
        gossip_address: str = "",
        poll_interval: float = 1.0,
        heartbeat_interval: float | None = None,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        ack_timeout: float = 5.0,
    ) -> None:
        self.broker = broker
        self.lookups = list(dict.fromkeys(lookup_addresses))
        self.gossip_address = gossip_address
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.ack_timeout = ack_timeout
        # address -> True while a stream is open and its hello was acknowledged.
        self.connected: dict[str, bool] = dict.fromkeys(self.lookups, False)
        # address -> number of hellos acknowledged (registrations made), for stats and tests.
        self.registrations: dict[str, int] = dict.fromkeys(self.lookups, 0)
        self._tasks: list[asyncio.Task[None]] = []
        self._changed: dict[str, asyncio.Event] = {}
        self._closing = False
        self._last_ack: dict[str, float] = {}
        self._hostname = socket.gethostname()
        tf = broker.options.lookup_token_file
        self._token = read_token_file(tf) if tf else ""  # --lookup-token-file

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start one task per lookup (call from the broker's event loop, after ``broker.start()``)."""
        if self._tasks:
            raise RuntimeError("already started")
        for address in self.lookups:
            self._changed[address] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._run(address), name=f"register-{address}"))

    async def stop(self) -> None:
        """Close every stream (the lookups then see the broker disconnect)."""
        self._closing = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    def notify(self) -> None:
        """Topics or channels changed: send the new state now rather than at the next poll."""
        for ev in self._changed.values():
            ev.set()

    # ------------------------------------------------------------ state
    def identity(self) -> pb.BrokerIdentity:
        b = self.broker
        pair = b.pair
        return pb.BrokerIdentity(
            node_id=b.node_id,
            pair=pair.name if pair is not None else b.options.pair,
            grpc_address=b.address,
            gossip_address=self.gossip_address,
            version=__version__,
            partner_address=pair.partner_address if pair is not None else b.options.partner,
            hostname=self._hostname,
            start_time_ns=b.start_time_ns,
            # What NSQ clients dial (the bound ports, so port 0 in a flag works).
            nsq_tcp_address=advertised(b.nsq_tcp_address),
            http_address=advertised(b.http_address),
        )

    def snapshot(self) -> TopicState:
        """The broker's topics and channels now, in a comparable form."""
        return tuple(
            sorted(
                (name, tuple(sorted(topic.channels)))
                for name, topic in list(self.broker.topics.items())
            )
        )

    @staticmethod
    def _topics_pb(state: TopicState) -> list[pb.TopicRegistration]:
        return [pb.TopicRegistration(name=n, channels=list(c)) for n, c in state]

    # ------------------------------------------------------------ per lookup
    async def _run(self, address: str) -> None:
        backoff = self.initial_backoff
        while not self._closing:
            before = self.registrations[address]
            try:
                await self._session(address)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.debug("lookup %s: %s", address, exc.code())
            except Exception as exc:
                log.debug("lookup %s: %r", address, exc)
            finally:
                self.connected[address] = False
            if self.registrations[address] != before:
                backoff = self.initial_backoff
                log.info("lost registration with lookup %s; reconnecting", address)
            delay = backoff * random.uniform(0.5, 1.0)
            backoff = min(self.max_backoff, backoff * 2)
            await asyncio.sleep(delay)

    async def _session(self, address: str) -> None:
        """One stream, until it breaks (raises) or the registrar stops."""
        changed = self._changed[address]
        security = getattr(self.broker, "security", None)
        async with (
            security.channel(address, grpcopts.client_options(), token=self._token)
            if security is not None
            else grpc.aio.insecure_channel(address, options=grpcopts.client_options())
        ) as channel:
            call = channel.stream_stream(
                _METHOD,
                request_serializer=pb.RegisterRequest.SerializeToString,
                response_deserializer=pb.RegisterResponse.FromString,
            )()
            seq = 1
            state = self.snapshot()
            await call.write(
                pb.RegisterRequest(
                    seq=seq,
                    hello=pb.RegisterHello(broker=self.identity(), topics=self._topics_pb(state)),
                )
            )
            first = await asyncio.wait_for(call.read(), self.ack_timeout)
            if first is grpc.aio.EOF:
                raise ConnectionError("lookup closed the stream before acknowledging hello")
            hb = self.heartbeat_interval or max(0.01, first.heartbeat_interval_ms / 1000.0 or 1.0)
            last_ack = time.monotonic()
            self.connected[address] = True
            self.registrations[address] += 1
            log.info("registered with lookup %s (%s)", address, first.lookup_id)

            acks: asyncio.Task[Any] = asyncio.create_task(self._read_acks(call, address))
            last_sent = time.monotonic()
            try:
                while True:
                    changed.clear()
                    wait = min(self.poll_interval, hb)
                    waiter = asyncio.create_task(changed.wait())
                    done, _ = await asyncio.wait(
                        {acks, waiter}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                    )
                    waiter.cancel()
                    if acks in done:
                        acks.result()  # raises the stream's error, if any
                        raise ConnectionError("lookup ended the registration stream")
                    now = time.monotonic()
                    last_ack = max(last_ack, self._last_ack.get(address, 0.0))
                    if now - last_ack > max(self.ack_timeout, 3 * hb):
                        raise TimeoutError(f"lookup {address} stopped acknowledging")
                    new = self.snapshot()
                    seq += 1
                    if new != state:
                        state = new
                        await call.write(
                            pb.RegisterRequest(
                                seq=seq, state=pb.RegisterState(topics=self._topics_pb(state))
                            )
                        )
                        last_sent = now
                    elif now - last_sent >= hb * 0.9:
                        await call.write(
                            pb.RegisterRequest(seq=seq, heartbeat=pb.RegisterHeartbeat())
                        )
                        last_sent = now
            finally:
                acks.cancel()
                with contextlib.suppress(BaseException):
                    await acks
                call.cancel()

    async def _read_acks(self, call: Any, address: str) -> None:
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            self._last_ack[address] = time.monotonic()
