"""Options: flags > PAIRQ_* env > TOML file > defaults; the example file stays parseable."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest

from pairq.broker.options import BrokerOptions
from pairq.options import add_flags, resolve

ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_flags(p, BrokerOptions)
    return p.parse_args(argv)


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text('max-rdy-count = 7\nmsg_timeout_ms = 1234\nsync = "periodic"\n')
    args = parse(["--config", str(cfg), "--max-rdy-count", "9"])
    opts = resolve(
        BrokerOptions, args, env={"PAIRQ_MSG_TIMEOUT_MS": "555", "PAIRQ_MAX_ATTEMPTS": "3"}
    )
    assert opts.max_rdy_count == 9  # flag beats file
    assert opts.msg_timeout_ms == 555  # env beats file
    assert opts.sync == "periodic"  # file beats default
    assert opts.max_attempts == 3
    assert opts.max_batch == BrokerOptions().max_batch


def test_unknown_file_key_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text("max_rdy = 7\n")
    with pytest.raises(ValueError, match="unknown option"):
        resolve(BrokerOptions, parse(["--config", str(cfg)]), env={})


def test_example_config_documents_every_option() -> None:
    text = (ROOT / "deploy" / "broker.example.toml").read_text()
    keyline = re.compile(r"^# [a-z_]+ = ")
    uncommented = "\n".join(line[2:] for line in text.splitlines() if keyline.match(line))
    values = tomllib.loads(uncommented)
    opts = BrokerOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    assert opts == BrokerOptions()


def test_help_lists_every_flag_with_default(capsys: pytest.CaptureFixture[str]) -> None:
    from pairq.cli import main

    with pytest.raises(SystemExit):
        main(["broker", "--help"])
    out = capsys.readouterr().out
    for flag in ("--address", "--data-dir", "--sync", "--max-rdy-count", "--max-attempts"):
        assert flag in out
    assert "default: '127.0.0.1:4150'" in out


def test_example_config_is_generated_from_the_options() -> None:
    from pairq.broker.options import example_toml

    assert (ROOT / "deploy" / "broker.example.toml").read_text() == example_toml(), (
        "regenerate: python -m pairq.broker.options > deploy/broker.example.toml"
    )


def test_lookup_reads_its_own_env_prefix_not_the_brokers() -> None:
    from pairq.lookup.options import LookupOptions

    env = {
        "PAIRQ_ADDRESS": "10.0.0.1:4150",
        "PAIRQ_LOOKUP_ADDRESS": "10.0.0.9:4160",
        "PAIRQ_NODE_NAME": "broker-a",
    }
    lk = resolve(LookupOptions, None, env=env)
    assert lk.address == "10.0.0.9:4160" and lk.node_name == ""
    assert resolve(BrokerOptions, None, env=env).address == "10.0.0.1:4150"
    parser = argparse.ArgumentParser()
    add_flags(parser, LookupOptions)
    assert "PAIRQ_LOOKUP_ADDRESS" in parser.format_help()
