"""``pairq tail``: print a topic's messages as they arrive (a new ephemeral channel unless ``--channel``)."""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
from typing import Any

from pairq.cli import _tool as tool
from pairq.client._policy import check_channel, check_topic
from pairq.client.consumer import Consumer
from pairq.client.message import Message

__all__ = ["register"]


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
    brokers, lookups = tool.brokers_or_none(args), tool.lookups(args)
    if brokers:
        await tool.check_reachable(brokers, args.timeout, tool.security(args))
    if lookups:
        await tool.check_lookups(lookups, args.topic, args.timeout, tool.security(args))
    out = sys.stdout
    stop = tool.stop_event()
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
        **tool.client_kwargs(args),
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
        await tool.until(stop, loop())
    out.flush()
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tail",
        help="print messages of a topic as they arrive",
        formatter_class=tool.HelpFormatter,
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
    tool.add_consume_stop_args(p)
    tool.add_broker_arg(p, lookup=True)
    p.set_defaults(func=tool.run_tool("tail", _tail))
