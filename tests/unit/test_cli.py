"""The ``pairq`` command: every command module is imported statically (one that fails
to import breaks the command loudly instead of vanishing from ``--help``), and the
package is the only place argparse commands live."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import pairq
import pairq.cli

ROOT = Path(__file__).resolve().parents[2] / "pairq"
EXPECTED = {
    "broker",
    "lookup",
    "admin",
    "nodes",
    "members",
    "pub",
    "tail",
    "stat",
    "to-file",
    "topic",
    "channel",
    "peek",
    "dlq",
    "scrub",
    "dev",
}


def commands(parser: object) -> set[str]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_every_command_is_registered() -> None:
    assert commands(pairq.cli.build_parser()) == EXPECTED


def test_command_modules_are_imported_statically() -> None:
    tree = ast.parse((ROOT / "cli" / "__init__.py").read_text())
    dynamic = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and n.attr in ("import_module", "__import__")
    ]
    assert not dynamic, "pairq/cli/__init__.py must not import command modules dynamically"
    modules = {p.stem for p in (ROOT / "cli").glob("*.py") if not p.stem.startswith("_")}
    assert {m.__name__.rpartition(".")[2] for m in pairq.cli.COMMANDS} == modules


def test_a_command_that_fails_to_import_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    # A module that raises on import (a missing dependency, a syntax error) must not be
    # skipped: importing the command package fails, so `pairq --help` fails.
    monkeypatch.setitem(sys.modules, "pairq.cli.stat", None)  # import of it raises ImportError
    saved = sys.modules.pop("pairq.cli")
    try:
        with pytest.raises(ImportError, match=r"pairq\.cli\.stat"):
            importlib.import_module("pairq.cli")
    finally:
        sys.modules["pairq.cli"] = saved


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        pairq.cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"pairq {pairq.__version__}"


@pytest.mark.parametrize("module", ["pairq", "pairq.cli"])
def test_python_dash_m(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"pairq {pairq.__version__}"


def test_no_command_line_module_outside_the_cli_package() -> None:
    stray = [
        str(p.relative_to(ROOT.parent))
        for p in ROOT.rglob("cli.py")
        if p.parent.name in ("broker", "lookup", "gossip", "client")
    ]
    assert not stray, f"commands live in pairq/cli/: {stray}"
