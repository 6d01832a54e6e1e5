"""What the client tools (``pub``, ``tail``, ``stat``, ``to-file``, ``dlq``) share.

Every tool takes ``--broker HOST:PORT`` (repeatable; default 127.0.0.1:4150);
``pub``, ``tail``, ``stat`` and ``to-file`` also take ``--lookup HOST:PORT``
(repeatable) to find brokers through lookups instead of (or besides) naming
them. Expected failures (unreachable broker, invalid names, bad input) print one
line to stderr and exit with status 1; bad usage exits with 2 (argparse).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypedDict

import grpc

from pairq.client._channel import DEFAULT_BROKER, BrokerConn, normalize_address
from pairq.client.discovery import Discovery
from pairq.errors import PairqError, UnavailableError
from pairq.security.client import ClientSecurity
from pairq.security.tls import describe_failure
from pairq.v1 import broker_pb2 as pb


class CliError(Exception):
    """An expected failure: printed as one line, exit status 1."""


# -- plumbing ---------------------------------------------------------------------


def lookups(args: argparse.Namespace) -> list[str] | None:
    raw = getattr(args, "lookup", None)
    if not raw:
        return None
    try:
        return list(dict.fromkeys(normalize_address(a) for a in raw))
    except ValueError as exc:
        raise CliError(str(exc)) from None


def brokers_or_none(args: argparse.Namespace) -> list[str] | None:
    """The --broker addresses; None when only lookups were given."""
    if not args.broker and lookups(args):
        return None
    return brokers(args)


def brokers(args: argparse.Namespace) -> list[str]:
    raw = args.broker or [DEFAULT_BROKER]
    try:
        return list(dict.fromkeys(normalize_address(a) for a in raw))
    except ValueError as exc:
        raise CliError(str(exc)) from None


def run_tool(
    name: str, main: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
) -> Callable[[argparse.Namespace], int]:
    def func(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(main(args))
        except BrokenPipeError:  # e.g. `pairq tail | head`: the reader is gone, end quietly
            quiet_stdout()
            return 0
        except CliError as exc:
            err(name, str(exc))
        except PairqError as exc:
            message = exc.message or str(exc)
            hint = describe_failure(message)
            err(name, f"{message} ({hint})" if hint else message)
        except grpc.aio.AioRpcError as exc:
            err(name, rpc_message(exc))
        except (OSError, ValueError) as exc:
            err(name, str(exc))
        return 1

    return func


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush at exit does not
    raise BrokenPipeError again (the recipe of Python's signal docs)."""
    import os

    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def err(name: str, message: str) -> None:
    print(f"pairq {name}: error: {message}", file=sys.stderr)


def rpc_message(exc: grpc.aio.AioRpcError) -> str:
    err = PairqError.from_rpc_error(exc)
    message = err.message or str(exc.code())
    hint = describe_failure(message) if exc.code() == grpc.StatusCode.UNAVAILABLE else ""
    return f"{hint} ({message})" if hint else message


def add_consume_stop_args(p: argparse.ArgumentParser) -> None:
    """-n and --timeout, as every consuming command (tail, to-file) takes them."""
    p.add_argument(
        "-n",
        type=int,
        default=0,
        metavar="N",
        help="exit after N messages (0: run until interrupted)",
    )
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for a broker to answer at start"
    )


def security(args: argparse.Namespace) -> ClientSecurity:
    """The token and TLS files of a client command (``--token``/``PAIRQ_TOKEN``, ``--tls-*``)."""
    try:
        return ClientSecurity(
            getattr(args, "token", None) or os.environ.get("PAIRQ_TOKEN", ""),
            getattr(args, "tls_cert", "") or "",
            getattr(args, "tls_key", "") or "",
            getattr(args, "tls_ca", "") or "",
        )
    except ValueError as exc:
        raise CliError(str(exc).replace("tls_", "--tls-")) from None


class SecurityKwargs(TypedDict):
    token: str
    tls_cert: str
    tls_key: str
    tls_ca: str


def client_kwargs(args: argparse.Namespace) -> SecurityKwargs:
    """``security(args)`` as Producer/Consumer keyword arguments."""
    s = security(args)
    return {"token": s.token, "tls_cert": s.tls_cert, "tls_key": s.tls_key, "tls_ca": s.tls_ca}


def add_security_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--token",
        metavar="TOKEN",
        help="bearer token for brokers and lookups with an --auth-file (default: $PAIRQ_TOKEN)",
    )
    p.add_argument(
        "--tls-ca", metavar="FILE", help="PEM CA that signed the servers' certificates (TLS on)"
    )
    p.add_argument(
        "--tls-cert", metavar="FILE", help="PEM client certificate for mTLS (with --tls-key)"
    )
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")


def add_broker_arg(p: argparse.ArgumentParser, *, lookup: bool = False) -> None:
    add_security_args(p)
    p.add_argument(
        "--broker",
        action="append",
        metavar="HOST:PORT",
        help=f"broker gRPC address; repeat for several (default: {DEFAULT_BROKER}, "
        "unless --lookup is given)",
    )
    if lookup:
        p.add_argument(
            "--lookup",
            action="append",
            metavar="HOST:PORT",
            help="lookup gRPC address to find brokers through; repeat for several",
        )
        p.add_argument(
            "--lookup-poll-interval",
            type=float,
            default=15.0,
            metavar="SECONDS",
            help="how often to ask the lookups again, seconds",
        )


async def check_lookups(
    lookups: list[str], topic: str, timeout: float, sec: ClientSecurity | None = None
) -> None:
    """Fail with one clear line when no lookup answers."""
    async with Discovery(lookups, timeout=timeout, security=sec) as d:
        try:
            await d.brokers_for_topic(topic)
        except UnavailableError as exc:
            raise CliError(exc.message) from None


async def unary(conn: BrokerConn, method: str, request: Any, timeout: float) -> Any:
    try:
        return await getattr(conn.get_stub(), method)(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise CliError(f"cannot reach broker {conn.address}: {rpc_message(exc)}") from None
        raise CliError(f"broker {conn.address}: {rpc_message(exc)}") from None


async def check_reachable(
    brokers: Sequence[str], timeout: float, sec: ClientSecurity | None = None
) -> None:
    """Fail with one clear line when no broker answers (consumers would retry forever)."""
    conns = [BrokerConn(a, security=sec) for a in brokers]
    errors = []
    try:
        for c in conns:
            try:
                await unary(c, "GetStats", pb.GetStatsRequest(topic="-", no_clients=True), timeout)
                return
            except CliError as exc:
                if "cannot reach" not in str(exc):
                    return  # it answered (e.g. NOT_FOUND): reachable
                errors.append(str(exc))
        raise CliError("; ".join(errors))
    finally:
        for c in conns:
            await c.close()


def stop_event() -> asyncio.Event:
    """An event set by SIGINT/SIGTERM (graceful stop for long-running tools)."""
    ev = asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, ev.set)
    return ev


async def until(stop: asyncio.Event, aw: Awaitable[Any]) -> None:
    """Run ``aw`` until it ends or ``stop`` is set."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones and ones the help text already states."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


async def topic_brokers(args: argparse.Namespace, topic: str, timeout: float) -> list[str]:
    """The brokers an admin verb on ``topic`` goes to: every ``--broker``, plus with
    ``--lookup`` every broker not answered dead of every pair holding the topic
    (both halves of a pair keep their own pause flags, queues and dead letters)."""
    addresses = list(brokers_or_none(args) or [])
    lk = lookups(args)
    if lk:
        async with Discovery(lk, timeout=timeout, security=security(args)) as d:
            try:
                pairs = await d.brokers_for_topic(topic)
            except UnavailableError as exc:
                raise CliError(exc.message) from None
        addresses += [b.address for p in pairs for b in p.brokers if b.alive]
        if not addresses:
            raise CliError(f"the lookups know no live broker holding topic {topic!r}")
    return list(dict.fromkeys(addresses))


async def on_each(
    addresses: Sequence[str],
    method: str,
    request: Any,
    timeout: float,
    sec: ClientSecurity | None = None,
) -> list[tuple[str, Any]]:
    """Call ``method`` on every broker, in order; (address, answer) of each.
    The first failure ends the command with that broker named."""
    out = []
    for a in addresses:
        conn = BrokerConn(a, security=sec)
        try:
            out.append((conn.address, await unary(conn, method, request, timeout)))
        finally:
            await conn.close()
    return out
