"""Running a server process (``pairq broker``, ``pairq lookup``) the same way.

Options come from flags, ``PAIRQ_*`` and a TOML file (``pairq.options.resolve``)
and are validated before anything starts: every refused value is one line
naming its source, and the exit status is 2; a port in use is one line and exit 1.
Then the server runs until SIGTERM or SIGINT and stops cleanly (exit 0).

``--check-config FILE`` validates FILE (with the environment and any other
flags given) and prints the resolved options, each non-default value with its
source; exit 0 when valid, 2 with the errors otherwise. It never starts anything.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from pairq.cli._flags import add_flags
from pairq.options import OptionsError, resolve_with_sources, to_toml

__all__ = ["add_daemon_flags", "run_daemon", "setup_logging"]


class Stoppable(Protocol):
    async def stop(self) -> None: ...


OptionsT = TypeVar("OptionsT")


def add_daemon_flags(parser: argparse.ArgumentParser, options_cls: type[Any]) -> None:
    """One flag per option (``pairq.options.add_flags``) and ``--check-config FILE``."""
    add_flags(parser, options_cls)
    parser.add_argument(
        "--check-config",
        metavar="FILE",
        default=None,
        help="validate FILE (a TOML config, with the environment and the other flags), print the "
        "resolved options and exit: 0 if valid, 2 with the errors if not; starts nothing",
    )


class JsonFormatter(logging.Formatter):
    """``--log-format json``: one JSON object per record (time in UTC, ISO 8601)."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime
        import json

        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


def _errors(exc: Exception) -> list[str]:
    return exc.errors if isinstance(exc, OptionsError) else [str(exc)]


def run_daemon(
    name: str,
    options_cls: type[OptionsT],
    args: argparse.Namespace,
    start: Callable[[OptionsT], Awaitable[Stoppable]],
) -> int:
    """Resolve and validate ``options_cls``, then run ``start(options)``'s server
    until a signal; ``name`` prefixes the one-line errors (``pairq NAME: ...``)."""
    check = getattr(args, "check_config", None)
    if check:
        args.config = check
    try:
        resolved, sources = resolve_with_sources(options_cls, args)
        opts: Any = resolved.validate()  # type: ignore[attr-defined]
    except (ValueError, OSError) as exc:
        for line in _errors(exc):
            print(f"pairq {name}: {line}", file=sys.stderr)
        if check:
            print(f"pairq {name}: {check}: invalid configuration", file=sys.stderr)
        return 2
    if check:
        print(f"# {check}: valid; the resolved {name} options:")
        print(to_toml(opts, sources))
        return 0
    setup_logging(opts.log_level, getattr(opts, "log_format", "text"))
    try:
        return _run(_serve(start, opts), getattr(opts, "event_loop", "asyncio"))
    except OSError as exc:
        print(f"pairq {name}: {exc}", file=sys.stderr)
        return 1


def _run(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    """``asyncio.run(main)`` on the chosen loop: ``uvloop`` runs the same asyncio code
    on libuv (its loop, transports and timers are C), which took about 10% off the
    brokers' CPU per lone pair publish (benchmarks/README.md)."""
    if event_loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


async def _serve(start: Callable[[Any], Awaitable[Stoppable]], opts: Any) -> int:
    server = await start(opts)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reload = getattr(server, "reload", None)
    if reload is not None:  # SIGHUP: certificates and the auth file, connections stay up
        loop.add_signal_handler(signal.SIGHUP, reload)
    waiters = [asyncio.ensure_future(stop.wait())]
    ended = getattr(server, "wait", None)  # a server that can stop by itself (a broker)
    if ended is not None:
        waiters.append(asyncio.ensure_future(ended()))
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    await server.stop()
    return int(getattr(server, "exit_code", 0))
