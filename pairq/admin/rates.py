"""Rates over time for the console's charts: pure, no clock, no I/O.

The poller feeds one sample per key per poll: ``history.record(now, key, count)``
with a monotonically growing counter (messages published to a topic, delivered
on a channel, summed over the brokers that answered). Rules:

- a rate is the counter's increase divided by the time between two samples of
  that key; the first sample of a key has no rate yet;
- a counter that goes *down* (a broker restarted, or stopped answering so the
  sum lost its share) restarts the series at the new value: no negative rate,
  and no spike when the broker comes back;
- each key keeps at most ``keep`` points (oldest dropped), so memory is bounded
  by keys x keep; keys not recorded for ``forget_after`` seconds are dropped
  (a deleted topic's chart goes away);
- ``now`` is seconds on any clock, non-decreasing; the caller passes it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["RateHistory"]


@dataclass
class _Series:
    last_t: float
    last_count: int
    points: deque[tuple[float, float]] = field(default_factory=deque)


class RateHistory:
    """Per-key rate series (see the module docstring for the rules)."""

    def __init__(self, *, keep: int = 300, forget_after: float = 600.0) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.keep = keep
        self.forget_after = forget_after
        self._series: dict[str, _Series] = {}

    def record(self, now: float, key: str, count: int) -> None:
        s = self._series.get(key)
        if s is None:
            self._series[key] = _Series(now, count, deque(maxlen=self.keep))
            return
        dt = now - s.last_t
        if dt <= 0:
            return
        if count >= s.last_count:
            s.points.append((now, (count - s.last_count) / dt))
        s.last_t, s.last_count = now, count

    def expire(self, now: float) -> None:
        """Drop keys not recorded within ``forget_after`` seconds of ``now``."""
        for key in [k for k, s in self._series.items() if now - s.last_t > self.forget_after]:
            del self._series[key]

    def rate(self, key: str) -> float | None:
        """The latest rate of ``key`` per second, None before its second sample."""
        s = self._series.get(key)
        return s.points[-1][1] if s is not None and s.points else None

    def series(self, key: str) -> list[tuple[float, float]]:
        """(time, rate) points of ``key``, oldest first."""
        s = self._series.get(key)
        return list(s.points) if s is not None else []

    def keys(self) -> list[str]:
        return sorted(self._series)
