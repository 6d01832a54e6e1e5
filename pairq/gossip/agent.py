"""A tiny standalone gossip member, for benchmarks and manual experiments.

    python -m pairq.gossip.agent --bind 127.0.0.1:0 --join 127.0.0.1:7946 \\
        --name b1 --meta role=broker --meta pair=p1 --events /tmp/b1.jsonl

Writes one JSON line per event to ``--events`` (``ready`` with the bound
address first, then ``join``/``suspect``/``alive``/``dead``/``left``/``update``,
and ``stats`` every ``--stats-every`` seconds), each with wall-clock ``t``.
``--stall-duty`` makes the event loop block on purpose (a sick member).
SIGTERM or SIGINT leaves gracefully and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from typing import IO

from pairq.gossip.config import PROFILES, decode_key
from pairq.gossip.events import MemberEvent
from pairq.gossip.meta import NodeMeta
from pairq.gossip.node import Gossip, parse_addr


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pairq.gossip.agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bind", default="127.0.0.1:0", help="HOST:PORT (default %(default)s)")
    p.add_argument("--join", action="append", default=[], help="HOST:PORT to join; repeatable")
    p.add_argument("--name", default="", help="member name (default: meta node_id or pid)")
    p.add_argument(
        "--meta", action="append", default=[], help="KEY=VALUE: role, node_id, pair, grpc_address"
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="lan")
    p.add_argument("--no-lifeguard", action="store_true", help="plain SWIM, for comparison")
    p.add_argument(
        "--key", action="append", default=[], type=decode_key, help="AES-GCM key (base64)"
    )
    p.add_argument("--label", default="")
    p.add_argument("--events", default="-", help="JSON-lines event file ('-' = stdout)")
    p.add_argument(
        "--stats-every",
        type=float,
        default=0.0,
        help="seconds between stats lines (0: only at exit)",
    )
    p.add_argument(
        "--stall-duty", type=float, default=0.0, help="fraction of time the loop is blocked"
    )
    p.add_argument("--stall-min", type=float, default=0.2)
    p.add_argument("--stall-max", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=None)
    return p.parse_args(argv)


async def _stall(duty: float, lo: float, hi: float, rng: random.Random) -> None:
    """Block the whole event loop for lo..hi seconds, ``duty`` of the time."""
    while True:
        d = rng.uniform(lo, hi)
        await asyncio.sleep(d * (1 - duty) / duty)
        time.sleep(d)  # noqa: ASYNC251 - deliberately blocking: the sickness being simulated


async def _main(args: argparse.Namespace) -> int:
    fields = dict(kv.split("=", 1) for kv in args.meta)
    name = args.name or fields.get("node_id") or f"agent-{os.getpid()}"
    meta = NodeMeta(
        role=fields.get("role", "agent"),
        node_id=fields.get("node_id", name),
        pair=fields.get("pair", ""),
        grpc_address=fields.get("grpc_address", ""),
        start_epoch_ms=int(time.time() * 1000),
    )
    host, port = parse_addr(args.bind, default_port=0, allow_zero=True)
    cfg = PROFILES[args.profile](
        bind_host=host,
        bind_port=port,
        lifeguard=not args.no_lifeguard,
        keys=tuple(args.key),
        label=args.label,
    )
    out: IO[str] = sys.stdout if args.events == "-" else open(args.events, "a", buffering=1)  # noqa: ASYNC230
    rng = random.Random(args.seed)
    g = Gossip(cfg, meta, name=name, rng=random.Random(args.seed))

    def write(obj: dict[str, object]) -> None:
        obj["t"] = time.time()
        out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        out.flush()

    def on_event(e: MemberEvent) -> None:
        write({"ev": e.kind.value, "member": e.member.name, "inc": e.member.incarnation})

    def stats() -> None:
        s = g.stats
        write(
            {
                "ev": "stats",
                "bytes_sent": s.bytes_sent,
                "bytes_received": s.bytes_received,
                "pair_heartbeats": s.extra.get("pair_heartbeats", 0),
                "suspects": s.suspects,
                "deaths": s.deaths,
                "refutations": s.refutations,
                "health": g.health,
                "stalls": s.stalls,
            }
        )

    g.subscribe(on_event)
    await g.start()
    write(
        {"ev": "ready", "name": name, "addr": f"{g.address[0]}:{g.address[1]}", "pid": os.getpid()}
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.join:
        for _ in range(50):
            if await g.join(args.join, within=1.0):
                break
            await asyncio.sleep(0.1)
        write({"ev": "joined", "members": len(g.members())})
    bg: list[asyncio.Task[None]] = []
    if args.stall_duty > 0:
        bg.append(asyncio.create_task(_stall(args.stall_duty, args.stall_min, args.stall_max, rng)))
    if args.stats_every > 0:

        async def periodic() -> None:
            while True:
                await asyncio.sleep(args.stats_every)
                stats()

        bg.append(asyncio.create_task(periodic()))
    await stop.wait()
    for t in bg:
        t.cancel()
    stats()
    await g.stop(leave=True)
    write({"ev": "stopped"})
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(asyncio.run(_main(_parse_args(argv))))


if __name__ == "__main__":
    main()
