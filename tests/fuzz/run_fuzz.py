"""``make fuzz``: at least 1,000,000 fuzzed inputs over every decoder and RPC handler.

    python tests/fuzz/run_fuzz.py [--decoders N] [--rpcs N] [--clients N] [--seed S]

Exits non-zero on the first crash, UNKNOWN/INTERNAL answer, traceback in a log, lost
workload message or unreadable store (see fuzzlib.py), and prints the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fuzzlib import flood, fuzz_decoders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--decoders", type=int, default=1_000_000)
    ap.add_argument("--rpcs", type=int, default=40_000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args()
    print(f"seed {args.seed}", flush=True)
    t0 = time.monotonic()
    totals = fuzz_decoders(args.decoders, args.seed)
    for name, n in totals.items():
        print(f"  {name}: {n:,} inputs", flush=True)
    print(f"decoders: {sum(totals.values()):,} inputs in {time.monotonic() - t0:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="pairq-fuzz-") as tmp:
        report = asyncio.run(
            flood(
                Path(tmp),
                rpcs=args.rpcs,
                clients=args.clients,
                seed=args.seed,
                progress=lambda s: print("  " + s, flush=True),
            )
        )
    print(
        f"rpc flood: {report.total:,} fuzzed requests from {args.clients} clients in "
        f"{report.seconds:.0f} s; answers {dict(report.rpcs)}; workload {report.published:,} "
        f"messages acked, {report.received:,} received, none lost; no UNKNOWN/INTERNAL, "
        "no traceback, store read back whole",
        flush=True,
    )
    total = sum(totals.values()) + report.total
    print(f"TOTAL: {total:,} fuzzed inputs, no failure", flush=True)


if __name__ == "__main__":
    main()
