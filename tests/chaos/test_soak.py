"""Chaos soak (opt-in: `make chaos`): a lookup and two broker pairs as real processes,
a producer and a de-duplicating consumer that know only the lookup, and a chaos
loop that kill -9s and pauses (SIGSTOP/SIGCONT) random brokers, one at a time so
no pair ever loses both halves. At the end every acknowledged message must have
been handled exactly once.

    make chaos                                # 120 s of chaos
    PAIRQ_CHAOS_SECONDS=600 make chaos        # longer
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pairq.client import Consumer, Dedupe, Producer
from pairq.errors import PairqError
from pairq.testing import BrokerProcess, eventually, free_port, wait_for_port

pytestmark = pytest.mark.chaos

SECONDS = float(os.environ.get("PAIRQ_CHAOS_SECONDS", "120"))
SEED = int(os.environ.get("PAIRQ_CHAOS_SEED", "20261126"))


def start_lookup(tmp: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port, gport = free_port(), free_port()
    log = (tmp / "lookup.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pairq.cli",
            "lookup",
            "--address",
            f"127.0.0.1:{port}",
            "--gossip-address",
            f"127.0.0.1:{gport}",
            "--gossip-profile",
            "local",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for_port(port)
    return proc, f"127.0.0.1:{port}", f"127.0.0.1:{gport}"


def make_pair(tmp: Path, name: str, lookup: str, gossip: str) -> list[BrokerProcess]:
    pa, pb_ = free_port(), free_port()
    out = []
    for suffix, port, partner in (("a", pa, pb_), ("b", pb_, pa)):
        out.append(
            BrokerProcess(
                tmp / f"{name}{suffix}",
                port=port,
                log_path=str(tmp / f"{name}{suffix}.log"),
                args=[
                    "--pair",
                    name,
                    "--partner",
                    f"127.0.0.1:{partner}",
                    "--lookup",
                    lookup,
                    "--gossip-address",
                    f"127.0.0.1:{free_port()}",
                    "--gossip-profile",
                    "local",
                    "--join",
                    gossip,
                    "--shutdown-grace-s",
                    "1",
                ],
            )
        )
    return out


async def test_chaos_soak_kill_and_pause(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    lookup_proc, lookup, gossip = start_lookup(tmp_path)
    brokers = make_pair(tmp_path, "p1", lookup, gossip) + make_pair(tmp_path, "p2", lookup, gossip)
    acked: set[bytes] = set()
    handled: dict[bytes, int] = {}
    events: list[str] = []
    try:
        await asyncio.gather(*(asyncio.to_thread(b.start) for b in brokers))
        stop = asyncio.Event()

        async def produce(topic: str) -> None:
            async with Producer(lookups=[lookup], retry_timeout=60) as p:
                while not stop.is_set():
                    try:
                        acks = await p.publish_batch(topic, [b"x" * 100] * rng.randint(1, 30))
                        acked.update(a.id for a in acks)
                    except PairqError:
                        await asyncio.sleep(0.1)

        def handle(msg) -> None:  # type: ignore[no-untyped-def]
            handled[msg.id] = handled.get(msg.id, 0) + 1

        consumers = [
            Consumer(
                t,
                "soak",
                lookups=[lookup],
                handler=handle,
                dedupe=Dedupe(tmp_path / f"dd-{t}"),
                max_in_flight=200,
                lookup_poll_interval=1.0,
                reconnect_backoff=0.05,
                reconnect_backoff_max=0.5,
            )
            for t in ("orders", "invoices")
        ]
        for c in consumers:
            await c.start()
        producers = [asyncio.create_task(produce(t)) for t in ("orders", "invoices", "orders")]
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(1.0, 3.0))  # time between faults is the point
            victim = rng.choice(brokers)
            if rng.random() < 0.5:
                events.append(f"kill -9 {victim.address}")
                victim.kill()
                await asyncio.sleep(rng.uniform(0.1, 3.0))
                victim.start()
            else:
                pause = rng.uniform(0.2, 5.0)
                events.append(f"SIGSTOP {victim.address} {pause:.1f}s")
                assert victim.proc is not None
                victim.proc.send_signal(signal.SIGSTOP)
                await asyncio.sleep(pause)
                victim.proc.send_signal(signal.SIGCONT)
            await asyncio.sleep(1.5)  # let the pair heal before the next single fault
        stop.set()
        await asyncio.gather(*producers)
        await eventually(lambda: acked <= set(handled), timeout=120)
        dups = sum(c.stats.duplicates for c in consumers)
        for c in consumers:
            await c.stop()
    finally:
        for b in brokers:
            if b.proc is not None and b.proc.poll() is None:
                b.proc.send_signal(signal.SIGCONT)
            b.stop()
        lookup_proc.kill()
        lookup_proc.wait()
    lost = acked - set(handled)
    twice = [i for i, n in handled.items() if n > 1]
    print(
        f"chaos {SECONDS:.0f}s seed {SEED}: {len(events)} faults, acked {len(acked)}, "
        f"handled {len(handled)}, raw duplicates absorbed {dups}"
    )
    assert len(acked) > 1000
    assert not lost, f"{len(lost)} acknowledged messages lost; faults: {events}"
    assert not twice, f"{len(twice)} handled twice"
