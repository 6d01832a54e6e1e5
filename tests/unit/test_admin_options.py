"""``pairq admin`` options: flags > PAIRQ_ADMIN_* (then the old PAIRQ_LOOKUP / PAIRQ_TOKEN)
> TOML file > defaults, one validation whatever the source, errors naming it."""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from pathlib import Path

import pytest

from pairq.admin.options import AdminOptions
from pairq.cli._daemon import add_daemon_flags
from pairq.options import OptionsError, resolve, resolve_with_sources, to_toml

ROOT = Path(__file__).resolve().parents[2]

AUTH = """
[[principal]]
name = "ops"
token_sha256 = "{sha}"
admin = ["*"]
"""


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_daemon_flags(p, AdminOptions)
    return p.parse_args(argv)


def auth_file(tmp_path: Path) -> Path:
    from pairq.security.auth import hash_token

    path = tmp_path / "auth.toml"
    path.write_text(AUTH.format(sha=hash_token("tok-ops-" + "o" * 20)))
    return path


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    cfg = tmp_path / "admin.toml"
    cfg.write_text(
        'address = "127.0.0.1:5000"\nlookup = ["10.0.0.1:4160", "10.0.0.2:4160"]\n'
        "poll-interval = 2.5\ntimeout = 3\n"
    )
    args = parse(["--config", str(cfg), "--poll-interval", "0.5"])
    opts, sources = resolve_with_sources(
        AdminOptions, args, env={"PAIRQ_ADMIN_TIMEOUT": "4", "PAIRQ_ADMIN_LOG_LEVEL": "debug"}
    )
    assert opts.poll_interval == 0.5  # flag beats file
    assert opts.timeout == 4.0  # env beats file
    assert opts.lookup == ("10.0.0.1:4160", "10.0.0.2:4160")  # file beats default
    assert opts.address == "127.0.0.1:5000" and opts.log_level == "debug"
    assert opts.broker == () and opts.log_format == "text"  # defaults
    assert sources == {
        "address": str(cfg),
        "lookup": str(cfg),
        "poll_interval": "--poll-interval",
        "timeout": "PAIRQ_ADMIN_TIMEOUT",
        "log_level": "PAIRQ_ADMIN_LOG_LEVEL",
    }
    assert opts.validate() is opts
    # the file can also be named by PAIRQ_ADMIN_CONFIG (not PAIRQ_CONFIG: the broker's)
    by_env = resolve(AdminOptions, parse([]), env={"PAIRQ_ADMIN_CONFIG": str(cfg)})
    assert by_env.lookup == opts.lookup
    assert resolve(AdminOptions, parse([]), env={"PAIRQ_CONFIG": str(cfg)}) == AdminOptions()


def test_the_old_environment_names_keep_working(tmp_path: Path) -> None:
    auth = auth_file(tmp_path)
    env = {
        "PAIRQ_ADMIN_ADDRESS": "127.0.0.1:4999",
        "PAIRQ_LOOKUP": "10.0.0.1:4160, 10.0.0.2:4160",
        "PAIRQ_ADMIN_AUDIT_LOG": str(tmp_path / "audit.log"),
        "PAIRQ_ADMIN_AUTH_FILE": str(auth),
        "PAIRQ_TOKEN": "tok-cluster",
    }
    opts = resolve(AdminOptions, parse([]), env=env).validate()
    assert opts.address == "127.0.0.1:4999"
    assert opts.lookup == ("10.0.0.1:4160", "10.0.0.2:4160")
    assert opts.audit_log == str(tmp_path / "audit.log")
    assert opts.auth_file == str(auth)
    assert opts.security.token == "tok-cluster" and not opts.security.tls
    # the prefixed names win over the old shared ones; a flag over both
    env |= {"PAIRQ_ADMIN_LOOKUP": "10.0.0.9:4160", "PAIRQ_ADMIN_TOKEN": "tok-admin"}
    opts = resolve(AdminOptions, parse([]), env=env)
    assert opts.lookup == ("10.0.0.9:4160",) and opts.token == "tok-admin"
    opts = resolve(AdminOptions, parse(["--lookup", "h:1", "--lookup", "h:2"]), env=env)
    assert opts.lookup == ("h:1", "h:2")


def test_a_bad_file_reports_every_value_with_its_key(tmp_path: Path) -> None:
    cfg = tmp_path / "admin.toml"
    cfg.write_text(
        'address = "nope"\nlookup = ["h:1", "h"]\npoll_interval = 0\ntimeout = "1"\n'
        'log_level = "loud"\naudit_log = "/nonexistent-dir/audit.log"\n'
        'auth_file = "/nonexistent-auth.toml"\ntls_ca = "/nonexistent-ca.pem"\ncolour = true\n'
    )
    with pytest.raises(OptionsError) as err:
        resolve(AdminOptions, parse(["--config", str(cfg)]), env={})
    assert sorted(err.value.errors) == sorted(
        [
            f"{cfg}: unknown option(s) colour",
            f"{cfg}: address = 'nope': must be HOST:PORT",
            f"{cfg}: lookup = ['h:1', 'h']: must be HOST:PORT",
            f"{cfg}: poll_interval = 0: must be >= 0.05",
            f"{cfg}: timeout = '1': must be a number",
            f"{cfg}: log_level = 'loud': must be one of debug, info, warning, error",
            f"{cfg}: audit_log = '/nonexistent-dir/audit.log': "
            "directory '/nonexistent-dir' does not exist",
            f"{cfg}: auth_file = '/nonexistent-auth.toml': No such file or directory",
            f"{cfg}: tls_ca = '/nonexistent-ca.pem': cannot read: No such file or directory",
        ]
    )


def test_bad_env_and_flag_values_are_named_by_their_source() -> None:
    env = {"PAIRQ_ADMIN_POLL_INTERVAL": "fast", "PAIRQ_LOOKUP": "h:1,nope"}
    with pytest.raises(OptionsError) as err:
        resolve(AdminOptions, parse(["--timeout", "900", "--address", ":4171"]), env=env)
    assert sorted(err.value.errors) == sorted(
        [
            "PAIRQ_ADMIN_POLL_INTERVAL='fast': must be a number",
            "PAIRQ_LOOKUP='h:1,nope': must be HOST:PORT",
            "--timeout='900': must be <= 300.0",
            "--address=':4171': must be HOST:PORT with a host (0.0.0.0 for every interface)",
        ]
    )


def test_rules_across_fields_and_file_contents(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match=r"needs at least one --lookup or --broker"):
        AdminOptions().validate()
    assert AdminOptions(broker=("h:1",)).validate().broker == ("h:1",)
    pem = tmp_path / "c.pem"
    pem.write_text("not a certificate\n")
    with pytest.raises(OptionsError) as err:
        AdminOptions(lookup=("h:1",), tls_cert=str(pem)).validate()
    assert err.value.errors == ["--tls-cert and --tls-key go together"]
    with pytest.raises(OptionsError, match=rf"--tls-ca {pem}: no PEM certificate in it"):
        AdminOptions(lookup=("h:1",), tls_ca=str(pem)).validate()
    bad_auth = tmp_path / "auth.toml"
    bad_auth.write_text('[[principal]]\ntoken_sha256 = "00"\n')
    with pytest.raises(OptionsError) as err:
        resolve(AdminOptions, parse(["--auth-file", str(bad_auth)]), env={})
    assert err.value.errors == [f"--auth-file='{bad_auth}': principal #1: needs a name"]


def test_the_audit_log_must_be_appendable(tmp_path: Path) -> None:
    ok = AdminOptions(lookup=("h:1",), audit_log=str(tmp_path / "new.log"))
    assert ok.validate() is ok  # created at the first action, in a directory that exists
    with pytest.raises(OptionsError, match="is not a regular file"):
        AdminOptions(lookup=("h:1",), audit_log=str(tmp_path)).validate()
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(OptionsError, match="permission denied"):
                AdminOptions(lookup=("h:1",), audit_log=str(ro / "a.log")).validate()
        finally:
            ro.chmod(0o700)


def test_the_token_is_never_printed(tmp_path: Path) -> None:
    opts, sources = resolve_with_sources(
        AdminOptions, parse(["--lookup", "h:1"]), env={"PAIRQ_TOKEN": "tok-secret-1"}
    )
    text = to_toml(opts, sources)
    assert "tok-secret-1" not in text
    assert "# token = '***' (set, not shown)  # from PAIRQ_TOKEN" in text
    with pytest.raises(OptionsError) as err:
        AdminOptions(lookup=("h:1",), token=1234).validate()  # type: ignore[arg-type]
    assert err.value.errors == ["--token='***': must be a string"]
    # what --check-config prints reads back as the same options, but for the token
    again = tmp_path / "again.toml"
    again.write_text(text)
    assert resolve(AdminOptions, parse(["--config", str(again)]), env={}) == opts.replace(token="")


def test_help_names_every_flag_and_its_env_vars(capsys: pytest.CaptureFixture[str]) -> None:
    from pairq.cli import main

    with pytest.raises(SystemExit):
        main(["admin", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--config",
        "--check-config",
        "--address",
        "--lookup",
        "--broker",
        "--poll-interval",
        "--timeout",
        "--audit-log",
        "--auth-file",
        "--token",
        "--tls-ca",
        "--tls-cert",
        "--tls-key",
        "--log-level",
        "--log-format",
    ):
        assert flag in out, flag
    flat = " ".join(out.split())
    assert "env PAIRQ_ADMIN_LOOKUP or PAIRQ_LOOKUP" in flat
    assert "env PAIRQ_ADMIN_TOKEN or PAIRQ_TOKEN" in flat
    assert "default: '127.0.0.1:4171'; env PAIRQ_ADMIN_ADDRESS" in flat


def test_example_config_is_generated_and_holds_the_defaults() -> None:
    from pairq.options import example_toml

    text = (ROOT / "deploy" / "admin.example.toml").read_text()
    assert text == example_toml(AdminOptions, "pairq admin"), (
        "regenerate: python -m pairq.admin.options > deploy/admin.example.toml"
    )
    keyline = re.compile(r"^# [a-z_]+ = ")
    values = tomllib.loads("\n".join(line[2:] for line in text.splitlines() if keyline.match(line)))
    assert (
        AdminOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
        == AdminOptions()
    )
