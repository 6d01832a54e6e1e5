"""What record checksums cost (issue 15: at least 0.95x of without), measured in one run.

    .venv/bin/python benchmarks/checksum_ab.py [--slices N] [--quick | --scale K]

Starts, side by side, a single broker and a pair with checksums on (this tree as it
is) and the same with checksums off: their processes run under ``NOCRC`` below,
which replaces ``pairq.broker.checksum``'s functions before anything imports them:
every CRC32C is 0, a batch's are ``[0] * n`` and its stored checks are the crcs as
they are (consistent with each other, so nothing reads as corrupt), so every stored
check, every verify on read and the partner's check of each replicated record cost
next to nothing. A third broker (and pair), checksums on like the first, is the
control. Then it runs slices of the same workload on each, the three in rotating
orders (every mode in every position equally often), so a shared machine's drift
hits all alike, and prints each mode's msg/s over its slices, broker CPU per message,
the on/off ratio (issue 15's figure) and the control's ratio to "on": two identical
brokers, so how far noise alone moves a ratio in the same run (on this 2-core VM,
3-5 % for batches):

- ``publish_batch``: batches of 100 200-byte messages, 64 in flight, one broker;
- ``publish_single``: lone publishes, 2,000 in flight, one broker;
- ``pair_batch`` / ``pair_single``: the same to a pair (acked after both fsyncs).

The last line is JSON. Exit 0 unless a run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pair_bench
import run as R

from pairq.broker import checksum
from pairq.testing import BrokerProcess

# Runs ``python -m pairq.cli ...`` (argv after it) with checksums stubbed out.
NOCRC = (
    "import runpy, sys; import pairq.broker.checksum as c; "
    "c.crc = lambda data: 0; c.crcs = lambda records: [0] * len(records); "
    "c.keyed_many = lambda crcs, keys: crcs; "
    "sys.argv = ['pairq', *sys.argv[4:]]; runpy.run_module('pairq.cli', run_name='__main__')"
)


def _patched(bp: BrokerProcess) -> BrokerProcess:
    """The same broker run under ``NOCRC``: BrokerProcess runs ``[*prefix,
    sys.executable, "-m", "pairq.cli", "broker", ...]``, which ``python -c NOCRC``
    sees as its argv[1:]."""
    return BrokerProcess(
        bp.data_dir,
        port=bp.port,
        args=bp.args,
        log_path=bp.log_path,
        prefix=[sys.executable, "-c", NOCRC],
    )


@contextlib.contextmanager
def single(tmp: Path, name: str, crc: bool) -> Iterator[BrokerProcess]:
    bp = BrokerProcess(
        tmp / name,
        args=["--sync", "always", "--log-level", "warning"],
        log_path=str(tmp / f"{name}.log"),
    )
    if not crc:
        bp = _patched(bp)
    bp.start()
    try:
        yield bp
    finally:
        bp.kill()


@contextlib.asynccontextmanager
async def pair(tmp: Path, name: str, crc: bool) -> AsyncIterator[pair_bench.Pair]:
    p = pair_bench.Pair(tmp, name)
    if not crc:
        p.a, p.b = _patched(p.a), _patched(p.b)
    try:
        await p.start()
        yield p
    finally:
        p.stop()


TARGET = 0.95  # issue 15: throughput with checksums at least 0.95x of without
MODES = ("off", "on", "ctl")
# Each slice runs the three modes in another order (run.ROTATIONS: every mode in every
# position equally often over 6 slices).
ORDERS = [tuple(MODES[i] for i in order) for order in R.ROTATIONS]


async def _slices(
    kind: str, targets: dict[str, tuple[str, int]], sz: R.Sizes, slices: int
) -> dict[str, dict[str, Any]]:
    """Slices of one workload on the three targets (address, broker pid), in rotating
    orders."""
    out: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for k in range(slices):
        for mode in ORDERS[k % len(ORDERS)]:
            address, pid = targets[mode]
            R.CPU.broker_pid = pid
            label = f"{kind} crc {mode:<3} {k + 1}/{slices}"
            topic = f"ab_{kind}_{mode}"
            if kind.endswith("batch"):
                r = await R.publish_batches(address, sz, topic, sz.batch_n, label)
            else:
                r = await R.publish_single(address, sz, topic=topic, label=label)
            out[mode].append(r)
    return {m: _combine(rs) for m, rs in out.items()}


def _pid(bp: BrokerProcess) -> int:
    assert bp.proc is not None
    return bp.proc.pid


def _combine(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """msg/s over the slices' summed time, broker CPU per message over their messages."""
    n = sum(r["n"] for r in slices)
    seconds = sum(r["n"] / r["msgs_per_s"] for r in slices)
    us = sum(r["broker_us"] * r["n"] for r in slices) / max(n, 1)
    return {"msgs_per_s": n / seconds, "n": n, "broker_us": us}


async def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=12, help="slices per mode and workload")
    ap.add_argument("--quick", action="store_true", help="smaller slices")
    ap.add_argument("--scale", type=int, default=3, help="messages per slice, x the quick size")
    args = ap.parse_args(argv)
    base = R.QUICK
    per = 1 if args.quick else args.scale
    sz = dataclasses.replace(
        base,
        batch_n=base.batch_n * per // args.slices,
        single_n=base.single_n * per // args.slices,
        time_cap=base.time_cap * per / args.slices,
    )
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="pairq-crc-ab-") as d:
        tmp = Path(d)
        R.log(
            f"checksums on vs off (and a second 'on' as the control), {args.slices} slices "
            f"each, data in {tmp}; CRC32C by {checksum.IMPLEMENTATION}"
        )
        with (
            single(tmp, "on", True) as on,
            single(tmp, "off", False) as off,
            single(tmp, "ctl", True) as ctl,
        ):
            targets = {
                m: (bp.address, _pid(bp)) for m, bp in (("on", on), ("off", off), ("ctl", ctl))
            }
            for kind in ("publish_batch", "publish_single"):
                results[kind] = await _slices(kind, targets, sz, args.slices)
        async with (
            pair(tmp, "pon", True) as pon,
            pair(tmp, "poff", False) as poff,
            pair(tmp, "pctl", True) as pctl,
        ):
            targets = {
                m: (p.a.address, p.pids()[0])
                for m, p in (("on", pon), ("off", poff), ("ctl", pctl))
            }
            for kind in ("pair_batch", "pair_single"):
                results[kind] = await _slices(kind, targets, sz, args.slices)
    summary: dict[str, Any] = {}
    print(
        f"\n{'workload':<16}{'off msg/s':>12}{'on msg/s':>12}{'on/off':>8}{'ctl/on':>8}"
        f"{'off us':>8}{'on us':>8}{'ctl us':>8}"
    )
    for kind, r in results.items():
        ratio = r["on"]["msgs_per_s"] / r["off"]["msgs_per_s"]
        control = r["ctl"]["msgs_per_s"] / r["on"]["msgs_per_s"]
        summary[f"{kind}_on_vs_off"] = round(ratio, 3)
        summary[f"{kind}_control_vs_on"] = round(control, 3)
        print(
            f"{kind:<16}{r['off']['msgs_per_s']:>12,.0f}{r['on']['msgs_per_s']:>12,.0f}"
            f"{ratio:>8.3f}{control:>8.3f}{r['off']['broker_us']:>8.2f}"
            f"{r['on']['broker_us']:>8.2f}{r['ctl']['broker_us']:>8.2f}"
        )
    print(
        "ctl/on: two identical brokers with checksums on, in the same slices: how far "
        "noise alone moves a ratio in this run"
    )
    for kind in results:
        ratio = summary[f"{kind}_on_vs_off"]
        verdict = "ok" if ratio >= TARGET else "MISSED"
        print(f"  {kind}_on_vs_off {ratio:>8.3f}   target >= {TARGET}   {verdict}")
    summary["implementation"] = checksum.IMPLEMENTATION
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
