"""Pure client policies: backoff, requeue delay, RDY spreading, batch cutting, ids."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from pairq.client._ids import IdGenerator
from pairq.client._policy import (
    Penalties,
    RateLimit,
    cut_batch,
    pick_broker,
    rdy_per_connection,
    requeue_delay_ms,
    retry_backoff,
)


def test_retry_backoff_doubles_and_caps() -> None:
    assert retry_backoff(0, base=0.05, cap=1.0) == 0.0
    assert [retry_backoff(n, base=0.05, cap=1.0) for n in (1, 2, 3, 4, 5, 6)] == [
        0.05,
        0.1,
        0.2,
        0.4,
        0.8,
        1.0,
    ]
    assert retry_backoff(10_000, base=0.05, cap=1.0) == 1.0
    # Jitter takes off at most half.
    assert retry_backoff(3, base=0.05, cap=1.0, jitter=1.0) == 0.1


def test_requeue_delay_by_attempts() -> None:
    assert [requeue_delay_ms(a, base_ms=1000, max_ms=60_000) for a in (1, 2, 3, 4)] == [
        1000,
        2000,
        4000,
        8000,
    ]
    assert requeue_delay_ms(0, base_ms=1000, max_ms=60_000) == 1000
    assert requeue_delay_ms(100, base_ms=1000, max_ms=60_000) == 60_000
    assert requeue_delay_ms(3, base_ms=0, max_ms=60_000) == 0


def test_rdy_follows_nsq_rule() -> None:
    assert rdy_per_connection(200, 1) == 200
    assert rdy_per_connection(200, 2) == 100
    assert rdy_per_connection(200, 3) == 66
    assert rdy_per_connection(2, 5) == 1  # never starve a connection
    assert rdy_per_connection(200, 0) == 0
    assert rdy_per_connection(0, 2) == 0
    assert rdy_per_connection(5000, 1, max_rdy=2500) == 2500


@given(st.integers(1, 100_000), st.integers(1, 64), st.integers(0, 5000))
def test_rdy_bounds(mif: int, n: int, cap: int) -> None:
    r = rdy_per_connection(mif, n, cap)
    assert r >= 1
    if cap:
        assert r <= cap
    if mif >= n:
        assert r * n <= mif


def test_cut_batch() -> None:
    assert cut_batch([], max_items=10, max_bytes=100) == 0
    assert cut_batch([500], max_items=10, max_bytes=100) == 1  # oversize single still goes
    assert cut_batch([10] * 20, max_items=5, max_bytes=1000) == 5
    assert cut_batch([40, 40, 40], max_items=10, max_bytes=100) == 2


@given(st.lists(st.integers(1, 1000), max_size=200), st.integers(1, 50), st.integers(1, 5000))
def test_cut_batch_bounds(sizes: list[int], max_items: int, max_bytes: int) -> None:
    n = cut_batch(sizes, max_items=max_items, max_bytes=max_bytes)
    if not sizes:
        assert n == 0
        return
    assert 1 <= n <= min(max_items, len(sizes))
    if n > 1:
        assert sum(sizes[:n]) <= max_bytes
    if n < min(max_items, len(sizes)):
        assert sum(sizes[: n + 1]) > max_bytes


def test_ids_unique_and_16_bytes() -> None:
    a, b = IdGenerator(), IdGenerator()
    ids = [a.next() for _ in range(10_000)] + [b.next() for _ in range(10_000)]
    assert all(len(i) == 16 for i in ids)
    assert len(set(ids)) == len(ids)


def test_ids_differ_after_fork() -> None:
    gen = IdGenerator()
    gen.next()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(w, gen.next())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 16)
    os.close(r)
    os.close(w)
    assert child[:10] != gen.next()[:10]


def test_pick_broker_skips_penalized_ones_but_never_excludes_them() -> None:
    # after broker 0 failed: the next one not penalized
    assert pick_broker(4, 1, {0}) == 1
    assert pick_broker(4, 1, {0, 1}) == 2  # its partner penalized too: the other pair
    assert pick_broker(4, 3, {3}) == 0  # wraps around
    assert pick_broker(4, 1, {0, 1, 2, 3}) == 1  # all penalized: simply the next one
    assert pick_broker(1, 1, {0}) == 0  # the only broker
    assert pick_broker(0, 0, set()) == 0
    assert pick_broker(3, 0, {0}) == 1  # a new route starts at its first good broker


@given(
    st.integers(1, 8),
    st.integers(0, 20),
    st.sets(st.integers(0, 7)),
)
def test_pick_broker_is_the_first_good_one_in_route_order(
    count: int, start: int, avoid: set[int]
) -> None:
    i = pick_broker(count, start, avoid)
    assert 0 <= i < count
    order = [(start + k) % count for k in range(count)]
    good = [j for j in order if j not in avoid]
    assert i == (good[0] if good else start % count)


def test_pick_broker_with_every_one_penalized_takes_the_one_that_failed_longest_ago() -> None:
    # make chaos (mixed, seed 1): p1 (2, 3) penalized by a fault 7 s ago, p0 (0, 1) just now
    # as 0 refused for want of its partner's copy: the other pair, not the silent partner 1
    ends = {0: 110.0, 1: 110.0, 2: 103.0, 3: 103.0}
    assert pick_broker(4, 1, {0, 1, 2, 3}, ends) == 2
    assert pick_broker(4, 3, {0, 1, 2, 3}, ends) == 3  # the first of equals from start
    assert pick_broker(4, 1, {0, 1, 2, 3}, {0: 110.0, 1: 104.0, 2: 103.0}) == 2
    # an avoided broker without a penalty (the one that just failed) counts as last
    assert pick_broker(3, 1, {0, 1, 2}, {1: 105.0, 2: 104.0}) == 2
    assert pick_broker(4, 1, {0}, ends) == 1  # one not avoided: route order, as before
    assert pick_broker(4, 1, {0, 1, 2, 3}, {}) == 1


@given(
    st.integers(1, 8),
    st.integers(0, 20),
    st.dictionaries(st.integers(0, 7), st.integers(0, 3)),
)
def test_pick_broker_all_avoided_is_the_first_earliest_end_from_start(
    count: int, start: int, ends: dict[int, int]
) -> None:
    ends_f = {i: float(t) for i, t in ends.items() if i < count}
    i = pick_broker(count, start, set(range(count)), ends_f)
    order = [(start + k) % count for k in range(count)]
    if not ends_f:
        assert i == start % count
        return
    key = [ends_f.get(j, float("inf")) for j in order]
    assert i == order[key.index(min(key))]


def test_penalties_expire_and_a_success_clears_them() -> None:
    p = Penalties(period=10.0)
    p.add(["a", "b"], now=100.0)
    assert p.active(105.0) == {"a", "b"}
    p.add(["b"], now=108.0)  # a later failure extends it
    p.clear("a")  # it acknowledged a publish
    assert p.active(109.0) == {"b"}
    assert p.active(117.9) == {"b"}
    assert p.active(118.0) == set()
    p.clear("nobody")
    assert p.active(200.0) == set()


def test_rate_limit_allows_one_event_per_key_per_period_and_counts_the_rest() -> None:
    r = RateLimit(10.0)
    assert r.allow("a", 100.0) == 0  # the first one
    assert r.allow("b", 101.0) == 0  # another key has its own period
    assert r.allow("a", 105.0) is None
    assert r.allow("a", 109.9) is None
    assert r.allow("a", 110.0) == 2  # a new period, with what was held back
    assert r.allow("a", 111.0) is None
    assert r.allow("a", 130.0) == 1
