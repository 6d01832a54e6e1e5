"""``Broker``: the daemon as an importable object (NSQ's ``nsqd.New(opts)``).

    broker = Broker(BrokerOptions(address="127.0.0.1:0", data_dir=tmp))
    await broker.start()      # opens the store, loads topics, serves gRPC
    ...                       # broker.address is the bound HOST:PORT
    await broker.stop()       # drain: end streams, flush progress, close the store

The CLI only builds options and runs this; tests run it in-process on port 0.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from pathlib import Path
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pairq import __version__, grpcopts
from pairq.broker import store as st
from pairq.broker.channel import Channel
from pairq.broker.channel_core import Entry
from pairq.broker.membership import Membership
from pairq.broker.options import BrokerOptions
from pairq.broker.pair import Pair
from pairq.broker.registration import LookupRegistrar
from pairq.broker.service import SERVICE, BrokerService
from pairq.broker.topic import Topic
from pairq.errors import PairqError
from pairq.names import is_ephemeral
from pairq.options import parse_hostport
from pairq.v1 import broker_pb2 as pb

log = logging.getLogger("pairq.broker")


class Broker:
    def __init__(self, options: BrokerOptions) -> None:
        self.options = options.validate()
        self.store = st.Store(
            Path(options.data_dir) / "store",
            sync=options.sync,
            sync_interval_ms=options.sync_interval_ms,
            max_bytes=options.max_store_bytes,
            reserve_bytes=options.store_reserve_bytes,
            max_commit_batch=options.max_commit_batch,
        )
        self.node_id = ""
        self.store_id = ""
        self.epoch = 0
        self.topics: dict[str, Topic] = {}
        self.address = ""
        self.port = 0
        self.start_time_ns = time.time_ns()
        self._server: Any = None
        self.service: BrokerService | None = None
        self._health: Any = None
        self._next_topic_id = 1
        self._next_channel_id = 1
        self._creating: dict[str, asyncio.Future[Topic]] = {}
        self._accepting = False
        self._stopped = asyncio.Event()
        self._ephemeral_dlq: dict[int, list[tuple[int, int, bytes]]] = {}
        self.metrics: Any = None
        self.pair: Pair | None = None
        self.membership: Membership | None = None
        self.registrar: LookupRegistrar | None = None
        self.tracer: Any = None  # an OpenTelemetry tracer when tracing is on
        self.pending_ids: dict[bytes, asyncio.Future[int]] = {}
        self._rotator: asyncio.Task[None] | None = None
        self._register_later: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        from pairq.telemetry import setup_tracing, tracing_active

        setup_tracing("pairq-broker")
        if tracing_active():
            from opentelemetry import trace

            self.tracer = trace.get_tracer("pairq.broker")
        host, port = parse_hostport(self.options.address, what="--address")
        await asyncio.to_thread(self.store.open)
        # The store's id names this data dir: a wiped disk gets a new one, which is
        # how the partner knows to re-fill it (pairq.broker.pair), whatever --node-name says.
        self.store_id = self.store.node_id()
        self.node_id = self.options.node_name or self.store_id
        self.epoch = self._next_epoch_sync()
        self.store.start(loop)
        if self.options.partner:
            self.pair = Pair(self)
            await asyncio.to_thread(self.pair.load)
        self._next_topic_id, self._next_channel_id = self.store.next_ids()
        for name, meta in self.store.load_catalog().items():
            topic = Topic(self, meta)
            self.topics[name] = topic
            for cmeta in meta.channels.values():
                topic.add_loaded_channel(cmeta)
        for topic in self.topics.values():
            for ch in topic.channels.values():
                ch.schedule_pump()

        server = grpc.aio.server(options=grpcopts.server_options(self.options.max_msg_size))
        self.service = BrokerService(self)
        handlers = [self.service.generic_handler()]
        if self.pair is not None:
            handlers.append(self.pair.generic_handler())
        server.add_generic_rpc_handlers(tuple(handlers))
        self._health = (
            health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            bound = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:  # grpcio >= 1.60 raises instead of returning 0
            bound = 0
        if bound == 0:
            self.store.close()
            raise OSError(f"cannot listen on {self.options.address} (address in use?)")
        self.port = bound
        self.address = f"{host}:{bound}"
        await server.start()
        self._server = server
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.options.metrics_address:
            from pairq.telemetry import start_metrics

            self.metrics = start_metrics(self.options.metrics_address, self)
        self._accepting = True
        if self.pair is not None:
            await self.pair.start_tcp()
            self.pair.start()
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
        log.info(
            "broker %s listening on %s (data %s)", self.node_id, self.address, self.options.data_dir
        )

    async def _register_when_ready(self) -> None:
        assert self.pair is not None and self.registrar is not None
        await self.pair.catalog_event.wait()
        if self.registrar is not None and self._accepting:
            self.registrar.start()

    async def _set_health(self, status: Any) -> None:
        for name in ("", SERVICE):
            res = self._health.set(name, status)
            if asyncio.iscoroutine(res):
                await res

    async def wait(self) -> None:
        await self._stopped.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: refuse new work, end streams, flush progress, close the store."""
        if not self._accepting and self._server is None:
            return
        grace = self.options.shutdown_grace_s if grace is None else grace
        self._accepting = False
        if self._register_later is not None:
            self._register_later.cancel()
        if self.registrar is not None:
            await self.registrar.stop()
            self.registrar = None
        if self._health is not None:
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        for topic in self.topics.values():
            for ch in topic.channels.values():
                for sub in list(ch.subscribers.values()):
                    sub.finish_stream()
        if self.service is not None:
            self.service.close_publish_streams()
        if self.pair is not None:
            await self.pair.stop()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self.membership is not None:
            await self.membership.stop()
        if self._rotator is not None:
            self._rotator.cancel()
        for topic in self.topics.values():
            for ch in topic.channels.values():
                ch.flush()
                ch.close("broker shutting down")
        if self.metrics is not None:
            self.metrics.shutdown()
        await asyncio.to_thread(self.store.close)
        self._stopped.set()
        log.info("broker %s stopped", self.node_id)

    async def _rotate_ids(self) -> None:
        while True:
            await asyncio.sleep(self.options.idempotency_window_s)
            self.store.submit(("rotate_ids", 1 - self.store.ids_gen), wait=False)

    def current_copies(self, topic: Topic) -> int:
        if topic.ephemeral:
            return 0
        if self.pair is not None and self.pair.connected:
            return 2
        return 1

    def topology_changed(self) -> None:
        """A topic or channel appeared or went away: tell the lookups now, not at the
        next poll, so consumers discovering through them find it at once."""
        if self.registrar is not None:
            self.registrar.notify()

    def may_deliver(self) -> bool:
        """Whether this broker may deliver its owned messages now (the pair fence)."""
        return self.pair is None or self.pair.may_deliver()

    def fence(self) -> int:
        """The pair's fence generation (0 without a pair): deliveries queued under an
        older one are not sent (see Pair.fence)."""
        return 0 if self.pair is None else self.pair.fence

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
        raw = self.store.get(st.META, b"epoch")
        epoch = (struct.unpack(">Q", raw)[0] if raw else 0) + 1
        self.store.write_now([("put", st.META, b"epoch", struct.pack(">Q", epoch))])
        return int(epoch)

    def next_epoch(self) -> asyncio.Future[Any]:
        """Move to the next ownership epoch now; the future resolves once it is durable."""
        self.epoch += 1
        return self.store.submit_many([("put", st.META, b"epoch", struct.pack(">Q", self.epoch))])

    def check_accepting(self) -> None:
        if not self._accepting:
            raise PairqError("broker is shutting down", code=pb.ERROR_CODE_UNAVAILABLE)

    # ------------------------------------------------------------ topics
    def alloc_channel_id(self) -> int:
        cid = self._next_channel_id
        self._next_channel_id += 1
        return cid

    def packed_ids(self) -> bytes:
        return struct.pack(">II", self._next_topic_id, self._next_channel_id)

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
            raise PairqError(
                f"broker already has {len(self.topics)} topics (--max-topics={self.options.max_topics})",
                code=pb.ERROR_CODE_TOO_MANY,
            )
        fut: asyncio.Future[Topic] = asyncio.get_running_loop().create_future()
        self._creating[name] = fut
        try:
            tid = self._next_topic_id
            self._next_topic_id += 1
            meta = st.TopicMeta(id=tid, name=name)
            if not is_ephemeral(name):
                await self.store.submit_many(
                    [
                        (
                            "put",
                            st.CATALOG,
                            st.catalog_topic_key(name),
                            st.pack_catalog(tid, False),
                        ),
                        ("put", st.META, b"ids", self.packed_ids()),
                    ]
                )
            topic = Topic(self, meta)
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
        if self.pair is not None and not topic.ephemeral:
            self.pair.topic_deleted(name)
        if not topic.ephemeral:
            ops: list[tuple[Any, ...]] = [
                ("del", st.CATALOG, st.catalog_topic_key(name)),
                ("drop", st.MSGS, st.prefix(topic.meta.id)),
                ("drop", st.CATALOG, b"C" + st.prefix(topic.meta.id)),
            ]
            for ch in topic.channels.values():
                cid = ch.meta.id
                ops += [
                    ("del", st.FLOORS, st.floor_key(cid)),
                    ("drop", st.FINS, st.prefix(cid)),
                    ("drop", st.STATES, st.prefix(cid)),
                    ("drop", st.DLQ, st.prefix(cid)),
                ]
            await self.store.submit_many(ops)

    async def set_paused(self, topic: Topic, channel: Channel | None, paused: bool) -> None:
        if channel is None:
            topic.pause() if paused else topic.unpause()
            if not topic.ephemeral:
                await self.store.submit_many(
                    [
                        (
                            "put",
                            st.CATALOG,
                            st.catalog_topic_key(topic.name),
                            st.pack_catalog(topic.meta.id, paused),
                        )
                    ]
                )
        else:
            channel.meta.paused = paused
            if paused:
                channel.pause()
            elif not topic.paused:
                channel.unpause()
            if channel.durable:
                await self.store.submit_many(
                    [
                        (
                            "put",
                            st.CATALOG,
                            st.catalog_channel_key(topic.meta.id, channel.name),
                            st.pack_catalog(channel.meta.id, paused),
                        )
                    ]
                )

    # ------------------------------------------------------------ ephemeral dead letters
    def note_ephemeral_dead(self, channel: Channel, entry: Entry) -> None:
        lst = self._ephemeral_dlq.setdefault(id(channel), [])
        from pairq.broker import wire

        lst.append(
            (len(lst), entry.attempts, wire.encode_prefix(entry.id) + cast(bytes, entry.payload))
        )
        del lst[:-1000]

    def ephemeral_dead(self, channel: Channel) -> list[tuple[int, int, bytes]]:
        return list(self._ephemeral_dlq.get(id(channel), []))

    def ephemeral_dead_remove(self, channel: Channel, ids: set[bytes]) -> None:
        lst = self._ephemeral_dlq.get(id(channel), [])
        lst[:] = [x for x in lst if x[2][:16] not in ids]

    # ------------------------------------------------------------ stats
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
        )
        if self.pair is not None:
            resp.pair.CopyFrom(self.pair.stats())
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
