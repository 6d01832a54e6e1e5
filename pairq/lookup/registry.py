"""The lookup's registry: a pure state machine (sans-IO) for the topology.

Events come in with the time (``now``, seconds on any monotonic clock) from the
caller: a broker's registration stream opens (``connect``), sends new state
(``update``) or heartbeats (``heartbeat``), closes (``disconnect``); gossip
reports a broker's state (``gossip``); operators create or delete topic and
channel registrations and tombstone topics on nodes. Answers (``lookup_topic``,
``topics``, ``channels``, ``nodes``) are computed for a given ``now``. Nothing
here touches sockets or clocks, so every rule is tested with a fake clock.

Liveness rules (one place, ``liveness``):

1. Gossip says the broker is DEAD or LEFT, and the broker has not registered
   again since: **DEAD**, at once.
2. Otherwise the worse of what gossip says and what the registration says:
   - gossip SUSPECT: SUSPECT; gossip ALIVE or no gossip information: ALIVE;
   - stream open, last message within ``dead_after`` (3 heartbeat intervals):
     ALIVE; open but silent longer: SUSPECT;
   - stream closed: SUSPECT, and DEAD once it has stayed closed for
     ``dead_after`` unless gossip says the broker is alive (so with gossip off,
     a killed broker is answered dead about 3 heartbeat intervals after its
     stream broke);
   - two independent signs of failure together: **DEAD** at once. The
     registration side says "stream closed" or "heartbeats late" (longer than
     ``dead_after``); the other side is gossip suspecting the broker or, after the
     stream closed, the lookup's connect to the broker's gRPC port being refused
     (``refused``: nobody listens there, the process is gone). A ``kill -9``
     closes the stream and the port together, so a crashed broker is answered
     dead within milliseconds; a lost link alone, or a suspicion alone, only
     makes it SUSPECT.
3. A registration silent for ``inactivity_timeout`` is dropped entirely
   (``expire``), dead or not.

Tombstones mark (topic, node) for ``tombstone_lifetime`` seconds; answers
carry the flag and clients stop using that broker for that topic.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "BrokerIdentity",
    "BrokerStatus",
    "Liveness",
    "NodeAnswer",
    "Registry",
    "TopicAnswer",
    "TopicBroker",
    "TopicPair",
    "UnknownNodeError",
]

GOSSIP_STATES = ("alive", "suspect", "dead", "left")


class Liveness(enum.IntEnum):
    """Values match ``pairq.v1.Liveness``; a larger value is worse."""

    ALIVE = 1
    SUSPECT = 2
    DEAD = 3


class UnknownNodeError(KeyError):
    """No registration matches the node id or address given."""


@dataclass(frozen=True, slots=True)
class BrokerIdentity:
    node_id: str
    grpc_address: str
    pair: str = ""
    gossip_address: str = ""
    version: str = ""
    partner_address: str = ""
    hostname: str = ""
    start_time_ns: int = 0
    nsq_tcp_address: str = ""  # HOST:PORT of its NSQ TCP protocol; "": it serves none
    http_address: str = ""  # HOST:PORT of its nsqd HTTP API; "": off


@dataclass(slots=True)
class _Registration:
    identity: BrokerIdentity
    topics: dict[str, frozenset[str]]
    token: int
    connected_at: float
    last_seen: float
    connected: bool = True
    disconnected_at: float = 0.0
    refused: bool = False


@dataclass(frozen=True, slots=True)
class _GossipState:
    state: str
    at: float


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    identity: BrokerIdentity
    liveness: Liveness
    gossip_state: str
    connected: bool
    last_seen_ago: float


@dataclass(frozen=True, slots=True)
class TopicBroker:
    status: BrokerStatus
    tombstoned: bool
    has_topic: bool


@dataclass(frozen=True, slots=True)
class TopicPair:
    pair: str
    brokers: tuple[TopicBroker, ...]


@dataclass(frozen=True, slots=True)
class TopicAnswer:
    known: bool
    channels: tuple[str, ...] = ()
    pairs: tuple[TopicPair, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    status: BrokerStatus
    topics: tuple[tuple[str, tuple[str, ...]], ...]
    tombstones: tuple[tuple[str, float], ...]  # (topic, seconds until expiry)
    registered_ago: float


@dataclass(slots=True)
class Registry:
    """Registrations, operator registrations, tombstones and gossip states."""

    inactivity_timeout: float = 30.0
    tombstone_lifetime: float = 45.0
    heartbeat_interval: float = 1.0
    _regs: dict[str, _Registration] = field(default_factory=dict)
    _admin: dict[str, set[str]] = field(default_factory=dict)
    _tombstones: dict[tuple[str, str], float] = field(default_factory=dict)
    _gossip: dict[str, _GossipState] = field(default_factory=dict)
    _next_token: int = 1

    @property
    def dead_after(self) -> float:
        """Silence (or a closed stream) longer than this degrades liveness."""
        return 3.0 * self.heartbeat_interval

    # ------------------------------------------------------------ broker streams
    def connect(
        self, identity: BrokerIdentity, topics: Mapping[str, Iterable[str]], now: float
    ) -> int:
        """A broker's stream said hello; replaces any earlier registration of its node id.

        Returns a token naming this stream; later events of the stream pass it, and
        events from a replaced (stale) stream are ignored.
        """
        token = self._next_token
        self._next_token += 1
        self._regs[identity.node_id] = _Registration(
            identity=identity,
            topics=_freeze(topics),
            token=token,
            connected_at=now,
            last_seen=now,
        )
        return token

    def update(
        self, node_id: str, token: int, topics: Mapping[str, Iterable[str]], now: float
    ) -> bool:
        """New full topic state from a stream; False if the stream is stale."""
        reg = self._current(node_id, token)
        if reg is None:
            return False
        reg.topics = _freeze(topics)
        reg.last_seen = now
        return True

    def heartbeat(self, node_id: str, token: int, now: float) -> bool:
        reg = self._current(node_id, token)
        if reg is None:
            return False
        reg.last_seen = now
        return True

    def disconnect(self, node_id: str, token: int, now: float) -> None:
        """The stream ended (broker stopped, crashed or lost its link). The
        registration stays, degraded, until it expires or the broker reconnects."""
        reg = self._current(node_id, token)
        if reg is not None and reg.connected:
            reg.connected = False
            reg.disconnected_at = now

    def closed(self, node_id: str, token: int) -> bool:
        """Whether this stream is still the node's registration and is closed."""
        reg = self._current(node_id, token)
        return reg is not None and not reg.connected

    def refused(self, node_id: str, token: int) -> None:
        """After the stream closed, a connect to the broker's gRPC port was refused."""
        reg = self._current(node_id, token)
        if reg is not None and not reg.connected:
            reg.refused = True

    def _current(self, node_id: str, token: int) -> _Registration | None:
        reg = self._regs.get(node_id)
        if reg is None or reg.token != token:
            return None
        return reg

    # ------------------------------------------------------------ gossip
    def gossip(self, node_id: str, state: str, now: float) -> None:
        """Gossip's view of a broker (matched by the node_id in its metadata)."""
        if state not in GOSSIP_STATES:
            raise ValueError(f"unknown gossip state {state!r}")
        self._gossip[node_id] = _GossipState(state, now)

    def _gossip_state(self, reg: _Registration) -> _GossipState | None:
        g = self._gossip.get(reg.identity.node_id)
        # A death older than the current registration is about an earlier life.
        if g is not None and g.state in ("dead", "left") and g.at < reg.connected_at:
            return None
        return g

    # ------------------------------------------------------------ operators
    def create_topic(self, topic: str) -> None:
        self._admin.setdefault(topic, set())

    def create_channel(self, topic: str, channel: str) -> None:
        self._admin.setdefault(topic, set()).add(channel)

    def delete_topic(self, topic: str) -> None:
        """Forget the topic here (a broker holding it registers it again on its next state)."""
        self._admin.pop(topic, None)
        for reg in self._regs.values():
            reg.topics.pop(topic, None)

    def delete_channel(self, topic: str, channel: str) -> None:
        self._admin.get(topic, set()).discard(channel)
        for reg in self._regs.values():
            chans = reg.topics.get(topic)
            if chans is not None and channel in chans:
                reg.topics[topic] = chans - {channel}

    def find_node(self, node: str) -> str:
        """Node id of the registration whose node id or gRPC address is ``node``."""
        if node in self._regs:
            return node
        for node_id, reg in self._regs.items():
            if reg.identity.grpc_address == node:
                return node_id
        raise UnknownNodeError(node)

    def tombstone(self, topic: str, node: str, now: float) -> tuple[str, float]:
        """Tombstone ``topic`` on ``node`` (node id or address); returns (node_id, expires_at)."""
        node_id = self.find_node(node)
        expires = now + self.tombstone_lifetime
        self._tombstones[(topic, node_id)] = expires
        return node_id, expires

    def is_tombstoned(self, topic: str, node_id: str, now: float) -> bool:
        expires = self._tombstones.get((topic, node_id))
        return expires is not None and expires > now

    # ------------------------------------------------------------ time
    def expire(self, now: float) -> list[str]:
        """Drop silent registrations, expired tombstones and old gossip deaths;
        returns the node ids whose registrations were dropped."""
        gone = [n for n, r in self._regs.items() if now - r.last_seen >= self.inactivity_timeout]
        for node_id in gone:
            del self._regs[node_id]
        for key in [k for k, exp in self._tombstones.items() if exp <= now]:
            del self._tombstones[key]
        for node_id in [
            n
            for n, g in self._gossip.items()
            if n not in self._regs and now - g.at >= self.inactivity_timeout
        ]:
            del self._gossip[node_id]
        return gone

    # ------------------------------------------------------------ answers
    def liveness(self, node_id: str, now: float) -> Liveness:
        reg = self._regs.get(node_id)
        if reg is None:
            raise UnknownNodeError(node_id)
        return self._liveness(reg, now)

    def _liveness(self, reg: _Registration, now: float) -> Liveness:
        g = self._gossip_state(reg)
        if g is not None and g.state in ("dead", "left"):
            return Liveness.DEAD
        level = Liveness.SUSPECT if g is not None and g.state == "suspect" else Liveness.ALIVE
        late = now - reg.last_seen > self.dead_after
        if (not reg.connected or late) and level is Liveness.SUSPECT:
            return Liveness.DEAD
        if not reg.connected:
            if reg.refused:
                return Liveness.DEAD
            gossip_alive = g is not None and g.state == "alive"
            if not gossip_alive and now - reg.disconnected_at >= self.dead_after:
                return Liveness.DEAD
            return max(level, Liveness.SUSPECT)
        if late:
            return Liveness.SUSPECT
        return level

    def _active(self, now: float) -> list[_Registration]:
        return [r for r in self._regs.values() if now - r.last_seen < self.inactivity_timeout]

    def _status(self, reg: _Registration, now: float) -> BrokerStatus:
        g = self._gossip.get(reg.identity.node_id)
        return BrokerStatus(
            identity=reg.identity,
            liveness=self._liveness(reg, now),
            gossip_state=g.state if g is not None else "",
            connected=reg.connected,
            last_seen_ago=max(0.0, now - reg.last_seen),
        )

    def topics(self, now: float) -> list[str]:
        names = set(self._admin)
        for reg in self._active(now):
            names.update(reg.topics)
        return sorted(names)

    def channels(self, topic: str, now: float) -> list[str]:
        chans = set(self._admin.get(topic, ()))
        for reg in self._active(now):
            chans.update(reg.topics.get(topic, ()))
        return sorted(chans)

    def lookup_topic(self, topic: str, now: float) -> TopicAnswer:
        active = self._active(now)
        holders = [r for r in active if topic in r.topics]
        known = topic in self._admin or bool(holders)
        if not known:
            return TopicAnswer(known=False)
        groups: dict[str, list[_Registration]] = {}
        for reg in active:
            groups.setdefault(_group_key(reg), []).append(reg)
        pairs: list[TopicPair] = []
        for key in sorted({_group_key(r) for r in holders}):
            members = sorted(groups[key], key=lambda r: r.identity.node_id)
            pairs.append(
                TopicPair(
                    pair=members[0].identity.pair,
                    brokers=tuple(
                        TopicBroker(
                            status=self._status(r, now),
                            tombstoned=self.is_tombstoned(topic, r.identity.node_id, now),
                            has_topic=topic in r.topics,
                        )
                        for r in members
                    ),
                )
            )
        return TopicAnswer(
            known=True, channels=tuple(self.channels(topic, now)), pairs=tuple(pairs)
        )

    def nodes(self, now: float) -> list[NodeAnswer]:
        out = []
        for reg in sorted(self._active(now), key=lambda r: (r.identity.pair, r.identity.node_id)):
            node_id = reg.identity.node_id
            out.append(
                NodeAnswer(
                    status=self._status(reg, now),
                    topics=tuple((t, tuple(sorted(c))) for t, c in sorted(reg.topics.items())),
                    tombstones=tuple(
                        sorted(
                            (t, exp - now)
                            for (t, n), exp in self._tombstones.items()
                            if n == node_id and exp > now
                        )
                    ),
                    registered_ago=max(0.0, now - reg.connected_at),
                )
            )
        return out


def _group_key(reg: _Registration) -> str:
    # A single broker forms a group of its own; "\0" cannot occur in a pair name.
    return reg.identity.pair if reg.identity.pair else "\0" + reg.identity.node_id


def _freeze(topics: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    return {t: frozenset(c) for t, c in topics.items()}
