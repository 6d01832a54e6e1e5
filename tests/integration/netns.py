"""Two network namespaces on a bridge, for real pair-link partitions (needs root, ip, tc).

    net = PairNet()            # removes stale pqf-* namespaces/links, then builds:
    net.setup()                #   root ns: bridge pqf<pid>br 10.213.<n>.1/24
    net.ip_a, net.ip_b         #   ns pqf-<pid>-a: 10.213.<n>.2   ns pqf-<pid>-b: 10.213.<n>.3
    net.exec_prefix("a")       # ["ip", "netns", "exec", "pqf-<pid>-a"]
    net.partition()            # drop A<->B traffic only (the root namespace still reaches both)
    net.heal()
    net.isolate("b")           # drop ALL IP traffic to and from ns B (the bridge address too)
    net.unisolate("b")
    net.cleanup()              # always, in a finally

The partition is a tc filter on each namespace's veth egress matching the
other broker's address: ``tc qdisc add dev V root handle 1: prio`` and
``tc filter add dev V parent 1: protocol ip prio 1 u32 match ip dst OTHER/32
action drop``; heal deletes the filters. Kernels built without ``sch_prio``
or ``act_gact`` (no modules to load) get the closest equivalent the kernel
has, chosen once at setup and reported in ``partition_method``: an ``htb``
root qdisc instead of ``prio``, and ``action mirred egress redirect`` to an
``ifb`` device that is kept down (the packet is stolen and dropped) instead
of ``action drop``. Either way the sender sees a silent drop, as in a real
partition; anything else fails loudly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

__all__ = ["NetnsError", "PairNet", "require_tools"]


class NetnsError(RuntimeError):
    pass


def require_tools() -> None:
    """Raise NetnsError (with what to do) if this host cannot run the netns tests."""
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if missing:
        raise NetnsError(
            f"{' and '.join(missing)} not found: the partition test needs iproute2 "
            "(run `make ensure-debs` as root, or apt-get install iproute2)"
        )
    if os.geteuid() != 0:
        raise NetnsError("the partition test needs root (network namespaces, veth, tc)")


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20)
    if check and p.returncode != 0:
        raise NetnsError(
            f"`{' '.join(cmd)}` failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}"
        )
    return p


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete pqf-* namespaces and pqf* links left by test processes that are gone."""
    removed: list[str] = []
    me = os.getpid()
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(r"pqf-(\d+)-[ab]", name)
        if m and (int(m.group(1)) == me or not _alive(int(m.group(1)))):
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(": ")
        if len(parts) < 2:
            continue
        name = parts[1].split("@")[0]
        m = re.fullmatch(r"pqf(\d+)(ha|hb|na|nb|br|sk)", name)
        if m and (int(m.group(1)) == me or not _alive(int(m.group(1)))):
            _run("ip", "link", "del", name, check=False)
            removed.append(name)
    return removed


class PairNet:
    """Namespaces pqf-<pid>-a/-b with veths to a bridge in the root namespace."""

    def __init__(self) -> None:
        pid = os.getpid()
        self.pid = pid
        self.ns = {"a": f"pqf-{pid}-a", "b": f"pqf-{pid}-b"}
        self.host_if = {"a": f"pqf{pid}ha", "b": f"pqf{pid}hb"}
        self.ns_if = {"a": "pqfeth0", "b": "pqfeth0"}
        self.bridge = f"pqf{pid}br"
        self.subnet = 100 + pid % 100
        self.ip_bridge = f"10.213.{self.subnet}.1"
        self.ip_a = f"10.213.{self.subnet}.2"
        self.ip_b = f"10.213.{self.subnet}.3"
        self.ip = {"a": self.ip_a, "b": self.ip_b}
        self.partition_method = ""
        self._qdisc = ""
        self._action: list[str] = []
        self.partitioned = False
        self._isolation: dict[str, list[list[str]]] = {}
        self.stale_removed: list[str] = []

    def exec_prefix(self, side: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[side]]

    def _in(self, side: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(*self.exec_prefix(side), *cmd, check=check)

    def setup(self) -> None:
        require_tools()
        self.stale_removed = cleanup_stale()
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.ip_bridge}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for side in ("a", "b"):
            ns, host, tmp = self.ns[side], self.host_if[side], f"pqf{self.pid}n{side}"
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", host, "type", "veth", "peer", "name", tmp)
            _run("ip", "link", "set", host, "master", self.bridge)
            _run("ip", "link", "set", host, "up")
            _run("ip", "link", "set", tmp, "netns", ns)
            self._in(side, "ip", "link", "set", tmp, "name", self.ns_if[side])
            self._in(side, "ip", "addr", "add", f"{self.ip[side]}/24", "dev", self.ns_if[side])
            self._in(side, "ip", "link", "set", "lo", "up")
            self._in(side, "ip", "link", "set", self.ns_if[side], "up")
        self._choose_partition_method()

    def _choose_partition_method(self) -> None:
        """Install the root qdisc on both veths and find a drop action this kernel has."""
        for qdisc in ("prio", "htb"):
            p = self._in(
                "a",
                "tc",
                "qdisc",
                "add",
                "dev",
                self.ns_if["a"],
                "root",
                "handle",
                "1:",
                qdisc,
                check=False,
            )
            if p.returncode == 0:
                self._qdisc = qdisc
                break
        else:
            raise NetnsError(f"tc cannot add a prio (or htb) root qdisc: {p.stderr.strip()}")
        self._in(
            "b", "tc", "qdisc", "add", "dev", self.ns_if["b"], "root", "handle", "1:", self._qdisc
        )
        probe = [
            "tc",
            "filter",
            "add",
            "dev",
            self.ns_if["a"],
            "parent",
            "1:",
            "protocol",
            "ip",
            "prio",
            "1",
            "u32",
            "match",
            "ip",
            "dst",
            f"{self.ip_b}/32",
        ]
        p = self._in("a", *probe, "action", "drop", check=False)
        if p.returncode == 0:
            self._action = ["action", "drop"]
        else:
            # No act_gact: steal the packet into an ifb device that stays down (dropped).
            for side in ("a", "b"):
                self._in(side, "ip", "link", "add", "pqfsink", "type", "ifb")
            p2 = self._in(
                "a", *probe, "action", "mirred", "egress", "redirect", "dev", "pqfsink", check=False
            )
            if p2.returncode != 0:
                raise NetnsError(
                    "tc cannot drop matched packets on this kernel: `action drop` failed "
                    f"({p.stderr.strip()}) and so did `action mirred` ({p2.stderr.strip()})"
                )
            self._action = ["action", "mirred", "egress", "redirect", "dev", "pqfsink"]
        self._in(
            "a",
            "tc",
            "filter",
            "del",
            "dev",
            self.ns_if["a"],
            "parent",
            "1:",
            "protocol",
            "ip",
            "prio",
            "1",
        )
        self.partition_method = (
            f"{self._qdisc} root qdisc + u32 dst match + {' '.join(self._action)}"
        )

    def partition(self) -> None:
        """Drop A->B in ns A and B->A in ns B (egress of each veth); client traffic is untouched."""
        for side, other in (("a", self.ip_b), ("b", self.ip_a)):
            self._in(
                side,
                "tc",
                "filter",
                "add",
                "dev",
                self.ns_if[side],
                "parent",
                "1:",
                "protocol",
                "ip",
                "prio",
                "1",
                "u32",
                "match",
                "ip",
                "dst",
                f"{other}/32",
                *self._action,
            )
        self.partitioned = True

    def heal(self) -> None:
        for side in ("a", "b"):
            self._in(
                side,
                "tc",
                "filter",
                "del",
                "dev",
                self.ns_if[side],
                "parent",
                "1:",
                "protocol",
                "ip",
                "prio",
                "1",
            )
        self.partitioned = False

    def _root_sink(self) -> str:
        return f"pqf{self.pid}sk"

    def isolate(self, side: str) -> None:
        """Cut namespace ``side`` off from everyone (the partner and the root namespace):
        a filter on its veth egress matching dst 0.0.0.0/0, and one on the host-side veth
        egress (a bridge port, so both bridged and root-namespace traffic) matching dst
        <its ip>/32. Same qdisc and drop action as ``partition``; filters at prio 2, so
        ``heal`` (prio 1) leaves them alone. Undone by ``unisolate``."""
        if side in self._isolation:
            raise NetnsError(f"namespace {side} is already isolated")
        undo = self._isolation[side] = []  # what unisolate runs, newest first
        host, action = self.host_if[side], list(self._action)
        if "mirred" in action:  # the root namespace needs its own (down) ifb sink
            _run("ip", "link", "add", self._root_sink(), "type", "ifb")
            undo.insert(0, ["ip", "link", "del", self._root_sink()])
            action[action.index("pqfsink")] = self._root_sink()
        self._in(
            side,
            "tc",
            "filter",
            "add",
            "dev",
            self.ns_if[side],
            "parent",
            "1:",
            "protocol",
            "ip",
            "prio",
            "2",
            "u32",
            "match",
            "ip",
            "dst",
            "0.0.0.0/0",
            *self._action,
        )
        undo.insert(
            0,
            [
                *self.exec_prefix(side),
                "tc",
                "filter",
                "del",
                "dev",
                self.ns_if[side],
                "parent",
                "1:",
                "protocol",
                "ip",
                "prio",
                "2",
            ],
        )
        _run("tc", "qdisc", "add", "dev", host, "root", "handle", "1:", self._qdisc)
        undo.insert(0, ["tc", "qdisc", "del", "dev", host, "root"])  # takes its filter with it
        _run(
            "tc",
            "filter",
            "add",
            "dev",
            host,
            "parent",
            "1:",
            "protocol",
            "ip",
            "prio",
            "2",
            "u32",
            "match",
            "ip",
            "dst",
            f"{self.ip[side]}/32",
            *action,
        )

    @property
    def isolated(self) -> set[str]:
        return set(self._isolation)

    def unisolate(self, side: str) -> None:
        """Undo what ``isolate(side)`` installed (every step tried; the first failure raised)."""
        failed = [
            p
            for cmd in self._isolation.pop(side, [])
            if (p := _run(*cmd, check=False)).returncode != 0
        ]
        if failed:
            raise NetnsError(
                f"`{' '.join(failed[0].args)}` failed ({failed[0].returncode}): "
                f"{failed[0].stderr.strip()}"
            )

    def can_connect(self, side: str, host: str, port: int, timeout: float = 1.5) -> bool:
        """Whether a TCP connection from inside namespace ``side`` to host:port succeeds."""
        code = (
            "import socket, sys\n"
            "try:\n"
            f"    socket.create_connection(({host!r}, {port}), timeout={timeout}).close()\n"
            "except OSError:\n"
            "    sys.exit(1)\n"
        )
        return self._in(side, sys.executable, "-c", code, check=False).returncode == 0

    def cleanup(self) -> None:
        """Remove both namespaces (their veth ends go with them), the host veths and the bridge."""
        for side in ("a", "b"):
            _run("ip", "netns", "del", self.ns[side], check=False)
            _run("ip", "link", "del", self.host_if[side], check=False)
        _run("ip", "link", "del", self.bridge, check=False)
