from __future__ import annotations

import argparse
import base64

import pytest

from pairq.gossip.cli import (
    add_gossip_flags,
    add_members_command,
    config_from_args,
    join_addresses,
    run_members,
)
from pairq.gossip.node import parse_addr


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pairq broker")
    add_gossip_flags(p)
    return p


def test_gossip_flags_build_a_config() -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    args = parser().parse_args(
        [
            "--gossip-address",
            "0.0.0.0:7001",
            "--join",
            "10.0.0.1:7946",
            "--join",
            "10.0.0.2",
            "--gossip-key",
            key,
            "--gossip-label",
            "prod",
            "--gossip-profile",
            "wan",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.bind_host, cfg.bind_port) == ("0.0.0.0", 7001)
    assert cfg.keys == (bytes(range(32)),) and cfg.label == "prod"
    assert cfg.probe_interval == 5.0  # the wan profile
    assert join_addresses(args) == [("10.0.0.1", 7946), ("10.0.0.2", 7946)]


def test_env_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAIRQ_GOSSIP_ADDRESS", "127.0.0.1:0")
    monkeypatch.setenv("PAIRQ_JOIN", "h1:1,h2:2")
    args = parser().parse_args([])
    assert config_from_args(args).bind_port == 0
    assert join_addresses(args) == [("h1", 1), ("h2", 2)]


def test_bad_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--gossip-key", "not-a-key"])
    assert "16, 24 or 32 bytes" in capsys.readouterr().err


def test_help_documents_every_flag_with_default() -> None:
    text = parser().format_help()
    for flag in (
        "--gossip-address",
        "--join",
        "--gossip-key",
        "--gossip-label",
        "--gossip-profile",
    ):
        assert flag in text
    assert "127.0.0.1:7946" in text


def test_members_command_registers_and_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser(prog="pairq")
    add_members_command(p.add_subparsers(dest="cmd"))
    args = p.parse_args(["members", "--gossip", "127.0.0.1:1", "--json", "--timeout", "0.3"])
    assert args.func is run_members and args.json
    assert run_members(args) == 1  # nothing listens on port 1
    assert "pairq members:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [("h:1", ("h", 1)), ("[::1]:5", ("::1", 5)), ("host", ("host", 7946)), (("a", 2), ("a", 2))],
)
def test_parse_addr(text: str | tuple[str, int], expected: tuple[str, int]) -> None:
    assert parse_addr(text) == expected


@pytest.mark.parametrize("text", ["h:0", "h:70000", ":5", "h:x"])
def test_parse_addr_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_addr(text)
