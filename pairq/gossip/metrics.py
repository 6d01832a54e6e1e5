"""Gossip metrics through the OpenTelemetry API (the SDK is configured elsewhere).

Cumulative counters are observable instruments that read each running
member's :class:`~pairq.gossip.events.Stats`, so the protocol core stays free
of any telemetry dependency. Every point carries ``member=<name>``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from pairq.gossip.events import Stats

if TYPE_CHECKING:
    from pairq.gossip.node import Gossip

__all__ = ["create_instruments", "register"]

_members: weakref.WeakSet[Gossip] = weakref.WeakSet()
_registered = False

_COUNTERS: dict[str, tuple[str, str, Callable[[Stats], int]]] = {
    "pairq.gossip.probes": ("{probe}", "Direct probes sent", lambda s: s.probes),
    "pairq.gossip.probe_failures": (
        "{probe}",
        "Probes with no ack at all",
        lambda s: s.probe_failures,
    ),
    "pairq.gossip.suspects": (
        "{event}",
        "Members this member started suspecting",
        lambda s: s.suspects,
    ),
    "pairq.gossip.deaths": ("{event}", "Members this member saw declared dead", lambda s: s.deaths),
    "pairq.gossip.pair_deaths": (
        "{event}",
        "Partners declared dead by the pair fast path",
        lambda s: s.pair_deaths,
    ),
    "pairq.gossip.refutations": (
        "{event}",
        "Accusations against this member it refuted",
        lambda s: s.refutations,
    ),
    # Named without "bytes": the unit ("By") adds it once (pairq_gossip_sent_bytes_total).
    "pairq.gossip.sent": ("By", "Gossip bytes sent (UDP + TCP)", lambda s: s.bytes_sent),
    "pairq.gossip.received": (
        "By",
        "Gossip bytes received (UDP + TCP)",
        lambda s: s.bytes_received,
    ),
    "pairq.gossip.decode_errors": (
        "{packet}",
        "Malformed, unauthenticated or replayed packets dropped",
        lambda s: s.decode_errors,
    ),
    "pairq.gossip.loop_stalls": (
        "{event}",
        "Event-loop stalls seen by Lifeguard",
        lambda s: s.stalls,
    ),
}


def _observe(read: Callable[[Stats], int]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for g in list(_members):
            if g._core is not None:
                out.append(Observation(read(g._core.stats), {"member": g.name}))
        return out

    return callback


def register(member: Gossip) -> None:
    """Report ``member``'s stats; instruments are created once per process on the global meter."""
    global _registered
    _members.add(member)
    if _registered:
        return
    _registered = True
    create_instruments(metrics.get_meter("pairq.gossip"))


def create_instruments(meter: metrics.Meter) -> None:
    """Create the gossip instruments on ``meter`` (tests pass their own provider's meter)."""
    for name, (unit, desc, read) in _COUNTERS.items():
        meter.create_observable_counter(
            name, callbacks=[_observe(read)], unit=unit, description=desc
        )
    meter.create_observable_gauge(
        "pairq.gossip.health_score",
        callbacks=[_observe(lambda s: s.health)],
        unit="1",
        description="Lifeguard local health (0 healthy; timeouts scale by score + 1)",
    )
    meter.create_observable_gauge(
        "pairq.gossip.members",
        callbacks=[_observe(lambda s: s.extra.get("members_alive", 0))],
        unit="{member}",
        description="Members this member sees alive (including itself)",
    )
