"""The broker's gossip membership: starts a ``pairq.gossip.Gossip`` member and feeds
what it learns about the partner into the pair.

Takeover stays fenced by the lease (pairq.broker.pair); once gossip knows members besides
the pair, it also needs gossip's verdict that the partner is dead on the
evidence of another member (witnessed takeover, see pair/core.py). The verdict is
also what lookups use for liveness. Which member is the partner (never this broker
nor an earlier run of it; the partner's newest incarnation, not one its wiped disk
left behind) is ``pair/partner_view.py``'s pure rule; this module only carries it out.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from pairq.broker.options import BrokerOptions
from pairq.broker.pair import Pair
from pairq.broker.pair import partner_view as pv
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


# Whom a death in the pair is about when it is no verdict on the partner (for the log).
_NOT_THE_PARTNER = {
    pv.ME: "an earlier run of this broker",
    pv.EARLIER_PARTNER: "an earlier incarnation of the partner",
    pv.ELSEWHERE: "a broker of this pair at neither this broker's address nor --partner "
    "(an earlier run of this broker on another host)",
}

# Member events logged for every member, not only the partner.
_LOGGED = frozenset({EventKind.SUSPECT, EventKind.ALIVE, EventKind.DEAD, EventKind.LEFT})


class Membership:
    def __init__(self, broker: MembershipHost) -> None:
        self.broker = broker
        self.config = broker.options.gossip_config()
        self.gossip: Gossip | None = None
        self.view: pv.PartnerView | None = None

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
        # An earlier run of this broker advertised the same addresses (under another
        # node id, if its store was new since), or, on another host, an IP that is not
        # the partner's: those members are never the partner.
        self.view = pv.PartnerView(
            pair=b.options.pair,
            node_id=b.node_id,
            addresses=(self.gossip.address, b.address),
            partner_address=b.options.partner,
        )
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
        m = event.member
        if event.kind in _LOGGED:
            # Every member's suspicion, death and return (rare: faults only), so that a
            # verdict on the partner can be traced back to who suspected whom.
            log.info(
                "gossip: member %s (%s, %s) %s at incarnation %d%s",
                m.name,
                m.meta.node_id or m.meta.role or "?",
                m.meta.grpc_address or f"{m.addr[0]}:{m.addr[1]}",
                event.kind.value,
                m.incarnation,
                f" (witnesses: {', '.join(sorted(event.witnesses))})" if event.witnesses else "",
            )
        pair, view = self.broker.pair, self.view
        if pair is None or view is None:
            return
        seen = view.on_event(event)
        if seen.witnesses_exist:
            pair.gossip_has_witnesses()
        if event.kind == EventKind.DEAD and seen.about in _NOT_THE_PARTNER:
            log.info(
                "gossip: %s (%s), %s, is dead: not a verdict on partner %s",
                m.meta.node_id,
                m.meta.grpc_address,
                _NOT_THE_PARTNER[seen.about],
                seen.partner or "(none known yet)",
            )
        if seen.dead is None:
            return
        if seen.dead:
            log.warning(
                "gossip: partner %s (%s) is dead%s",
                m.meta.node_id,
                m.meta.grpc_address,
                f" (witnesses: {', '.join(sorted(event.witnesses))})"
                if event.witnesses
                else " (in this broker's view only)",
            )
        pair.gossip_partner_dead(seen.dead, witnessed=seen.witnessed)

    @property
    def address(self) -> str:
        if self.gossip is None:
            return ""
        h, p = self.gossip.address
        return f"{h}:{p}"
