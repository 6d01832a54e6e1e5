"""Discovery: find brokers through every lookup and merge the answers.

Lookups are independent and eventually consistent, and any of them may be
down, so a client asks **all** of them (in parallel, each with a timeout) and
merges:

- a broker is listed if any lookup that answered lists it;
- its liveness is the **best** any lookup reports (alive > suspect > dead): a
  lookup that just restarted, or lost its link to the broker, can make a client
  try a broker, never skip one that another lookup knows is alive;
- it is tombstoned for a topic if **any** lookup says so (operators tombstone
  through every lookup; one is enough to stop consumers);
- a lookup that fails this time contributes its last good answer, if any. Only
  when no lookup ever answered does a query raise :class:`UnavailableError`.

Placement rule for producers (:func:`place`), so every producer agrees
without coordination: order the pairs

1. healthy pairs already holding the topic,
2. other healthy pairs,
3. unhealthy pairs already holding the topic,
4. other pairs with at least one broker not dead,

and within each group by **rendezvous hashing** of the topic over pair names
(highest ``sha256(topic + "\\0" + pair)`` first). A pair is *healthy* when all
its brokers (two, for a named pair) are answered alive. A producer publishes to
the first pair and fails over down the list when a pair cannot give the copies
it needs; when pairs are added, only topics whose hash prefers a new pair (and
that no pair holds yet) move there.

Integration (what ``Producer`` / ``Consumer`` call)::

    async with Discovery(lookups, poll_interval=15.0) as d:
        order = await d.placement("orders")        # producer: pairs to try, in order
        addresses = order[0].addresses()           # both brokers of the best pair
        async for addrs in d.watch("orders"):       # consumer: the set to be connected to
            ...                                     # yields at once, then on every change
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import grpc

from pairq import grpcopts
from pairq.errors import PairqError, UnavailableError
from pairq.security.client import ClientSecurity
from pairq.v1 import lookup_pb2 as pb

__all__ = [
    "BrokerState",
    "Discovery",
    "NodeView",
    "PairState",
    "place",
    "rendezvous_score",
]

log = logging.getLogger("pairq.discovery")

_LIVENESS = {pb.LIVENESS_ALIVE: "alive", pb.LIVENESS_SUSPECT: "suspect", pb.LIVENESS_DEAD: "dead"}
_RANK = {"alive": 0, "suspect": 1, "dead": 2}


class BrokerState(NamedTuple):
    """One broker of a pair, merged over lookups."""

    address: str
    # False only when every lookup that knows it answers it dead.
    alive: bool
    # Tombstoned for the topic asked about (always False in ``all_pairs``).
    tombstoned: bool
    # "alive", "suspect" or "dead": the best any lookup reports.
    liveness: str = "alive"
    node_id: str = ""


class PairState(NamedTuple):
    """A pair (or a single broker, ``pair == ""``) and its brokers, ordered by node id."""

    pair: str
    brokers: list[BrokerState]
    # Topics registered by any broker of the pair (``all_pairs``), or just the
    # topic asked about (``brokers_for_topic``).
    topics: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        """The name placement hashes: the pair name, or ``node:<id>`` for a single broker."""
        return self.pair or f"node:{self.brokers[0].node_id if self.brokers else ''}"

    @property
    def healthy(self) -> bool:
        """Every broker answered alive, and a named pair has both brokers registered."""
        need = 2 if self.pair else 1
        return len(self.brokers) >= need and all(b.liveness == "alive" for b in self.brokers)

    def addresses(self, *, include_dead: bool = False) -> list[str]:
        return [b.address for b in self.brokers if include_dead or b.alive]


@dataclass(frozen=True, slots=True)
class NodeView:
    """A broker as all lookups see it (for ``pairq nodes`` and admin)."""

    node_id: str
    pair: str
    address: str
    version: str
    liveness: str
    gossip_state: str
    last_seen_ms_ago: int
    topics: dict[str, list[str]]
    tombstones: list[str]
    seen_by: list[str]  # lookups that list it
    per_lookup: dict[str, str] = field(default_factory=dict)  # lookup -> liveness there

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "pair": self.pair,
            "address": self.address,
            "version": self.version,
            "liveness": self.liveness,
            "gossip_state": self.gossip_state,
            "last_seen_ms_ago": self.last_seen_ms_ago,
            "topics": self.topics,
            "tombstones": self.tombstones,
            "seen_by": self.seen_by,
            "per_lookup": self.per_lookup,
        }


def rendezvous_score(topic: str, key: str) -> int:
    """Highest-random-weight hash of (topic, pair): stable across processes and versions."""
    return int.from_bytes(hashlib.sha256(f"{topic}\0{key}".encode()).digest()[:8], "big")


def place(topic: str, pairs: Iterable[PairState]) -> list[PairState]:
    """Pairs to publish ``topic`` to, best first (the module docstring states the rule).

    Pairs whose brokers are all dead are left out.
    """

    def group(p: PairState) -> int:
        holds = topic in p.topics
        if p.healthy:
            return 0 if holds else 1
        return 2 if holds else 3

    usable = [p for p in pairs if any(b.alive for b in p.brokers)]
    return sorted(usable, key=lambda p: (group(p), -rendezvous_score(topic, p.key), p.key))


class Discovery:
    """Queries every lookup and merges their answers (see the module docstring)."""

    def __init__(
        self,
        lookups: Sequence[str],
        *,
        poll_interval: float = 15.0,
        timeout: float = 2.0,
        security: ClientSecurity | None = None,
    ) -> None:
        self._security = security or ClientSecurity()
        if not lookups:
            raise ValueError("Discovery needs at least one lookup address")
        self.lookups = list(dict.fromkeys(lookups))
        self.poll_interval = poll_interval
        self.timeout = timeout
        self._channels: dict[str, Any] = {}
        self._last: dict[
            tuple[str, str, str], Any
        ] = {}  # (lookup, method, key) -> last good answer
        self.errors: dict[str, str] = {}  # lookup -> last error (cleared when it answers)

    async def __aenter__(self) -> Discovery:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for ch in channels.values():
            with contextlib.suppress(Exception):
                await ch.close()

    # ------------------------------------------------------------ transport
    def _channel(self, address: str) -> Any:
        ch = self._channels.get(address)
        if ch is None:
            ch = self._security.channel(address, grpcopts.client_options())
            self._channels[address] = ch
        return ch

    async def _ask_one(
        self,
        address: str,
        method: str,
        request: Any,
        response_type: Any,
        key: str,
        *,
        cache: bool = True,
    ) -> Any:
        rpc = self._channel(address).unary_unary(
            f"/pairq.v1.LookupService/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            resp = await rpc(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                raise PairqError.from_rpc_error(exc) from None
            self.errors[address] = f"{exc.code().name}: {exc.details()}"
            log.debug("lookup %s %s failed: %s", address, method, self.errors[address])
            return None
        self.errors.pop(address, None)
        if cache:
            self._last[(address, method, key)] = resp
        return resp

    async def _ask_all(
        self, method: str, request: Any, response_type: Any, key: str = ""
    ) -> list[Any]:
        results = await asyncio.gather(
            *(self._ask_one(a, method, request, response_type, key) for a in self.lookups)
        )
        answers = [r for r in results if r is not None]
        if not answers:
            # Nobody answers: fall back to the last good answers (a dead lookup
            # never stops publishing or consuming). While any lookup answers, a
            # down lookup's stale answer is ignored: merging it "most hopeful
            # wins" would keep a broker that died since then alive forever.
            answers = [
                cached
                for a in self.lookups
                if (cached := self._last.get((a, method, key))) is not None
            ]
        if not answers:
            raise UnavailableError(
                f"no lookup answered {method} ({'; '.join(f'{a}: {e}' for a, e in self.errors.items())})"
            )
        return answers

    # ------------------------------------------------------------ queries
    async def brokers_for_topic(self, topic: str) -> list[PairState]:
        """Pairs holding ``topic`` with each broker's merged liveness and tombstone, by pair name."""
        answers = await self._ask_all(
            "LookupTopic", pb.LookupTopicRequest(topic=topic), pb.LookupTopicResponse, topic
        )
        merged: dict[str, dict[str, Any]] = {}
        for resp in answers:
            for tp in resp.pairs:
                for tb in tp.brokers:
                    _merge(merged, tb.status, tombstoned=tb.tombstoned)
        return _group(merged, frozenset({topic}))

    async def all_pairs(self) -> list[PairState]:
        """Every registered pair with its brokers and the topics any of them holds."""
        nodes = await self.nodes()
        merged: dict[str, dict[str, Any]] = {}
        for n in nodes:
            merged[n.node_id] = {
                "node_id": n.node_id,
                "pair": n.pair,
                "address": n.address,
                "liveness": n.liveness,
                "tombstoned": False,
                "topics": set(n.topics),
            }
        return _group(merged, None)

    async def nodes(self) -> list[NodeView]:
        """Every broker known to any lookup, merged, ordered by (pair, node id)."""
        out: dict[str, NodeView] = {}
        answers = await asyncio.gather(
            *(
                self._ask_one(a, "ListNodes", pb.ListNodesRequest(), pb.ListNodesResponse, "")
                for a in self.lookups
            )
        )
        for address, resp in zip(self.lookups, answers, strict=True):
            if resp is None:
                continue
            for info in resp.nodes:
                s = info.status
                b = s.broker
                live = _LIVENESS.get(s.liveness, "dead")
                view = out.get(b.node_id)
                if view is None:
                    view = NodeView(
                        node_id=b.node_id,
                        pair=b.pair,
                        address=b.grpc_address,
                        version=b.version,
                        liveness=live,
                        gossip_state=s.gossip_state,
                        last_seen_ms_ago=s.last_seen_ms_ago,
                        topics={},
                        tombstones=[],
                        seen_by=[],
                    )
                    out[b.node_id] = view
                elif (
                    _RANK[live] < _RANK[view.liveness] or s.last_seen_ms_ago < view.last_seen_ms_ago
                ):
                    better = _RANK[live] < _RANK[view.liveness]
                    view = NodeView(
                        node_id=b.node_id,
                        pair=b.pair,
                        address=b.grpc_address,
                        version=b.version,
                        liveness=live if better else view.liveness,
                        gossip_state=s.gossip_state or view.gossip_state,
                        last_seen_ms_ago=min(s.last_seen_ms_ago, view.last_seen_ms_ago),
                        topics=view.topics,
                        tombstones=view.tombstones,
                        seen_by=view.seen_by,
                        per_lookup=view.per_lookup,
                    )
                    out[b.node_id] = view
                for t in info.topics:
                    view.topics.setdefault(t.name, [])
                    view.topics[t.name] = sorted(set(view.topics[t.name]) | set(t.channels))
                for tomb in info.tombstones:
                    if tomb.topic not in view.tombstones:
                        view.tombstones.append(tomb.topic)
                view.seen_by.append(address)
                view.per_lookup[address] = live
        if all(r is None for r in answers):
            raise UnavailableError(
                "no lookup answered ListNodes ("
                + "; ".join(f"{a}: {e}" for a, e in self.errors.items())
                + ")"
            )
        return sorted(out.values(), key=lambda v: (v.pair, v.node_id))

    async def topics(self) -> list[str]:
        """Union of every lookup's topics."""
        answers = await self._ask_all("ListTopics", pb.ListTopicsRequest(), pb.ListTopicsResponse)
        return sorted({t for r in answers for t in r.topics})

    async def channels(self, topic: str) -> list[str]:
        """Union of every lookup's channels of ``topic``."""
        answers = await self._ask_all(
            "ListChannels", pb.ListChannelsRequest(topic=topic), pb.ListChannelsResponse, topic
        )
        return sorted({c for r in answers for c in r.channels})

    async def tombstone_topic(self, topic: str, node: str) -> list[str]:
        """Operator: tombstone ``topic`` on ``node`` (node id or address) at every lookup;
        returns the lookups that accepted it (a lookup that is down is skipped)."""
        req = pb.TombstoneTopicRequest(topic=topic, node=node)
        results = await asyncio.gather(
            *(
                self._ask_one(a, "TombstoneTopic", req, pb.TombstoneTopicResponse, "", cache=False)
                for a in self.lookups
            ),
            return_exceptions=True,
        )
        ok = [
            a
            for a, r in zip(self.lookups, results, strict=True)
            if isinstance(r, pb.TombstoneTopicResponse)
        ]
        if not ok:
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
            raise UnavailableError(f"no lookup accepted the tombstone of {topic!r} on {node!r}")
        return ok

    # ------------------------------------------------------------ for Producer / Consumer
    async def placement(self, topic: str) -> list[PairState]:
        """Producer: pairs to publish ``topic`` to, best first (:func:`place`)."""
        return place(topic, await self.all_pairs())

    async def consumer_addresses(self, topic: str) -> list[str]:
        """Consumer: every broker to be connected to for ``topic``: every broker of
        every pair holding it, unless answered dead or tombstoned for the topic."""
        pairs = await self.brokers_for_topic(topic)
        return sorted({b.address for p in pairs for b in p.brokers if b.alive and not b.tombstoned})

    async def watch(self, topic: str) -> AsyncGenerator[list[str], None]:
        """Consumer: yields :meth:`consumer_addresses` at once and then whenever it
        changes, polling every ``poll_interval``. While no lookup answers, nothing
        is yielded (keep the connections you have).

        While no broker holds the topic yet (or no lookup answers), it asks again
        sooner: after 0.25 s, doubling up to ``poll_interval``, so a consumer started
        before the first publish does not sit out a whole poll."""
        last: list[str] | None = None
        first_wait = min(0.25, self.poll_interval)
        wait = first_wait
        while True:
            try:
                addrs = await self.consumer_addresses(topic)
            except UnavailableError as exc:
                log.warning("discovery for %r: %s", topic, exc)
                addrs = []
            else:
                if addrs != last:
                    last = addrs
                    yield addrs
            if addrs:
                wait = first_wait
                await asyncio.sleep(self.poll_interval)
            else:
                await asyncio.sleep(wait)
                wait = min(wait * 2, self.poll_interval)


def _merge(merged: dict[str, dict[str, Any]], status: Any, *, tombstoned: bool) -> None:
    b = status.broker
    live = _LIVENESS.get(status.liveness, "dead")
    cur = merged.get(b.node_id)
    if cur is None:
        merged[b.node_id] = {
            "node_id": b.node_id,
            "pair": b.pair,
            "address": b.grpc_address,
            "liveness": live,
            "tombstoned": tombstoned,
            "topics": set(),
            "last_seen": status.last_seen_ms_ago,
        }
        return
    if _RANK[live] < _RANK[cur["liveness"]]:
        cur["liveness"] = live
    if status.last_seen_ms_ago < cur["last_seen"]:  # the freshest registration names the address
        cur.update(address=b.grpc_address, pair=b.pair, last_seen=status.last_seen_ms_ago)
    cur["tombstoned"] = cur["tombstoned"] or tombstoned


def _group(merged: dict[str, dict[str, Any]], topics: frozenset[str] | None) -> list[PairState]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in merged.values():
        groups.setdefault(m["pair"] or "\0" + m["node_id"], []).append(m)
    out = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda m: m["node_id"])
        held: set[str] = set()
        for m in members:
            held |= m["topics"]
        out.append(
            PairState(
                pair=members[0]["pair"],
                brokers=[
                    BrokerState(
                        m["address"],
                        m["liveness"] != "dead",
                        m["tombstoned"],
                        m["liveness"],
                        m["node_id"],
                    )
                    for m in members
                ],
                topics=topics if topics is not None else frozenset(held),
            )
        )
    return out
