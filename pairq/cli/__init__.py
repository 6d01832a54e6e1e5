"""The ``pairq`` command: thin; every subcommand only builds options and runs a library object.

One module per command, imported statically below, so a command whose module
fails to import breaks the whole command loudly instead of vanishing from
``--help``. Each module exposes ``register(subparsers)``, and each parser it
adds sets ``func(args) -> int`` (the exit code). Library packages
(``pairq.broker``, ``pairq.lookup``, ``pairq.gossip``, ``pairq.client``) never
import this package.

Entry points: the console script ``pairq = "pairq.cli:main"``, ``python -m pairq``
and ``python -m pairq.cli``.
"""

from __future__ import annotations

import argparse
import sys

import pairq
from pairq.cli import (
    admin,
    broker,
    channel,
    dev,
    dlq,
    lookup,
    members,
    nodes,
    peek,
    pub,
    scrub,
    stat,
    tail,
    to_file,
    topic,
)

__all__ = ["COMMANDS", "build_parser", "main"]

# In --help order: the daemons, the cluster views, the client tools, the dev cluster.
COMMANDS = (
    broker,
    lookup,
    admin,
    nodes,
    members,
    pub,
    tail,
    stat,
    to_file,
    topic,
    channel,
    peek,
    dlq,
    scrub,
    dev,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pairq",
        description="pairq: NSQ's model with durable, redundant-pair delivery.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"pairq {pairq.__version__}",
        help="print the version",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        code = int(func(args))
        sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`pairq nodes | head -1`): end quietly.
        from pairq.cli._tool import quiet_stdout

        quiet_stdout()
        return 0


if __name__ == "__main__":
    sys.exit(main())
