"""``pairq dev``: the whole system on one machine, as real child processes.

Starts the local cluster under one data directory, prints where everything
is and how to use it, and stops every child (SIGTERM, then SIGKILL after a
grace period) on Ctrl-C / SIGTERM. Only processes it started are signalled.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pairq.testing import wait_for_port


@dataclass
class Component:
    name: str
    args: list[str]
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "dev",
        help="run a local cluster (what `make run` starts)",
        description="Run the local development cluster as child processes and print where it is.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data-dir", default="./data", help="directory for every component's data and logs")
    p.add_argument("--host", default="127.0.0.1", help="address every component binds")
    p.add_argument("--broker-port", type=int, default=4150, help="gRPC port of the first broker")
    p.add_argument("--metrics-port", type=int, default=9150, help="Prometheus port of the first broker")
    p.add_argument("--lookup-port", type=int, default=4160, help="gRPC port of the lookup (gossip: +1)")
    p.add_argument("--gossip-port", type=int, default=4170, help="gossip port of the first broker")
    p.set_defaults(func=run)


def components(args: argparse.Namespace) -> list[Component]:
    data = Path(args.data_dir)
    h = args.host
    pa, pb = args.broker_port, args.broker_port + 1
    lk, lg = args.lookup_port, args.lookup_port + 1
    common = ["--pair", "dev", "--lookup", f"{h}:{lk}", "--join", f"{h}:{lg}", "--gossip-profile", "local"]
    return [
        Component(
            "lookup",
            ["lookup", "--address", f"{h}:{lk}", "--gossip-address", f"{h}:{lg}", "--gossip-profile", "local"],
            lk,
        ),
        Component(
            "broker-a",
            ["broker", "--address", f"{h}:{pa}", "--data-dir", str(data / "broker-a"),
             "--metrics-address", f"{h}:{args.metrics_port}", "--partner", f"{h}:{pb}",
             "--gossip-address", f"{h}:{args.gossip_port}", *common],
            pa,
        ),
        Component(
            "broker-b",
            ["broker", "--address", f"{h}:{pb}", "--data-dir", str(data / "broker-b"),
             "--metrics-address", f"{h}:{args.metrics_port + 1}", "--partner", f"{h}:{pa}",
             "--gossip-address", f"{h}:{args.gossip_port + 1}", *common],
            pb,
        ),
    ]


def run(args: argparse.Namespace) -> int:
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    comps = components(args)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for c in comps:
            log = open(data / f"{c.name}.log", "ab")  # handed to the child
            c.proc = subprocess.Popen(
                [sys.executable, "-m", "pairq.cli", *c.args], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:
                wait_for_port(c.port, timeout=30, host=args.host)
            except TimeoutError:
                print(f"pairq dev: {c.name} did not start; see {data / (c.name + '.log')}", file=sys.stderr)
                return 1
        broker = f"{args.host}:{args.broker_port}"
        broker_b = f"{args.host}:{args.broker_port + 1}"
        print(
            f"""
pairq dev cluster is up (data and logs in {data.resolve()}):
  lookup       gRPC {args.host}:{args.lookup_port}   (gossip {args.host}:{args.lookup_port + 1})
  pair "dev":
    broker-a   gRPC {broker}   metrics http://{args.host}:{args.metrics_port}/metrics
    broker-b   gRPC {broker_b}   metrics http://{args.host}:{args.metrics_port + 1}/metrics
  every publish is fsynced on both brokers before it is acknowledged (copies=2)

Try it (in another terminal, with .venv/bin on PATH or via `.venv/bin/pairq`):
  echo hello | pairq pub orders                 # publish stdin lines
  pairq pub orders 'one message'                # publish one message
  pairq tail orders -n 2 --lookup {args.host}:{args.lookup_port}   # print bodies
  pairq stat --lookup {args.host}:{args.lookup_port}                # live topic/channel table
  pairq nodes --lookup {args.host}:{args.lookup_port}               # brokers, pairs, liveness
  pairq members --gossip {args.host}:{args.lookup_port + 1}          # gossip membership
Python:
  from pairq.client import Producer
  async with Producer(brokers=["{broker}", "{broker_b}"]) as p: await p.publish("orders", b"x")

Ctrl-C stops everything.""",
            flush=True,
        )
        while not stopping:
            for c in comps:
                if c.proc is not None and c.proc.poll() is not None:
                    print(f"pairq dev: {c.name} exited with {c.proc.returncode}; stopping", file=sys.stderr)
                    stopping = True
            time.sleep(0.2)
        return 0
    finally:
        for c in comps:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for c in comps:
            if c.proc is None:
                continue
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()
