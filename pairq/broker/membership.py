"""The broker's gossip membership: starts a ``pairq.gossip.Gossip`` member and feeds
what it learns about the partner into the pair.

Takeover stays fenced by the lease (pairq.broker.pair); once gossip knows members besides
the pair, it also needs gossip's verdict that the partner is dead on the
evidence of another member (witnessed takeover, see pair/core.py). The verdict is
also what lookups use for liveness.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from pairq.broker.options import BrokerOptions
from pairq.broker.pair import Pair
from pairq.gossip import EventKind, Gossip, MemberEvent, NodeMeta


class MembershipHost(Protocol):
    """What gossip membership reads of its broker."""

    options: BrokerOptions
    address: str

    @property
    def node_id(self) -> str: ...

    @property
    def pair(self) -> Pair | None: ...


log = logging.getLogger("pairq.membership")


class Membership:
    def __init__(self, broker: MembershipHost) -> None:
        self.broker = broker
        self.config = broker.options.gossip_config()
        self.gossip: Gossip | None = None

    async def start(self) -> None:
        b = self.broker
        meta = NodeMeta(
            role="broker",
            node_id=b.node_id,
            pair=b.options.pair,
            grpc_address=b.address,
            start_epoch_ms=int(time.time() * 1000),
        )
        self.gossip = Gossip(self.config, meta)
        await self.gossip.start()
        self.gossip.subscribe(self._on_event)
        if b.options.join:
            n = await self.gossip.join(list(b.options.join))
            if n == 0:
                log.warning(
                    "could not join any of %s yet; gossip keeps trying", ", ".join(b.options.join)
                )

    async def stop(self) -> None:
        if self.gossip is not None:
            await self.gossip.stop(leave=True)
            self.gossip = None

    def _on_event(self, event: MemberEvent) -> None:
        pair = self.broker.pair
        m = event.member
        if pair is None or m.meta.node_id == self.broker.node_id:
            return
        if m.meta.role != "broker" or m.meta.pair != pair.name:
            if event.kind in (EventKind.JOIN, EventKind.ALIVE):
                pair.gossip_has_witnesses()
            return
        if event.kind == EventKind.DEAD:
            log.warning(
                "gossip: partner %s (%s) is dead%s",
                m.meta.node_id,
                m.meta.grpc_address,
                f" (witnesses: {', '.join(sorted(event.witnesses))})"
                if event.witnesses
                else " (in this broker's view only)",
            )
            pair.gossip_partner_dead(True, witnessed=bool(event.witnesses))
        elif event.kind in (EventKind.ALIVE, EventKind.JOIN):
            pair.gossip_partner_dead(False)

    @property
    def address(self) -> str:
        if self.gossip is None:
            return ""
        h, p = self.gossip.address
        return f"{h}:{p}"
