"""``pairq peek TOPIC CHANNEL``: a channel's oldest unfinished messages, not consumed.

Asks ``PeekMessages`` of every broker given (``--broker``) or found (``--lookup``):
nothing is delivered, no attempt is counted. Prints one line per message (id,
broker, attempts, body) or, with ``--json``, one JSON object per line.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

from pairq.cli import _tool as tool
from pairq.client._policy import check_channel, check_topic
from pairq.v1 import broker_pb2 as pb

__all__ = ["register"]


async def _peek(args: argparse.Namespace) -> int:
    check_topic(args.topic)
    check_channel(args.channel)
    if not 1 <= args.n <= 1000:
        raise tool.CliError("-n must be 1 to 1000")
    addresses = await tool.topic_brokers(args, args.topic, args.timeout)
    req = pb.PeekMessagesRequest(topic=args.topic, channel=args.channel, limit=args.n)
    msgs = [
        (a, m)
        for a, r in await tool.on_each(
            addresses, "PeekMessages", req, args.timeout, tool.security(args)
        )
        for m in r.messages
    ]
    msgs.sort(key=lambda am: am[1].timestamp_ns)
    for address, m in msgs[: args.n]:
        if args.json:
            obj: dict[str, Any] = {
                "id": m.id.hex(),
                "broker": address,
                "attempts": m.attempts,
                "timestamp_ns": m.timestamp_ns,
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
            print(f"{m.id.hex()}  {address}  attempts={m.attempts}  {body}{more}")
    print(
        f"{min(len(msgs), args.n)} message(s) of {args.topic}/{args.channel} shown", file=sys.stderr
    )
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "peek",
        help="show a channel's oldest unfinished messages without consuming them",
        formatter_class=tool.HelpFormatter,
        description=(__doc__ or "").split("\n\n")[1],
    )
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("-n", type=int, default=20, help="at most this many messages")
    p.add_argument("--json", action="store_true", help="JSON lines")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request deadline, seconds")
    tool.add_broker_arg(p, lookup=True)
    p.set_defaults(func=tool.run_tool("peek", _peek))
