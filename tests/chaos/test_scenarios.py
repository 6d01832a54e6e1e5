"""Every scenario as an opt-in pytest (``pytest -m chaos tests/chaos``; needs root): a
normal scenario must pass the checker, a self-test must fail it. ``PAIRQ_CHAOS_SECONDS``
(default 60) is each scenario's fault time, ``PAIRQ_CHAOS_SEED`` (default 1) its seed.
``make chaos`` runs the same through ``python -m tests.chaos all``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.nemesis import SCENARIOS

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1800)]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_scenario(name: str, tmp_path: Path) -> None:
    from tests.chaos.runner import Runner, passed

    seconds = float(os.environ.get("PAIRQ_CHAOS_SECONDS", "60"))
    seed = int(os.environ.get("PAIRQ_CHAOS_SEED", "1"))
    result = await Runner(name, seconds, seed, tmp_path).run()
    assert passed(result), result["violations"] or "a self-test found no violation"
    if SCENARIOS[name].expect_fail:
        assert result["lost"] > 0 if name == "selftest-weak" else result["handler_reruns"] > 0
    else:
        assert result["acked"] > 1000 and result["faults"] > 0
