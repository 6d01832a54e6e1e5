from __future__ import annotations

import math

import pytest

from pairq.gossip import formulas
from pairq.gossip.config import ConfigError, lan, local, wan


@pytest.mark.parametrize(
    ("mult", "n", "interval", "expected"),
    [
        (4, 1, 1.0, 4.0),  # log10 floor of 1 keeps small clusters at mult * interval
        (4, 10, 1.0, 4.0),
        (4, 100, 1.0, 8.0),
        (4, 1000, 0.5, 6.0),
        (3, 50, 0.5, 3 * 1.698 * 0.5),  # scale floored to the millisecond like memberlist
    ],
)
def test_suspicion_timeout_matches_memberlist(
    mult: int, n: int, interval: float, expected: float
) -> None:
    assert formulas.suspicion_timeout(mult, n, interval) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("mult", "n", "expected"),
    [(4, 0, 0), (4, 1, 4), (4, 9, 4), (4, 10, 8), (3, 99, 6), (3, 100, 9)],
)
def test_retransmit_limit(mult: int, n: int, expected: int) -> None:
    assert formulas.retransmit_limit(mult, n) == expected


def test_push_pull_scale_only_above_32() -> None:
    assert formulas.push_pull_scale(30.0, 32) == 30.0
    assert formulas.push_pull_scale(30.0, 33) == 60.0
    assert formulas.push_pull_scale(30.0, 64) == 60.0
    assert formulas.push_pull_scale(30.0, 65) == 90.0


def test_suspicion_confirmations() -> None:
    assert formulas.suspicion_confirmations(4, 10) == 2
    assert formulas.suspicion_confirmations(4, 3) == 0  # too few members to confirm
    assert formulas.suspicion_confirmations(2, 10) == 0


def test_remaining_suspicion_timeout_shrinks_from_max_to_min() -> None:
    lo, hi, k = 2.0, 12.0, 3
    values = [formulas.remaining_suspicion_timeout(lo, hi, c, k) for c in range(5)]
    assert values[0] == hi
    assert values[0] > values[1] > values[2] > values[3]
    assert values[3] == lo and values[4] == lo
    # memberlist's curve: max - (max - min) * log(c + 1) / log(k + 1)
    assert values[1] == pytest.approx(
        math.floor(1000 * (hi - 10 * math.log(2) / math.log(4))) / 1000
    )
    assert formulas.remaining_suspicion_timeout(lo, hi, 0, 0) == lo


def test_scale_by_health() -> None:
    assert formulas.scale_by_health(0.2, 0) == pytest.approx(0.2)
    assert formulas.scale_by_health(0.2, 3) == pytest.approx(0.8)
    assert formulas.scale_by_health(0.2, -1) == pytest.approx(0.2)


def test_profiles_validate_and_differ() -> None:
    a, b, c = lan(), wan(), local()
    assert a.probe_interval < b.probe_interval
    assert c.bind_port == 0 and c.indirect_checks == 1
    # The pair path must tolerate a 0.5 s pause plus one missed heartbeat.
    assert a.pair_dead_after > 0.5 + a.pair_heartbeat_interval


@pytest.mark.parametrize(
    "change",
    [
        {"probe_timeout": 0.6},
        {"pair_suspect_after": 1.0},
        {"keys": (b"short",)},
        {"probe_interval": 0.0},
        {"label": "x" * 300},
    ],
)
def test_validate_rejects_bad_values(change: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        lan(**change)
