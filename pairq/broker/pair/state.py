"""What the parts of a pair share: its settings, the decision core, the standby
copies and the delivery fence.

``Pair`` (``__init__.py``) makes one ``PairState`` and hands it to the sender,
the receiver and the takeover; none of them holds the ``Pair`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from pairq.broker.options import BrokerOptions
from pairq.broker.pair import core as pc
from pairq.broker.pair.standby import StandbyStore
from pairq.broker.ports import Context
from pairq.broker.store import Store
from pairq.broker.topic import Topic
from pairq.security.pairauth import PairSecret, load_secret
from pairq.security.server import ServerSecurity

log = logging.getLogger("pairq.pair")

# A partner never heard from since this broker started is taken over only after
# this many leases of silence (the second broker of a pair often starts later).
STARTUP_GRACE_LEASES = 4


class PairHost(Protocol):
    """What the pair asks of its broker."""

    options: BrokerOptions
    store: Store
    security: ServerSecurity
    store_id: str
    address: str
    topics: dict[str, Topic]
    tracer: Any  # an OpenTelemetry tracer while tracing is on, else None
    ctx: Context | None  # its channel tombstones (pair/catalog.py); set once started

    @property
    def epoch(self) -> int: ...

    @property
    def node_id(self) -> str: ...

    async def get_topic(
        self, name: str, *, create: bool = True, from_partner: bool = False
    ) -> Topic: ...

    def next_epoch(self) -> asyncio.Future[None]:
        """Move to the next ownership epoch; resolves once it is durable."""
        ...

    def on_lease_renewed(self) -> None:
        """Delivery may go on: pump every channel."""
        ...


class PairState:
    """The pair's settings, its ``PairCore``, its ``StandbyStore`` and the delivery
    fence (``fence``, new epochs), shared by every part of the pair."""

    def __init__(self, broker: PairHost) -> None:
        self.broker = broker
        self.security = broker.security  # TLS for the partner links (gRPC and TCP)
        o = broker.options
        self.name = o.pair
        self.partner_address = o.partner
        self.min_copies = o.min_copies
        self.lease = o.lease_ms / 1000.0
        self.heartbeat = o.heartbeat_ms / 1000.0
        self.standby = StandbyStore(broker.store)
        # Every decision about the partner (lease, silence, pauses, takeover,
        # the catalog gate) is the pure core's; the parts carry them out.
        self.core = pc.PairCore(
            lease=self.lease,
            ack_timeout=max(1.0, 2 * self.lease),
            now=time.monotonic(),
            startup_grace=STARTUP_GRACE_LEASES * self.lease,
        )
        self.running = False
        self.catalog_event = asyncio.Event()
        # Bumped whenever deliveries already queued for subscribers became invalid
        # (the partner took messages of ours over): the service drops queued
        # deliveries of an older fence, and holds the others while the lease is
        # lapsed.
        self.fence = 0
        self._epoch_pending = 0  # new epochs not yet durable: no delivery meanwhile
        self._fence_waiters: list[asyncio.Future[None]] = []
        # The pair secret (--pair-secret-file; None: an unauthenticated pair) and the
        # sessions refused for failing its proof (pairq.security.pairauth).
        self.secret: PairSecret | None = (
            load_secret(o.pair_secret_file) if o.pair_secret_file else None
        )
        self.auth_failures = 0

    def auth_failed(self, peer: str, why: str) -> None:
        """A peer failed the pair-secret proof: count it and say so (it changed nothing)."""
        self.auth_failures += 1
        log.warning(
            "refused a replication session from %s: %s (%d refused since start)",
            peer,
            why,
            self.auth_failures,
        )

    # ------------------------------------------------------------ delivery fence
    def may_deliver(self) -> bool:
        return not self._epoch_pending and self.core.may_deliver(time.monotonic())

    def new_epoch(self) -> None:
        """Move to a new epoch now (deliveries carry it) and fence delivery until it
        is durable, so a restart can never reuse it."""
        fut = self.broker.next_epoch()
        self._epoch_pending += 1

        def done(f: asyncio.Future[Any]) -> None:
            self._epoch_pending -= 1
            if not f.cancelled() and f.exception() is not None:
                log.error("cannot persist the new epoch: %s", f.exception())
            self.broker.on_lease_renewed()

        fut.add_done_callback(done)

    def move_fence(self) -> None:
        """Invalidate the deliveries queued so far (messages no longer ours)."""
        self.fence += 1
        self.kick_fence_waiters()

    async def fence_moved(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the next lease renewal or fence change."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fence_waiters.append(fut)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fut, timeout)

    def kick_fence_waiters(self) -> None:
        """Wake every ``fence_moved`` waiter (the lease was renewed or the fence moved)."""
        if not self._fence_waiters:
            return
        waiters, self._fence_waiters = self._fence_waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)
