"""The narrow interfaces the broker's parts talk through, and what they share.

Topics, channels and the publishing path never hold the ``Broker``: they get a
``Context`` with exactly what they use. The pair is behind two ports,

- ``Replicator``: what publishing and channel progress ask of the partner
  (check a publish may go ahead, replicate records, confirm commits, wait for
  acknowledgements, send progress and deletions);
- ``DeliveryFence``: whether this broker may deliver its owned messages now,
  and the generation that invalidates deliveries queued before a takeover;

both implemented by ``pairq.broker.pair.Pair`` and by ``SOLO``, the twin of a
broker without a partner (and of ephemeral topics and channels, which are
never replicated), so no caller branches on "is there a pair".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

from pairq.broker.channel_core import Entry
from pairq.broker.store import Store
from pairq.errors import PairqError

__all__ = [
    "NO_REPAIR",
    "SOLO",
    "Context",
    "DeliveryFence",
    "IdAllocator",
    "Identity",
    "IntegrityPort",
    "Limits",
    "Replicator",
    "TelemetryHooks",
    "publish_traces",
]


class Replicator(Protocol):
    """The partner, as publishing and channel progress see it."""

    @property
    def min_copies(self) -> int: ...

    @property
    def partner_address(self) -> str: ...

    def copies(self) -> int:
        """Durable copies a publish gets now (1 alone, 2 while replication is up)."""
        ...

    def check_catalog(self) -> None:
        """Raise (UNAVAILABLE) while this store lacks the pair's topics and channels."""
        ...

    def check_publishable(self) -> None:
        """Raise (UNAVAILABLE) if a durable publish cannot get the copies it needs."""
        ...

    def partner_refusal(self) -> PairqError | None:
        """Why the partner refuses copies, when it said so (its store is full): the
        error to answer instead of UNAVAILABLE. Called on the failure paths only."""
        ...

    def replicate(
        self,
        topic: str,
        seq0: int,
        records: list[bytes],
        crcs: list[int],
        *,
        uncommitted: bool = False,
    ) -> asyncio.Future[None] | None:
        """Send records to the partner; the future resolves on its acknowledgement
        (None: not sent, the partner is unreachable or there is none)."""
        ...

    def committed(self, topic: str, seq0: int, n: int) -> None:
        """Records sent ``uncommitted`` are durable here now."""
        ...

    def barrier(self) -> asyncio.Future[None] | None:
        """Resolves once the partner acknowledged everything sent so far (None:
        unreachable)."""
        ...

    async def wait_replicated(self) -> None:
        """Wait (bounded) until the partner acknowledged everything sent so far."""
        ...

    def unconfirmed(self, ids: list[bytes]) -> list[bytes]:
        """Of ``ids``, those held only as the partner's unconfirmed copies."""
        ...

    async def wait_confirmed(self, ids: list[bytes], timeout: float) -> set[bytes]:
        """Of unconfirmed ``ids``, those the partner confirmed within ``timeout``."""
        ...

    def progress(
        self,
        topic: str,
        channel: str,
        floor: int,
        finished: list[int],
        states: dict[int, tuple[int, int] | None] | None = None,
    ) -> None:
        """A channel's progress, for the partner's standby copies."""
        ...

    def channel_created(self, topic: str, channel: str, floor: int, created_ns: int) -> None:
        """A new durable channel (its starting floor and creation time), for the partner."""
        ...

    def channel_deleted(self, topic: str, channel: str, deleted_ns: int) -> None: ...

    def topic_deleted(self, topic: str) -> None: ...


class DeliveryFence(Protocol):
    """Whether owned messages may be delivered now (the pair's lease)."""

    @property
    def fence(self) -> int:
        """Moves whenever deliveries already queued became invalid."""
        ...

    def may_deliver(self) -> bool: ...

    async def fence_moved(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the next lease renewal or fence change."""
        ...


class _Solo:
    """``Replicator`` and ``DeliveryFence`` of a broker without a partner: one copy,
    nothing to send, always free to deliver."""

    min_copies = 1
    partner_address = ""
    fence = 0

    def copies(self) -> int:
        return 1

    def check_catalog(self) -> None:
        return None

    def check_publishable(self) -> None:
        return None

    def partner_refusal(self) -> PairqError | None:
        return None

    def replicate(
        self,
        topic: str,
        seq0: int,
        records: list[bytes],
        crcs: list[int],
        *,
        uncommitted: bool = False,
    ) -> asyncio.Future[None] | None:
        return None

    def committed(self, topic: str, seq0: int, n: int) -> None:
        return None

    def barrier(self) -> asyncio.Future[None] | None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def wait_replicated(self) -> None:
        return None

    def unconfirmed(self, ids: list[bytes]) -> list[bytes]:
        return []

    async def wait_confirmed(self, ids: list[bytes], timeout: float) -> set[bytes]:
        return set()

    def progress(
        self,
        topic: str,
        channel: str,
        floor: int,
        finished: list[int],
        states: dict[int, tuple[int, int] | None] | None = None,
    ) -> None:
        return None

    def channel_created(self, topic: str, channel: str, floor: int, created_ns: int) -> None:
        return None

    def channel_deleted(self, topic: str, channel: str, deleted_ns: int) -> None:
        return None

    def topic_deleted(self, topic: str) -> None:
        return None

    def may_deliver(self) -> bool:
        return True

    async def fence_moved(self, timeout: float) -> None:
        await asyncio.sleep(timeout)  # never called: a solo broker is never fenced


SOLO = _Solo()


class IntegrityPort(Protocol):
    """Where a read that met a record failing its checksum reports it (the broker's
    ``Integrity``, which repairs it from the partner or quarantines it)."""

    def report_owned(self, topic: str, topic_id: int, seq: int) -> None: ...

    def report_standby(self, topic: str, seq: int) -> None: ...


class _NoRepair:
    def report_owned(self, topic: str, topic_id: int, seq: int) -> None:
        return None

    def report_standby(self, topic: str, seq: int) -> None:
        return None


NO_REPAIR = _NoRepair()


@dataclass
class Identity:
    """Who delivers: every delivery carries the broker id and its current epoch."""

    node_id: str = ""
    epoch: int = 0


@dataclass
class IdAllocator:
    """Topic and channel ids: never reused (a deleted one may still own keys being
    dropped), so the counters are persisted with every catalog change."""

    next_topic: int = 1
    next_channel: int = 1

    def topic(self) -> int:
        tid = self.next_topic
        self.next_topic += 1
        return tid

    def channel(self) -> int:
        cid = self.next_channel
        self.next_channel += 1
        return cid


@dataclass(frozen=True)
class Limits:
    """The limits topics and channels enforce (from ``BrokerOptions``)."""

    max_channels: int = 1000
    max_backlog: int = 100_000
    max_attempts: int = 0
    max_rdy_count: int = 2500


# (topic, first traced message's id, W3C traceparent of the request's one ``pairq
# publish`` span) of the publish now running in this task: set by the publishing path only
# while tracing is on (``Publisher._publish_traced``), taken by the replication
# sender into the batch that carries those records (``ReplicaBatch.traces``), so
# the partner's replicate span joins the trace. None (one lookup) when not traced.
publish_traces: ContextVar[list[tuple[str, bytes, str]] | None] = ContextVar(
    "pairq_publish_traces", default=None
)


@dataclass
class TelemetryHooks:
    """Where channels report to ``pairq.telemetry``; each hook is None while nobody
    listens (metrics or tracing off), which costs one attribute test per call.

    Both are called with (topic, channel, entries) on the event loop and must not
    block: ``on_finished`` after a FIN finished ``entries``, ``on_delivered``
    before ``entries`` are sent to a subscriber."""

    on_finished: Callable[[str, str, list[Entry]], None] | None = None
    on_delivered: Callable[[str, str, list[Entry]], None] | None = None


@dataclass
class Context:
    """What a topic, its channels and the publishing path are given instead of the broker."""

    store: Store
    replicator: Replicator
    fence: DeliveryFence
    ident: Identity
    ids: IdAllocator
    limits: Limits
    topology_changed: Callable[[], None]
    integrity: IntegrityPort = NO_REPAIR
    telemetry: TelemetryHooks = field(default_factory=TelemetryHooks)
    # (topic, channel) -> when that durable channel was deleted (ns): pair/catalog.py
    tombstones: dict[tuple[str, str], int] = field(default_factory=dict)

    def tombstone(self, topic: str, channel: str, deleted_ns: int) -> None:
        """Record (here and in the store) that a durable channel was deleted at
        ``deleted_ns``, keeping the later of two deletions."""
        key = (topic, channel)
        if deleted_ns > self.tombstones.get(key, 0):
            self.tombstones[key] = deleted_ns
            self.store.post(self.store.catalog.put_tombstone(topic, channel, deleted_ns))
