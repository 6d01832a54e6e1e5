"""``pairq stat``: a live table of topic and channel statistics, and each pair's health."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import time
from typing import Any

from pairq.cli import _tool as tool
from pairq.client._channel import BrokerConn
from pairq.client._policy import check_channel, check_topic
from pairq.client.discovery import Discovery
from pairq.errors import UnavailableError
from pairq.v1 import broker_pb2 as pb

__all__ = ["register"]


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
            raise tool.CliError("--channel needs --topic")
        check_channel(args.channel)
    addresses = list(tool.brokers_or_none(args) or [])
    lookups = tool.lookups(args)
    if lookups:
        async with Discovery(lookups, timeout=args.timeout, security=tool.security(args)) as d:
            try:
                nodes = await d.nodes()
            except UnavailableError as exc:
                raise tool.CliError(exc.message) from None
        addresses += [n.address for n in nodes if n.liveness != "dead"]
        if not addresses:
            raise tool.CliError("the lookups know no live broker")
    conns = [BrokerConn(a, security=tool.security(args)) for a in dict.fromkeys(addresses)]
    prev: dict[tuple[str, str], dict[str, int]] | None = None
    prev_t = 0.0
    n = 0
    stop = tool.stop_event()
    try:
        while True:
            req = pb.GetStatsRequest(
                topic=args.topic or "", channel=args.channel or "", no_clients=False
            )
            responses = []
            for c in conns:
                responses.append(await tool.unary(c, "GetStats", req, args.timeout))
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


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "stat",
        help="live table of topic and channel statistics",
        formatter_class=tool.HelpFormatter,
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
    tool.add_broker_arg(p, lookup=True)
    p.set_defaults(func=tool.run_tool("stat", _stat))
