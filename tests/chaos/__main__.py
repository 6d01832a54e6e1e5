"""The chaos harness's command line.

    python -m tests.chaos list
    python -m tests.chaos run --scenario NAME --duration S --seed N [--out DIR]
    python -m tests.chaos all --duration S --seed N     # every scenario (make chaos)
    python -m tests.chaos schedule --scenario NAME --seed N [-n 20]

Exit status: ``run`` 1 when the checker found a violation (so a self-test scenario
exits 1); ``all`` 1 when a scenario did not behave as intended (a normal one with a
violation, or a self-test without one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from .nemesis import SCENARIOS, schedule


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the scenarios, by name")
    for name in ("run", "all"):
        p = sub.add_parser(name, help="run one scenario" if name == "run" else "run them all")
        if name == "run":
            p.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
        else:
            p.add_argument("--skip", action="append", default=[], help="scenario to leave out")
        p.add_argument("--duration", type=float, default=60.0, help="seconds of faults")
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--out", type=Path, default=Path("chaos-runs"), help="runs directory")
    p = sub.add_parser("schedule", help="print the fault schedule of a scenario and seed")
    p.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("-n", type=int, default=20)
    args = ap.parse_args(argv)

    if args.cmd == "list":
        for sc in SCENARIOS.values():
            print(f"{sc.name:<18} {sc.about}")
        return 0
    if args.cmd == "schedule":
        for f in schedule(args.scenario, args.seed, args.n):
            print(f"gap {f.gap:4.2f}s  {f.describe()}")
        return 0

    logging.basicConfig(level=logging.ERROR)  # the clients' warnings go to logs/harness.log
    from .runner import Runner, passed

    names = [args.scenario] if args.cmd == "run" else [s for s in SCENARIOS if s not in args.skip]
    failed = []
    for name in names:
        runner = Runner(name, args.duration, args.seed, args.out)
        try:
            result = asyncio.run(runner.run())
        except Exception as exc:  # the harness itself failed (set-up): report, go on
            if len(names) == 1:
                raise
            print(f"scenario {name}: the harness failed: {exc!r}")
            failed.append(name)
            continue
        print((runner.run_dir / "summary.txt").read_text())
        # `run` reports the checker's verdict (a self-test exits 1: it found the fault);
        # `all` reports whether each scenario behaved as intended (a self-test must fail)
        if (args.cmd == "run" and not result["ok"]) or (args.cmd == "all" and not passed(result)):
            failed.append(name)
    if len(names) > 1:
        print(json.dumps({"scenarios": len(names), "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
