"""``pairq stat``: a live table of topic and channel statistics, and each pair's health."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
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


def _pair_lines(answers: list[tuple[str, Any, str]]) -> list[str]:
    """Each pair once: the line of the first broker of the pair that answered (its
    partner's view of the same pair adds nothing), with its partner's own lease;
    a pair none of whose brokers answered is not known here (the broker lines say so)."""
    seen: dict[str, list[str]] = {}
    for address, r, _ in answers:
        if r is None or not r.HasField("pair"):
            continue
        p = r.pair
        if p.pair in seen:
            other = seen[p.pair]
            lease = "solo" if p.solo else f"{p.lease_remaining_ms} ms"
            other[0] += f"; {r.broker_id} lease {lease}, lag {p.replication_lag}"
            continue
        seen[p.pair] = [_pair_line(address, r)]
    return [lines[0] for lines in seen.values()]


def _to_json(
    answers: list[tuple[str, Any, str]],
    rows: dict[tuple[str, str], dict[str, int]],
    rates: dict[tuple[str, str], float],
) -> str:
    brokers = [
        {
            "address": a,
            "up": r is not None,
            "broker_id": r.broker_id if r is not None else "",
            "health": r.health if r is not None else "down",
            "error": error,
        }
        for a, r, error in answers
    ]
    pairs = {}
    for a, r, _ in answers:
        if r is None or not r.HasField("pair") or r.pair.pair in pairs:
            continue
        p = r.pair
        pairs[p.pair] = {
            "pair": p.pair,
            "reported_by": a,
            "replication": "up" if p.connected else "down",
            "partner_replication": "up" if p.partner_connected else "down",
            "lease_remaining_ms": p.lease_remaining_ms,
            "solo": p.solo,
            "epoch": p.epoch,
            "replication_lag": p.replication_lag,
            "standby_messages": p.standby_messages,
            "takeovers": p.takeovers,
        }
    table = [
        {"topic": t, "channel": c or None, **row, "rate": rates.get((t, c))}
        for (t, c), row in sorted(rows.items())
    ]
    return json.dumps(
        {"time": time.time(), "brokers": brokers, "pairs": list(pairs.values()), "rows": table},
        sort_keys=True,
    )


async def _addresses(args: argparse.Namespace, d: Discovery | None) -> list[str]:
    """Every broker to poll: --broker ones and every broker the lookups know, dead
    ones too (shown as down: that is when an operator looks)."""
    addresses = list(tool.brokers_or_none(args) or [])
    if d is not None:
        try:
            addresses += [n.address for n in await d.nodes()]
        except UnavailableError as exc:
            if not addresses:
                raise tool.CliError(exc.message) from None
    return list(dict.fromkeys(addresses))


async def _ask(c: BrokerConn, req: Any, timeout: float) -> tuple[str, Any, str]:
    try:
        return c.address, await tool.unary(c, "GetStats", req, timeout), ""
    except tool.CliError as exc:
        return c.address, None, str(exc)


async def _stat(args: argparse.Namespace) -> int:
    if args.topic:
        check_topic(args.topic)
    if args.channel:
        if not args.topic:
            raise tool.CliError("--channel needs --topic")
        check_channel(args.channel)
    lookups = tool.lookups(args)
    security = tool.security(args)
    d = Discovery(lookups, timeout=args.timeout, security=security) if lookups else None
    conns: dict[str, BrokerConn] = {}
    prev: dict[tuple[str, str], dict[str, int]] | None = None
    prev_t = 0.0
    n = 0
    stop = tool.stop_event()
    try:
        addresses = await _addresses(args, d)
        if not addresses:
            raise tool.CliError("the lookups know no broker")
        while True:
            if d is not None and n:
                with contextlib.suppress(tool.CliError):
                    addresses = await _addresses(args, d) or addresses
            for a in addresses:
                conns.setdefault(a, BrokerConn(a, security=security))
            # A topic a broker does not hold is NOT_FOUND there: ask for all, filter here.
            req = pb.GetStatsRequest(no_clients=False)
            answers = list(
                await asyncio.gather(*(_ask(conns[a], req, args.timeout) for a in addresses))
            )
            now = time.monotonic()
            responses = [r for _, r, _ in answers if r is not None]
            rows = _merge_stats(responses, args.topic or "", args.channel or "")
            elapsed = now - prev_t
            rates = {
                k: (row.get("count", 0) - prev[k].get("count", 0)) / elapsed
                for k, row in rows.items()
                if prev is not None and k in prev and elapsed > 0
            }
            if args.json:
                print(_to_json(answers, rows, rates), flush=True)
            else:
                stamp = datetime.datetime.now().strftime("%H:%M:%S")
                health = ", ".join(
                    f"{r.broker_id}:{r.health}" if r is not None else f"{a}:DOWN"
                    for a, r, _ in answers
                )
                print(f"--- {stamp}  brokers {health}")
                for a, r, error in answers:
                    if r is None:
                        print(f"    broker {a} is DOWN: {error}")
                for line in _pair_lines(answers):
                    print(line)
                if not responses:
                    print("(no broker answered)", flush=True)
                else:
                    print(_format_table(rows, prev, elapsed) if rows else "(no topics)", flush=True)
            prev, prev_t = rows, now
            n += 1
            if args.count and n >= args.count:
                return 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.interval)
            if stop.is_set():
                return 0
    finally:
        for c in conns.values():
            await c.close()
        if d is not None:
            await d.close()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "stat",
        help="live table of topic and channel statistics",
        formatter_class=tool.HelpFormatter,
        description="Poll GetStats on every broker and print a table (summed over brokers); "
        "msgs/s is the delivery rate since the previous table. A broker that does not answer "
        "is shown DOWN and polled again; each pair is shown once.",
    )
    p.add_argument("--topic", help="only this topic")
    p.add_argument("--channel", help="only this channel (needs --topic)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between tables")
    p.add_argument(
        "--count", type=int, default=0, help="print this many tables, then exit (0: forever)"
    )
    p.add_argument("--timeout", type=float, default=5.0, help="per-request deadline, seconds")
    p.add_argument(
        "--json", action="store_true", help="one JSON object per poll (brokers, pairs, rows)"
    )
    tool.add_broker_arg(p, lookup=True)
    p.set_defaults(func=tool.run_tool("stat", _stat))
