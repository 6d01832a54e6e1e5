"""The chaos cluster's network: one namespace per node on one bridge (needs root, ip, tc).

    net = ChaosNet(["lk1", "lk2", "p0a", "p0b", "p1a", "p1b"])
    net.setup()            # removes stale pqc-* namespaces / links of dead runs, then builds:
                           #   root ns: bridge pqc<pid>br 10.214.<n>.1/24 (the harness's clients)
                           #   ns pqc-<pid>-<node>: eth0 10.214.<n>.<2+i>, a veth to the bridge
    net.ip["p0a"]          # the node's address
    net.prefix("p0a")      # ["ip", "netns", "exec", "pqc-<pid>-p0a"]: run a process inside
    rule = net.drop("p0a", "p0b")       # drop packets p0a -> p0b (one direction)
    net.undrop(rule)
    net.cleanup()          # always (a finally); a crashed run's leftovers go at the next setup

Rules of the drop filters: every node's veth (inside its namespace) and its
host-side veth (a bridge port) carry an ``htb`` root qdisc; unclassified
packets pass untouched. ``drop(src, dst)`` adds one u32 filter with its own
priority: on src's namespace veth matching ``ip dst`` (node to node, and node
to the harness when dst is ``"root"``), or, for src ``"root"``, on dst's host
veth matching ``ip src`` of the bridge. ``dst="*"`` matches every destination.
The drop is ``action drop`` where the kernel has ``act_gact``, otherwise a
``mirred egress redirect`` into an ``ifb`` device that stays down (this
kernel's only way to steal a packet); either is a silent loss, as in a real
partition. ``netem(node, ...)`` needs ``sch_netem``: :attr:`netem_supported`
says whether this kernel has it (probed at setup).

Every name carries the harness's pid (``pqc-<pid>-...``, ``pqc<pid>...``):
``cleanup_stale`` removes those whose pid is no longer running.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

__all__ = ["ChaosNet", "NetError", "cleanup_stale", "ensure_tools"]


class NetError(RuntimeError):
    pass


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20)
    if check and p.returncode != 0:
        raise NetError(f"`{' '.join(cmd)}` failed ({p.returncode}): {p.stderr.strip()}")
    return p


def ensure_tools() -> None:
    """Install what the harness needs from Debian when root and missing (iproute2 for ip
    and tc; fuse3 and libfuse2 for the power-loss filesystem); fail saying what to do."""
    import ctypes.util

    def missing() -> list[str]:
        debs = []
        if shutil.which("ip") is None or shutil.which("tc") is None:
            debs.append("iproute2")
        if ctypes.util.find_library("fuse") is None:
            debs += ["fuse3", "libfuse2"]
        return debs

    debs = missing()
    if debs and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=False, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", *debs], check=False, timeout=600)
        debs = missing()
    if "iproute2" in debs:
        raise NetError("ip and tc not found: install iproute2 (as root)")
    if os.geteuid() != 0:
        raise NetError("the chaos harness needs root (network namespaces, veth, tc, mounts)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(me: int | None = None) -> list[str]:
    """Delete pqc-* namespaces and pqc* links whose harness pid is gone (or is ``me``)."""
    removed: list[str] = []
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(r"pqc-(\d+)-\w+", name)
        if m and (int(m.group(1)) == me or not _alive(int(m.group(1)))):
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(": ")
        if len(parts) < 2:
            continue
        name = parts[1].split("@")[0]
        m = re.fullmatch(r"pqc(\d+)(h\d+|n\d+|br|sk)", name)
        if m and (int(m.group(1)) == me or not _alive(int(m.group(1)))):
            _run("ip", "link", "del", name, check=False)
            removed.append(name)
    return removed


@dataclass(frozen=True)
class Rule:
    """One installed drop filter: where it sits and its priority (its handle for removal)."""

    ns: str  # namespace name, "" for the root namespace
    dev: str
    prio: int
    text: str


class ChaosNet:
    """Namespaces pqc-<pid>-<node>, each with a veth to the bridge pqc<pid>br."""

    def __init__(self, nodes: list[str], pid: int | None = None) -> None:
        self.pid = pid if pid is not None else os.getpid()
        self.nodes = list(nodes)
        sub = 10 + self.pid % 240
        self.ip_bridge = f"10.214.{sub}.1"
        self.ip = {n: f"10.214.{sub}.{2 + i}" for i, n in enumerate(nodes)}
        self.ns = {n: f"pqc-{self.pid}-{n}" for n in nodes}
        self.host_if = {n: f"pqc{self.pid}h{i}" for i, n in enumerate(nodes)}
        self.bridge = f"pqc{self.pid}br"
        self.sink = f"pqc{self.pid}sk"
        self._action: list[str] = []
        self._mirred = False
        self._prio = 10
        self.netem_supported = False
        self.stale_removed: list[str] = []
        self.method = ""

    def prefix(self, node: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[node]]

    def _in(self, node: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(*self.prefix(node), *cmd, check=check)

    def setup(self) -> None:
        ensure_tools()
        self.stale_removed = cleanup_stale(self.pid)
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.ip_bridge}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i, n in enumerate(self.nodes):
            host, tmp = self.host_if[n], f"pqc{self.pid}n{i}"
            _run("ip", "netns", "add", self.ns[n])
            _run("ip", "link", "add", host, "type", "veth", "peer", "name", tmp)
            _run("ip", "link", "set", host, "master", self.bridge)
            _run("ip", "link", "set", host, "up")
            _run("ip", "link", "set", tmp, "netns", self.ns[n])
            self._in(n, "ip", "link", "set", tmp, "name", "eth0")
            self._in(n, "ip", "addr", "add", f"{self.ip[n]}/24", "dev", "eth0")
            self._in(n, "ip", "link", "set", "lo", "up")
            self._in(n, "ip", "link", "set", "eth0", "up")
            self._in(n, "ip", "route", "add", "default", "via", self.ip_bridge, check=False)
            self._in(n, "tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb")
            _run("tc", "qdisc", "add", "dev", host, "root", "handle", "1:", "htb")
        self._choose_action()
        p = self._in(
            self.nodes[0], "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
            check=False,
        )  # fmt: skip
        self.netem_supported = p.returncode == 0
        if self.netem_supported:
            self._in(self.nodes[0], "tc", "qdisc", "del", "dev", "lo", "root", check=False)

    def _choose_action(self) -> None:
        n0 = self.nodes[0]
        probe = ["tc", "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip"]
        probe += ["prio", "1", "u32", "match", "ip", "dst", "192.0.2.1/32"]
        if self._in(n0, *probe, "action", "drop", check=False).returncode == 0:
            self._action = ["action", "drop"]
            self.method = "htb + u32 + action drop"
        else:
            self._mirred = True
            for n in self.nodes:
                self._in(n, "ip", "link", "add", "pqcsink", "type", "ifb")
            _run("ip", "link", "add", self.sink, "type", "ifb")
            self._action = ["action", "mirred", "egress", "redirect", "dev"]
            p = self._in(n0, *probe, *self._action, "pqcsink", check=False)
            if p.returncode != 0:
                raise NetError(f"tc cannot drop packets on this kernel: {p.stderr.strip()}")
            self.method = "htb + u32 + mirred redirect to a down ifb"
        self._in(n0, "tc", "filter", "del", "dev", "eth0", "parent", "1:", "prio", "1")

    def _filter(self, ns: str, dev: str, match: list[str], text: str) -> Rule:
        self._prio += 1
        sink = ["pqcsink" if ns else self.sink] if self._mirred else []
        cmd = ["tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip"]
        cmd += ["prio", str(self._prio), "u32", "match", "ip", *match, *self._action, *sink]
        _run(*(["ip", "netns", "exec", ns] if ns else []), *cmd)
        return Rule(ns, dev, self._prio, text)

    def drop(self, src: str, dst: str) -> Rule:
        """Drop every IP packet from ``src`` to ``dst`` (node names, ``"root"`` for the
        harness, ``"*"`` as dst for everyone). One direction only."""
        if src == "root":
            if dst == "*":
                raise NetError("drop('root', '*') would cut the harness off everything")
            return self._filter(
                "", self.host_if[dst], ["src", f"{self.ip_bridge}/32"], f"root->{dst}"
            )
        addr = {"*": "0.0.0.0/0", "root": f"{self.ip_bridge}/32"}.get(dst)
        if addr is None:
            addr = f"{self.ip[dst]}/32"
        return self._filter(self.ns[src], "eth0", ["dst", addr], f"{src}->{dst}")

    def isolate(self, node: str) -> list[Rule]:
        """Cut ``node`` off from everyone, both directions (its egress, and the bridge's
        egress towards it)."""
        out = [self.drop(node, "*")]
        out.append(self._filter("", self.host_if[node], ["dst", "0.0.0.0/0"], f"*->{node}"))
        return out

    def undrop(self, rule: Rule) -> None:
        cmd = ["tc", "filter", "del", "dev", rule.dev, "parent", "1:", "prio", str(rule.prio)]
        _run(*(["ip", "netns", "exec", rule.ns] if rule.ns else []), *cmd)

    def netem(self, node: str, dst: str, spec: list[str]) -> Rule:
        """``tc netem`` (e.g. ``["delay", "50ms", "loss", "5%"]``) on ``node``'s packets to
        ``dst`` only: an htb class with a netem leaf and a u32 filter into it."""
        if not self.netem_supported:
            raise NetError("this kernel has no sch_netem (tc qdisc netem is unknown)")
        self._prio += 1
        cls = f"1:{self._prio}"
        ns = self.ns[node]
        self._in(node, "tc", "class", "add", "dev", "eth0", "parent", "1:", "classid", cls,
                 "htb", "rate", "10gbit")  # fmt: skip
        self._in(node, "tc", "qdisc", "add", "dev", "eth0", "parent", cls, "netem", *spec)
        self._in(node, "tc", "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip",
                 "prio", str(self._prio), "u32", "match", "ip", "dst", f"{self.ip[dst]}/32",
                 "flowid", cls)  # fmt: skip
        return Rule(ns, "eth0", self._prio, f"netem {node}->{dst} {' '.join(spec)}")

    def unnetem(self, rule: Rule) -> None:
        self.undrop(rule)
        cls = f"1:{rule.prio}"
        _run("ip", "netns", "exec", rule.ns, "tc", "class", "del", "dev", "eth0", "classid", cls,
             check=False)  # fmt: skip

    def cleanup(self) -> None:
        """Remove every namespace (their veth ends go with them), host veths, sink, bridge."""
        for n in self.nodes:
            _run("ip", "netns", "del", self.ns[n], check=False)
            _run("ip", "link", "del", self.host_if[n], check=False)
        _run("ip", "link", "del", self.sink, check=False)
        _run("ip", "link", "del", self.bridge, check=False)
