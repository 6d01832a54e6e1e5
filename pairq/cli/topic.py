"""``pairq topic`` (and, through ``channel.py``, ``pairq channel``): admin verbs on the command line.

``pairq topic pause|unpause|empty|delete|create TOPIC`` and ``pairq channel
pause|unpause|empty|delete|create TOPIC CHANNEL`` call the RPC of that name on
every broker given with ``--broker``, or, with ``--lookup``, on every live broker
of every pair that holds the topic (a pair's brokers each keep their own pause
flags and queues). ``empty`` and ``delete`` drop messages for good and need
``--yes``.
"""

from __future__ import annotations

import argparse
from typing import Any

from pairq.cli import _tool as tool
from pairq.client._policy import check_channel, check_topic
from pairq.v1 import broker_pb2 as pb

__all__ = ["add_verbs", "register"]

VERBS = ("pause", "unpause", "empty", "delete", "create")
DESTRUCTIVE = ("empty", "delete")


async def _run(args: argparse.Namespace) -> int:
    check_topic(args.topic)
    channel = getattr(args, "channel", None)
    if channel is not None:
        check_channel(channel)
    what = f"{args.topic}/{channel}" if channel is not None else args.topic
    noun = "Channel" if channel is not None else "Topic"
    if args.verb in DESTRUCTIVE and not args.yes:
        raise tool.CliError(
            f"{args.verb} {noun.lower()} {what} drops its messages for good; add --yes to do it"
        )
    method = f"{args.verb.capitalize()}{noun}"
    fields = {"topic": args.topic} if channel is None else {"topic": args.topic, "channel": channel}
    request = getattr(pb, method + "Request")(**fields)
    addresses = await tool.topic_brokers(args, args.topic, args.timeout)
    done = await tool.on_each(addresses, method, request, args.timeout, tool.security(args))
    past = {"pause": "paused", "unpause": "unpaused", "empty": "emptied", "create": "created"}
    print(
        f"{past.get(args.verb, 'deleted')} {noun.lower()} {what} on "
        + ", ".join(a for a, _ in done)
    )
    return 0


def add_verbs(subparsers: Any, name: str, with_channel: bool) -> None:
    """Add ``pairq topic`` (``with_channel=False``) or ``pairq channel``."""
    p = subparsers.add_parser(
        name,
        help=f"{'/'.join(VERBS)} a {name} on its brokers",
        formatter_class=tool.HelpFormatter,
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("verb", choices=VERBS)
    p.add_argument("topic", metavar="TOPIC")
    if with_channel:
        p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("--yes", action="store_true", help="empty/delete: really drop the messages")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request deadline, seconds")
    tool.add_broker_arg(p, lookup=True)
    p.set_defaults(func=tool.run_tool(name, _run))


def register(subparsers: Any) -> None:
    add_verbs(subparsers, "topic", False)
