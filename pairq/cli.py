"""The ``pairq`` command: thin; every subcommand only builds options and runs a library object.

Subcommand modules expose ``register(subparsers)``; each parser sets
``func(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that add subcommands, in help order. A module missing here (work in
# progress) is skipped rather than breaking the whole command.
_COMMAND_MODULES = (
    "pairq.broker.cli",
    "pairq.lookup.cli",
    "pairq.client.cli",
    "pairq.gossip.cli",
    "pairq.devcluster",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pairq",
        description="pairq: NSQ's model with durable, redundant-pair delivery.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        register = getattr(mod, "register", None) or getattr(mod, "add_members_command", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
