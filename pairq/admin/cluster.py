"""What the console knows about the cluster, and the actions it can take on it.

:class:`ClusterView` polls every lookup (``ListNodes``) and every broker it
learns of (``GetStats``), each with a short deadline, and builds a
:class:`Snapshot`: plain JSON-able dicts, the same data the HTML pages render
and ``/api/`` serves. Rules:

- A broker is listed when any lookup lists it, or when it was given with
  ``--broker``, or once it was seen: a broker that every lookup dropped stays
  listed, **dead**, until the console restarts (``pairq nodes`` forgets it).
- A broker's ``state`` is ``dead`` when the console cannot reach it (its
  ``GetStats`` fails) or every lookup answers it dead; ``suspect`` when the
  best lookup answer is suspect; else ``alive``. ``lookup_liveness`` and
  ``reachable`` keep both views apart.
- A pair is ``healthy`` when both brokers are alive, replicate to each other
  and each holds a lease (or runs solo after a takeover is *not* healthy: it
  is ``degraded``, as is any pair with a broker not alive).
- Topic and channel numbers are summed over the brokers that answered;
  ``per_broker`` rows show each broker's own numbers (a topic lives on both
  brokers of a pair: the owner's messages and the partner's standby copies
  are counted by the owner only, as GetStats reports them).
- Rates come from :class:`~pairq.admin.rates.RateHistory`: topic ``pub`` rate
  from ``message_count``, channel ``out`` rate from delivered ``message_count``.

Actions go to every reachable broker that holds the topic (or the channel):
both halves of a pair keep their own pause flags, queues and dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from pairq import grpcopts
from pairq.admin.metrics import AdminCounters
from pairq.admin.rates import RateHistory
from pairq.client.discovery import Discovery
from pairq.errors import PairqError
from pairq.security.client import NONE, ClientSecurity
from pairq.v1 import broker_pb2 as bpb
from pairq.v1 import broker_pb2_grpc as bpbg
from pairq.v1 import lookup_pb2 as lpb

__all__ = ["ActionError", "ClusterView", "Snapshot"]

log = logging.getLogger("pairq.admin")

_LIVENESS = {
    lpb.LIVENESS_ALIVE: "alive",
    lpb.LIVENESS_SUSPECT: "suspect",
    lpb.LIVENESS_DEAD: "dead",
}


class ActionError(Exception):
    """An action could not be carried out (bad input, or no broker took it)."""


@dataclass
class Snapshot:
    """One poll's view. Every field is JSON-able."""

    taken_at: float = 0.0  # Unix seconds
    lookups: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    topics: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)

    def topic(self, name: str) -> dict[str, Any] | None:
        return next((t for t in self.topics if t["name"] == name), None)

    def channel(self, topic: str, name: str) -> dict[str, Any] | None:
        t = self.topic(topic)
        if t is None:
            return None
        return next((c for c in t["channels"] if c["name"] == name), None)

    def overview(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at,
            "nodes": len(self.nodes),
            "nodes_alive": sum(1 for n in self.nodes if n["state"] == "alive"),
            "nodes_dead": sum(1 for n in self.nodes if n["state"] == "dead"),
            "pairs": len(self.pairs),
            "pairs_healthy": sum(1 for p in self.pairs if p["healthy"]),
            "topics": len(self.topics),
            "channels": sum(len(t["channels"]) for t in self.topics),
            "depth": sum(t["depth"] for t in self.topics),
            "lookups": len(self.lookups),
            "lookups_up": sum(1 for lk in self.lookups if lk["ok"]),
            "alerts": self.alerts,
        }


def _channel_options() -> list[tuple[str, Any]]:
    # Reconnect fast: a broker that comes back should show alive at the next poll.
    return [
        *grpcopts.client_options(),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class ClusterView:
    """Polls lookups and brokers (module docstring); ``snapshot`` is the latest view."""

    def __init__(
        self,
        lookups: list[str],
        brokers: list[str] | None = None,
        *,
        interval: float = 1.0,
        timeout: float = 1.0,
        history: RateHistory | None = None,
        security: ClientSecurity = NONE,
    ) -> None:
        if not lookups and not brokers:
            raise ValueError("the console needs at least one lookup or broker")
        self.lookups = list(dict.fromkeys(lookups))
        self.static_brokers = list(dict.fromkeys(brokers or []))
        self.interval = interval
        self.timeout = timeout
        self.history = history or RateHistory()
        self.security = security  # the console's own token / TLS for lookups and brokers
        self.snapshot = Snapshot()
        self._known: dict[str, dict[str, Any]] = {}  # node id -> last lookup view
        self._channels: dict[str, Any] = {}
        self._discovery = (
            Discovery(self.lookups, timeout=timeout, security=security) if self.lookups else None
        )
        self._task: asyncio.Task[None] | None = None
        self._poll_lock = asyncio.Lock()
        self.polled = asyncio.Event()
        self.counters = AdminCounters()  # pairq.admin.metrics reads them

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="admin-poll")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._discovery is not None:
            await self._discovery.close()
        for ch in self._channels.values():
            with contextlib.suppress(Exception):
                await ch.close()
        self._channels.clear()

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:
                self.counters.poll_failed()
                log.exception("admin poll failed")
            await asyncio.sleep(self.interval)

    # ------------------------------------------------------------ transport
    def _chan(self, address: str) -> Any:
        ch = self._channels.get(address)
        if ch is None:
            ch = self.security.channel(address, _channel_options())
            self._channels[address] = ch
        return ch

    def broker_stub(self, address: str) -> bpbg.BrokerServiceStub:
        return bpbg.BrokerServiceStub(self._chan(address))

    async def _lookup_call(self, address: str, method: str, req: Any, resp_type: Any) -> Any:
        rpc = self._chan(address).unary_unary(
            f"/pairq.v1.LookupService/{method}",
            request_serializer=type(req).SerializeToString,
            response_deserializer=resp_type.FromString,
        )
        return await rpc(req, timeout=self.timeout)

    # ------------------------------------------------------------ polling
    async def poll(self) -> Snapshot:
        """Ask every lookup and broker once; returns (and keeps) the new snapshot."""
        async with self._poll_lock:
            snap = await self._collect()
            self.counters.polled(snap)
            self.snapshot = snap
            self.polled.set()
            return snap

    async def _ask_lookup(self, address: str) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            r = await self._lookup_call(
                address, "ListNodes", lpb.ListNodesRequest(), lpb.ListNodesResponse
            )
        except grpc.aio.AioRpcError as exc:
            return {"address": address, "ok": False, "error": f"{exc.code().name}: {exc.details()}"}
        members = [
            {
                "node_id": n.status.broker.node_id,
                "address": n.status.broker.grpc_address,
                "pair": n.status.broker.pair,
                "liveness": _LIVENESS.get(n.status.liveness, "dead"),
                "gossip_state": n.status.gossip_state or "-",
                "connected": n.status.connected,
                "last_seen_ms_ago": n.status.last_seen_ms_ago,
            }
            for n in r.nodes
        ]
        return {
            "address": address,
            "ok": True,
            "error": "",
            "lookup_id": r.lookup_id,
            "gossip_enabled": r.gossip_enabled,
            "rtt_ms": round((time.monotonic() - t0) * 1000, 1),
            "members": members,
        }

    async def _ask_broker(self, address: str) -> tuple[str, Any, str]:
        try:
            r = await self.broker_stub(address).GetStats(
                bpb.GetStatsRequest(), timeout=self.timeout
            )
            return address, r, ""
        except grpc.aio.AioRpcError as exc:
            return address, None, f"{exc.code().name}: {exc.details()}"

    async def _collect(self) -> Snapshot:
        lookups = await asyncio.gather(*(self._ask_lookup(a) for a in self.lookups))
        views = []
        if self._discovery is not None:
            with contextlib.suppress(PairqError):
                views = await self._discovery.nodes()
        for v in views:
            self._known[v.node_id] = {**v.to_dict(), "listed": True}
        listed = {v.node_id for v in views}
        for nid, known in self._known.items():
            if nid not in listed:
                known.update(listed=False, liveness="dead")
        addresses = list(
            dict.fromkeys([*(k["address"] for k in self._known.values()), *self.static_brokers])
        )
        answers = await asyncio.gather(*(self._ask_broker(a) for a in addresses))
        stats = {a: r for a, r, _ in answers if r is not None}
        errors = {a: e for a, r, e in answers if r is None}
        now = time.time()
        snap = Snapshot(taken_at=now, lookups=list(lookups))
        by_address = {k["address"]: k for k in self._known.values()}
        for address in addresses:
            snap.nodes.append(self._node(address, by_address.get(address), stats, errors))
        snap.nodes.sort(key=lambda n: (n["pair"], n["node_id"] or n["address"]))
        snap.pairs = self._pairs(snap.nodes, stats)
        snap.topics = self._topics(snap.nodes, stats, time.monotonic())
        snap.alerts = self._alerts(snap)
        self.history.expire(time.monotonic())
        return snap

    def _node(
        self,
        address: str,
        known: dict[str, Any] | None,
        stats: dict[str, Any],
        errors: dict[str, str],
    ) -> dict[str, Any]:
        r = stats.get(address)
        lookup_live = known["liveness"] if known else "unknown"
        if r is None or lookup_live == "dead":
            state = "dead"
        elif lookup_live == "suspect":
            state = "suspect"
        else:
            state = "alive"
        node: dict[str, Any] = {
            "node_id": (r.broker_id if r is not None else "") or (known or {}).get("node_id", ""),
            "address": address,
            "pair": (known or {}).get("pair", "") or (r.pair.pair if r is not None else ""),
            "version": (r.version if r is not None else "") or (known or {}).get("version", ""),
            "state": state,
            "lookup_liveness": lookup_live,
            "listed_by_lookups": bool(known and known.get("listed")),
            "gossip_state": (known or {}).get("gossip_state", "") or "-",
            "seen_by": (known or {}).get("seen_by", []),
            "reachable": r is not None,
            "error": errors.get(address, ""),
            "health": r.health if r is not None else "unreachable",
            "topics": sorted(t.name for t in r.topics)
            if r is not None
            else sorted((known or {}).get("topics", {})),
            "tombstones": (known or {}).get("tombstones", []),
            "store_bytes": r.store_bytes if r is not None else 0,
            "store_cap_bytes": r.store_cap_bytes if r is not None else 0,
            "uptime_s": round(time.time() - r.start_time_ns / 1e9) if r is not None else 0,
        }
        return node

    def _pairs(self, nodes: list[dict[str, Any]], stats: dict[str, Any]) -> list[dict[str, Any]]:
        groups: dict[str, list[dict[str, Any]]] = {}
        for n in nodes:
            groups.setdefault(n["pair"] or f"(single) {n['address']}", []).append(n)
        out = []
        for name, members in sorted(groups.items()):
            brokers = []
            for n in members:
                r = stats.get(n["address"])
                row: dict[str, Any] = {
                    "node_id": n["node_id"],
                    "address": n["address"],
                    "state": n["state"],
                }
                if r is not None and r.HasField("pair"):
                    p = r.pair
                    row.update(
                        replication="up" if p.connected else "down",
                        partner_replication="up" if p.partner_connected else "down",
                        link=p.link or "-",
                        lease_remaining_ms=p.lease_remaining_ms,
                        lease_holder=bool(p.lease_remaining_ms) or p.solo,
                        solo=p.solo,
                        epoch=p.epoch,
                        lag=p.replication_lag,
                        standby=p.standby_messages,
                        min_copies=p.min_copies,
                        takeovers=p.takeovers,
                        refill_sending=p.refill_sending,
                        refill_receiving=p.refill_receiving,
                        partner=p.partner_address,
                    )
                brokers.append(row)
            healthy = (
                len(brokers) == 2
                and all(b["state"] == "alive" for b in brokers)
                and all(b.get("replication") == "up" and not b.get("solo") for b in brokers)
                and all(b.get("lease_remaining_ms", 0) > 0 for b in brokers)
            )
            problems = []
            for b in brokers:
                if b["state"] != "alive":
                    problems.append(f"{b['node_id'] or b['address']} is {b['state']}")
                elif b.get("replication") == "down":
                    problems.append(f"{b['node_id']} cannot replicate to its partner")
                if b.get("solo"):
                    problems.append(f"{b['node_id']} took over and runs solo")
            if len(brokers) < 2:
                problems.append("only one broker of the pair is known")
            out.append(
                {
                    "name": name,
                    "healthy": healthy,
                    "status": "healthy" if healthy else "degraded",
                    "problems": problems,
                    "brokers": brokers,
                }
            )
        return out

    def _topics(
        self, nodes: list[dict[str, Any]], stats: dict[str, Any], mono: float
    ) -> list[dict[str, Any]]:
        topics: dict[str, dict[str, Any]] = {}
        node_of = {n["address"]: n for n in nodes}
        for address, r in stats.items():
            n = node_of.get(address, {})
            for t in r.topics:
                row = topics.setdefault(
                    t.name,
                    {
                        "name": t.name,
                        "depth": 0,
                        "message_count": 0,
                        "paused": False,
                        "ephemeral": t.ephemeral,
                        "per_broker": [],
                        "channels": {},
                    },
                )
                row["depth"] += t.depth
                row["message_count"] += t.message_count
                row["paused"] = row["paused"] or t.paused
                row["per_broker"].append(
                    {
                        "node_id": r.broker_id,
                        "address": address,
                        "pair": n.get("pair", ""),
                        "depth": t.depth,
                        "message_count": t.message_count,
                        "paused": t.paused,
                    }
                )
                for c in t.channels:
                    ch = row["channels"].setdefault(
                        c.name,
                        {
                            "name": c.name,
                            "topic": t.name,
                            "paused": False,
                            "ephemeral": c.ephemeral,
                            "clients": [],
                            "per_broker": [],
                            **dict.fromkeys(
                                (
                                    "depth",
                                    "in_flight",
                                    "deferred",
                                    "requeued",
                                    "timed_out",
                                    "dead_lettered",
                                    "message_count",
                                    "finished",
                                ),
                                0,
                            ),
                        },
                    )
                    for k in (
                        "depth",
                        "in_flight",
                        "deferred",
                        "requeued",
                        "timed_out",
                        "dead_lettered",
                        "message_count",
                        "finished",
                    ):
                        ch[k] += getattr(c, k)
                    ch["paused"] = ch["paused"] or c.paused
                    ch["per_broker"].append(
                        {
                            "node_id": r.broker_id,
                            "address": address,
                            "depth": c.depth,
                            "in_flight": c.in_flight,
                            "dead_lettered": c.dead_lettered,
                            "paused": c.paused,
                        }
                    )
                    for cl in c.clients:
                        ch["clients"].append(
                            {
                                "broker": r.broker_id,
                                "client_id": cl.client_id,
                                "hostname": cl.hostname,
                                "user_agent": cl.user_agent,
                                "remote_address": cl.remote_address,
                                "ready_count": cl.ready_count,
                                "in_flight": cl.in_flight,
                                "message_count": cl.message_count,
                                "finish_count": cl.finish_count,
                                "requeue_count": cl.requeue_count,
                            }
                        )
        out = []
        for name in sorted(topics):
            t = topics[name]
            self.history.record(mono, f"topic:{name}", t["message_count"])
            t["rate"] = self.history.rate(f"topic:{name}")
            chans = []
            for cname in sorted(t["channels"]):
                c = t["channels"][cname]
                self.history.record(mono, f"channel:{name}/{cname}", c["message_count"])
                c["rate"] = self.history.rate(f"channel:{name}/{cname}")
                chans.append(c)
            t["channels"] = chans
            out.append(t)
        return out

    @staticmethod
    def _alerts(snap: Snapshot) -> list[str]:
        alerts = []
        for lk in snap.lookups:
            if not lk["ok"]:
                alerts.append(f"lookup {lk['address']} does not answer ({lk['error']})")
        for n in snap.nodes:
            if n["state"] != "alive":
                alerts.append(f"broker {n['node_id'] or '?'} at {n['address']} is {n['state']}")
            elif n["health"] != "ok":
                alerts.append(f"broker {n['node_id']} reports {n['health']}")
        for p in snap.pairs:
            if not p["healthy"]:
                alerts.append(f"pair {p['name']} is degraded: {'; '.join(p['problems']) or '?'}")
        for t in snap.topics:
            for c in t["channels"]:
                if c["dead_lettered"]:
                    alerts.append(
                        f"channel {t['name']}/{c['name']} has {c['dead_lettered']} dead letter(s)"
                    )
        return alerts

    # ------------------------------------------------------------ actions
    def _holders(self, topic: str, channel: str = "") -> list[str]:
        t = self.snapshot.topic(topic)
        if t is None:
            raise ActionError(f"no broker holds topic {topic!r}")
        if not channel:
            return [b["address"] for b in t["per_broker"]]
        c = self.snapshot.channel(topic, channel)
        if c is None:
            raise ActionError(f"topic {topic!r} has no channel {channel!r}")
        return [b["address"] for b in c["per_broker"]]

    async def _on_holders(self, topic: str, channel: str, method: str, req: Any) -> list[Any]:
        """Call ``method`` on every broker holding the topic/channel; the answers.
        Raises when none took it; a broker that fails is named in the error."""
        addresses = self._holders(topic, channel)
        results = await asyncio.gather(
            *(
                getattr(self.broker_stub(a), method)(req, timeout=self.timeout * 5)
                for a in addresses
            ),
            return_exceptions=True,
        )
        failed = [
            f"{a}: {PairqError.from_rpc_error(r).message if isinstance(r, grpc.aio.AioRpcError) else r}"
            for a, r in zip(addresses, results, strict=True)
            if isinstance(r, BaseException)
        ]
        if failed:
            raise ActionError(f"{method} failed on {'; '.join(failed)}")
        return list(results)

    async def act(self, verb: str, params: dict[str, Any]) -> dict[str, Any]:
        """Carry out one action; returns what to show (``message`` and maybe data).
        Raises :class:`ActionError` with a message for people."""
        topic = str(params.get("topic") or "")
        channel = str(params.get("channel") or "")
        if verb in _TOPIC_RPCS:
            if not topic:
                raise ActionError("the action needs a topic")
            await self.poll()
            method, req_type = _TOPIC_RPCS[verb]
            await self._on_holders(topic, "", method, req_type(topic=topic))
            if verb == "delete-topic":
                await self._forget_topic(topic)
            return {"message": f"{verb} {topic}: done"}
        if verb in _CHANNEL_RPCS:
            if not topic or not channel:
                raise ActionError("the action needs a topic and a channel")
            await self.poll()
            method, req_type = _CHANNEL_RPCS[verb]
            await self._on_holders(topic, channel, method, req_type(topic=topic, channel=channel))
            return {"message": f"{verb} {topic}/{channel}: done"}
        if verb == "tombstone":
            node = str(params.get("node") or "")
            if not topic or not node:
                raise ActionError("tombstone needs a topic and a node")
            if self._discovery is None:
                raise ActionError("tombstone needs --lookup")
            try:
                ok = await self._discovery.tombstone_topic(topic, node)
            except PairqError as exc:
                raise ActionError(exc.message) from None
            return {"message": f"tombstoned {topic} on {node} at {len(ok)} lookup(s)"}
        if verb in ("redrive", "purge", "peek", "dead-letters"):
            if not topic or not channel:
                raise ActionError("the action needs a topic and a channel")
            await self.poll()
            ids = _parse_ids(params.get("ids"))
            if verb == "redrive":
                rs = await self._on_holders(
                    topic,
                    channel,
                    "ReplayDeadLetters",
                    bpb.ReplayDeadLettersRequest(topic=topic, channel=channel, ids=ids),
                )
                n = sum(r.replayed for r in rs)
                return {"message": f"redrove {n} dead letter(s) of {topic}/{channel}", "count": n}
            if verb == "purge":
                rs = await self._on_holders(
                    topic,
                    channel,
                    "PurgeDeadLetters",
                    bpb.PurgeDeadLettersRequest(topic=topic, channel=channel, ids=ids),
                )
                n = sum(r.purged for r in rs)
                return {"message": f"purged {n} dead letter(s) of {topic}/{channel}", "count": n}
            limit = int(params.get("limit") or 20)
            if verb == "peek":
                rs = await self._on_holders(
                    topic,
                    channel,
                    "PeekMessages",
                    bpb.PeekMessagesRequest(topic=topic, channel=channel, limit=limit),
                )
            else:
                rs = await self._on_holders(
                    topic,
                    channel,
                    "ListDeadLetters",
                    bpb.ListDeadLettersRequest(topic=topic, channel=channel, limit=limit),
                )
            msgs = [_message(m) for r in rs for m in r.messages]
            msgs.sort(key=lambda m: m["timestamp_ns"])
            return {
                "message": f"{len(msgs)} message(s) of {topic}/{channel}",
                "messages": msgs[:limit],
            }
        if verb == "publish":
            return await self._publish(topic, params)
        raise ActionError(f"unknown action {verb!r}")

    async def _forget_topic(self, topic: str) -> None:
        for a in self.lookups:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._lookup_call(
                    a,
                    "DeleteTopicRegistration",
                    lpb.DeleteTopicRegistrationRequest(topic=topic),
                    lpb.DeleteTopicRegistrationResponse,
                )

    async def _publish(self, topic: str, params: dict[str, Any]) -> dict[str, Any]:
        if not topic:
            raise ActionError("publish needs a topic")
        body = params.get("body") or ""
        if not body:
            raise ActionError("publish needs a body")
        headers = _parse_headers(params.get("headers"))
        snap = await self.poll()
        t = snap.topic(topic)
        # Brokers already holding the topic first, then every alive broker.
        order = [b["address"] for b in t["per_broker"]] if t else []
        order += [n["address"] for n in snap.nodes if n["state"] == "alive"]
        if not order:
            raise ActionError("no alive broker to publish to")
        item = bpb.PublishItem(body=str(body).encode(), headers=headers)
        errors = []
        for a in dict.fromkeys(order):
            try:
                r = await self.broker_stub(a).Publish(
                    bpb.PublishRequest(topic=topic, message=item), timeout=self.timeout * 5
                )
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{a}: {PairqError.from_rpc_error(exc).message}")
                continue
            return {
                "message": f"published {r.id.hex()} to {topic} on {a} ({r.copies} copies)",
                "id": r.id.hex(),
                "copies": r.copies,
                "broker": a,
            }
        raise ActionError("publish failed: " + "; ".join(errors))


_TOPIC_RPCS: dict[str, tuple[str, Any]] = {
    "pause-topic": ("PauseTopic", bpb.PauseTopicRequest),
    "unpause-topic": ("UnpauseTopic", bpb.UnpauseTopicRequest),
    "empty-topic": ("EmptyTopic", bpb.EmptyTopicRequest),
    "delete-topic": ("DeleteTopic", bpb.DeleteTopicRequest),
}
_CHANNEL_RPCS: dict[str, tuple[str, Any]] = {
    "pause-channel": ("PauseChannel", bpb.PauseChannelRequest),
    "unpause-channel": ("UnpauseChannel", bpb.UnpauseChannelRequest),
    "empty-channel": ("EmptyChannel", bpb.EmptyChannelRequest),
    "delete-channel": ("DeleteChannel", bpb.DeleteChannelRequest),
}
# Verbs that change something (asked to confirm); the rest only read.
VERBS = (
    *_TOPIC_RPCS,
    *_CHANNEL_RPCS,
    "tombstone",
    "redrive",
    "purge",
    "publish",
    "peek",
    "dead-letters",
)


def _parse_ids(raw: Any) -> list[bytes]:
    if not raw:
        return []
    items = raw if isinstance(raw, list) else str(raw).replace(",", " ").split()
    out = []
    for i in items:
        try:
            b = bytes.fromhex(str(i).strip())
        except ValueError:
            raise ActionError(f"message id {i!r} is not hex") from None
        if len(b) != 16:
            raise ActionError(f"message id {i!r} is not 16 bytes")
        out.append(b)
    return out


def _parse_headers(raw: Any) -> dict[str, str]:
    if not raw:
        return {}
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    out = {}
    for line in str(raw).replace(",", "\n").splitlines():
        if not line.strip():
            continue
        k, sep, v = line.partition("=")
        if not sep or not k.strip():
            raise ActionError(f"header {line!r} is not key=value")
        out[k.strip()] = v.strip()
    return out


def _message(m: Any) -> dict[str, Any]:
    try:
        body = m.body.decode()
        binary = False
    except UnicodeDecodeError:
        body, binary = m.body.hex(), True
    return {
        "id": m.id.hex(),
        "body": body,
        "binary": binary,
        "headers": dict(m.headers),
        "timestamp_ns": m.timestamp_ns,
        "attempts": m.attempts,
        "broker_id": m.broker_id,
    }
