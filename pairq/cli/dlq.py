"""``pairq dlq list|replay|purge``: a channel's dead letters."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

from pairq.cli import _tool as tool
from pairq.client._channel import BrokerConn
from pairq.client._policy import check_channel, check_topic
from pairq.v1 import broker_pb2 as pb

__all__ = ["register"]


async def _dlq(args: argparse.Namespace) -> int:
    check_topic(args.topic)
    check_channel(args.channel)
    conns = [BrokerConn(a, security=tool.security(args)) for a in tool.brokers(args)]
    try:
        if args.action == "list":
            return await _dlq_list(args, conns)
        if args.action == "purge":
            return await _dlq_purge(args, conns)
        return await _dlq_replay(args, conns)
    finally:
        for c in conns:
            await c.close()


async def _dlq_list(args: argparse.Namespace, conns: list[BrokerConn]) -> int:
    total = 0
    shown = 0
    for c in conns:
        resp = await tool.unary(
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


async def _dlq_purge(args: argparse.Namespace, conns: list[BrokerConn]) -> int:
    ids = _ids(args)
    if not args.yes:
        which = f"{len(ids)} dead letter(s)" if ids else "EVERY dead letter"
        raise tool.CliError(
            f"purge deletes {which} of {args.topic}/{args.channel} for good; add --yes to do it"
        )
    purged = 0
    for c in conns:
        resp = await tool.unary(
            c,
            "PurgeDeadLetters",
            pb.PurgeDeadLettersRequest(topic=args.topic, channel=args.channel, ids=ids),
            args.timeout,
        )
        purged += resp.purged
    print(f"purged {purged} dead letters of {args.topic}/{args.channel}")
    return 0


def _ids(args: argparse.Namespace) -> list[bytes]:
    ids: list[bytes] = []
    for h in args.id or []:
        try:
            b = bytes.fromhex(h)
        except ValueError:
            raise tool.CliError(f"invalid --id {h!r}: expected 32 hex digits") from None
        if len(b) != 16:
            raise tool.CliError(f"invalid --id {h!r}: expected 32 hex digits")
        ids.append(b)
    return ids


async def _dlq_replay(args: argparse.Namespace, conns: list[BrokerConn]) -> int:
    ids = _ids(args)
    replayed = 0
    for c in conns:
        resp = await tool.unary(
            c,
            "ReplayDeadLetters",
            pb.ReplayDeadLettersRequest(topic=args.topic, channel=args.channel, ids=ids),
            args.timeout,
        )
        replayed += resp.replayed
    print(f"replayed {replayed} messages into {args.topic}/{args.channel}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dlq",
        help="list, replay or purge a channel's dead letters",
        formatter_class=tool.HelpFormatter,
        description="list: show dead-lettered messages; replay: put them back "
        "(all, or only --id ones) with attempts reset; purge: delete them for good "
        "(all, or only --id ones; needs --yes).",
    )
    p.add_argument("action", choices=["list", "replay", "purge"])
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument(
        "--id",
        action="append",
        metavar="HEX",
        help="replay or purge only this message id (repeatable)",
    )
    p.add_argument("--yes", action="store_true", help="purge: really delete them")
    p.add_argument("--limit", type=int, default=100, help="list at most this many per broker")
    p.add_argument("--json", action="store_true", help="list as JSON lines")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request deadline, seconds")
    tool.add_broker_arg(p)
    p.set_defaults(func=tool.run_tool("dlq", _dlq))
