"""Pure timing formulas of the gossip protocol, in one place and tested directly.

Every formula here is either memberlist's (``hashicorp/memberlist/util.go`` and
``suspicion.go``) with the same shape, or pairq's extension, marked as such.
Nothing in this module reads a clock or touches I/O.
"""

from __future__ import annotations

import math

__all__ = [
    "push_pull_scale",
    "remaining_suspicion_timeout",
    "retransmit_limit",
    "scale_by_health",
    "suspicion_confirmations",
    "suspicion_timeout",
]


def suspicion_timeout(suspicion_mult: int, n: int, interval: float) -> float:
    """Minimum suspicion timeout: ``mult * max(1, log10(max(1, n))) * interval``.

    memberlist's ``suspicionTimeout``: grows slowly with the cluster so that a
    suspect message has time to reach the suspect (who then refutes it).
    """
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    # memberlist rounds the scale to milliseconds; keep that so timeouts match.
    return float(suspicion_mult) * math.floor(node_scale * 1000.0) / 1000.0 * interval


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How often one broadcast is piggybacked: ``mult * ceil(log10(n + 1))``.

    memberlist's ``retransmitLimit``: enough transmissions that, with fanout,
    every member hears a message with high probability.
    """
    node_scale = math.ceil(math.log10(float(max(0, n) + 1)))
    return retransmit_mult * node_scale


def push_pull_scale(interval: float, n: int, threshold: int = 32) -> float:
    """Push-pull interval stretched for big clusters (memberlist ``pushPullScale``).

    Below ``threshold`` members the interval is used as is; above it, it grows by
    one interval per doubling, so that push-pull traffic stays bounded.
    """
    if n <= threshold:
        return interval
    multiplier = math.ceil(math.log2(float(n)) - math.log2(float(threshold))) + 1.0
    return interval * multiplier


def suspicion_confirmations(suspicion_mult: int, n: int) -> int:
    """Independent confirmations expected before the timeout reaches its minimum.

    memberlist: ``k = mult - 2``, or 0 when the cluster is too small to supply
    that many confirmers (``n - 2 < k``).
    """
    k = suspicion_mult - 2
    if n - 2 < k:
        return 0
    return max(0, k)


def remaining_suspicion_timeout(
    min_timeout: float, max_timeout: float, confirmations: int, expected: int
) -> float:
    """Lifeguard's shrinking suspicion timeout (memberlist ``suspicion.remainingSuspicionTime``).

    ``max - (max - min) * log(c + 1) / log(k + 1)``, floored to the millisecond and
    never below ``min``; with ``k < 1`` it is ``min`` straight away.
    """
    if expected < 1:
        return min_timeout
    frac = math.log(float(confirmations) + 1.0) / math.log(float(expected) + 1.0)
    raw = max_timeout - frac * (max_timeout - min_timeout)
    timeout = math.floor(1000.0 * raw) / 1000.0
    return max(min_timeout, timeout)


def scale_by_health(timeout: float, health: int) -> float:
    """Lifeguard local health multiplier: ``timeout * (health + 1)`` (memberlist ``ScaleTimeout``)."""
    return timeout * float(max(0, health) + 1)
