"""Client command-line tools: ``pairq pub``, ``tail``, ``stat``, ``to-file`` and ``dlq``.

``register(subparsers)`` adds them to the ``pairq`` command. Every tool takes
``--broker HOST:PORT`` (repeatable; default 127.0.0.1:4150); ``pub``, ``tail``,
``stat`` and ``to-file`` also take ``--lookup HOST:PORT`` (repeatable) to find
brokers through lookups instead of (or besides) naming them. Expected failures
(unreachable broker, invalid names, bad input) print one line to stderr and
exit with status 1; bad usage exits with 2 (argparse).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import grpc

from pairq.client._channel import DEFAULT_BROKER, BrokerConn, normalize_address
from pairq.client._policy import check_channel, check_topic
from pairq.client.consumer import Consumer
from pairq.client.discovery import Discovery
from pairq.client.message import Message
from pairq.client.producer import Producer
from pairq.errors import PairqError, UnavailableError
from pairq.v1 import broker_pb2 as pb

__all__ = ["register"]


class CliError(Exception):
    """An expected failure: printed as one line, exit status 1."""


# -- plumbing ---------------------------------------------------------------------


def _lookups(args: argparse.Namespace) -> list[str] | None:
    raw = getattr(args, "lookup", None)
    if not raw:
        return None
    try:
        return list(dict.fromkeys(normalize_address(a) for a in raw))
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _brokers_or_none(args: argparse.Namespace) -> list[str] | None:
    """The --broker addresses; None when only lookups were given."""
    if not args.broker and _lookups(args):
        return None
    return _brokers(args)


def _brokers(args: argparse.Namespace) -> list[str]:
    raw = args.broker or [DEFAULT_BROKER]
    try:
        return list(dict.fromkeys(normalize_address(a) for a in raw))
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _run(
    name: str, main: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
) -> Callable[[argparse.Namespace], int]:
    def func(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(main(args))
        except CliError as exc:
            _err(name, str(exc))
        except PairqError as exc:
            _err(name, exc.message or str(exc))
        except grpc.aio.AioRpcError as exc:
            _err(name, _rpc_message(exc))
        except (OSError, ValueError) as exc:
            _err(name, str(exc))
        except BrokenPipeError:  # pragma: no cover - e.g. `pairq tail | head`
            return 0
        return 1

    return func


def _err(name: str, message: str) -> None:
    print(f"pairq {name}: error: {message}", file=sys.stderr)


def _rpc_message(exc: grpc.aio.AioRpcError) -> str:
    err = PairqError.from_rpc_error(exc)
    return err.message or str(exc.code())


def _add_consume_stop_args(p: argparse.ArgumentParser) -> None:
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


def _add_broker_arg(p: argparse.ArgumentParser, *, lookup: bool = False) -> None:
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


async def _check_lookups(lookups: list[str], topic: str, timeout: float) -> None:
    """Fail with one clear line when no lookup answers."""
    async with Discovery(lookups, timeout=timeout) as d:
        try:
            await d.brokers_for_topic(topic)
        except UnavailableError as exc:
            raise CliError(exc.message) from None


async def _unary(conn: BrokerConn, method: str, request: Any, timeout: float) -> Any:
    try:
        return await getattr(conn.get_stub(), method)(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise CliError(f"cannot reach broker {conn.address}: {_rpc_message(exc)}") from None
        raise CliError(f"broker {conn.address}: {_rpc_message(exc)}") from None


async def _check_reachable(brokers: Sequence[str], timeout: float) -> None:
    """Fail with one clear line when no broker answers (consumers would retry forever)."""
    conns = [BrokerConn(a) for a in brokers]
    errors = []
    try:
        for c in conns:
            try:
                await _unary(c, "GetStats", pb.GetStatsRequest(topic="-", no_clients=True), timeout)
                return
            except CliError as exc:
                if "cannot reach" not in str(exc):
                    return  # it answered (e.g. NOT_FOUND): reachable
                errors.append(str(exc))
        raise CliError("; ".join(errors))
    finally:
        for c in conns:
            await c.close()


def _stop_event() -> asyncio.Event:
    """An event set by SIGINT/SIGTERM (graceful stop for long-running tools)."""
    ev = asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, ev.set)
    return ev


async def _until(stop: asyncio.Event, aw: Awaitable[Any]) -> None:
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


# -- pub --------------------------------------------------------------------------


def _parse_headers(raw: list[str] | None) -> dict[str, str] | None:
    if not raw:
        return None
    out = {}
    for h in raw:
        k, sep, v = h.partition("=")
        if not sep or not k:
            raise CliError(f"invalid header {h!r}: expected KEY=VALUE")
        out[k] = v
    return out


async def _pub(args: argparse.Namespace) -> int:
    check_topic(args.topic)
    headers = _parse_headers(args.header)
    # One batch in flight at a time keeps stdin lines in order.
    async with Producer(
        _brokers_or_none(args),
        lookups=_lookups(args),
        lookup_poll_interval=args.lookup_poll_interval,
        retry_timeout=args.timeout,
        max_batches_in_flight=1,
    ) as producer:
        if args.body is not None:
            ack = await producer.publish(
                args.topic, args.body.encode(), headers=headers, defer_ms=args.defer_ms
            )
            print(f"published 1 message to {args.topic}: id {ack.id.hex()}, copies {ack.copies}")
            return 0
        return await _pub_stdin(producer, args, headers)


async def _pub_stdin(
    producer: Producer, args: argparse.Namespace, headers: dict[str, str] | None
) -> int:
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=10_000)
    stdin = sys.stdin.buffer

    def reader() -> None:  # a thread: stdin may be a slow pipe
        try:
            for line in stdin:
                asyncio.run_coroutine_threadsafe(lines.put(line), loop).result()
        finally:
            asyncio.run_coroutine_threadsafe(lines.put(None), loop).result()

    threading.Thread(target=reader, name="pairq-pub-stdin", daemon=True).start()
    outstanding: set[asyncio.Future[Any]] = set()
    failures: list[BaseException] = []
    count = 0
    limit = asyncio.Semaphore(args.max_outstanding)

    async def one(body: bytes) -> None:
        try:
            await producer.publish(args.topic, body, headers=headers, defer_ms=args.defer_ms)
        except Exception as exc:
            failures.append(exc)
        finally:
            limit.release()

    while True:
        line = await lines.get()
        if line is None:
            break
        body = line.rstrip(b"\r\n")
        if not body:
            continue
        if failures:
            break
        await limit.acquire()
        task = asyncio.ensure_future(one(body))
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
        count += 1
    if outstanding:
        await asyncio.gather(*outstanding)
    if failures:
        exc = failures[0]
        msg = exc.message if isinstance(exc, PairqError) else str(exc)
        raise CliError(f"{len(failures)} of {count} publishes failed: {msg}")
    print(f"published {count} messages to {args.topic}", file=sys.stderr)
    return 0


# -- tail -------------------------------------------------------------------------


def _message_json(msg: Message) -> str:
    body = msg.body
    obj: dict[str, Any] = {"id": msg.id.hex()}
    try:
        obj["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        obj["body_base64"] = base64.b64encode(body).decode("ascii")
    obj["headers"] = msg.headers
    obj["attempts"] = msg.attempts
    obj["timestamp"] = msg.timestamp
    obj["timestamp_ns"] = msg.timestamp_ns
    obj["broker_id"] = msg.broker_id
    return json.dumps(obj, ensure_ascii=False)


async def _tail(args: argparse.Namespace) -> int:
    check_topic(args.topic)
    channel = args.channel or f"tail{secrets.randbelow(1_000_000):06d}#ephemeral"
    check_channel(channel)
    brokers, lookups = _brokers_or_none(args), _lookups(args)
    if brokers:
        await _check_reachable(brokers, args.timeout)
    if lookups:
        await _check_lookups(lookups, args.topic, args.timeout)
    out = sys.stdout
    stop = _stop_event()
    limit = args.n
    count = 0
    mif = min(200, limit) if limit else 200
    consumer = Consumer(
        args.topic,
        channel,
        brokers,
        lookups=lookups,
        lookup_poll_interval=args.lookup_poll_interval,
        max_in_flight=mif,
    )

    async def loop() -> None:
        nonlocal count
        async for msg in consumer.messages():
            if limit and count >= limit:
                msg.requeue(0)
                continue
            if args.json:
                out.write(_message_json(msg) + "\n")
            else:
                out.buffer.write(msg.body + b"\n")
            msg.finish()
            count += 1
            if limit and count >= limit:
                out.flush()
                stop.set()
            elif not consumer._queue:
                out.flush()

    async with consumer:
        await _until(stop, loop())
    out.flush()
    return 0


# -- stat -------------------------------------------------------------------------

_STAT_COLUMNS = (
    "depth",
    "in_flight",
    "deferred",
    "requeued",
    "timed_out",
    "dead",
    "msgs/s",
    "finished",
    "clients",
)


def _merge_stats(
    responses: list[Any], topic: str, channel: str
) -> dict[tuple[str, str], dict[str, int]]:
    rows: dict[tuple[str, str], dict[str, int]] = {}
    for resp in responses:
        for t in resp.topics:
            if topic and t.name != topic:
                continue
            trow = rows.setdefault((t.name, ""), dict.fromkeys(_STAT_COLUMNS, 0))
            trow["depth"] += t.depth
            trow["count"] = trow.get("count", 0) + t.message_count
            for c in t.channels:
                if channel and c.name != channel:
                    continue
                row = rows.setdefault((t.name, c.name), dict.fromkeys(_STAT_COLUMNS, 0))
                row["depth"] += c.depth
                row["in_flight"] += c.in_flight
                row["deferred"] += c.deferred
                row["requeued"] += c.requeued
                row["timed_out"] += c.timed_out
                row["dead"] += c.dead_lettered
                row["finished"] += c.finished
                row["clients"] += len(c.clients)
                row["count"] = row.get("count", 0) + c.message_count
    return rows


def _format_table(
    rows: dict[tuple[str, str], dict[str, int]],
    prev: dict[tuple[str, str], dict[str, int]] | None,
    elapsed: float,
) -> str:
    header = ["topic", "channel", *_STAT_COLUMNS]
    lines = [header]
    for key in sorted(rows):
        row = rows[key]
        rate = ""
        if prev is not None and key in prev and elapsed > 0:
            rate = f"{(row.get('count', 0) - prev[key].get('count', 0)) / elapsed:.0f}"
        cells = [key[0], key[1] or "-"]
        for col in _STAT_COLUMNS:
            if col == "msgs/s":
                cells.append(rate or "-")
            elif key[1] == "" and col not in ("depth",):
                cells.append("")
            else:
                cells.append(str(row[col]))
        lines.append(cells)
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in lines
    )


def _pair_line(address: str, r: Any) -> str:
    """One line of pair health for a broker's GetStats answer."""
    p = r.pair
    if p.solo:
        lease = "solo (took over its partner)"
    elif p.lease_remaining_ms:
        lease = f"lease {p.lease_remaining_ms} ms"
    else:
        lease = "lease LAPSED (not delivering)"
    repl = f"up ({p.link})" if p.connected and p.link else "up" if p.connected else "DOWN"
    back = "up" if p.partner_connected else "DOWN"
    return (
        f"    pair {p.pair} {r.broker_id}@{address} <-> {p.partner_id or '?'}@{p.partner_address}: "
        f"replication {repl}/{back}, {lease}, epoch {p.epoch}, "
        f"1-copy (lag) {p.replication_lag}, standby {p.standby_messages}, "
        f"min-copies {p.min_copies}, takeovers {p.takeovers}"
        + (f", re-filling partner: {p.refill_sending} to send" if p.refill_sending else "")
        + (f", being re-filled: {p.refill_receiving} to come" if p.refill_receiving else "")
    )


async def _stat(args: argparse.Namespace) -> int:
    if args.topic:
        check_topic(args.topic)
    if args.channel:
        if not args.topic:
            raise CliError("--channel needs --topic")
        check_channel(args.channel)
    addresses = list(_brokers_or_none(args) or [])
    lookups = _lookups(args)
    if lookups:
        async with Discovery(lookups, timeout=args.timeout) as d:
            try:
                nodes = await d.nodes()
            except UnavailableError as exc:
                raise CliError(exc.message) from None
        addresses += [n.address for n in nodes if n.liveness != "dead"]
        if not addresses:
            raise CliError("the lookups know no live broker")
    conns = [BrokerConn(a) for a in dict.fromkeys(addresses)]
    prev: dict[tuple[str, str], dict[str, int]] | None = None
    prev_t = 0.0
    n = 0
    stop = _stop_event()
    try:
        while True:
            req = pb.GetStatsRequest(
                topic=args.topic or "", channel=args.channel or "", no_clients=False
            )
            responses = []
            for c in conns:
                responses.append(await _unary(c, "GetStats", req, args.timeout))
            now = time.monotonic()
            rows = _merge_stats(responses, args.topic or "", args.channel or "")
            stamp = datetime.datetime.now().strftime("%H:%M:%S")
            health = ", ".join(f"{r.broker_id}:{r.health}" for r in responses)
            print(f"--- {stamp}  brokers {health}")
            for c, r in zip(conns, responses, strict=True):
                if r.HasField("pair"):
                    print(_pair_line(c.address, r))
            print(_format_table(rows, prev, now - prev_t) if rows else "(no topics)", flush=True)
            prev, prev_t = rows, now
            n += 1
            if args.count and n >= args.count:
                return 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.interval)
            if stop.is_set():
                return 0
    finally:
        for c in conns:
            await c.close()


# -- to-file ----------------------------------------------------------------------


class _RotatingFile:
    """Writes to ``.NAME.tmp`` in the work dir; on rotation fsyncs and renames into the output dir."""

    def __init__(
        self,
        topic: str,
        output_dir: Path,
        work_dir: Path,
        *,
        rotate_bytes: int,
        rotate_interval: float,
    ) -> None:
        self.topic = topic
        self.output_dir = output_dir
        self.work_dir = work_dir
        self.rotate_bytes = rotate_bytes
        self.rotate_interval = rotate_interval
        self.host = socket.gethostname().split(".")[0]
        self.fh: Any = None
        self.final_name = ""
        self.tmp_path: Path | None = None
        self.size = 0
        self.opened_at = 0.0
        self.seq = 0
        self.completed: list[Path] = []

    def _open(self) -> None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
        while True:
            self.seq += 1
            self.final_name = f"{self.topic}.{self.host}.{stamp}.{os.getpid()}.{self.seq}.log"
            if not (self.output_dir / self.final_name).exists():
                break
        self.tmp_path = self.work_dir / f".{self.final_name}.tmp"
        self.fh = open(self.tmp_path, "ab")
        self.size = 0
        self.opened_at = time.monotonic()

    def write_and_sync(self, bodies: list[bytes]) -> None:
        """Append ``bodies`` (one line each) and fsync; rotate first if due."""
        if self.fh is not None and self.due():
            self.rotate()
        if self.fh is None:
            self._open()
        data = b"".join(b + b"\n" for b in bodies)
        self.fh.write(data)
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.size += len(data)

    def due(self) -> bool:
        if self.fh is None:
            return False
        if self.rotate_bytes and self.size >= self.rotate_bytes:
            return True
        return bool(
            self.rotate_interval and time.monotonic() - self.opened_at >= self.rotate_interval
        )

    def rotate(self) -> None:
        """Close the current file and move it to its final name (durably)."""
        if self.fh is None:
            return
        fh, self.fh = self.fh, None
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        assert self.tmp_path is not None
        final = self.output_dir / self.final_name
        if self.size == 0:
            self.tmp_path.unlink(missing_ok=True)
            return
        os.replace(self.tmp_path, final)
        for d in {self.output_dir, self.work_dir}:
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.completed.append(final)


async def _to_file(args: argparse.Namespace) -> int:
    check_topic(args.topic)
    check_channel(args.channel)
    out_dir = Path(args.output_dir)
    work_dir = Path(args.work_dir) if args.work_dir else out_dir
    for d in (out_dir, work_dir):
        await asyncio.to_thread(d.mkdir, parents=True, exist_ok=True)
    brokers, lookups = _brokers_or_none(args), _lookups(args)
    if brokers:
        await _check_reachable(brokers, args.timeout)
    if lookups:
        await _check_lookups(lookups, args.topic, args.timeout)
    rf = _RotatingFile(
        args.topic,
        out_dir,
        work_dir,
        rotate_bytes=args.rotate_bytes,
        rotate_interval=args.rotate_interval,
    )
    stop = _stop_event()
    mif = args.max_in_flight
    consumer = Consumer(
        args.topic,
        args.channel,
        brokers,
        lookups=lookups,
        lookup_poll_interval=args.lookup_poll_interval,
        max_in_flight=mif,
    )
    pending: list[Message] = []
    written = 0
    limit = args.n
    lock = asyncio.Lock()

    async def sync_pending() -> None:
        nonlocal written
        async with lock:
            batch = pending[:]
            pending.clear()
            if batch:
                await asyncio.to_thread(rf.write_and_sync, [m.body for m in batch])
            elif rf.due():
                await asyncio.to_thread(rf.rotate)
            for m in batch:
                m.finish()  # only now: the data is on disk
            written += len(batch)
            if limit and written >= limit:
                stop.set()

    async def timer() -> None:
        # A trickle of messages is still written (and FIN'd) promptly, and an
        # idle file is still rotated on time.
        while True:
            await asyncio.sleep(args.sync_interval)
            await sync_pending()

    taken = 0

    async def loop() -> None:
        nonlocal taken
        async for msg in consumer.messages():
            if limit and taken >= limit:
                msg.requeue(0)
                continue
            pending.append(msg)
            taken += 1
            if len(pending) >= max(1, mif // 4) or (limit and taken >= limit):
                await sync_pending()

    async with consumer:
        ticker = asyncio.ensure_future(timer())
        try:
            await _until(stop, loop())
            await sync_pending()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            for m in pending:
                m.requeue(0)
            await asyncio.to_thread(rf.rotate)
    print(f"wrote {written} messages to {out_dir}", file=sys.stderr)
    return 0


# -- dlq --------------------------------------------------------------------------


async def _dlq(args: argparse.Namespace) -> int:
    check_topic(args.topic)
    check_channel(args.channel)
    conns = [BrokerConn(a) for a in _brokers(args)]
    try:
        if args.action == "list":
            return await _dlq_list(args, conns)
        return await _dlq_replay(args, conns)
    finally:
        for c in conns:
            await c.close()


async def _dlq_list(args: argparse.Namespace, conns: list[BrokerConn]) -> int:
    total = 0
    shown = 0
    for c in conns:
        resp = await _unary(
            c,
            "ListDeadLetters",
            pb.ListDeadLettersRequest(topic=args.topic, channel=args.channel, limit=args.limit),
            args.timeout,
        )
        total += resp.total
        for m in resp.messages:
            shown += 1
            if args.json:
                obj = {
                    "id": m.id.hex(),
                    "attempts": m.attempts,
                    "timestamp_ns": m.timestamp_ns,
                    "broker": c.address,
                    "headers": dict(m.headers),
                }
                try:
                    obj["body"] = m.body.decode("utf-8")
                except UnicodeDecodeError:
                    obj["body_base64"] = base64.b64encode(m.body).decode("ascii")
                print(json.dumps(obj, ensure_ascii=False))
            else:
                body = m.body[:60].decode("utf-8", "backslashreplace")
                more = "..." if len(m.body) > 60 else ""
                print(f"{m.id.hex()}  attempts={m.attempts}  {body}{more}")
    print(f"{total} dead-lettered in {args.topic}/{args.channel} ({shown} shown)", file=sys.stderr)
    return 0


async def _dlq_replay(args: argparse.Namespace, conns: list[BrokerConn]) -> int:
    ids: list[bytes] = []
    for h in args.id or []:
        try:
            b = bytes.fromhex(h)
        except ValueError:
            raise CliError(f"invalid --id {h!r}: expected 32 hex digits") from None
        if len(b) != 16:
            raise CliError(f"invalid --id {h!r}: expected 32 hex digits")
        ids.append(b)
    replayed = 0
    for c in conns:
        resp = await _unary(
            c,
            "ReplayDeadLetters",
            pb.ReplayDeadLettersRequest(topic=args.topic, channel=args.channel, ids=ids),
            args.timeout,
        )
        replayed += resp.replayed
    print(f"replayed {replayed} messages into {args.topic}/{args.channel}")
    return 0


# -- registration -----------------------------------------------------------------


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones and ones the help text already states."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def register(subparsers: Any) -> None:
    """Add ``pub``, ``tail``, ``stat``, ``to-file`` and ``dlq`` to the ``pairq`` command."""
    fmt = _HelpFormatter

    p = subparsers.add_parser(
        "pub",
        help="publish a message, or every line of stdin",
        formatter_class=fmt,
        description="Publish BODY to TOPIC; without BODY every stdin line is a message (batched).",
    )
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument(
        "body",
        metavar="BODY",
        nargs="?",
        help="message body (utf-8); omit to read lines from stdin",
    )
    p.add_argument(
        "--header", action="append", metavar="KEY=VALUE", help="message header (repeatable)"
    )
    p.add_argument(
        "--defer-ms", type=int, default=0, help="deliver no earlier than this many ms from now"
    )
    p.add_argument(
        "--max-outstanding", type=int, default=5000, help="stdin mode: publishes in flight at once"
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, help="give up after retrying this many seconds"
    )
    _add_broker_arg(p, lookup=True)
    p.set_defaults(func=_run("pub", _pub))

    p = subparsers.add_parser(
        "tail",
        help="print messages of a topic as they arrive",
        formatter_class=fmt,
        description="Consume TOPIC and print each message body (or JSON with --json). "
        "Uses a new ephemeral channel unless --channel is given.",
    )
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--channel", help="channel to consume (default: a random tailNNNNNN#ephemeral)")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per message: id (hex), body "
        "(utf-8, or body_base64), headers, attempts, timestamp (Unix s), timestamp_ns, broker_id",
    )
    _add_consume_stop_args(p)
    _add_broker_arg(p, lookup=True)
    p.set_defaults(func=_run("tail", _tail))

    p = subparsers.add_parser(
        "stat",
        help="live table of topic and channel statistics",
        formatter_class=fmt,
        description="Poll GetStats on every broker and print a table (summed over brokers); "
        "msgs/s is the delivery rate since the previous table.",
    )
    p.add_argument("--topic", help="only this topic")
    p.add_argument("--channel", help="only this channel (needs --topic)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between tables")
    p.add_argument(
        "--count", type=int, default=0, help="print this many tables, then exit (0: forever)"
    )
    p.add_argument("--timeout", type=float, default=5.0, help="per-request deadline, seconds")
    _add_broker_arg(p, lookup=True)
    p.set_defaults(func=_run("stat", _stat))

    p = subparsers.add_parser(
        "to-file",
        help="write a topic's messages to rotating files",
        formatter_class=fmt,
        description="Consume TOPIC and append each body as a line to a file in --output-dir. "
        "Data goes to a hidden .tmp file first and is fsynced before the messages "
        "are FIN'd; on rotation the file is renamed to "
        "TOPIC.HOST.TIME.PID.SEQ.log.",
    )
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--output-dir", required=True, help="directory for finished files")
    p.add_argument(
        "--work-dir",
        help="directory for the file being written (default: --output-dir; same filesystem)",
    )
    p.add_argument("--channel", default="pairq_to_file", help="channel to consume")
    p.add_argument(
        "--rotate-bytes",
        type=int,
        default=100 * 1024 * 1024,
        help="rotate after this many bytes (0: never)",
    )
    p.add_argument(
        "--rotate-interval",
        type=float,
        default=3600.0,
        help="rotate after this many seconds (0: never)",
    )
    p.add_argument(
        "--sync-interval",
        type=float,
        default=0.2,
        help="fsync (and FIN) pending messages at least this often, seconds",
    )
    p.add_argument("--max-in-flight", type=int, default=1000, help="RDY credit")
    _add_consume_stop_args(p)
    _add_broker_arg(p, lookup=True)
    p.set_defaults(func=_run("to-file", _to_file))

    p = subparsers.add_parser(
        "dlq",
        help="list or replay a channel's dead letters",
        formatter_class=fmt,
        description="list: show dead-lettered messages; replay: put them back "
        "(all, or only --id ones) with attempts reset.",
    )
    p.add_argument("action", choices=["list", "replay"])
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument(
        "--id", action="append", metavar="HEX", help="replay only this message id (repeatable)"
    )
    p.add_argument("--limit", type=int, default=100, help="list at most this many per broker")
    p.add_argument("--json", action="store_true", help="list as JSON lines")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request deadline, seconds")
    _add_broker_arg(p)
    p.set_defaults(func=_run("dlq", _dlq))
