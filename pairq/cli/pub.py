"""``pairq pub``: publish one message, or every line of stdin (batched, in order)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from typing import Any

from pairq.cli import _tool as tool
from pairq.client._policy import check_topic
from pairq.client.producer import Producer
from pairq.errors import PairqError

__all__ = ["register"]


def _parse_headers(raw: list[str] | None) -> dict[str, str] | None:
    if not raw:
        return None
    out = {}
    for h in raw:
        k, sep, v = h.partition("=")
        if not sep or not k:
            raise tool.CliError(f"invalid header {h!r}: expected KEY=VALUE")
        out[k] = v
    return out


async def _pub(args: argparse.Namespace) -> int:
    check_topic(args.topic)
    from pairq.telemetry import setup_tracing

    # With OTEL_EXPORTER_OTLP_* (or OTEL_TRACES_EXPORTER) set, `pairq pub` is traced:
    # one "pairq pub" span, each message's producer span under it (issue 16).
    if setup_tracing("pairq-pub"):
        from opentelemetry import trace

        with trace.get_tracer("pairq.cli").start_as_current_span(
            "pairq pub", kind=trace.SpanKind.INTERNAL
        ):
            return await _pub_traced(args)
    return await _pub_traced(args)


async def _pub_traced(args: argparse.Namespace) -> int:
    headers = _parse_headers(args.header)
    # One batch in flight at a time keeps stdin lines in order.
    async with Producer(
        tool.brokers_or_none(args),
        lookups=tool.lookups(args),
        lookup_poll_interval=args.lookup_poll_interval,
        retry_timeout=args.timeout,
        max_batches_in_flight=1,
        **tool.client_kwargs(args),
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
        raise tool.CliError(f"{len(failures)} of {count} publishes failed: {msg}")
    print(f"published {count} messages to {args.topic}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "pub",
        help="publish a message, or every line of stdin",
        formatter_class=tool.HelpFormatter,
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
    tool.add_broker_arg(p, lookup=True)
    p.set_defaults(func=tool.run_tool("pub", _pub))
