"""``Broker``: the daemon as an importable object (NSQ's ``nsqd.New(opts)``).

    broker = Broker(BrokerOptions(address="127.0.0.1:0", data_dir=tmp))
    await broker.start()      # opens the store, loads topics, serves gRPC
    ...                       # broker.address is the bound HOST:PORT
    await broker.stop()       # drain: end streams, flush progress, close the store

The CLI only builds options and runs this; tests run it in-process on port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pairq import __version__, grpcopts
from pairq.broker.channel import Channel
from pairq.broker.health import HealthWatcher, PublishHealth, publish_health
from pairq.broker.integrity import Integrity
from pairq.broker.limits import limit_exceeded
from pairq.broker.membership import Membership
from pairq.broker.options import BrokerOptions
from pairq.broker.pair import Pair
from pairq.broker.ports import (
    SOLO,
    Context,
    DeliveryFence,
    IdAllocator,
    Identity,
    Limits,
    Replicator,
)
from pairq.broker.publishing import Publisher
from pairq.broker.registration import LookupRegistrar
from pairq.broker.schema import TopicMeta
from pairq.broker.service import SERVICE, BrokerService, broker_limits
from pairq.broker.store import MALFORMED, STRUCTURE_ERRORS, CrashRecord, Store
from pairq.broker.topic import Topic
from pairq.errors import PairqError, StoreCorruptError
from pairq.names import is_ephemeral
from pairq.options import parse_hostport
from pairq.reflection import enable_reflection
from pairq.security.auth import BROKER_RULES
from pairq.security.server import ServerSecurity
from pairq.v1 import broker_pb2 as pb

STALL_CHECK_S = 5.0  # how often _watch_commits looks
STALL_REPORT_S = 20.0  # a committed head waiting this long is logged

log = logging.getLogger("pairq.broker")


def aside_name(path: Path) -> Path:
    """Where a corrupt store directory is moved: ``<name>.corrupt-<UTC time>``, with a
    counter when that name is taken (a store found corrupt while running is moved, and
    the restart may find the next one corrupt within the same second)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    return aside


class Broker:
    def __init__(self, options: BrokerOptions) -> None:
        self.options = options.validate()
        self.store = self._new_store()
        self.ident = Identity()  # node id and epoch, as every delivery carries them
        self.store_id = ""
        self.ids = IdAllocator()
        self.limits = Limits(
            max_channels=options.max_channels,
            max_backlog=options.max_backlog,
            max_attempts=options.max_attempts,
            max_rdy_count=options.max_rdy_count,
        )
        self.topics: dict[str, Topic] = {}
        # TLS and tokens (--tls-*, --auth-file); reload() on SIGHUP.
        self.security = ServerSecurity(options, BROKER_RULES)
        self.address = ""
        self.port = 0
        self.http_address = ""  # bound HOST:PORT of nsqd's HTTP API ("" when off)
        self.nsq_http: Any = None  # pairq.broker.nsq.http.NsqHttpServer with --http-address
        self.start_time_ns = time.time_ns()
        self._server: Any = None
        self.service: BrokerService | None = None
        self._health: Any = None
        self._health_watch: HealthWatcher | None = None
        self._creating: dict[str, asyncio.Future[Topic]] = {}
        self._serving = False  # False before start and once shutting down
        self._stopped = asyncio.Event()
        self.metrics: Any = None
        self.pair: Pair | None = None
        self.ctx: Context | None = None
        self.integrity: Integrity | None = None
        self.exit_code = 0  # non-zero when the broker stopped itself (a corrupt store)
        self.corrupt_store_moved_to = ""
        self.crash_record: CrashRecord | None = None  # armed by the daemon (pairq broker)
        self.publisher: Publisher | None = None
        self.membership: Membership | None = None
        self.registrar: LookupRegistrar | None = None
        self.tracer: Any = None  # an OpenTelemetry tracer when tracing is on
        self._rotator: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._register_later: asyncio.Task[None] | None = None
        self.nsq_tcp: Any = None  # pairq.broker.nsq.tcp.NsqTcpServer (--nsq-tcp-address)

    def _new_store(self) -> Store:
        o = self.options
        return Store(
            Path(o.data_dir) / "store",
            sync=o.sync,
            sync_interval_ms=o.sync_interval_ms,
            max_bytes=o.max_store_bytes,
            reserve_bytes=o.store_reserve_bytes,
            max_commit_batch=o.max_commit_batch,
            commit_log_bytes=o.commit_log_bytes,
            checkpoint_interval_ms=o.checkpoint_interval_ms,
            inline_commit_us=o.inline_commit_us,
        )

    def arm_crash_record(self) -> None:
        """Have a fatal signal (SIGSEGV, SIGBUS) leave a crash record in the store
        directory, which the next start handles as a corrupt store
        (:class:`~pairq.broker.store.CrashRecord`). For the daemon only: the fault
        handler is process-wide."""
        self.crash_record = CrashRecord(self.store.path)
        self.crash_record.arm()

    def _open_store(self) -> None:
        """Open the store; if LMDB finds its structure corrupt, handle it as a disk loss
        (``--on-corruption``): move it aside and start empty (a pair re-fills it), or
        refuse to start with the file and the recovery steps."""
        try:
            CrashRecord(self.store.path).check()  # the last process died of a signal?
            self.store.open()
            self.store.catalog.load()  # walks the catalog: a broken tree shows here
        except STRUCTURE_ERRORS as exc:
            path = self.store.path
            with contextlib.suppress(Exception):
                self.store.close()
            if self.options.on_corruption == "exit" or not self.options.partner:
                raise StoreCorruptError(
                    f"the store {path / 'data.mdb'} is corrupt ({type(exc).__name__}: {exc}); "
                    "this broker will not serve from it. Recovery: move the directory "
                    f"{path} aside (keep it for forensics) and start again; in a pair the "
                    "partner re-fills the empty store (--on-corruption=resilver does this "
                    "for you), a single broker must be restored from a backup"
                ) from exc
            aside = aside_name(path)
            log.error("the store %s is corrupt (%s: %s)", path, type(exc).__name__, exc)
            path.rename(aside)
            log.warning(
                "moved the corrupt store to %s (kept for forensics); starting with an empty "
                "store, which partner %s re-fills",
                aside,
                self.options.partner,
            )
            self.store = self._new_store()
            self.store.open()
            self.corrupt_store_moved_to = str(aside)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        from pairq.telemetry import setup_tracing, tracing_active

        setup_tracing("pairq-broker")
        if tracing_active():
            from opentelemetry import trace

            self.tracer = trace.get_tracer("pairq.broker")
        host, port = parse_hostport(self.options.address, what="--address")
        await asyncio.to_thread(self._open_store)
        try:
            await self._load(loop)
        except (*MALFORMED, *STRUCTURE_ERRORS) as exc:
            # A damaged key or value LMDB itself does not see (it checksums nothing),
            # or a damaged page of a tree the catalog's walk did not reach (make chaos,
            # bitflip seed 2: MDB_CORRUPTED reading a channel's finished seqs, and the
            # broker exited 1 at every start): the load would fail the same way each
            # time. Handled as a corrupt store: the crash record makes _open_store move
            # it aside (or refuse).
            log.critical(
                "the store %s holds malformed data (%s: %s)",
                self.store.path,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            await asyncio.to_thread(self.store.close)
            CrashRecord(self.store.path).write(
                f"malformed store data at start-up: {type(exc).__name__}: {exc}"
            )
            self.topics.clear()
            self.pair = None
            self.store = self._new_store()
            await asyncio.to_thread(self._open_store)
            await self._load(loop)
        await self._serve(loop, host, port)

    async def _load(self, loop: asyncio.AbstractEventLoop) -> None:
        """Everything start-up reads from the store: identity, the pair's standby
        image, the catalog, topics and channels with their progress."""
        # The store's id names this data dir: a wiped disk gets a new one, which is
        # how the partner knows to re-fill it (pairq.broker.pair), whatever --node-name says.
        self.store_id = self.store.meta.node_id()
        self.ident.node_id = self.options.node_name or self.store_id
        self.ident.epoch = self._next_epoch_sync()
        self.store.start(loop)
        if self.options.partner:
            self.pair = Pair(self)
            await asyncio.to_thread(self.pair.load)
        replicator: Replicator = self.pair if self.pair is not None else SOLO
        fence: DeliveryFence = self.pair if self.pair is not None else SOLO
        self.ctx = Context(
            store=self.store,
            replicator=replicator,
            fence=fence,
            ident=self.ident,
            ids=self.ids,
            limits=self.limits,
            topology_changed=self.topology_changed,
            tombstones=self.store.catalog.tombstones(),
        )
        self.integrity = Integrity(
            self.store,
            source=self.pair,
            topic_name=self._topic_name,
            topic_id=lambda n: t.meta.id if (t := self.topics.get(n)) is not None else None,
            owned_needed=self._owned_needed,
            repaired=lambda n: t.repaired() if (t := self.topics.get(n)) is not None else None,
            hole=lambda n, q: t.mark_hole(q) if (t := self.topics.get(n)) is not None else None,
            scrub_interval_s=self.options.scrub_interval,
            scrub_bytes_per_s=self.options.scrub_bytes_per_s,
        )
        self.ctx.integrity = self.integrity
        from pairq.telemetry import install_broker_tracing

        install_broker_tracing(self)  # deliver spans (pairq.telemetry), if tracing

        def fatal(exc: BaseException) -> None:  # from the writer thread
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._on_fatal, exc)

        self.store.on_fatal = fatal
        self.publisher = Publisher(
            options=self.options,
            store=self.store,
            replicator=replicator,
            get_topic=self.get_topic,
            topics=self.topics,
            check_serving=self.check_serving,
            node_id=lambda: self.node_id,
            tracer=lambda: self.tracer,
        )
        self.ids.next_topic, self.ids.next_channel = self.store.catalog.next_ids()
        for name, meta in self.store.catalog.load().items():
            topic = Topic(self.ctx, meta)
            self.topics[name] = topic
            for cmeta in meta.channels.values():
                topic.add_loaded_channel(cmeta)
        for topic in self.topics.values():
            for ch in topic.channels.values():
                ch.schedule_pump()

    async def _serve(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        assert self.publisher is not None  # made by _load
        publisher = self.publisher
        server = grpc.aio.server(
            options=grpcopts.server_options(self.options.max_msg_size),
            interceptors=self.security.interceptors(),
        )
        self.service = BrokerService(self, publisher)
        handlers = [self.service.generic_handler()]
        if self.pair is not None:
            handlers.append(self.pair.generic_handler())
        server.add_generic_rpc_handlers(tuple(handlers))
        self._health = (
            health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        enable_reflection((SERVICE, health.SERVICE_NAME), server)  # v1 and v1alpha
        bound = self.security.add_port(server, f"{host}:{port}")
        if bound == 0:
            self.store.close()
            raise OSError(f"cannot listen on {self.options.address} (address in use?)")
        self.port = bound
        self.address = f"{host}:{bound}"
        await server.start()
        self._server = server
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        from pairq.telemetry import otlp_metrics_wanted

        # OTLP export does not need the Prometheus endpoint (issue 16).
        if self.options.metrics_address or otlp_metrics_wanted():
            from pairq.telemetry import start_metrics

            self.metrics = start_metrics(self.options.metrics_address, self)
        self._serving = True
        if self.options.nsq_tcp_address:  # NSQ's TCP protocol V2 (issue 17)
            from pairq.broker.nsq.tcp import NsqTcpServer

            self.nsq_tcp = NsqTcpServer(self, self.service, publisher)
            try:
                await self.nsq_tcp.start()
            except OSError:
                self.nsq_tcp = None
                await self.stop(grace=0)
                raise
        if self.pair is not None:
            await self.pair.start_tcp()
            self.pair.start()
        # pairq.broker.health: BrokerService NOT_SERVING while publishes would be refused.
        self._health_watch = HealthWatcher(self._publish_health, self._set_publish_health)
        await self._health_watch.check()
        self._health_watch.start()
        if self.options.http_address:  # nsqd's HTTP API
            from pairq.broker.nsq.http import NsqHttpServer

            self.nsq_http = NsqHttpServer(
                self,
                publisher,
                self.service.actions,
                auth=self.security.auth,
                tls=self.security.tls,
                check_rate=self.service.check_rate,
                unhealthy=lambda: self._publish_health().reason,
            )
            try:
                self.http_address = await self.nsq_http.start(self.options.http_address)
            except OSError:
                self.nsq_http = None
                await self.stop(grace=0)
                raise
        if self.options.gossip_address:
            self.membership = Membership(self)
            await self.membership.start()
        if self.options.lookup:
            self.registrar = LookupRegistrar(
                self,
                list(self.options.lookup),
                gossip_address=self.membership.address if self.membership is not None else "",
            )
            if self.pair is not None and not self.pair.core.catalog_ready:
                # A new store serves nothing until it has the pair's catalog: announce
                # it to the lookups only then, or placement would send work here.
                self._register_later = asyncio.create_task(self._register_when_ready())
            else:
                self.registrar.start()
        self.store.index_ids = self.options.idempotency_window_s > 0
        if self.options.idempotency_window_s > 0:
            self._rotator = asyncio.create_task(self._rotate_ids())
        self._watcher = asyncio.create_task(self._watch_commits())
        assert self.integrity is not None
        self.integrity.start()
        loop = asyncio.get_running_loop()
        log.info(
            "broker %s listening on %s (data %s, event loop %s.%s)",
            self.node_id,
            self.address,
            self.options.data_dir,
            type(loop).__module__,
            type(loop).__name__,
        )

    def reload(self) -> None:
        """SIGHUP: re-read the TLS files and the auth file (connections stay up)."""
        self.security.reload()

    async def _register_when_ready(self) -> None:
        assert self.pair is not None and self.registrar is not None
        await self.pair.catalog_event.wait()
        if self.registrar is not None and self._serving:
            self.registrar.start()

    def _publish_health(self) -> PublishHealth:
        pair = self.pair
        return publish_health(
            self.store.full_reason,
            pair is not None,
            pair.min_copies if pair is not None else 1,
            pair is not None and pair.connected,
            pair is None or pair.core.catalog_ready,
        )

    async def _set_publish_health(self, serving: bool) -> None:
        if self._serving:
            s = health_pb2.HealthCheckResponse
            await self._set_health(s.SERVING if serving else s.NOT_SERVING, (SERVICE,))

    async def _set_health(self, status: Any, names: tuple[str, ...] = ("", SERVICE)) -> None:
        for name in names:
            res = self._health.set(name, status)
            if asyncio.iscoroutine(res):
                await res

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: refuse new work, end streams, flush progress, close the store."""
        if not self._serving and self._server is None:
            return
        grace = self.options.shutdown_grace_s if grace is None else grace
        self._serving = False
        if self.nsq_http is not None:
            await self.nsq_http.stop()
        if self._register_later is not None:
            self._register_later.cancel()
        if self.registrar is not None:
            await self.registrar.stop()
            self.registrar = None
        if self._health_watch is not None:
            await self._health_watch.stop()
        if self._health is not None:
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        for topic in self.topics.values():
            for ch in topic.channels.values():
                for sub in list(ch.subscribers.values()):
                    sub.finish_stream()
        if self.service is not None:
            self.service.close_publish_streams()
        if self.nsq_tcp is not None:
            await self.nsq_tcp.stop()
        if self.pair is not None:
            await self.pair.stop()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self.membership is not None:
            await self.membership.stop()
        for task in (self._rotator, self._watcher):
            if task is not None:
                task.cancel()
        for topic in self.topics.values():
            for ch in topic.channels.values():
                ch.flush()
                ch.close("broker shutting down")
        if self.metrics is not None:
            self.metrics.shutdown()
        if self.integrity is not None:
            await self.integrity.stop()
        await asyncio.to_thread(self.store.close)
        if self.crash_record is not None:
            self.crash_record.disarm()
        self._stopped.set()
        log.info("broker %s stopped", self.node_id)

    async def _watch_commits(self) -> None:
        """Log a topic whose committed head waits on a range that never settles
        (``Topic.stalled``): its deliveries would stop without any other sign."""
        told: set[tuple[str, int]] = set()
        while True:
            await asyncio.sleep(STALL_CHECK_S)
            now = time.monotonic()
            for topic in list(self.topics.values()):
                waited = topic.stalled(now)
                key = (topic.name, topic.committed_seq)
                if waited >= STALL_REPORT_S and key not in told:
                    told.add(key)
                    log.error(
                        "topic %r: seq %d has not settled for %.0f s while %d later range(s) "
                        "did; fan-out and the partner's re-fill of this topic wait behind it "
                        "(a bug: please report it with this log)",
                        topic.name,
                        topic.committed_seq,
                        waited,
                        topic.waiting_ranges,
                    )

    async def _rotate_ids(self) -> None:
        while True:
            await asyncio.sleep(self.options.idempotency_window_s)
            self.store.post(self.store.log.rotate_ids())

    @property
    def node_id(self) -> str:
        return self.ident.node_id

    @property
    def nsq_tcp_address(self) -> str:
        """Bound HOST:PORT of the NSQ TCP listener ("" when off); registration advertises it."""
        return str(self.nsq_tcp.address) if self.nsq_tcp is not None else ""

    @property
    def fence_port(self) -> DeliveryFence:
        """The pair (or ``SOLO``): whether deliveries may leave now."""
        return self.pair if self.pair is not None else SOLO

    @property
    def epoch(self) -> int:
        return self.ident.epoch

    def topology_changed(self) -> None:
        """A topic or channel appeared or went away: tell the lookups now, not at the
        next poll, so consumers discovering through them find it at once."""
        if self.registrar is not None:
            self.registrar.notify()

    def may_deliver(self) -> bool:
        """Whether this broker may deliver its owned messages now (the pair fence)."""
        return self.pair is None or self.pair.may_deliver()

    def on_lease_renewed(self) -> None:
        """The fence may have lifted: let every channel deliver again."""
        if not self._fenced_channels_pending:
            return
        for topic in self.topics.values():
            for ch in topic.channels.values():
                ch.schedule_pump()

    @property
    def _fenced_channels_pending(self) -> bool:
        return bool(self.topics)

    def _next_epoch_sync(self) -> int:
        epoch = self.store.meta.epoch() + 1
        self.store.write_now(self.store.meta.put_epoch(epoch))
        return epoch

    def next_epoch(self) -> asyncio.Future[None]:
        """Move to the next ownership epoch now; the future resolves once it is durable."""
        self.ident.epoch += 1
        return self.store.commit(self.store.meta.put_epoch(self.ident.epoch))

    def check_serving(self) -> None:
        if not self._serving:
            raise PairqError("broker is shutting down", code=pb.ERROR_CODE_UNAVAILABLE)

    # ------------------------------------------------------------ topics

    async def get_topic(
        self, name: str, *, create: bool = True, from_partner: bool = False
    ) -> Topic:
        """The topic, created if needed. ``from_partner``: created because the partner
        has it (replicated catalog), so the new-store gate does not apply."""
        topic = self.topics.get(name)
        if topic is not None:
            return topic
        if not create:
            raise PairqError(f"topic {name!r} does not exist", code=pb.ERROR_CODE_NOT_FOUND)
        if self.pair is not None and not from_partner and not is_ephemeral(name):
            self.pair.check_catalog()
        pending = self._creating.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        if len(self.topics) >= self.options.max_topics:
            raise limit_exceeded(
                "max_topics",
                self.options.max_topics,
                f"broker already has {len(self.topics)} topics",
            )
        assert self.ctx is not None
        fut: asyncio.Future[Topic] = asyncio.get_running_loop().create_future()
        self._creating[name] = fut
        try:
            tid = self.ids.topic()
            meta = TopicMeta(id=tid, name=name)
            if not is_ephemeral(name):
                cat = self.store.catalog
                await self.store.commit(
                    cat.put_topic(name, tid, False),
                    cat.put_next_ids(self.ids.next_topic, self.ids.next_channel),
                )
            topic = Topic(self.ctx, meta)
            self.topics[name] = topic
            fut.set_result(topic)
            self.topology_changed()
            return topic
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        finally:
            del self._creating[name]

    async def delete_topic(self, name: str) -> None:
        topic = self.topics.pop(name, None)
        if topic is None:
            return
        self.topology_changed()
        topic.close("topic deleted")
        topic.replicator.topic_deleted(name)
        writes = topic.deletion()
        if writes:
            await self.store.commit(*writes)

    async def set_paused(self, topic: Topic, channel: Channel | None, paused: bool) -> None:
        if channel is not None:
            await topic.set_channel_paused(channel, paused)
            return
        topic.pause() if paused else topic.unpause()
        if not topic.ephemeral:
            await self.store.commit(self.store.catalog.put_topic(topic.name, topic.meta.id, paused))

    # ------------------------------------------------------------ stats
    def _topic_name(self, topic_id: int) -> str | None:
        for t in self.topics.values():
            if t.meta.id == topic_id:
                return t.name
        return None

    def _owned_needed(self, topic: str, seq: int) -> bool:
        """Whether some durable channel of ``topic`` (or the topic, while it has none)
        still needs its record ``seq``."""
        t = self.topics.get(topic)
        if t is None:
            return False
        if seq >= t.next_seq:
            return False  # never reserved: a record at a key no append wrote (a flipped bit)
        durable = [c for c in t.channels.values() if c.durable]
        return not durable or any(c.needs(seq) for c in durable)

    def _on_fatal(self, exc: BaseException) -> None:
        """LMDB found its structure corrupt while running: stop serving from it now."""
        if self.exit_code:
            return
        self.exit_code = 3
        path = self.store.path
        log.critical("the store %s is corrupt (%s: %s): stopping", path, type(exc).__name__, exc)
        if self.options.on_corruption == "resilver" and self.options.partner:
            aside = aside_name(path)
            try:
                path.rename(aside)
                log.warning(
                    "moved the corrupt store to %s; restarted, this broker comes back empty and "
                    "partner %s re-fills it",
                    aside,
                    self.options.partner,
                )
            except OSError as err:
                log.error("cannot move the corrupt store aside: %s", err)
        asyncio.get_running_loop().create_task(self.stop(grace=1.0))

    def stats(
        self, topic: str = "", channel: str = "", clients: bool = True
    ) -> pb.GetStatsResponse:
        resp = pb.GetStatsResponse(
            broker_id=self.node_id,
            version=__version__,
            start_time_ns=self.start_time_ns,
            health="ok" if not self.store.full_reason else f"store full: {self.store.full_reason}",
            store_bytes=self.store.used_bytes,
            store_cap_bytes=self.store.max_bytes,
            limits=broker_limits(self.options),
        )
        if self.pair is not None:
            resp.pair.CopyFrom(self.pair.stats())
        if self.integrity is not None:
            resp.integrity.CopyFrom(self.integrity.stats())
        for t in self.topics.values():
            if topic and t.name != topic:
                continue
            ts = resp.topics.add(
                name=t.name,
                depth=t.depth,
                message_count=t.message_count,
                paused=t.paused,
                ephemeral=t.ephemeral,
            )
            for c in t.channels.values():
                if channel and c.name != channel:
                    continue
                core = c.core
                cs = ts.channels.add(
                    name=c.name,
                    depth=c.depth,
                    in_flight=core.in_flight,
                    deferred=core.deferred,
                    requeued=core.requeued,
                    timed_out=core.timed_out,
                    dead_lettered=c.dlq_count,
                    message_count=core.delivered,
                    finished=core.finished,
                    paused=core.paused,
                    ephemeral=c.ephemeral,
                )
                if clients:
                    for sub in c.subscribers.values():
                        try:
                            state = core.client(sub.cid)
                        except KeyError:
                            continue
                        cs.clients.add(
                            client_id=sub.client_id,
                            hostname=sub.hostname,
                            user_agent=sub.user_agent,
                            remote_address=sub.remote_address,
                            ready_count=state.rdy,
                            in_flight=state.in_flight,
                            message_count=state.delivered,
                            finish_count=state.finished,
                            requeue_count=state.requeued,
                            connected_at_ns=sub.connected_at_ns,
                        )
        return resp
