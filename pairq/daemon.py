"""Running a server process (``pairq broker``, ``pairq lookup``) the same way.

Options come from flags, ``PAIRQ_*`` and a TOML file (``pairq.options.resolve``);
a bad option is one line and exit 2, a port in use one line and exit 1; then
the server runs until SIGTERM or SIGINT and stops cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from pairq.options import resolve


class Stoppable(Protocol):
    async def stop(self) -> None: ...


OptionsT = TypeVar("OptionsT")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_daemon(
    name: str,
    options_cls: type[OptionsT],
    args: argparse.Namespace,
    start: Callable[[OptionsT], Awaitable[Stoppable]],
) -> int:
    """Resolve and validate ``options_cls``, then run ``start(options)``'s server
    until a signal; ``name`` prefixes the one-line errors (``pairq NAME: ...``)."""
    try:
        opts: Any = resolve(options_cls, args).validate()  # type: ignore[attr-defined]
    except (ValueError, OSError) as exc:
        print(f"pairq {name}: {exc}", file=sys.stderr)
        return 2
    setup_logging(opts.log_level)
    try:
        return asyncio.run(_serve(start, opts))
    except OSError as exc:
        print(f"pairq {name}: {exc}", file=sys.stderr)
        return 1


async def _serve(start: Callable[[Any], Awaitable[Stoppable]], opts: Any) -> int:
    server = await start(opts)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    return 0
