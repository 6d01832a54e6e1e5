"""``Lookup``: the topology daemon as an importable object (NSQ's ``nsqlookupd.New(opts)``).

    lookup = Lookup(LookupOptions(address="127.0.0.1:0"))
    await lookup.start()      # serves gRPC; joins gossip if --gossip-address is set
    ...                       # lookup.address is the bound HOST:PORT
    await lookup.stop()

Gossip events about members whose metadata says ``role="broker"`` are fed to
the registry by their ``node_id``, so a broker gossip declares dead is
answered dead at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pairq import grpcopts
from pairq.gossip import EventKind, Gossip, MemberEvent, MemberState, MemberView, NodeMeta
from pairq.lookup.options import LookupOptions
from pairq.lookup.registry import Registry
from pairq.lookup.service import SERVICE, LookupService
from pairq.options import parse_hostport
from pairq.reflection import enable_reflection
from pairq.security.auth import LOOKUP_RULES
from pairq.security.server import ServerSecurity

__all__ = ["Lookup"]

log = logging.getLogger("pairq.lookup")

_EVENT_STATE = {
    EventKind.JOIN: "alive",
    EventKind.ALIVE: "alive",
    EventKind.UPDATE: "alive",
    EventKind.SUSPECT: "suspect",
    EventKind.DEAD: "dead",
    EventKind.LEFT: "left",
}
SWEEP_INTERVAL = 1.0
JOIN_RETRY = 2.0


class Lookup:
    """One lookup: registry + gRPC service + (optional) gossip member."""

    def __init__(
        self, options: LookupOptions, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.options = options.validate()
        self.clock = clock
        self.registry = Registry(
            inactivity_timeout=options.inactivity_timeout_s,
            tombstone_lifetime=options.tombstone_lifetime_s,
            heartbeat_interval=options.heartbeat_interval_ms / 1000.0,
        )
        self.address = ""
        self.http_address = ""  # bound HOST:PORT of nsqlookupd's HTTP API ("" when off)
        self.nsq_http: Any = None  # pairq.lookup.nsqhttp.NsqLookupHttpServer
        self.lookup_id = options.node_name
        self.gossip: Gossip | None = None
        self.service: LookupService | None = None
        self._server: Any = None
        self.metrics: Any = None  # pairq.telemetry.MetricsHandle with --metrics-address or OTLP
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        # TLS and tokens (--tls-*, --auth-file); reload() on SIGHUP.
        self.security = ServerSecurity(options, LOOKUP_RULES)

    def reload(self) -> None:
        """SIGHUP: re-read the TLS files and the auth file (connections stay up)."""
        self.security.reload()

    @property
    def gossip_address(self) -> str:
        """The bound gossip HOST:PORT, or "" with gossip off."""
        if self.gossip is None:
            return ""
        return f"{self.gossip.address[0]}:{self.gossip.address[1]}"

    async def start(self) -> None:
        host, port = parse_hostport(self.options.address, what="--address")
        server = grpc.aio.server(
            options=grpcopts.server_options(), interceptors=self.security.interceptors()
        )
        bound = self.security.add_port(server, f"{host}:{port}")
        if bound == 0:
            raise OSError(f"cannot listen on {self.options.address} (address in use?)")
        self.address = f"{host}:{bound}"
        self.lookup_id = self.options.node_name or f"lookup-{host}-{bound}"
        if self.options.gossip_address:
            await self._start_gossip()
        self.service = LookupService(
            self.registry,
            lookup_id=self.lookup_id,
            clock=self.clock,
            gossip_enabled=self.gossip is not None,
        )
        server.add_generic_rpc_handlers((self.service.generic_handler(),))
        hs = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        enable_reflection((SERVICE, health.SERVICE_NAME), server)  # v1 and v1alpha
        await server.start()
        for name in ("", SERVICE):
            res = hs.set(name, health_pb2.HealthCheckResponse.SERVING)
            if asyncio.iscoroutine(res):
                await res
        self._server = server
        from pairq.telemetry import otlp_metrics_wanted

        if self.options.metrics_address or otlp_metrics_wanted():
            from pairq.telemetry import start_lookup_metrics

            self.metrics = start_lookup_metrics(self.options.metrics_address, self)
        if self.options.http_address:  # nsqlookupd's HTTP API
            from pairq.lookup.nsqhttp import NsqLookupHttpServer

            self.nsq_http = NsqLookupHttpServer(
                self.registry, clock=self.clock, auth=self.security.auth, tls=self.security.tls
            )
            self.http_address = await self.nsq_http.start(self.options.http_address)
        self._tasks.append(asyncio.create_task(self._sweep(), name="lookup-sweep"))
        log.info(
            "lookup %s listening on %s (gossip %s)",
            self.lookup_id,
            self.address,
            self.gossip_address or "off",
        )

    async def _start_gossip(self) -> None:
        o = self.options
        cfg = o.gossip_config()
        meta = NodeMeta(
            role="lookup",
            node_id=self.lookup_id,
            grpc_address=self.address,
            start_epoch_ms=int(time.time() * 1000),
        )
        g = Gossip(cfg, meta)
        g.subscribe(self._on_gossip)
        await g.start()
        self.gossip = g
        self._sync_members(g.members())
        if o.join:
            self._tasks.append(asyncio.create_task(self._join(list(o.join)), name="lookup-join"))

    async def _join(self, seeds: list[str]) -> None:
        assert self.gossip is not None
        while True:
            answered = await self.gossip.join(seeds)
            if answered:
                self._sync_members(self.gossip.members())
                log.info("gossip joined through %d of %d seeds", answered, len(seeds))
                return
            log.warning(
                "no gossip seed answered (%s); retrying in %.0f s", ", ".join(seeds), JOIN_RETRY
            )
            await asyncio.sleep(JOIN_RETRY)

    def _sync_members(self, members: list[MemberView]) -> None:
        now = self.clock()
        for m in members:
            if m.meta.role == "broker" and m.meta.node_id:
                self.registry.gossip(m.meta.node_id, MemberState(m.state).name.lower(), now)

    def _on_gossip(self, event: MemberEvent) -> None:
        meta = event.member.meta
        if meta.role != "broker" or not meta.node_id:
            return
        state = _EVENT_STATE.get(event.kind)
        if state is None:
            return
        self.registry.gossip(meta.node_id, state, self.clock())
        if state in ("dead", "left", "suspect"):
            log.info("gossip: broker %s is %s", meta.node_id, state)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            for node_id in self.registry.expire(self.clock()):
                log.info(
                    "registration of broker %s expired (silent for %.0f s)",
                    node_id,
                    self.registry.inactivity_timeout,
                )

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving; leave gossip gracefully."""
        if self._stopped.is_set():
            return
        grace = self.options.shutdown_grace_s if grace is None else grace
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self.nsq_http is not None:
            await self.nsq_http.stop()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self.service is not None:
            await self.service.close()
        if self.gossip is not None:
            await self.gossip.stop(leave=True)
        if self.metrics is not None:
            self.metrics.shutdown()
            self.metrics = None
        self._stopped.set()
        log.info("lookup %s stopped", self.lookup_id)
