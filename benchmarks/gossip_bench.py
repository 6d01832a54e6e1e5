"""Gossip benchmark with real processes on 127.0.0.1 (``make gossip-bench [QUICK=1]``).

Every member is a separate ``python -m pairq.gossip.agent`` process started
here; failures are injected only into PIDs this script started (SIGKILL,
SIGSTOP/SIGCONT, and the agent's own ``--stall-duty``). Every loop is bounded
in count and in time. Prints percentiles per scenario and, last, one JSON line.

Scenarios (the targets are in issue 3):
- partner_detect: 2 pairs; kill -9 one broker, time until its partner's
  ``dead`` event (relative to the kill).
- pause: SIGSTOP a broker for 0.5 s, SIGCONT; count ``dead`` events about it.
- n50: 24 broker pairs + 2 lookups; kill -9 a broker, time until all 49 others
  have a ``dead`` event for it (one extra trial kills a lookup, caught by its
  watchers). Also steady-state bytes/s per member.
- sick: N=10 (5 pairs), 2 members block their event loop 0.2-3 s at 50 %
  duty; count ``dead`` events about healthy members, with and without Lifeguard
  (the two clusters run side by side).
- mass_restart: N=20 (10 pairs); kill -9 all, restart all (same ports)
  spread over 5 s, time until every member sees all 19 others alive.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pairq.gossip.codec import encode_packet
from pairq.gossip.messages import PairHeartbeat

PY = sys.executable
STATE_OF = {
    "join": "alive",
    "alive": "alive",
    "update": "alive",
    "suspect": "suspect",
    "dead": "dead",
    "left": "left",
}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name}: no samples"
    return (
        f"{name}: n={len(values)} p50={pct(values, 50):.3f}s p90={pct(values, 90):.3f}s "
        f"p99={pct(values, 99):.3f}s max={max(values):.3f}s"
    )


@dataclass
class Agent:
    name: str
    events_path: Path
    proc: subprocess.Popen[bytes]
    addr: str = ""
    offset: int = 0
    events: list[dict[str, object]] = field(default_factory=list)
    view: dict[str, str] = field(default_factory=dict)

    def poll(self) -> None:
        """Read new event lines (incrementally)."""
        try:
            with open(self.events_path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        self.offset += end + 1
        for line in chunk[: end + 1].splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            self.events.append(e)
            ev = str(e.get("ev"))
            if ev == "ready":
                self.addr = str(e["addr"])
            if ev in STATE_OF:
                self.view[str(e["member"])] = STATE_OF[ev]

    def alive(self) -> bool:
        return self.proc.poll() is None


class Cluster:
    """Agents started by this script; cleans up only its own PIDs."""

    def __init__(self, root: Path, tag: str, extra: Iterable[str] = ()) -> None:
        self.root = root
        self.tag = tag
        self.extra = list(extra)
        self.agents: dict[str, Agent] = {}
        self.generation: dict[str, int] = {}
        self.all_procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self,
        name: str,
        meta: dict[str, str],
        join: list[str],
        bind: str = "127.0.0.1:0",
        extra: Iterable[str] = (),
    ) -> Agent:
        gen = self.generation.get(name, -1) + 1
        self.generation[name] = gen
        path = self.root / f"{self.tag}-{name}-{gen}.jsonl"
        cmd = [
            PY,
            "-m",
            "pairq.gossip.agent",
            "--name",
            name,
            "--bind",
            bind,
            "--events",
            str(path),
            "--stats-every",
            "5",
            *self.extra,
            *extra,
        ]
        for k, v in meta.items():
            cmd += ["--meta", f"{k}={v}"]
        for j in join:
            cmd += ["--join", j]
        err = open(self.root / f"{self.tag}-{name}-{gen}.err", "wb")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL
        )
        err.close()
        self.all_procs.append(proc)
        agent = Agent(name, path, proc)
        self.agents[name] = agent
        return agent

    def wait_ready(self, agents: Iterable[Agent], within: float) -> None:
        pending = list(agents)
        deadline = time.monotonic() + within
        while pending and time.monotonic() < deadline:
            for a in pending:
                a.poll()
            pending = [a for a in pending if not a.addr]
            if pending:
                time.sleep(0.05)
        if pending:
            raise RuntimeError(f"agents not ready: {[a.name for a in pending]}")

    def poll(self) -> None:
        for a in self.agents.values():
            a.poll()

    def live(self) -> list[Agent]:
        return [a for a in self.agents.values() if a.alive()]

    def wait(self, cond: Callable[[], bool], within: float, step: float = 0.02) -> float | None:
        start = time.monotonic()
        while time.monotonic() - start < within:
            self.poll()
            if cond():
                return time.monotonic() - start
            time.sleep(step)
        return None

    def converged(self) -> bool:
        live = self.live()
        names = {a.name for a in live}
        return all(all(a.view.get(n) == "alive" for n in names if n != a.name) for a in live)

    def kill9(self, name: str) -> float:
        a = self.agents[name]
        t = time.time()
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(5)
        return t

    def stop(self) -> None:
        for p in self.all_procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                    p.terminate()
        deadline = time.monotonic() + 5
        for p in self.all_procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def dead_time(agent: Agent, member: str, after: float) -> float | None:
    for e in agent.events:
        if e.get("ev") == "dead" and e.get("member") == member and float(e["t"]) >= after:  # type: ignore[arg-type]
            return float(e["t"])  # type: ignore[arg-type]
    return None


def start_cluster(
    c: Cluster,
    layout: list[tuple[str, dict[str, str]]],
    within: float = 60.0,
    extra: Callable[[str], list[str]] | None = None,
) -> None:
    """Start the first member, then everyone joining it; wait for convergence."""
    first_name, first_meta = layout[0]
    first = c.spawn(first_name, first_meta, [], extra=extra(first_name) if extra else ())
    c.wait_ready([first], 30)
    rest = [c.spawn(n, m, [first.addr], extra=extra(n) if extra else ()) for n, m in layout[1:]]
    c.wait_ready(rest, within)
    if c.wait(c.converged, within) is None:
        raise RuntimeError(f"{c.tag}: cluster of {len(layout)} did not converge in {within}s")


def pairs_layout(n_pairs: int, lookups: int = 0) -> list[tuple[str, dict[str, str]]]:
    out = []
    for i in range(n_pairs):
        for side in "ab":
            out.append((f"b{i}{side}", {"role": "broker", "pair": f"p{i}"}))
    for i in range(lookups):
        out.append((f"l{i}", {"role": "lookup"}))
    return out


def restart_same_port(c: Cluster, name: str, meta: dict[str, str], seeds: list[str]) -> Agent:
    old = c.agents[name]
    a = c.spawn(name, meta, seeds, bind=old.addr)
    c.wait_ready([a], 30)
    return a


# ---------------------------------------------------------------------------- scenarios
def bench_partner(
    root: Path, trials: int, pause_trials: int, rng: random.Random
) -> dict[str, float]:
    c = Cluster(root, "pair")
    layout = pairs_layout(2)
    meta = dict(layout)
    try:
        start_cluster(c, layout)
        detect: list[float] = []
        misses = 0
        deadline = time.monotonic() + 40 + trials * 8
        for i in range(trials):
            if time.monotonic() > deadline:
                break
            victim, partner = ("b0b", "b0a") if i % 2 == 0 else ("b1a", "b1b")
            time.sleep(rng.uniform(0.2, 0.6))
            t_kill = c.kill9(victim)
            ok = c.wait(
                lambda p=partner, v=victim, t=t_kill: dead_time(c.agents[p], v, t) is not None,  # type: ignore[misc]
                5.0,
                step=0.01,
            )
            if ok is None:
                misses += 1
            else:
                t_dead = dead_time(c.agents[partner], victim, t_kill)
                assert t_dead is not None
                detect.append(t_dead - t_kill)
            seeds = [c.agents[partner].addr]
            restart_same_port(c, victim, meta[victim], seeds)
            if c.wait(c.converged, 15) is None:
                raise RuntimeError("partner bench: cluster did not re-converge after restart")
        print(summary("partner_detect (kill -9 -> partner sees dead)", detect), f"misses={misses}")

        # SIGSTOP for 0.5 s: must never be declared dead.
        false_deaths = 0
        victim = "b0b"
        pid_deadline = time.monotonic() + pause_trials * 3 + 30
        done = 0
        for _ in range(pause_trials):
            if time.monotonic() > pid_deadline:
                break
            time.sleep(rng.uniform(0.3, 0.6))
            pid = c.agents[victim].proc.pid
            t0 = time.time()
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.5)
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.4)  # let any (wrong) verdict surface before counting
            c.poll()
            false_deaths += sum(
                1 for a in c.agents.values() if dead_time(a, victim, t0) is not None
            )
            done += 1
            if false_deaths:
                c.wait(c.converged, 10)
        print(f"pause 0.5 s: trials={done} false_deaths={false_deaths}")
        return {
            "partner_detect_p50_s": round(pct(detect, 50), 3),
            "partner_detect_p99_s": round(pct(detect, 99), 3),
            "partner_detect_max_s": round(max(detect), 3) if detect else float("nan"),
            "partner_detect_trials": len(detect),
            "partner_detect_misses": misses,
            "pause_trials": done,
            "pause_false_deaths": false_deaths,
        }
    finally:
        c.stop()


def _stats_rate(agent: Agent, t0: float, t1: float) -> tuple[float, float] | None:
    """(bytes_sent/s, pair heartbeats/s) between the first stats line after t0 and the last before t1."""
    lines = [e for e in agent.events if e.get("ev") == "stats" and t0 <= float(e["t"]) <= t1]  # type: ignore[arg-type]
    if len(lines) < 2:
        return None
    a, b = lines[0], lines[-1]
    dt = float(b["t"]) - float(a["t"])  # type: ignore[arg-type]
    return (
        (int(b["bytes_sent"]) - int(a["bytes_sent"])) / dt,  # type: ignore[call-overload]
        (int(b["pair_heartbeats"]) - int(a["pair_heartbeats"])) / dt,  # type: ignore[call-overload]
    )


def bench_n50(
    root: Path, trials: int, traffic_window: float, rng: random.Random
) -> dict[str, float]:
    c = Cluster(root, "n50")
    layout = pairs_layout(24, lookups=2)
    meta = dict(layout)
    try:
        t_start = time.monotonic()
        start_cluster(c, layout, within=120)
        print(f"n50: 50 processes converged in {time.monotonic() - t_start:.1f}s")

        # Steady-state traffic first (no failures yet).
        time.sleep(2.0)
        w0 = time.time()
        time.sleep(traffic_window)
        w1 = time.time() + 0.1
        c.poll()
        rates = []
        for a in c.agents.values():
            r = _stats_rate(a, w0, w1 + 5)
            if r is not None:
                hb = len(encode_packet([PairHeartbeat(0, a.name, 0)])) + 2  # + envelope header
                rates.append(max(0.0, r[0] - r[1] * hb))
        per_member = statistics.mean(rates) if rates else float("nan")
        busiest = max(rates) if rates else float("nan")
        print(
            f"n50 steady traffic excl. pair heartbeat: {per_member:.0f} B/s per member (n={len(rates)}),"
            f" busiest member {busiest:.0f} B/s"
        )

        all_know: list[float] = []
        unpaired: list[float] = []
        names = [n for n, _ in layout]
        deadline = time.monotonic() + trials * 25 + 60
        for i in range(trials + 1):
            if time.monotonic() > deadline:
                break
            # The last trial kills a lookup (no pair): plain SWIM + Lifeguard timing.
            victim = "l0" if i == trials else rng.choice([n for n in names if n.startswith("b")])
            time.sleep(rng.uniform(0.2, 0.6))
            t_kill = c.kill9(victim)
            others = [a for a in c.agents.values() if a.name != victim and a.alive()]

            def everyone_knows(
                v: str = victim, t: float = t_kill, others: list[Agent] = others
            ) -> bool:
                return all(dead_time(a, v, t) is not None for a in others)

            partner = next(
                (
                    n
                    for n in names
                    if n != victim and meta[n].get("pair") == meta[victim].get("pair")
                ),
                names[0],
            )
            if c.wait(everyone_knows, 30.0, step=0.05) is not None:
                times = {a.name: (dead_time(a, victim, t_kill) or 0.0) - t_kill for a in others}
                slowest = max(times, key=lambda n: times[n])
                (unpaired if victim == "l0" else all_know).append(times[slowest])
                first = (
                    f"partner {partner} {times[partner]:.3f}s"
                    if victim != "l0"
                    else (f"first {min(times, key=lambda n: times[n])} {min(times.values()):.3f}s")
                )
                print(f"  kill {victim}: {first}, last {slowest} {times[slowest]:.3f}s")
            else:
                print(f"  kill {victim}: not everyone knew within 30 s")
            restart_same_port(
                c, victim, meta[victim], [c.agents[partner if partner != victim else names[0]].addr]
            )
            c.wait(c.converged, 20)
        print(summary("n50 all members know (paired broker)", all_know))
        print(summary("n50 all members know (unpaired lookup)", unpaired))
        return {
            "n50_all_know_p50_s": round(pct(all_know, 50), 3),
            "n50_all_know_p99_s": round(pct(all_know, 99), 3),
            "n50_all_know_trials": len(all_know),
            "n50_unpaired_all_know_s": round(pct(unpaired, 50), 3),
            "bytes_per_member_per_s_n50": round(per_member, 1),
            "bytes_per_s_n50_busiest_member": round(busiest, 1),
        }
    finally:
        c.stop()


def bench_sick(root: Path, duration: float) -> dict[str, float]:
    sick = {"b3b", "b4b"}
    clusters = {
        True: Cluster(root, "sick-lg"),
        False: Cluster(root, "sick-nolg", extra=["--no-lifeguard"]),
    }
    layout = pairs_layout(5)
    try:
        for c in clusters.values():
            start_cluster(
                c,
                layout,
                within=60,
                extra=lambda n: (
                    ["--stall-duty", "0.5", "--stall-min", "0.2", "--stall-max", "3.0"]
                    if n in sick
                    else []
                ),
            )
        t0 = time.time()
        time.sleep(duration)
        out: dict[str, float] = {}
        for lg, c in clusters.items():
            c.poll()
            healthy_dead = sum(
                1
                for a in c.agents.values()
                for e in a.events
                if e.get("ev") == "dead" and e.get("member") not in sick and float(e["t"]) >= t0  # type: ignore[arg-type]
            )
            sick_dead = sum(
                1
                for a in c.agents.values()
                for e in a.events
                if e.get("ev") == "dead" and e.get("member") in sick and float(e["t"]) >= t0  # type: ignore[arg-type]
            )
            label = "lifeguard" if lg else "no_lifeguard"
            print(
                f"sick accusers ({label}, {duration:.0f}s): healthy declared dead={healthy_dead}, sick declared dead={sick_dead}"
            )
            key = "sick_accuser_false_deaths" if lg else "sick_accuser_false_deaths_no_lifeguard"
            out[key] = healthy_dead
            out[f"sick_members_declared_dead_{label}"] = sick_dead
        out["sick_duration_s"] = duration
        return out
    finally:
        for c in clusters.values():
            c.stop()


def bench_mass_restart(root: Path, rng: random.Random) -> dict[str, float]:
    c = Cluster(root, "mass")
    layout = pairs_layout(10)
    meta = dict(layout)
    try:
        start_cluster(c, layout, within=60)
        addrs = {n: c.agents[n].addr for n, _ in layout}
        for n, _ in layout:
            c.kill9(n)
        offsets = sorted((rng.uniform(0, 5.0), n) for n, _ in layout)
        t_first = time.monotonic()
        for off, n in offsets:
            delay = t_first + off - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            seeds = rng.sample([addrs[m] for m in addrs if m != n], 3)
            c.spawn(n, meta[n], seeds, bind=addrs[n])
        t_last = time.monotonic()
        took = c.wait(c.converged, 30.0, step=0.05)
        converge = (
            (t_last - time.monotonic() if took is None else took)
            if took is not None
            else float("nan")
        )
        print(
            f"mass restart N=20 within 5s: all see all {converge:.2f}s after the last start"
            f" ({time.monotonic() - t_first:.2f}s after the first)"
        )
        return {"mass_restart_converge_s": round(converge, 3)}
    finally:
        c.stop()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer trials, under 5 minutes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", action="append", default=[], help="partner, n50, sick, mass")
    ap.add_argument("--n50-trials", type=int, default=0, help="override the number of N=50 kills")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    q = args.quick
    only = set(args.only) or {"partner", "n50", "sick", "mass"}
    result: dict[str, object] = {"quick": q}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pairq-gossip-bench-") as tmp:
        root = Path(tmp)
        if "partner" in only:
            result.update(
                bench_partner(root, trials=16 if q else 60, pause_trials=30 if q else 200, rng=rng)
            )
        if "n50" in only:
            trials = args.n50_trials or (4 if q else 20)
            result.update(bench_n50(root, trials=trials, traffic_window=15 if q else 60, rng=rng))
        if "sick" in only:
            result.update(bench_sick(root, duration=45 if q else 300))
        if "mass" in only:
            result.update(bench_mass_restart(root, rng))
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
