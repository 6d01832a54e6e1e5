"""The broker's limits: how exceeding one is reported, and the per-client publish rate.

Rules:

* Exceeding a limit is ``RESOURCE_EXHAUSTED`` (reason ``ERROR_CODE_TOO_MANY``, or
  ``BAD_MESSAGE`` / ``BAD_BATCH`` for a message or batch too large) whose
  message states the limit and its flag, and whose ``ErrorInfo`` metadata carries
  ``limit`` (the option's name, e.g. ``max_batch_bytes``) and ``max`` (its value):
  :func:`limit_exceeded`. It fails that one request; nothing else of that client's
  or any other client's is touched.
* :class:`RateLimiter` is a token bucket per client key (the peer address): a
  bucket holds at most ``rate`` tokens (one second's worth), refills at ``rate``
  per second, and a request of ``n`` messages takes ``n`` tokens or is refused
  whole. ``rate`` 0 turns it off. Pure: time is passed in, buckets of clients idle
  for a full refill are forgotten (memory bounded by the clients active in the
  last second or so).
"""

from __future__ import annotations

import grpc

from pairq.errors import PairqError
from pairq.v1 import broker_pb2 as pb

__all__ = ["RateLimiter", "limit_exceeded"]


def limit_exceeded(
    name: str, limit: int | float, message: str, code: int = pb.ERROR_CODE_TOO_MANY
) -> PairqError:
    """The error for exceeding option ``name`` (its value ``limit``); ``message`` says
    what was asked for. The flag is appended: ``(--max-batch-bytes=33554432)``.
    ``code`` is the ErrorInfo reason (clients map it to an exception class: a message
    or batch too large stays BAD_MESSAGE / BAD_BATCH, an InvalidError not to retry);
    the status is RESOURCE_EXHAUSTED whatever it is."""
    flag = "--" + name.replace("_", "-")
    shown = f"{limit:g}" if isinstance(limit, float) else str(limit)
    err = PairqError(f"{message} ({flag}={shown})", code=code, limit=name, max=shown)
    err.status_override = grpc.StatusCode.RESOURCE_EXHAUSTED
    return err


class RateLimiter:
    """Token buckets per client; see the module docstring for the rules."""

    __slots__ = ("_buckets", "_last_sweep", "rate")

    def __init__(self, rate: float) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0 (0: off), got {rate}")
        self.rate = float(rate)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._last_sweep = 0.0

    def allow(self, key: str, n: int, now: float) -> bool:
        """Take ``n`` tokens from ``key``'s bucket at time ``now``; False (nothing
        taken) if it does not hold them."""
        rate = self.rate
        if rate <= 0:
            return True
        tokens, at = self._buckets.get(key, (rate, now))
        tokens = min(rate, tokens + max(0.0, now - at) * rate)
        ok = n <= tokens
        if ok:
            tokens -= n
        self._buckets[key] = (tokens, now)
        if now - self._last_sweep > 1.0:
            self._sweep(now)
        return ok

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        rate = self.rate
        for key in [k for k, (t, at) in self._buckets.items() if t + (now - at) * rate >= rate]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
