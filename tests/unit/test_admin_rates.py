"""The console's rate history (pairq/admin/rates.py): each rule of its docstring."""

from __future__ import annotations

import pytest

from pairq.admin.rates import RateHistory


def test_rate_is_the_increase_over_the_time_between_samples() -> None:
    h = RateHistory()
    h.record(10.0, "t", 100)
    assert h.rate("t") is None and h.series("t") == []  # one sample: no rate yet
    h.record(12.0, "t", 150)
    assert h.rate("t") == 25.0
    h.record(13.0, "t", 150)
    assert h.series("t") == [(12.0, 25.0), (13.0, 0.0)]


def test_a_counter_that_goes_down_restarts_the_series_without_a_spike() -> None:
    h = RateHistory()
    h.record(0.0, "t", 1000)
    h.record(1.0, "t", 1010)
    h.record(2.0, "t", 5)  # a broker restarted: counters from zero
    assert h.series("t") == [(1.0, 10.0)]
    h.record(3.0, "t", 25)
    assert h.rate("t") == 20.0


def test_same_or_earlier_time_is_ignored() -> None:
    h = RateHistory()
    h.record(5.0, "t", 1)
    h.record(5.0, "t", 100)
    h.record(4.0, "t", 200)
    assert h.series("t") == []


def test_points_are_bounded_and_idle_keys_forgotten() -> None:
    h = RateHistory(keep=3, forget_after=10.0)
    for i in range(10):
        h.record(float(i), "t", i * 2)
    assert len(h.series("t")) == 3 and h.series("t")[0][0] == 7.0
    h.record(9.5, "u", 1)
    h.expire(19.2)
    assert h.keys() == ["u"]


def test_keep_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateHistory(keep=0)
