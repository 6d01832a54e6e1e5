"""What pairq/broker/malloc.py buys: copying 60 MiB in 1 MiB pieces, as a broker does
with a 60 MiB batch (the parsed request, the stored record, the partner's frame),
with glibc's default thresholds and with ``malloc.tune()``, each in a fresh process.

    .venv/bin/python benchmarks/malloc_copy.py [--rounds N]

Prints the milliseconds per round (the first round of each warms the heap).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, sys, time
if sys.argv[1] == "tuned":
    from pairq.broker import malloc
    assert malloc.tune(), "not glibc"
MiB = 1 << 20
src = [bytes([65 + k % 26]) * MiB for k in range(60)]
out = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    x = [b"\\0" * 5 + r for r in src]
    out.append(round((time.perf_counter() - t) * 1000, 1))
    del x
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    for mode in ("default", "tuned", "default", "tuned"):
        r = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(args.rounds)],
            capture_output=True,
            text=True,
            check=True,
        )
        ms = json.loads(r.stdout)
        warm = sorted(ms[1:])
        print(f"{mode:8s} first {ms[0]:6.1f} ms, then median {warm[len(warm) // 2]:6.1f} ms  {ms}")


if __name__ == "__main__":
    main()
