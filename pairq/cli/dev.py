"""``pairq dev``: the whole system on one machine, as real child processes.

Starts the local cluster (a lookup, one broker pair and the admin console)
under one data directory, prints where everything
is and how to use it, and stops every child (SIGTERM, then SIGKILL after a
grace period) on Ctrl-C / SIGTERM. Only processes it started are signalled.

A component that dies is reported and the rest keep running, so a failover
can be tried on one machine: ``kill -9 $(cat data/broker-a.pid)``, watch the
partner take over (``pairq stat``), then ``pairq dev restart broker-a`` (it
asks the running ``pairq dev``, through ``data/dev.pid`` and SIGUSR1, to start
it again). A component is ready when its gRPC health service says SERVING;
a port that another process holds is refused before anything starts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

NAMES = ("lookup", "broker-a", "broker-b", "admin")


@dataclass
class Component:
    name: str
    args: list[str]
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    http: bool = False  # ready when GET /api/overview answers (the admin), not gRPC health


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "dev",
        help="run a local cluster (what `make run` starts)",
        description="Run the local development cluster as child processes and print where it is.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data-dir", default="./data", help="directory for every component's data and logs"
    )
    p.add_argument("--host", default="127.0.0.1", help="address every component binds")
    p.add_argument("--broker-port", type=int, default=4150, help="gRPC port of the first broker")
    p.add_argument(
        "--metrics-port", type=int, default=9150, help="Prometheus port of the first broker"
    )
    p.add_argument(
        "--lookup-port", type=int, default=4160, help="gRPC port of the lookup (gossip: +1)"
    )
    # 4180, not 4170: the second broker's gossip port would be 4171, the admin's (NSQ's).
    p.add_argument("--gossip-port", type=int, default=4180, help="gossip port of the first broker")
    p.add_argument(
        "--admin-port", type=int, default=4171, help="HTTP port of the admin console (pairq admin)"
    )
    p.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=("run", "restart"),
        help="run the cluster, or ask the running one to restart a component",
    )
    p.add_argument(
        "component",
        nargs="?",
        choices=NAMES,
        help="with restart: the component to start again (e.g. broker-a after a kill -9)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.action == "restart":
        return request_restart(Path(args.data_dir), args.component)
    return run(args)


def request_restart(data: Path, name: str | None) -> int:
    """Ask the running ``pairq dev`` (whose pid is in data/dev.pid) to restart ``name``."""
    if name is None:
        print(f"pairq dev restart: name the component ({', '.join(NAMES)})", file=sys.stderr)
        return 2
    try:
        pid = int((data / "dev.pid").read_text())
        (data / f"restart-{name}").touch()
        os.kill(pid, signal.SIGUSR1)
    except (OSError, ValueError) as exc:
        print(
            f"pairq dev restart: no running `pairq dev` with data dir {data} ({exc})",
            file=sys.stderr,
        )
        return 1
    print(f"asked pairq dev (pid {pid}) to restart {name}; see {data / (name + '.log')}")
    return 0


def port_taken(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_http(c: Component, host: str, timeout: float) -> str:
    """Wait until the admin console answers GET /api/overview; "" or why not."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.proc is not None and c.proc.poll() is not None:
            return f"it exited with {c.proc.returncode}"
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(f"http://{host}:{c.port}/api/overview", timeout=2) as r:
                if r.status == 200:
                    return ""
        time.sleep(0.1)
    return f"not serving after {timeout:.0f} s"


def wait_serving(c: Component, host: str, timeout: float) -> str:
    """Wait until the component's gRPC health service says SERVING (the admin: its
    HTTP API answers); "" or why not."""
    if c.http:
        return wait_http(c, host, timeout)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"{host}:{c.port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if c.proc is not None and c.proc.poll() is not None:
                return f"it exited with {c.proc.returncode}"
            with contextlib.suppress(grpc.RpcError):
                r = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return ""
            time.sleep(0.1)
    return f"not serving after {timeout:.0f} s"


def components(args: argparse.Namespace) -> list[Component]:
    data = Path(args.data_dir)
    h = args.host
    pa, pb = args.broker_port, args.broker_port + 1
    lk, lg = args.lookup_port, args.lookup_port + 1
    common = [
        "--pair",
        "dev",
        "--lookup",
        f"{h}:{lk}",
        "--join",
        f"{h}:{lg}",
        "--gossip-profile",
        "local",
    ]
    return [
        Component(
            "lookup",
            [
                "lookup",
                "--address",
                f"{h}:{lk}",
                "--gossip-address",
                f"{h}:{lg}",
                "--gossip-profile",
                "local",
            ],
            lk,
        ),
        Component(
            "broker-a",
            [
                "broker",
                "--address",
                f"{h}:{pa}",
                "--data-dir",
                str(data / "broker-a"),
                "--metrics-address",
                f"{h}:{args.metrics_port}",
                "--partner",
                f"{h}:{pb}",
                "--gossip-address",
                f"{h}:{args.gossip_port}",
                *common,
            ],
            pa,
        ),
        Component(
            "broker-b",
            [
                "broker",
                "--address",
                f"{h}:{pb}",
                "--data-dir",
                str(data / "broker-b"),
                "--metrics-address",
                f"{h}:{args.metrics_port + 1}",
                "--partner",
                f"{h}:{pa}",
                "--gossip-address",
                f"{h}:{args.gossip_port + 1}",
                *common,
            ],
            pb,
        ),
        Component(
            "admin",
            ["admin", "--address", f"{h}:{args.admin_port}", "--lookup", f"{h}:{lk}"],
            args.admin_port,
            http=True,
        ),
    ]


def _start(c: Component, data: Path) -> None:
    with open(data / f"{c.name}.log", "ab") as log:  # the child keeps its own copy
        c.proc = subprocess.Popen(
            [sys.executable, "-m", "pairq", *c.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    (data / f"{c.name}.pid").write_text(str(c.proc.pid))


def _tail(path: Path, n: int = 5) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return ""
    return "".join(f"\n    {line}" for line in lines)


def run(args: argparse.Namespace) -> int:
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    comps = components(args)
    ports = [(c.name, c.port) for c in comps] + [
        ("broker-a metrics", args.metrics_port),
        ("broker-b metrics", args.metrics_port + 1),
        ("lookup gossip", args.lookup_port + 1),
        ("broker-a gossip", args.gossip_port),
        ("broker-b gossip", args.gossip_port + 1),
    ]
    clash = sorted({p for _, p in ports if [q for _, q in ports].count(p) > 1})
    if clash:
        print(
            f"pairq dev: port(s) {', '.join(map(str, clash))} given to two components; "
            "choose other ports (--broker-port, --lookup-port, --gossip-port, --metrics-port, "
            "--admin-port)",
            file=sys.stderr,
        )
        return 2
    taken = [f"{port} ({what})" for what, port in ports if port_taken(args.host, port)]
    if taken:
        print(
            f"pairq dev: port(s) {', '.join(taken)} on {args.host} already in use by another "
            "process (another `pairq dev`?); stop it, or choose other ports (--broker-port, "
            "--lookup-port, --gossip-port, --metrics-port, --admin-port)",
            file=sys.stderr,
        )
        return 2
    stopping = False
    restart = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    def on_restart(signum: int, _frame: object) -> None:
        nonlocal restart
        restart = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_restart)
    (data / "dev.pid").write_text(str(os.getpid()))
    try:
        for c in comps:
            _start(c, data)
            why = wait_serving(c, args.host, 30)
            if why:
                print(
                    f"pairq dev: {c.name} did not start ({why}); see {data / (c.name + '.log')}:"
                    f"{_tail(data / (c.name + '.log'))}",
                    file=sys.stderr,
                )
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
  admin        http://{args.host}:{args.admin_port}/   (web console; JSON API under /api/)
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

Try a failover: kill -9 $(cat {data}/broker-a.pid); watch `pairq stat` (broker-b takes over
and delivers broker-a's messages); then `pairq dev restart broker-a` brings it back.
Ctrl-C stops everything.""",
            flush=True,
        )
        reported: set[str] = set()
        while not stopping:
            for c in comps:
                if c.proc is not None and c.proc.poll() is not None and c.name not in reported:
                    reported.add(c.name)
                    print(
                        f"pairq dev: {c.name} exited with {c.proc.returncode}; the rest keeps "
                        f"running. Start it again with: pairq dev restart {c.name}",
                        file=sys.stderr,
                        flush=True,
                    )
            if restart:
                restart = False
                for c in comps:
                    req = data / f"restart-{c.name}"
                    if not req.exists():
                        continue
                    req.unlink()
                    if c.proc is not None and c.proc.poll() is None:
                        print(
                            f"pairq dev: {c.name} is running (pid {c.proc.pid}); not restarted",
                            file=sys.stderr,
                            flush=True,
                        )
                        continue
                    _start(c, data)
                    why = wait_serving(c, args.host, 30)
                    reported.discard(c.name)
                    print(
                        f"pairq dev: restarted {c.name} (pid {c.proc.pid if c.proc else '?'})"
                        + (f", but it is not ready: {why}" if why else ""),
                        flush=True,
                    )
            time.sleep(0.2)
        return 0
    finally:
        with contextlib.suppress(OSError):
            (data / "dev.pid").unlink()
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
