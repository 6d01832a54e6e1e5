"""Configuration is validated at start-up whatever its source: a real ``pairq broker``
(and ``pairq lookup``, ``pairq admin``) process refuses a bad ``PAIRQ_*`` value, a bad TOML value or an
unknown TOML key with a message naming the source, before it opens anything; and
``--check-config FILE`` validates without starting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pairq.testing import free_port, wait_for_port


def pairq(
    *argv: str, env: dict[str, str] | None = None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAIRQ_")}
    # A start that is not refused would run until killed: the timeout makes that a failure.
    return subprocess.run(
        [sys.executable, "-m", "pairq", *argv],
        env={**clean, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def broker_args(tmp_path: Path) -> list[str]:
    return ["broker", "--address", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp_path / "d")]


def test_env_value_outside_the_choices_is_refused_at_start_up(tmp_path: Path) -> None:
    out = pairq(*broker_args(tmp_path), env={"PAIRQ_SYNC": "Always"}, cwd=tmp_path)
    assert out.returncode == 2
    assert "pairq broker: PAIRQ_SYNC='Always': must be one of always, periodic" in out.stderr
    assert not (tmp_path / "d").exists()  # refused before the store was opened


def test_toml_value_outside_the_choices_is_refused_at_start_up(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('sync = "sometimes"\n')
    out = pairq(*broker_args(tmp_path), "--config", "config.toml", cwd=tmp_path)
    assert out.returncode == 2
    assert "config.toml: sync = 'sometimes': must be one of always, periodic" in out.stderr
    assert not (tmp_path / "d").exists()


def test_unknown_toml_key_is_refused_at_start_up(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('sycn = "always"\n')
    out = pairq(*broker_args(tmp_path), env={"PAIRQ_CONFIG": str(cfg)}, cwd=tmp_path)
    assert out.returncode == 2
    assert f"{cfg}: unknown option(s) sycn" in out.stderr


def test_the_lookup_refuses_bad_env_and_file_values(tmp_path: Path) -> None:
    cfg = tmp_path / "lookup.toml"
    cfg.write_text('gossip_profile = "lam"\n')
    out = pairq(
        "lookup",
        "--address",
        f"127.0.0.1:{free_port()}",
        "--config",
        str(cfg),
        env={"PAIRQ_LOOKUP_HEARTBEAT_INTERVAL_MS": "fast"},
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "PAIRQ_LOOKUP_HEARTBEAT_INTERVAL_MS='fast': must be an integer" in out.stderr
    assert f"{cfg}: gossip_profile = 'lam': must be one of lan, wan, local" in out.stderr


def test_check_config_good_prints_the_resolved_options(tmp_path: Path) -> None:
    cfg = tmp_path / "broker.toml"
    cfg.write_text(
        'sync = "periodic"\nmax-rdy-count = 7\njoin = ["10.0.0.1:7946"]\n'
        'gossip_address = "0.0.0.0:7946"\n'
    )
    out = pairq("broker", "--check-config", str(cfg), env={"PAIRQ_PAIR": "p1"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"# {cfg}: valid" in out.stdout
    assert f'sync = "periodic"  # from {cfg}' in out.stdout
    assert "max_rdy_count = 7" in out.stdout
    assert 'pair = "p1"  # from PAIRQ_PAIR' in out.stdout
    assert 'address = "127.0.0.1:4150"' in out.stdout  # defaults are listed too
    assert not (tmp_path / "pairq-data").exists()  # nothing started


def test_check_config_bad_exits_2_with_every_error(tmp_path: Path) -> None:
    cfg = tmp_path / "broker.toml"
    cfg.write_text('sync = "sometimes"\nmax_batch = 0\nlease_ms = "long"\n')
    out = pairq("broker", "--check-config", str(cfg), cwd=tmp_path)
    assert out.returncode == 2
    for line in (
        f"{cfg}: sync = 'sometimes': must be one of always, periodic",
        f"{cfg}: max_batch = 0: must be >= 1",
        f"{cfg}: lease_ms = 'long': must be an integer",
        f"{cfg}: invalid configuration",
    ):
        assert line in out.stderr
    assert out.stdout == ""


def test_check_config_of_the_lookup(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('gossip_address = "127.0.0.1:0"\ngossip_advertise = "10.1.1.1:7946"\n')
    out = pairq("lookup", "--check-config", str(good), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f'gossip_advertise = "10.1.1.1:7946"  # from {good}' in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('join = ["h:1"]\n')
    out = pairq("lookup", "--check-config", str(bad), cwd=tmp_path)
    assert out.returncode == 2
    assert "--join needs --gossip-address" in out.stderr


def test_check_config_of_the_admin(tmp_path: Path) -> None:
    good = tmp_path / "admin.toml"
    good.write_text('address = "127.0.0.1:4999"\nlookup = ["10.0.0.1:4160"]\npoll_interval = 0.5\n')
    out = pairq("admin", "--check-config", str(good), env={"PAIRQ_TOKEN": "tok-x"}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"# {good}: valid; the resolved admin options:" in out.stdout
    assert f'lookup = ["10.0.0.1:4160"]  # from {good}' in out.stdout
    assert "# token = '***' (set, not shown)  # from PAIRQ_TOKEN" in out.stdout
    assert "tok-x" not in out.stdout + out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('address = "127.0.0.1"\nlookup = "h:1"\ntimeout = 0\naudit = "a.log"\n')
    out = pairq("admin", "--check-config", str(bad), cwd=tmp_path)
    assert out.returncode == 2
    for line in (
        f"pairq admin: {bad}: unknown option(s) audit",
        f"pairq admin: {bad}: address = '127.0.0.1': must be HOST:PORT",
        f"pairq admin: {bad}: timeout = 0: must be >= 0.01",
        f"pairq admin: {bad}: invalid configuration",
    ):
        assert line in out.stderr
    assert out.stdout == ""
    # no lookup and no broker at all: a rule across fields, checked the same way
    empty = tmp_path / "empty.toml"
    empty.write_text('address = "127.0.0.1:4999"\n')
    out = pairq("admin", "--check-config", str(empty), cwd=tmp_path)
    assert out.returncode == 2 and "needs at least one --lookup or --broker" in out.stderr


def test_the_admin_refuses_a_bad_env_value_before_it_serves(tmp_path: Path) -> None:
    port = free_port()
    out = pairq(
        "admin",
        "--address",
        f"127.0.0.1:{port}",
        env={"PAIRQ_LOOKUP": "127.0.0.1:4160", "PAIRQ_ADMIN_POLL_INTERVAL": "0"},
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "pairq admin: PAIRQ_ADMIN_POLL_INTERVAL='0': must be >= 0.05" in out.stderr


def test_the_admin_serves_from_its_config_file(tmp_path: Path) -> None:
    """A real ``pairq admin --config FILE`` (no other flag) polls the lookup the file
    names and serves /api/; SIGTERM stops it with exit 0."""
    lk, port = free_port(), free_port()
    audit = tmp_path / "audit.log"
    cfg = tmp_path / "admin.toml"
    cfg.write_text(
        f'address = "127.0.0.1:{port}"\nlookup = ["127.0.0.1:{lk}"]\n'
        f'poll_interval = 0.2\naudit_log = "{audit}"\nlog_format = "json"\n'
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAIRQ_")}
    with (tmp_path / "procs.log").open("ab") as log:
        lookup = subprocess.Popen(
            [sys.executable, "-m", "pairq", "lookup", "--address", f"127.0.0.1:{lk}"],
            env=clean,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        admin = subprocess.Popen(
            [sys.executable, "-m", "pairq", "admin", "--config", str(cfg)],
            env=clean,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(lk)
        wait_for_port(port)

        def get(path: str) -> dict:  # type: ignore[type-arg]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return dict(json.loads(r.read()))

        deadline = time.monotonic() + 20
        while get("/api/overview")["lookups_up"] != 1:
            assert time.monotonic() < deadline, "the console sees its lookup within 20 s"
            time.sleep(0.1)  # polling a condition with a deadline
        (seen,) = get("/api/lookups")["lookups"]
        assert seen["address"] == f"127.0.0.1:{lk}" and seen["ok"] is True
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/actions/pause-topic",
            data=json.dumps({"topic": "t", "confirm": True}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError:
            pass  # refused by the empty cluster: audit-logged either way
        assert json.loads(audit.read_text().splitlines()[-1])["action"] == "pause-topic"
        admin.send_signal(signal.SIGTERM)
        assert admin.wait(15) == 0
    finally:
        for p in (admin, lookup):
            if p.poll() is None:
                p.terminate()
            p.wait(15)
    logged = (tmp_path / "procs.log").read_text()
    assert '"logger": "pairq.admin"' in logged  # log_format from the file took effect
