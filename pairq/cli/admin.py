"""``pairq admin``: build :class:`~pairq.admin.AdminOptions`, run the console until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys

from pairq.admin import Admin, AdminOptions
from pairq.cli._tool import CliError, add_security_args, security

__all__ = ["register"]


def _env_list(name: str) -> list[str]:
    return [a.strip() for a in os.environ.get(name, "").split(",") if a.strip()]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "admin",
        help="run the web console (nodes, pairs, topics, channels, actions) and its JSON API",
        description="Run the pairq web console: it polls every lookup and broker and serves "
        "pages and /api/ JSON; actions (pause, empty, delete, tombstone, peek, dead-letter "
        "redrive and purge, test publish) ask for confirmation and are audit-logged.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--address",
        default=os.environ.get("PAIRQ_ADMIN_ADDRESS", "127.0.0.1:4171"),
        help="HOST:PORT to serve HTTP on (env PAIRQ_ADMIN_ADDRESS)",
    )
    p.add_argument(
        "--lookup",
        action="append",
        metavar="HOST:PORT",
        help="a lookup's gRPC address; repeatable (env PAIRQ_LOOKUP, comma-separated)",
    )
    p.add_argument(
        "--broker",
        action="append",
        metavar="HOST:PORT",
        help="also watch this broker (one no lookup knows); repeatable",
    )
    p.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls")
    p.add_argument("--timeout", type=float, default=1.0, help="per-request deadline, seconds")
    p.add_argument(
        "--audit-log",
        default=os.environ.get("PAIRQ_ADMIN_AUDIT_LOG"),
        metavar="PATH",
        help="append audit lines (JSON) to this file (env PAIRQ_ADMIN_AUDIT_LOG); "
        "they are logged to stderr either way",
    )
    p.add_argument(
        "--auth-file",
        default=os.environ.get("PAIRQ_ADMIN_AUTH_FILE"),
        metavar="PATH",
        help="log console users in with the tokens of this auth file (the brokers' format) and "
        "allow each action only with the permission it needs (env PAIRQ_ADMIN_AUTH_FILE); "
        "without it the console has no login: keep it on loopback or behind a proxy",
    )
    add_security_args(p)
    p.add_argument("--log-level", default="info", help="debug, info, warning or error")
    p.add_argument(
        "--log-format", default="text", choices=("text", "json"), help="one line or one JSON object"
    )
    p.set_defaults(func=run_admin)


def run_admin(args: argparse.Namespace) -> int:
    from pairq.cli._daemon import setup_logging

    setup_logging(str(args.log_level), args.log_format)
    try:
        sec = security(args)
    except CliError as exc:
        print(f"pairq admin: {exc}", file=sys.stderr)
        return 2
    opts = AdminOptions(
        address=args.address,
        lookups=tuple(args.lookup or _env_list("PAIRQ_LOOKUP")),
        brokers=tuple(args.broker or ()),
        poll_interval=args.poll_interval,
        timeout=args.timeout,
        audit_log=args.audit_log,
        auth_file=args.auth_file,
        security=sec,
    )
    try:
        opts.validate()
    except ValueError as exc:
        print(f"pairq admin: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(opts))
    except OSError as exc:
        print(f"pairq admin: cannot serve on {opts.address}: {exc}", file=sys.stderr)
        return 1


async def _serve(opts: AdminOptions) -> int:
    admin = Admin(opts)
    await admin.start()
    print(f"pairq admin listening on {admin.url}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await admin.stop()
    return 0
