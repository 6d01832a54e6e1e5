"""The chaos harness's pure parts, in the default suite: the schedule is a function of
the seed, and the checker fails what it must fail (lost, re-runs, unhealed, false
takeovers, lapsed leases) and passes a clean history."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tests.chaos.checker import FaultRecord, check
from tests.chaos.nemesis import KINDS, SCENARIOS, schedule
from tests.chaos.report import partner_lines, summary
from tests.chaos.workload import Run, Sample


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    for name in SCENARIOS:
        assert schedule(name, 7) == schedule(name, 7)
    assert schedule("mixed", 7) != schedule("mixed", 8)
    kinds = {f.kind for f in schedule("mixed", 3)}
    assert kinds == set(SCENARIOS["mixed"].kinds)
    for f in schedule("mixed", 3):
        lo, hi = KINDS[f.kind]
        assert lo <= f.duration <= hi
        assert 0.5 <= f.gap <= 2.0


def test_every_kind_of_the_issue_is_a_scenario() -> None:
    for kind in KINDS:
        assert SCENARIOS[kind].kinds == (kind,)
    assert SCENARIOS["selftest-weak"].expect_fail
    assert "--min-copies" in SCENARIOS["selftest-weak"].broker_args
    assert not SCENARIOS["selftest-nodedupe"].dedupe


PARTNER = {"p0a": "p0b", "p0b": "p0a", "p1a": "p1b", "p1b": "p1a"}


def history(**over: object) -> dict[str, object]:
    acks = {b"A": (2, 1.0, 0), b"B": (2, 1.1, 0)}
    runs = [Run(ch, i, "idA", 1, 1.5) for ch in ("c1", "c2") for i in (b"A", b"B")]
    faults = [FaultRecord("kill", "p0a", 2.0, 3.0, healed_at=4.0, down=("p0a",))]
    samples = [
        Sample(1.0, "p0a", True, "idA", 10, "ok", epoch=1),
        Sample(1.0, "p0b", True, "idB", 20, "ok", epoch=1),
        Sample(3.0, "p0b", True, "idB", 20, "ok", epoch=2, takeovers=1),
        Sample(3.5, "p0a", True, "idA", 11, "ok", epoch=2),
    ]
    h: dict[str, object] = dict(
        acks=acks,
        runs=runs,
        channels=("c1", "c2"),
        raw_duplicates=3,
        faults=faults,
        samples=samples,
        latencies=[(1.0, 0.01, 0), (1.1, 0.01, 0), (3.0, 0.01, 0)],
        partner=PARTNER,
        heal_bound=20.0,
        producers=1,
    )
    h.update(over)
    return h


def test_clean_history_passes_with_its_figures() -> None:
    r = check(**history())  # type: ignore[arg-type]
    assert r["ok"], r["violations"]
    assert (r["lost"], r["handler_reruns"], r["raw_duplicates"]) == (0, 0, 3)
    assert [t["by"] for t in r["takeovers"]] == ["p0b"]
    assert r["takeover_p50_s"] == 1.0 and r["false_takeovers"] == 0
    assert r["heal_p50_s"] == 1.0
    assert r["unavailability_windows"] == {"0": [(1.1, 3.0)]}


def test_a_lost_message_and_a_rerun_fail() -> None:
    h = history()
    runs = [r for r in h["runs"] if not (r.channel == "c2" and r.id == b"B")]  # type: ignore[attr-defined]
    runs.append(Run("c1", b"A", "idA", 1, 1.6))
    r = check(**{**h, "runs": runs})  # type: ignore[arg-type]
    assert not r["ok"]
    assert r["lost"] == 1 and r["lost_per_channel"] == {"c1": 0, "c2": 1}
    assert r["handler_reruns"] == 1


def test_unhealed_and_slow_heal_fail() -> None:
    f = [FaultRecord("kill", "p0a", 2.0, 3.0, healed_at=None, down=("p0a",))]
    assert "not healed: kill p0a" in check(**history(faults=f))["violations"]  # type: ignore[arg-type]
    f = [FaultRecord("kill", "p0a", 2.0, 3.0, healed_at=30.0, down=("p0a",))]
    assert not check(**history(faults=f))["ok"]  # type: ignore[arg-type]


def test_a_long_publish_outage_fails() -> None:
    lat = [(1.0, 0.01, 0), (4.5, 0.01, 0), (5.0, 0.01, 0)]
    r = check(**history(latencies=lat))  # type: ignore[arg-type]
    assert r["longest_unavailability_s"] == 3.5 and not r["ok"]


def test_takeover_of_a_live_partner_is_false(tmp_path: Path) -> None:
    f = [FaultRecord("partition-pair", "p0a", 2.0, 3.0, healed_at=4.0, down=())]
    r = check(**history(faults=f))  # type: ignore[arg-type]
    assert r["false_takeovers"] == 1 and not r["ok"]
    # The summary says who took over whom, and quotes why from the taker's log.
    (tmp_path / "p0b.log").write_text(
        "01:18:14 INFO pairq.pair: connected\n"
        "01:18:19 WARNING pairq.membership: gossip: partner a2 is dead (witnesses: lk1)\n"
        "01:18:19 WARNING pairq.pair: took over 0 message(s) from partner a2 in 0.000 s\n"
    )
    r.update(scenario="smoke", seed=1, duration_s=6.0, expect_fail=False, publish_failures=0)
    r["false_takeover_logs"] = {"p0b": partner_lines(tmp_path / "p0b.log")}
    text = summary(r, f)
    assert "p0b took over p0a (1), fault partition-pair" in text and "FALSE" in text
    assert "gossip: partner a2 is dead" in text and "connected" not in text


def test_takeover_of_a_partner_that_crashed_by_itself_is_not_false() -> None:
    """bitflip seed 1: a broker found its store corrupt after a fault had healed and
    stopped (to come back empty); its partner's takeover was counted false."""
    f = [FaultRecord("partition-pair", "p0a", 0.5, 0.6, healed_at=0.7, down=())]
    crashed = [{"t": 2.1, "node": "p0a", "rc": 3}]
    r = check(**history(faults=f), crashes=crashed)  # type: ignore[arg-type]
    assert r["false_takeovers"] == 0 and r["ok"], r["violations"]
    assert r["takeovers"][0]["fault"] == "crash" and r["takeovers"][0]["takeover_s"] == 0.9
    too_early = [{"t": 3.5, "node": "p0a", "rc": 3}]  # after the takeover: no excuse
    assert check(**history(faults=f), crashes=too_early)["false_takeovers"] == 1  # type: ignore[arg-type]


def test_delivery_under_the_taken_over_epoch_is_flagged_until_restart() -> None:
    h = history()
    late = Run("c1", b"A", "idA", 1, 3.3)  # after the takeover seen at 3.0, before restart
    r = check(**{**h, "runs": [*h["runs"], dataclasses.replace(late, channel="c2")]})  # type: ignore[arg-type, list-item]
    assert r["lapsed_lease_deliveries"] == 1
    after_restart = Run("c1", b"A", "idA", 1, 3.6)  # a new life (new store start): fine
    r = check(**{**h, "runs": [*h["runs"], after_restart]})  # type: ignore[arg-type, list-item]
    assert r["lapsed_lease_deliveries"] == 0


async def test_the_supervisor_restarts_brokers_that_died_by_themselves_at_any_time(
    tmp_path: Path,
) -> None:
    """make chaos, bitflip seed 1: brokers that crashed during a fault's own steps
    stayed down until the fault ended (83 s), because the supervisor only ran between
    faults. It runs all the time now, and leaves alone what the harness stopped."""
    import asyncio
    import subprocess
    import time

    from tests.chaos.runner import BROKERS, Runner

    r = Runner("smoke", 1.0, 1, tmp_path, log=lambda *_: None)
    started: list[str] = []
    procs: list[subprocess.Popen[bytes]] = []

    class Broker:  # what the supervisor uses of a BrokerProcess
        def __init__(self, name: str) -> None:
            self.name = name
            self.proc = subprocess.Popen(["true"])
            self.proc.wait()  # dead: it "died by itself"
            procs.append(self.proc)

        def start(self, timeout: float = 30) -> None:
            started.append(self.name)
            self.proc = subprocess.Popen(["sleep", "30"])
            procs.append(self.proc)

    c = r.cluster
    c.brokers = {n: Broker(n) for n in BROKERS}  # type: ignore[misc]
    stopped, paused = BROKERS[0], BROKERS[1]
    c.down.add(stopped)  # the harness killed it and will start it itself
    c.paused.add(paused)
    try:
        loop = asyncio.ensure_future(r._supervisor())
        deadline = time.monotonic() + 5
        while sorted(started) != sorted(BROKERS[2:]):
            assert time.monotonic() < deadline, started
            await asyncio.sleep(0.05)
        assert [x["node"] for x in r.crashes] == list(BROKERS[2:])
        # one that dies later, mid-"fault", is restarted too, within about a second
        c.brokers[BROKERS[2]].proc.kill()
        deadline = time.monotonic() + 3
        while started.count(BROKERS[2]) < 2:
            assert time.monotonic() < deadline, started
            await asyncio.sleep(0.05)
        assert stopped not in started and paused not in started
        loop.cancel()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


async def test_a_failed_fault_leaves_no_channel_paused(tmp_path: Path) -> None:
    """make chaos, bitflip seed 2: the fault paused both channels on every broker, then a
    broker would not start again and the fault ended half-way; the channels stayed paused
    for the rest of the run and every message acked after that counted as lost. The
    clean-up after a failed fault (``revive``) unpauses them everywhere."""
    from tests.chaos.runner import BROKERS, CHANNELS, Runner

    r = Runner("bitflip", 1.0, 2, tmp_path, log=lambda *_: None)
    c = r.cluster
    state = {(n, ch): True for n in BROKERS for ch in CHANNELS}  # all paused
    calls: list[tuple[str, str, bool]] = []

    async def pause_channel(node: str, topic: str, channel: str, pause: bool) -> bool:
        calls.append((node, channel, pause))
        state[(node, channel)] = pause
        return True

    c.pause_channel = pause_channel  # type: ignore[method-assign]
    c.resume = lambda n: None  # type: ignore[method-assign]
    c.alive = lambda n: True  # type: ignore[method-assign]
    await r.revive()
    assert not any(state.values()), state
    assert sorted(calls) == sorted((n, ch, False) for n in BROKERS for ch in CHANNELS)
