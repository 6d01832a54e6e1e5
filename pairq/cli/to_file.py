"""``pairq to-file``: write a topic's messages to rotating files, fsynced before they are FIN'd."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from pairq.cli import _tool as tool
from pairq.client._policy import check_channel, check_topic
from pairq.client.consumer import Consumer
from pairq.client.message import Message

__all__ = ["register"]


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
    brokers, lookups = tool.brokers_or_none(args), tool.lookups(args)
    if brokers:
        await tool.check_reachable(brokers, args.timeout, tool.security(args))
    if lookups:
        await tool.check_lookups(lookups, args.topic, args.timeout, tool.security(args))
    rf = _RotatingFile(
        args.topic,
        out_dir,
        work_dir,
        rotate_bytes=args.rotate_bytes,
        rotate_interval=args.rotate_interval,
    )
    stop = tool.stop_event()
    mif = args.max_in_flight
    consumer = Consumer(
        args.topic,
        args.channel,
        brokers,
        lookups=lookups,
        lookup_poll_interval=args.lookup_poll_interval,
        max_in_flight=mif,
        **tool.client_kwargs(args),
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
            await tool.until(stop, loop())
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


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "to-file",
        help="write a topic's messages to rotating files",
        formatter_class=tool.HelpFormatter,
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
    tool.add_consume_stop_args(p)
    tool.add_broker_arg(p, lookup=True)
    p.set_defaults(func=tool.run_tool("to-file", _to_file))
