"""CPU starvation vs. false takeovers: does a starved pair take over a live partner?

    .venv/bin/python benchmarks/starvation.py              # 2 x 60 s
    .venv/bin/python benchmarks/starvation.py --seconds 20

Runs a lookup and one pair as processes on loopback, a steady trickle of
publishes to both brokers (every ack checked for copies == 2), and, for
``--seconds``, starves them: ``--hogs`` busy-loop processes at nice -20 (the
brokers run at nice 0; default one, a core's worth) plus a flood of bad requests (PublishBatch to an
invalid topic name, answered INVALID_ARGUMENT) from as many client tasks as
keep one core busy. Then it counts takeovers on both brokers (GetStats), i.e.
takeovers of a partner that never died. Twice: with gossip (brokers and the
lookup gossip: takeover is witnessed) and without (the lease rule alone).
Prints one line per mode and a JSON line. Processes are ended by PID; the run
is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from pairq.testing import BrokerProcess, free_port, wait_for_port
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg


def hog(until: float) -> None:
    os.nice(-20) if os.geteuid() == 0 else None
    x = 0
    while time.monotonic() < until:
        x += 1


def start_lookup(tmp: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    lk, lg = free_port(), free_port()
    with open(tmp / "lookup.log", "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pairq.cli",
                "lookup",
                "--address",
                f"127.0.0.1:{lk}",
                "--gossip-address",
                f"127.0.0.1:{lg}",
                "--gossip-profile",
                "local",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(lk)
    return proc, lk, lg


def logs_say(brokers: list[BrokerProcess], text: str) -> bool:
    return all(text in Path(b.log_path).read_text() for b in brokers)


async def stats(addr: str) -> pb.GetStatsResponse | None:
    try:
        async with grpc.aio.insecure_channel(addr) as ch:
            return await pbg.BrokerServiceStub(ch).GetStats(pb.GetStatsRequest(), timeout=5)
    except grpc.aio.AioRpcError:
        return None


async def healthy(addrs: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ss = [await stats(a) for a in addrs]
        if all(
            s is not None
            and s.pair.connected
            and s.pair.partner_connected
            and s.pair.lease_remaining_ms > 0
            and not s.pair.solo
            for s in ss
        ):
            return True
        await asyncio.sleep(0.1)
    return False


async def one_mode(tmp: Path, gossip: bool, seconds: float, nhogs: int) -> dict[str, object]:
    procs: list[subprocess.Popen[bytes]] = []
    extra: list[str] = []
    if gossip:
        proc, lk, lg = start_lookup(tmp)
        procs.append(proc)
        extra = [
            "--lookup",
            f"127.0.0.1:{lk}",
            "--join",
            f"127.0.0.1:{lg}",
            "--gossip-profile",
            "local",
        ]
    pa, pb_ = free_port(), free_port()
    brokers = []
    for name, port, partner in (("a", pa, pb_), ("b", pb_, pa)):
        g = ["--gossip-address", f"127.0.0.1:{free_port()}"] if gossip else []
        brokers.append(
            BrokerProcess(
                tmp / name,
                port=port,
                log_path=str(tmp / f"{name}.log"),
                args=["--pair", "p", "--partner", f"127.0.0.1:{partner}", *g, *extra],
            )
        )
    hogs: list[multiprocessing.Process] = []
    try:
        for b in brokers:
            b.start()
        addrs = [b.address for b in brokers]
        assert await healthy(addrs, 30), "pair not healthy before the load"
        witness_rule = False
        if gossip:  # the witness rule applies once the brokers know the lookup
            deadline = time.monotonic() + 15  # (a broker without the rule never says so)
            while not (witness_rule := logs_say(brokers, "takeover needs their witness")):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
        before = [await stats(a) for a in addrs]
        t_end = time.monotonic() + seconds
        hogs = [
            multiprocessing.Process(target=hog, args=(t_end,), daemon=True) for _ in range(nhogs)
        ]
        for h in hogs:
            h.start()
        acked = failed = bad = 0

        async def trickle(addr: str) -> None:
            nonlocal acked, failed
            async with grpc.aio.insecure_channel(addr) as ch:
                stub = pbg.BrokerServiceStub(ch)
                while time.monotonic() < t_end:
                    try:
                        r = await stub.PublishBatch(
                            pb.PublishBatchRequest(
                                topic="t", messages=[pb.PublishItem(body=b"x")] * 10
                            ),
                            timeout=5,
                        )
                        acked += r.copies == 2
                    except grpc.aio.AioRpcError:
                        failed += 1
                    await asyncio.sleep(0.05)

        async def flood(addr: str) -> None:
            nonlocal bad
            async with grpc.aio.insecure_channel(addr) as ch:
                stub = pbg.BrokerServiceStub(ch)
                while time.monotonic() < t_end:
                    try:
                        await stub.PublishBatch(
                            pb.PublishBatchRequest(
                                topic="bad topic!", messages=[pb.PublishItem(body=b"x")]
                            ),
                            timeout=5,
                        )
                    except grpc.aio.AioRpcError:
                        bad += 1

        await asyncio.gather(
            *(trickle(a) for a in addrs), *(flood(a) for a in addrs for _ in range(4))
        )
        for h in hogs:
            h.join(5)
        after = [await stats(a) for a in addrs]
        takeovers = sum(
            (s2.pair.takeovers if s2 else 0) - (s1.pair.takeovers if s1 else 0)
            for s1, s2 in zip(before, after, strict=True)
        )
        recovered = await healthy(addrs, 15)
        return {
            "gossip": gossip,
            "witness_rule": witness_rule,
            "seconds": seconds,
            "hogs": nhogs,
            "takeovers": takeovers,
            "acked_batches": acked,
            "failed_batches": failed,
            "bad_requests": bad,
            "bad_per_s": round(bad / seconds),
            "healthy_after": recovered,
        }
    finally:
        for h in hogs:
            if h.is_alive():
                h.kill()
        for b in brokers:
            b.stop()
        for p in procs:
            p.kill()
            p.wait()


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--seconds", type=float, default=60.0, help="length of the starvation, per mode"
    )
    ap.add_argument("--hogs", type=int, default=1, help="busy-loop processes at nice -20")
    args = ap.parse_args()
    results = []
    for gossip in (True, False):
        tmp = Path(tempfile.mkdtemp(prefix="pairq-starve-"))
        try:
            r = await one_mode(tmp, gossip, args.seconds, args.hogs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        results.append(r)
        print(
            f"{'with gossip' if gossip else 'without gossip (lease only)':28s}"
            f"{' (witness rule active)' if r['witness_rule'] else ''}: "
            f"{r['takeovers']} takeover(s) of a live partner in {args.seconds:.0f} s of starvation; "
            f"{r['bad_per_s']} bad requests/s answered; trickle batches acked {r['acked_batches']}, "
            f"failed {r['failed_batches']}; healthy after: {r['healthy_after']}",
            flush=True,
        )
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
