"""Compare two revisions of pairq with the same benchmark driver.

    .venv/bin/python benchmarks/compare.py --base REV [--head REV] [--quick] [--rounds N]
    make bench-compare BASE=REV [HEAD=REV] [QUICK=1] [ROUNDS=N]

BASE (and HEAD, if given; default: this working tree, uncommitted changes
included) is checked out with ``git worktree add --detach`` under a temporary
directory, removed at the end (also on Ctrl-C or SIGTERM). Every round runs
*this* working tree's ``benchmarks/run.py`` once per revision, alternating
BASE, HEAD, BASE, HEAD, ... so the drift of a shared machine hits both alike.
Each run has ``PYTHONPATH`` and its working directory set to that revision's
checkout, so the client and the broker processes it spawns (``python -m
pairq.cli broker``, which inherits both) import that revision's ``pairq``. A
``sitecustomize`` on ``PYTHONPATH`` records, for every Python process of the
run, where ``pairq`` was imported from; a run is failed if any process
imported it from somewhere else. If this ``run.py`` cannot be imported
against a revision (something it imports is missing there), that
revision's own ``benchmarks/run.py`` is used and the output says so.

Prints a table of the median per key over the rounds (BASE, HEAD, HEAD/BASE,
verdict: throughput ok if the ratio is >= 0.95, latency and time keys ok if
it is <= 1.05), the load average before and after, and a final JSON line.
Exits 0 unless a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DRIVER = HERE / "run.py"

THROUGHPUT_MIN = 0.95
TIME_MAX = 1.05

# Run metadata and counts that are not measurements of the code.
SKIP = {"runs", "seconds", "consume_max_in_flight", "takeover_trials", "resilver_msgs"}
# Machine baselines measured in the same run: shown for context, no verdict.
MACHINE = {"latency_lmdb_commit_ms"}
# Correctness counters: ok when HEAD's value is 0 (or True for consume_complete).
MUST_BE_ZERO = {"pair_acks_copies_not_2", "takeover_problems"}

SITECUSTOMIZE = '''\
"""pairq bench-compare: record where this process imports pairq from."""
import os
import sys

_LOG = os.environ.get("PAIRQ_COMPARE_TRACE")


class _PairqOrigin:
    def find_spec(self, name, path=None, target=None):
        if name != "pairq":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)  # what the normal import finds
        with open(_LOG, "a") as f:
            origin = spec.origin if spec else None
            f.write(f"{os.getpid()}\\t{origin}\\t{' '.join(sys.argv)}\\n")
        return spec


if _LOG:
    sys.meta_path.insert(0, _PairqOrigin())
'''

# Imports this run.py against a revision's pairq without running it (the fallback check).
PROBE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("pairq_bench_run_probe", sys.argv[1])
module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
"""


def log(line: str = "") -> None:
    print(line, flush=True)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Rev:
    label: str  # "BASE" or "HEAD"
    rev: str  # as given, or "working tree"
    commit: str
    checkout: Path
    worktree: bool  # a temporary worktree (removed at the end)
    driver: Path = DRIVER
    driver_note: str = "working tree's benchmarks/run.py"
    results: list[dict[str, Any]] = field(default_factory=list)
    loads: list[list[float]] = field(default_factory=list)


def add_worktree(tmp: Path, label: str, rev: str) -> Rev:
    try:
        commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError:
        raise SystemExit(f"bench-compare: {label}={rev} is not a commit") from None
    path = tmp / label.lower()
    git("worktree", "add", "--detach", str(path), commit)
    if (path / "setup.py").exists():
        # A revision with compiled parts (pairq/broker/_crc32c.c): built in place, as
        # `pip install -e` builds them in a checkout; without them it would measure
        # the pure-Python fallback instead of the revision as installed.
        log(f"bench-compare: building {label}'s extension modules")
        subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
            cwd=path,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return Rev(label, rev, commit, path, worktree=True)


def remove_worktree(path: Path) -> None:
    try:
        git("worktree", "remove", "--force", str(path))
    except subprocess.CalledProcessError:
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)


def child_env(rev: Rev, hook_dir: Path, trace: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    extra = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(rev.checkout), str(hook_dir), *([extra] if extra else [])]
    )
    env.pop("PAIRQ_COMPARE_TRACE", None)
    if trace is not None:
        env["PAIRQ_COMPARE_TRACE"] = str(trace)
    return env


def choose_driver(rev: Rev, hook_dir: Path) -> None:
    """Use this run.py unless it cannot even be imported against ``rev``'s pairq."""
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(DRIVER)],
        cwd=rev.checkout,
        env=child_env(rev, hook_dir, None),
        capture_output=True,
        text=True,
    )
    if probe.returncode == 0:
        return
    err = probe.stderr.strip().splitlines()
    last = err[-1] if err else f"exit {probe.returncode}"
    own = rev.checkout / "benchmarks" / "run.py"
    if "ImportError" in probe.stderr or "ModuleNotFoundError" in probe.stderr:
        if rev.worktree and own.exists():
            rev.driver = own
            rev.driver_note = f"ITS OWN benchmarks/run.py (this run.py cannot import: {last})"
            return
    raise SystemExit(f"bench-compare: run.py cannot drive {rev.label} ({rev.rev}): {last}")


def stop_child(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C for run.py (it stops its brokers), then SIGKILL its process group if need be."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only run.py and its brokers
    except ProcessLookupError:
        pass
    proc.wait()


def check_trace(rev: Rev, trace: Path) -> tuple[str | None, str]:
    """(error or None, summary) of where every process of the run imported pairq from."""
    want = os.path.realpath(rev.checkout / "pairq" / "__init__.py")
    lines = trace.read_text().splitlines() if trace.exists() else []
    brokers = others = 0
    wrong: list[str] = []
    for line in lines:
        _pid, origin, argv = [*line.split("\t"), "", ""][:3]
        if origin == "None" or os.path.realpath(origin) != want:
            wrong.append(f"{origin} ({argv[:60]})")
        elif " broker " in f" {argv} ":
            brokers += 1
        else:
            others += 1
    summary = f"{brokers} broker + {others} other processes imported {want}"
    if wrong:
        return f"{len(wrong)} process(es) imported pairq elsewhere: {wrong[0]}", summary
    if not brokers:
        return "no broker process recorded importing pairq", summary
    return None, summary


def run_once(
    rev: Rev, rnd: int, tmp: Path, hook_dir: Path, run_args: list[str]
) -> tuple[dict[str, Any] | None, str]:
    """One run.py run against ``rev``; (its JSON, '') or (None, why it failed)."""
    trace = tmp / f"trace-{rev.label}-{rnd}.txt"
    errf = tmp / f"stderr-{rev.label}-{rnd}.txt"
    tag = f"[{rev.label} {rnd}]"
    last = ""
    with open(errf, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(rev.driver), *run_args],
            cwd=rev.checkout,  # ``python -m`` puts the cwd first on the broker's sys.path
            env=child_env(rev, hook_dir, trace),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                if line.startswith("{"):
                    last = line
                else:
                    log(f"  {tag} {line}")
            proc.wait()
        except BaseException:
            stop_child(proc)
            raise
    if proc.returncode != 0:
        tail = errf.read_text().strip().splitlines()[-3:]
        return None, f"exit {proc.returncode}: " + " | ".join(tail)
    try:
        result = json.loads(last)
    except json.JSONDecodeError:
        return None, "no JSON summary line on stdout"
    problem, summary = check_trace(rev, trace)
    log(f"  {tag} code check: {summary}")
    if problem:
        return None, f"wrong code measured: {problem}"
    return result, ""


def kind_of(key: str, values: list[Any]) -> str | None:
    if key in SKIP or not values:
        return None
    if key == "consume_complete" or key in MUST_BE_ZERO:
        return "check"
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None
    if key.startswith("baseline_") or key in MACHINE:
        return "machine"
    if key.endswith("_per_s"):
        return "throughput"
    if key.endswith(("_ms", "_s")):
        return "time"
    return "info"


def table(base: Rev, head: Rev) -> list[dict[str, Any]]:
    keys: list[str] = []
    for r in base.results + head.results:
        keys += [k for k in r if k not in keys]
    rows = []
    for key in keys:
        bv = [r[key] for r in base.results if r.get(key) is not None]
        hv = [r[key] for r in head.results if r.get(key) is not None]
        kind = kind_of(key, bv + hv)
        if kind is None:
            continue
        if kind == "check":
            b = all(bv) if key == "consume_complete" else max(bv, default=None)
            h = all(hv) if key == "consume_complete" else max(hv, default=None)
            good = (h is True) if key == "consume_complete" else (h == 0)
            verdict = "n/a" if not hv else ("ok" if good else "FAILED")
            rows.append(
                {"key": key, "kind": kind, "base": b, "head": h, "ratio": None, "verdict": verdict}
            )
            continue
        b = statistics.median(bv) if bv else None
        h = statistics.median(hv) if hv else None
        ratio = h / b if b and h is not None else None
        if ratio is None or kind in ("machine", "info"):
            verdict = "n/a" if ratio is None and kind in ("throughput", "time") else "-"
        elif kind == "throughput":
            verdict = "ok" if ratio >= THROUGHPUT_MIN else "WORSE"
        else:
            verdict = "ok" if ratio <= TIME_MAX else "WORSE"
        rows.append(
            {
                "key": key,
                "kind": kind,
                "base": b,
                "head": h,
                "ratio": None if ratio is None else round(ratio, 3),
                "verdict": verdict,
            }
        )
    return rows


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float) and abs(v) < 100:
        return f"{v:,.3f}"
    return f"{v:,.0f}"


def print_table(rows: list[dict[str, Any]], base: Rev, head: Rev) -> None:
    w = max([len(r["key"]) for r in rows] + [3])
    bh, hh = f"BASE {base.rev}", f"HEAD {head.rev}"
    c = max(len(bh), len(hh), 12)
    log(f"{'key':<{w}}  {bh:>{c}}  {hh:>{c}}  {'HEAD/BASE':>9}  verdict")
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        note = {"machine": "  (machine baseline)", "check": "  (must be 0 / True)"}.get(
            r["kind"], ""
        )
        log(
            f"{r['key']:<{w}}  {fmt(r['base']):>{c}}  {fmt(r['head']):>{c}}  {ratio:>9}  "
            f"{r['verdict']}{note}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--head", help="git revision to measure (default: the working tree)")
    ap.add_argument("--quick", action="store_true", help="run.py --quick")
    ap.add_argument("--rounds", type=int, default=3, help="runs per revision (default 3)")
    ap.add_argument("--only", help="passed to run.py --only")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    run_args = [*(["--quick"] if args.quick else []), *(["--only", args.only] if args.only else [])]

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Also when started with SIGINT ignored (``cmd &``): then run.py, which inherits the
    # disposition, would ignore the SIGINT that makes it stop its brokers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.perf_counter()
    load0 = loadavg()
    tmp = Path(tempfile.mkdtemp(prefix="pairq-bench-compare-"))
    worktrees: list[Path] = []
    failed: list[str] = []
    try:
        hook_dir = tmp / "hook"
        hook_dir.mkdir()
        (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        base = add_worktree(tmp, "BASE", args.base)
        worktrees.append(base.checkout)
        if args.head:
            head = add_worktree(tmp, "HEAD", args.head)
            worktrees.append(head.checkout)
        else:
            dirty = " + uncommitted changes" if git("status", "--porcelain", "--", "pairq") else ""
            head = Rev("HEAD", "working tree", git("rev-parse", "HEAD") + dirty, ROOT, False)
        for rev in (base, head):
            choose_driver(rev, hook_dir)
        log(
            f"bench-compare: {args.rounds} round(s) of run.py {' '.join(run_args) or '(full)'}, "
            f"alternating BASE and HEAD; load average {load0}"
        )
        for rev in (base, head):
            log(
                f"  {rev.label} {rev.rev} = {rev.commit[:12]} at {rev.checkout}; "
                f"driver: {rev.driver_note}"
            )
        for rnd in range(1, args.rounds + 1):
            for rev in (base, head):
                log(f"round {rnd}/{args.rounds}: {rev.label} ({rev.rev}), load {loadavg()}")
                result, why = run_once(rev, rnd, tmp, hook_dir, run_args)
                if result is None:
                    failed.append(f"{rev.label} round {rnd}: {why}")
                    log(f"  [{rev.label} {rnd}] RUN FAILED: {why}")
                    continue
                rev.results.append(result)
                rev.loads.append(result.get("loadavg_1m_start_end", []))
    except KeyboardInterrupt:
        log("bench-compare: interrupted; removing the worktrees")
        return 130
    finally:
        for path in worktrees:
            remove_worktree(path)
        shutil.rmtree(tmp, ignore_errors=True)

    load1 = loadavg()
    rows = table(base, head)
    log()
    log(
        f"bench-compare: median of {len(base.results)} BASE and {len(head.results)} HEAD run(s) "
        f"({'quick' if args.quick else 'full'} mode)"
    )
    print_table(rows, base, head)
    log(
        f"load average (1, 5, 15 min): before {load0}, after {load1}; per run (1 min, start/end): "
        f"BASE {base.loads}, HEAD {head.loads}"
    )
    for rev in (base, head):
        if rev.driver != DRIVER:
            log(f"note: {rev.label} was measured with {rev.driver_note}")
    worse = [r["key"] for r in rows if r["verdict"] in ("WORSE", "FAILED")]
    log(
        f"verdict: {'all ok' if not worse else 'worse: ' + ', '.join(worse)} "
        f"(throughput ok at HEAD/BASE >= {THROUGHPUT_MIN}, times ok at <= {TIME_MAX})"
    )
    for f in failed:
        log(f"FAILED RUN: {f}")
    summary = {
        "base": {
            "rev": base.rev,
            "commit": base.commit,
            "driver": base.driver_note,
            "runs": len(base.results),
        },
        "head": {
            "rev": head.rev,
            "commit": head.commit,
            "driver": head.driver_note,
            "runs": len(head.results),
        },
        "rounds": args.rounds,
        "mode": "quick" if args.quick else "full",
        "rows": rows,
        "loadavg_before": load0,
        "loadavg_after": load1,
        "failed_runs": failed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
