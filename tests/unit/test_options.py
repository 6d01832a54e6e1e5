"""Options: flags > PAIRQ_* env > TOML file > defaults; the example file stays parseable."""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from pairq.broker.options import BrokerOptions
from pairq.cli._flags import add_flags
from pairq.options import resolve

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


# --- one validation, whatever the source -------------------------------------------


def test_a_bad_choice_is_refused_from_every_source_naming_it(tmp_path: Path) -> None:
    from pairq.options import OptionsError

    with pytest.raises(OptionsError) as err:
        resolve(BrokerOptions, parse([]), env={"PAIRQ_SYNC": "Always"})
    assert str(err.value) == "PAIRQ_SYNC='Always': must be one of always, periodic"
    cfg = tmp_path / "config.toml"
    cfg.write_text('sync = "sometimes"\n')
    with pytest.raises(OptionsError) as err:
        resolve(BrokerOptions, parse(["--config", str(cfg)]), env={})
    assert str(err.value) == f"{cfg}: sync = 'sometimes': must be one of always, periodic"
    with pytest.raises(OptionsError) as err:
        resolve(BrokerOptions, parse(["--sync", "Always"]), env={})
    assert str(err.value) == "--sync='Always': must be one of always, periodic"


def test_types_and_ranges_are_checked_for_env_and_file_values(tmp_path: Path) -> None:
    from pairq.options import OptionsError

    cfg = tmp_path / "b.toml"
    cfg.write_text('max_rdy_count = "7"\nmax_batch = 0\nlookup = [1]\nmin_copies = 3\n')
    env = {"PAIRQ_MSG_TIMEOUT_MS": "soon", "PAIRQ_SHUTDOWN_GRACE_S": "-1"}
    with pytest.raises(OptionsError) as err:
        resolve(BrokerOptions, parse(["--config", str(cfg), "--address", "nope"]), env=env)
    assert sorted(err.value.errors) == sorted(
        [
            "--address='nope': must be HOST:PORT",
            "PAIRQ_MSG_TIMEOUT_MS='soon': must be an integer",
            "PAIRQ_SHUTDOWN_GRACE_S='-1': must be >= 0.0",
            f"{cfg}: max_rdy_count = '7': must be an integer",
            f"{cfg}: max_batch = 0: must be >= 1",
            f"{cfg}: lookup = [1]: must be a list of strings",
            f"{cfg}: min_copies = 3: must be one of 1, 2",
        ]
    )


@pytest.mark.parametrize(
    ("word", "value"),
    [("true", True), ("YES", True), ("on", True), ("1", True), ("off", False), ("No", False)],
)
def test_bool_words(word: str, value: bool) -> None:
    from pairq.options import parse_value

    f = next(f for f in dataclasses.fields(SwitchOptions) if f.name == "flag")
    assert parse_value(f, word, text=True) is value


@pytest.mark.parametrize("word", ["treu", "enabled", "2", ""])
def test_other_bool_strings_are_refused(word: str) -> None:
    from pairq.options import OptionsError

    with pytest.raises(OptionsError, match=r"PAIRQ_FLAG=.*must be a bool: one of true, 1, yes, on"):
        resolve(SwitchOptions, None, env={"PAIRQ_FLAG": word})


def test_unknown_keys_and_tables_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text('sync = "always"\nsnyc = "always"\n[gossip]\nkey = 1\n')
    with pytest.raises(ValueError, match=r"unknown option\(s\) gossip, snyc"):
        resolve(BrokerOptions, parse(["--config", str(cfg)]), env={})


def test_a_dataclass_built_in_python_is_held_to_the_same_rules() -> None:
    from pairq.options import OptionsError

    with pytest.raises(OptionsError, match="--sync='Always': must be one of always, periodic"):
        BrokerOptions(sync="Always").validate()
    with pytest.raises(OptionsError, match="--heartbeat-ms must be 10 to a third of --lease-ms"):
        BrokerOptions(heartbeat_ms=400).validate()
    assert BrokerOptions().validate() == BrokerOptions()


def test_sources_and_toml_round_trip(tmp_path: Path) -> None:
    from pairq.options import resolve_with_sources, to_toml

    cfg = tmp_path / "b.toml"
    cfg.write_text('sync = "periodic"\njoin = ["h:1"]\n')
    opts, sources = resolve_with_sources(
        BrokerOptions, parse(["--config", str(cfg), "--max-batch", "5"]), env={"PAIRQ_PAIR": "p"}
    )
    assert sources == {
        "sync": str(cfg),
        "join": str(cfg),
        "max_batch": "--max-batch",
        "pair": "PAIRQ_PAIR",
    }
    text = to_toml(opts, sources)
    assert (
        f'sync = "periodic"  # from {cfg}' in text and "max_batch = 5  # from --max-batch" in text
    )
    again = tmp_path / "again.toml"
    again.write_text(text)
    assert resolve(BrokerOptions, parse(["--config", str(again)]), env={}) == opts


@dataclasses.dataclass(frozen=True)
class SwitchOptions:
    """A tiny options class with a bool, for the bool-parsing rules."""

    flag: bool = dataclasses.field(default=False, metadata={"help": "a switch"})


def test_the_commit_log_size_is_off_or_at_least_64_kib_from_every_source(tmp_path: Path) -> None:
    from pairq.options import OptionsError

    msg = re.escape("must be 0 (no commit log) or at least 65536")
    with pytest.raises(OptionsError, match=r"--commit-log-bytes='?100'?: " + msg):
        resolve(BrokerOptions, parse(["--commit-log-bytes", "100"]), env={})
    with pytest.raises(OptionsError, match="PAIRQ_COMMIT_LOG_BYTES='?4096'?: " + msg):
        resolve(BrokerOptions, parse([]), env={"PAIRQ_COMMIT_LOG_BYTES": "4096"})
    cfg = tmp_path / "b.toml"
    cfg.write_text("commit_log_bytes = 1\n")
    with pytest.raises(OptionsError, match="commit_log_bytes = 1: " + msg):
        resolve(BrokerOptions, parse(["--config", str(cfg)]), env={})
    assert resolve(BrokerOptions, parse(["--commit-log-bytes", "0"]), env={}).commit_log_bytes == 0
    with pytest.raises(OptionsError, match=r"--checkpoint-interval-ms='?5'?: must be >= 10"):
        resolve(BrokerOptions, parse(["--checkpoint-interval-ms", "5"]), env={})
