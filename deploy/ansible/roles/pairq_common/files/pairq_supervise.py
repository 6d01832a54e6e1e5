#!/usr/bin/env python3
"""pairq-supervise: run one pairq service without systemd (pairq_common_supervisor: process).

Usage: ``pairq-supervise start|stop|restart|reload|status SPEC.json``. The spec is rendered by
the Ansible roles, as the systemd unit is: ``name``, ``argv``, ``env`` (a dict),
``env_files`` (KEY=VALUE files read at every start), ``pidfile``, ``log``,
``stop_timeout_s``, ``workdir``, optional ``user`` / ``group``.

Rules (the systemd unit's, so that a role behaves the same under either):
- ``start`` is idempotent: a live supervisor for the spec prints ``running`` and exits 0;
  otherwise a detached supervisor (own session, stdio to the log) starts and ``start``
  prints ``started`` once the service process exists.
- The supervisor restarts the service when it exits other than by our stop (Restart=
  on-failure), waiting 1 s, doubling to 30 s while it keeps failing within 10 s.
- ``stop`` sends SIGTERM to the supervisor, which forwards it to the service and waits up to
  ``stop_timeout_s`` before SIGKILL (TimeoutStopSec); ``stop`` returns once both are gone.
- ``reload`` sends SIGHUP to the running service (ExecReload=kill -HUP $MAINPID: brokers
  and lookups re-read their TLS files and auth file without dropping a connection); exit 3
  when it is not running.
- ``status`` prints JSON ``{"running", "supervisor", "pid"}``; exit 0 if running, else 3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _supervisor_pid(spec: dict[str, Any]) -> int:
    pid = _read_pid(Path(spec["pidfile"]))
    if pid and _alive(pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return 0
        if b"pairq-supervise" in cmd or b"pairq_supervise" in cmd:
            return pid
    return 0


def _env(spec: dict[str, Any]) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    for f in spec.get("env_files", []):
        for line in Path(f).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                if v:
                    env[k.strip()] = v.strip()
    env.update({k: str(v) for k, v in spec.get("env", {}).items()})
    return env


def _supervise(spec: dict[str, Any]) -> None:
    """The detached supervisor's loop; returns when stopped."""
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    childfile = Path(spec["pidfile"] + ".child")
    backoff = 1.0
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(
            spec["argv"],
            env=_env(spec),
            cwd=spec.get("workdir") or "/",
            user=spec.get("user") or None,
            group=spec.get("group") or None,
            stdin=subprocess.DEVNULL,
        )
        childfile.write_text(f"{child.pid}\n")
        print(f"pairq-supervise: {spec['name']} started, pid {child.pid}", flush=True)
        deadline = None
        while child.poll() is None:
            if stopping and deadline is None:
                deadline = time.monotonic() + float(spec.get("stop_timeout_s", 30))
            if deadline is not None and time.monotonic() > deadline:
                print(f"pairq-supervise: {spec['name']} stop timeout, SIGKILL", flush=True)
                child.kill()
            time.sleep(0.1)
        rc = child.returncode
        print(f"pairq-supervise: {spec['name']} exited {rc}", flush=True)
        if stopping or rc == 0:
            break
        backoff = 1.0 if time.monotonic() - started > 10 else min(backoff * 2, 30.0)
        slept = 0.0
        while slept < backoff and not stopping:
            time.sleep(0.1)
            slept += 0.1
    childfile.unlink(missing_ok=True)


def start(spec: dict[str, Any]) -> int:
    if _supervisor_pid(spec):
        print("running")
        return 0
    pidfile = Path(spec["pidfile"])
    Path(spec["pidfile"] + ".child").unlink(missing_ok=True)
    if os.fork() == 0:  # detach: new session, stdio to the log, then fork again
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        pidfile.write_text(f"{os.getpid()}\n")
        try:
            _supervise(spec)
        finally:
            pidfile.unlink(missing_ok=True)
            os._exit(0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _supervisor_pid(spec) and _read_pid(Path(spec["pidfile"] + ".child")):
            print("started")
            return 0
        time.sleep(0.05)
    print(f"pairq-supervise: {spec['name']} did not start; see {spec['log']}", file=sys.stderr)
    return 1


def stop(spec: dict[str, Any]) -> int:
    pid = _supervisor_pid(spec)
    if not pid:
        print("not running")
        return 0
    child = _read_pid(Path(spec["pidfile"] + ".child"))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + float(spec.get("stop_timeout_s", 30)) + 10
    while time.monotonic() < deadline:
        if not _alive(pid) and not (child and _alive(child)):
            print("stopped")
            return 0
        time.sleep(0.05)
    print(f"pairq-supervise: {spec['name']} (pid {pid}) did not stop", file=sys.stderr)
    return 1


def reload(spec: dict[str, Any]) -> int:
    child = _read_pid(Path(spec["pidfile"] + ".child")) if _supervisor_pid(spec) else 0
    if not (child and _alive(child)):
        print("not running")
        return 3
    os.kill(child, signal.SIGHUP)
    print("reloaded")
    return 0


def status(spec: dict[str, Any]) -> int:
    pid = _supervisor_pid(spec)
    child = _read_pid(Path(spec["pidfile"] + ".child")) if pid else 0
    running = bool(pid and child and _alive(child))
    print(json.dumps({"running": running, "supervisor": pid, "pid": child if running else 0}))
    return 0 if running else 3


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop", "restart", "reload", "status"):
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    if argv[0] == "start":
        return start(spec)
    if argv[0] == "stop":
        return stop(spec)
    if argv[0] == "restart":
        return stop(spec) or start(spec)
    if argv[0] == "reload":
        return reload(spec)
    return status(spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
