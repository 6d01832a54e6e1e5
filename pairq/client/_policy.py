"""Pure client policies: retry backoff, failover order, requeue delays, RDY distribution,
batch cutting.

Nothing here does I/O or reads a clock; the async code in ``producer`` and
``consumer`` calls these functions with the numbers it has, which keeps the
rules testable on their own.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from pairq import names
from pairq.errors import InvalidError, PairqError


def retry_backoff(attempt: int, *, base: float, cap: float, jitter: float = 0.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = first retry).

    Exponential (``base * 2**(attempt-1)``) capped at ``cap``. ``jitter`` in
    [0, 1] is a random fraction supplied by the caller; the result is reduced
    by up to half of it (so retries of many clients spread out), never below 0.
    """
    if attempt < 1:
        return 0.0
    delay = min(cap, base * (2.0 ** min(attempt - 1, 62)))
    return max(0.0, delay * (1.0 - 0.5 * jitter))


# How long a broker that failed a publish is tried after every other one (see Penalties):
# about the time gossip and the lookups take to declare a silent broker dead and a
# producer's placement (polled every second or more) to drop it, and longer than a
# pair takes to give up on a silent partner (its ack timeout, ~1.6 s) and refuse.
FAILOVER_PENALTY_S = 10.0


class Penalties:
    """Brokers a producer tries last for a while, because they just failed a publish.

    Rules (the caller passes ``now``, any monotonic clock):

    - ``add(addresses, now)``: each address is penalized until ``now + period``
      (a later failure extends it). A producer adds the broker that did not answer,
      broke its stream or refused, and every other broker of its pair (a publish needs
      both; when the refusal named the partner, metadata ``partner``, that address
      too, whether or not the route lists it).
    - ``clear(address)``: a publish it acknowledged ends its penalty at once.
    - ``active(now)``: the addresses still penalized (expired ones are forgotten);
      ``ends(now)`` the same with the time each penalty ends (its last failure plus
      ``period``: the earliest end is the broker that failed longest ago).

    A penalty only reorders failover (``pick_broker``); it never excludes a broker,
    so with every broker penalized the producer still tries them all, the one that
    failed longest ago first.
    """

    __slots__ = ("_until", "period")

    def __init__(self, period: float = FAILOVER_PENALTY_S) -> None:
        self.period = period
        self._until: dict[str, float] = {}

    def add(self, addresses: Iterable[str], now: float) -> None:
        until = now + self.period
        for a in addresses:
            self._until[a] = until

    def clear(self, address: str) -> None:
        if self._until:
            self._until.pop(address, None)

    def active(self, now: float) -> set[str]:
        return set(self.ends(now))

    def ends(self, now: float) -> dict[str, float]:
        expired = [a for a, t in self._until.items() if t <= now]
        for a in expired:
            del self._until[a]
        return dict(self._until)


class RateLimit:
    """At most one event per key per ``period`` (for logs an operator reads).

    ``allow(key, now)`` is None while ``key`` had an allowed event less than ``period``
    before ``now`` (the event is counted), else the number of events counted since
    the last allowed one (0 the first time), and ``now`` starts a new period.
    """

    __slots__ = ("_last", "period")

    def __init__(self, period: float) -> None:
        self.period = period
        self._last: dict[str, tuple[float, int]] = {}

    def allow(self, key: str, now: float) -> int | None:
        last = self._last.get(key)
        if last is not None and now - last[0] < self.period:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if len(self._last) > 1024:  # forget keys quiet for a period
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.period}
        self._last[key] = (now, 0)
        return last[1] if last is not None else 0


def pick_broker(
    count: int, start: int, avoid: Collection[int], ends: Mapping[int, float] | None = None
) -> int:
    """Which of a route's ``count`` brokers to use: the first index from ``start`` on,
    in route order and wrapping around, that is not in ``avoid``; when every one is
    to be avoided, the one whose penalty ends first (``ends``: index -> end of its
    penalty, ``Penalties.ends``; an index without one counts as ending last), the
    first from ``start`` among equals, so ``start`` itself without ``ends`` (or
    when ``count`` is 0, 0).

    After broker ``i`` failed, ``pick_broker(count, (i + 1) % count, avoid | {i}, ends)``
    is the failover: the next broker that is not penalized, else the one that failed
    longest ago (``i`` itself only when it is the only broker). At a new route,
    ``start`` is 0: the placement's first broker that is not penalized.

    Why the oldest failure and not simply the next in route order: the next is
    usually the failed broker's partner, which a pair failure (one broker silent,
    the other refusing for want of its copy) has just penalized too. make chaos
    (mixed, seed 1): the other pair's penalty from a fault 7 s earlier, healed
    since, was still running when p0b was cut off; p0a refused after its ack
    timeout (1.6 s), every broker was penalized, and the route went on to the
    silent p0b and its 2 s RPC timeout before the healthy other pair: 3.7 s
    without an ack.
    """
    if count <= 0:
        return 0
    start %= count
    order = [(start + k) % count for k in range(count)]
    for i in order:
        if i not in avoid:
            return i
    if not ends:
        return start
    inf = float("inf")
    return min(order, key=lambda i: ends.get(i, inf))  # min keeps the first of equals


def requeue_delay_ms(attempts: int, *, base_ms: int, max_ms: int) -> int:
    """Delay for a REQ after a failed handler run: ``base_ms * 2**(attempts-1)``, capped.

    ``attempts`` is the message's delivery count including the one that
    failed (1 on the first delivery), so the first failure waits ``base_ms``.
    """
    if base_ms <= 0:
        return 0
    n = max(1, attempts)
    return int(min(max_ms, base_ms * (2 ** min(n - 1, 40))))


def rdy_per_connection(max_in_flight: int, connections: int, max_rdy: int = 0) -> int:
    """NSQ's rule: each of ``connections`` gets ``max(1, max_in_flight // connections)``.

    Capped by the broker's ``max_rdy`` when that is known (> 0). With no
    connection the answer is 0. A ``max_in_flight`` of 0 pauses delivery.
    """
    if connections <= 0 or max_in_flight <= 0:
        return 0
    rdy = max(1, max_in_flight // connections)
    if max_rdy > 0:
        rdy = min(rdy, max_rdy)
    return rdy


def cut_batch(sizes: Sequence[int], *, max_items: int, max_bytes: int) -> int:
    """How many of the leading pending items (with encoded ``sizes``) fit in one batch.

    At least one item is always taken when any is pending (a single item
    larger than ``max_bytes`` is the caller's to reject beforehand), then items
    are added while the count stays within ``max_items`` and the byte total
    within ``max_bytes``.
    """
    if not sizes:
        return 0
    total = sizes[0]
    n = 1
    limit = min(len(sizes), max_items)
    while n < limit:
        total += sizes[n]
        if total > max_bytes:
            break
        n += 1
    return n


def check_topic(name: str) -> str:
    """``pairq.names.check_topic``, raising ``InvalidError`` (so callers can catch bad input)."""
    try:
        return names.check_topic(name)
    except PairqError as exc:
        raise InvalidError(exc.message, code=exc.code) from None


def check_channel(name: str) -> str:
    """``pairq.names.check_channel``, raising ``InvalidError``."""
    try:
        return names.check_channel(name)
    except PairqError as exc:
        raise InvalidError(exc.message, code=exc.code) from None
