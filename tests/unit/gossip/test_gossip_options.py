"""GossipOptions: the one gossip options type of the broker and the lookup, turned
into flags by the same code, and the ``pairq members`` command."""

from __future__ import annotations

import argparse
import base64

import pytest

from pairq.broker.options import BrokerOptions
from pairq.cli._flags import add_flags
from pairq.cli.members import env_keys, register, run_members
from pairq.gossip.config import GossipOptions
from pairq.gossip.node import parse_addr
from pairq.lookup.options import LookupOptions
from pairq.options import OptionsError, resolve

GOSSIP_FLAGS = (
    "--gossip-address",
    "--gossip-advertise",
    "--join",
    "--gossip-key",
    "--gossip-label",
    "--gossip-profile",
)


def parser(cls: type[object] = BrokerOptions) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pairq broker")
    add_flags(p, cls)
    return p


def options(argv: list[str], cls: type[GossipOptions] = BrokerOptions, **env: str) -> GossipOptions:
    return resolve(cls, parser(cls).parse_args(argv), env=env).validate()


@pytest.mark.parametrize("cls", [BrokerOptions, LookupOptions])
def test_gossip_flags_build_a_config(cls: type[GossipOptions]) -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    opts = options(
        [
            "--gossip-address",
            "0.0.0.0:7001",
            "--gossip-advertise",
            "10.0.0.5:7001",
            "--join",
            "10.0.0.1:7946",
            "--join",
            "10.0.0.2:7946",
            "--gossip-key",
            key,
            "--gossip-label",
            "prod",
            "--gossip-profile",
            "wan",
        ],
        cls,
    )
    cfg = opts.gossip_config()
    assert (cfg.bind_host, cfg.bind_port) == ("0.0.0.0", 7001)
    assert (cfg.advertise_host, cfg.advertise_port) == ("10.0.0.5", 7001)
    assert cfg.keys == (bytes(range(32)),) and cfg.label == "prod"
    assert cfg.probe_interval == 5.0  # the wan profile
    assert [parse_addr(j) for j in opts.join] == [("10.0.0.1", 7946), ("10.0.0.2", 7946)]


def test_env_fallbacks_use_each_process_prefix() -> None:
    env = {"PAIRQ_GOSSIP_ADDRESS": "127.0.0.1:0", "PAIRQ_JOIN": "h1:1,h2:2"}
    opts = options([], **env)
    assert opts.gossip_config().bind_port == 0
    assert [parse_addr(j) for j in opts.join] == [("h1", 1), ("h2", 2)]
    lk = resolve(LookupOptions, None, env={"PAIRQ_LOOKUP_GOSSIP_ADVERTISE": "h:9", **env})
    assert lk.gossip_address == "" and lk.join == ()  # the broker's variables are not the lookup's
    assert lk.gossip_advertise == "h:9"
    with pytest.raises(ValueError, match="--gossip-advertise needs --gossip-address"):
        lk.validate()


@pytest.mark.parametrize("cls", [BrokerOptions, LookupOptions])
def test_bad_key_is_refused_naming_its_source(cls: type[GossipOptions]) -> None:
    with pytest.raises(OptionsError, match="16, 24 or 32 bytes") as err:
        options(["--gossip-address", "127.0.0.1:0", "--gossip-key", "not-a-key"], cls)
    assert err.value.errors[0].startswith("--gossip-key=")
    prefix = "PAIRQ_LOOKUP_" if cls is LookupOptions else "PAIRQ_"
    with pytest.raises(OptionsError, match=f"{prefix}GOSSIP_PROFILE='lam': must be one of"):
        options([], cls, **{f"{prefix}GOSSIP_PROFILE": "lam"})
    with pytest.raises(ValueError, match="--join needs --gossip-address"):
        options(["--join", "h:1"], cls)


@pytest.mark.parametrize("cls", [BrokerOptions, LookupOptions])
def test_help_documents_every_gossip_flag_with_default(cls: type[GossipOptions]) -> None:
    text = parser(cls).format_help()
    for flag in GOSSIP_FLAGS:
        assert flag in text
    assert "gossip (SWIM + Lifeguard membership)" in text
    assert "(default: 'lan';" in text


def test_standalone_gossip_options_validate() -> None:
    assert GossipOptions(gossip_address="127.0.0.1:0").validate().gossip_config().bind_port == 0
    with pytest.raises(OptionsError, match="--gossip-address='nope': must be HOST:PORT"):
        GossipOptions(gossip_address="nope").validate()


def test_members_command_registers_and_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser(prog="pairq")
    register(p.add_subparsers(dest="cmd"))
    args = p.parse_args(["members", "--gossip", "127.0.0.1:1", "--json", "--timeout", "0.3"])
    assert args.func is run_members and args.json
    assert run_members(args) == 1  # nothing listens on port 1
    assert "pairq members:" in capsys.readouterr().err


def test_members_bad_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser(prog="pairq")
    register(p.add_subparsers(dest="cmd"))
    with pytest.raises(SystemExit):
        p.parse_args(["members", "--gossip", "h:1", "--gossip-key", "not-a-key"])
    assert "16, 24 or 32 bytes" in capsys.readouterr().err


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


def test_members_reads_the_brokers_key_variable_when_it_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = base64.b64encode(bytes(range(16))).decode()
    assert env_keys({"PAIRQ_GOSSIP_KEY": key}) == [bytes(range(16))]
    assert env_keys({"PAIRQ_GOSSIP_KEYS": f"{key}, {key}"}) == [bytes(range(16))] * 2
    with pytest.raises(ValueError, match="PAIRQ_GOSSIP_KEY='bad': a gossip key is"):
        env_keys({"PAIRQ_GOSSIP_KEY": "bad"})
    # A bad key in the environment fails `pairq members` only, not building the parser.
    monkeypatch.setenv("PAIRQ_GOSSIP_KEY", "bad")
    from pairq.cli import build_parser

    args = build_parser().parse_args(["members", "--gossip", "127.0.0.1:1"])
    assert run_members(args) == 2
    assert "PAIRQ_GOSSIP_KEY='bad'" in capsys.readouterr().err
