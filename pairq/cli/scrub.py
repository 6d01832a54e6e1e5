"""``pairq scrub``: check every record a broker stores against its checksum, now."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import grpc

from pairq.cli import _tool as tool
from pairq.client._channel import BrokerConn
from pairq.v1 import broker_pb2 as pb

__all__ = ["register"]


async def _scrub(args: argparse.Namespace) -> int:
    bad_total = 0
    for address in tool.brokers(args):
        conn = BrokerConn(address)
        try:
            last = pb.ScrubProgress()
            try:
                async for prog in conn.get_stub().Scrub(pb.ScrubRequest(), timeout=args.timeout):
                    last = prog
                    if not args.quiet:
                        print(
                            f"\r{address}: {prog.checked:,} records, {prog.bytes:,} bytes checked, "
                            f"{prog.bad} bad",
                            end="",
                            file=sys.stderr,
                            flush=True,
                        )
            except grpc.aio.AioRpcError as exc:
                raise tool.CliError(f"broker {address}: {tool.rpc_message(exc)}") from None
            if not args.quiet:
                print(file=sys.stderr)
            print(
                f"{address}: scrub {'complete' if last.done else 'incomplete'}: "
                f"{last.checked} records, {last.bytes} bytes checked, {last.bad} bad "
                "(each repaired from the partner or quarantined; see pairq stat)"
            )
            bad_total += last.bad
            if not last.done:
                return 1
        finally:
            await conn.close()
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "scrub",
        help="check every stored record against its checksum now (repairing from the partner)",
        formatter_class=tool.HelpFormatter,
        description="Run one scrub on each broker now: every record it stores (owned, standby "
        "copies, dead letters) is checked against its crc32c; bad ones are repaired from the "
        "partner's copy or quarantined. Rate-limited by the broker's --scrub-bytes-per-s.",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="deadline of the scrub, seconds")
    p.add_argument("--quiet", action="store_true", help="no progress line, only the summary")
    tool.add_broker_arg(p)
    p.set_defaults(func=tool.run_tool("scrub", _scrub))
