"""Configuration is validated at start-up whatever its source: a real ``pairq broker``
(and ``pairq lookup``) process refuses a bad ``PAIRQ_*`` value, a bad TOML value or an
unknown TOML key with a message naming the source, before it opens anything; and
``--check-config FILE`` validates without starting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pairq.testing import free_port


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
