"""The pair health gate of deploy/ansible (pairq-pair-health): its pure verdict."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

_PATH = (
    Path(__file__).resolve().parents[2]
    / "deploy/ansible/roles/pairq_common/files/pairq_pair_health.py"
)
_spec = importlib.util.spec_from_file_location("pairq_pair_health", _PATH)
assert _spec is not None and _spec.loader is not None
health = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(health)


def stats(me: str, partner: str, **pair: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "pair": "p1",
        "partner_address": f"{partner}:4150",
        "connected": True,
        "partner_connected": True,
        "replication_lag": 0,
        "refill_sending": 0,
        "refill_receiving": 0,
    }
    p.update(pair)
    return {"address": f"{me}:4150", "broker_id": me, "health": "ok", "pair": p}


def test_a_healthy_pair_passes() -> None:
    assert health.verdict(stats("a", "b"), stats("b", "a")) == ""


@pytest.mark.parametrize(
    ("a", "b", "why"),
    [
        (stats("a", "b"), None, "partner does not answer"),
        (None, stats("b", "a"), "broker does not answer"),
        ({**stats("a", "b"), "health": "store full"}, stats("b", "a"), "health is 'store full'"),
        ({"broker_id": "a", "health": "ok"}, stats("b", "a"), "has no pair"),
        (stats("a", "c"), stats("b", "a"), "not each other's partner"),
        (stats("a", "b", pair="p2"), stats("b", "a"), "pair names differ"),
        (stats("a", "b", connected=False), stats("b", "a"), "replication to its partner is down"),
        (stats("a", "b"), stats("b", "a", partner_connected=False), "from its partner is down"),
        (stats("a", "b", replication_lag=3), stats("b", "a"), "3 messages still have one copy"),
        (stats("a", "b"), stats("b", "a", refill_receiving=7), "re-fill in progress"),
        (stats("a", "b", refill_sending=1), stats("b", "a"), "re-fill in progress"),
    ],
)
def test_an_unhealthy_pair_says_why(
    a: dict[str, Any] | None, b: dict[str, Any] | None, why: str
) -> None:
    assert why in health.verdict(a, b)


def test_it_fails_closed_when_the_brokers_do_not_answer() -> None:
    # Nothing listens on port 1: the gate must time out with exit 1, not pass.
    rc = health.main(["--broker", "127.0.0.1:1", "--partner", "127.0.0.1:1", "--timeout", "0.3"])
    assert rc == 1
