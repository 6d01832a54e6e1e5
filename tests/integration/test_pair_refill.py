"""Re-filling an empty partner is observable: logs on both brokers, `pairq stat`, and a
lag that returns to 0 (real processes, kill -9 and a wiped data dir)."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import grpc
from test_pair import make_pair, stats, wait_healthy

from pairq.cli.stat import _pair_line
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg

N = 300_000
LAG_BOUND_S = 5  # the lag metric reaches 0 within this of the re-fill's end


async def test_refill_of_a_wiped_partner_shows_progress_and_the_lag_returns_to_zero(
    tmp_path: Path,
) -> None:
    a, b = make_pair(tmp_path)
    try:
        a.start()
        b.start()
        await wait_healthy(a, b)
        async with grpc.aio.insecure_channel(a.address) as ch:
            stub = pbg.BrokerServiceStub(ch)
            batch = [pb.PublishItem(body=b"x" * 100)] * 5000
            for _ in range(N // len(batch)):
                r = await stub.PublishBatch(
                    pb.PublishBatchRequest(topic="t", messages=batch), timeout=30
                )
                assert r.copies == 2
        b.kill()
        shutil.rmtree(b.data_dir)
        b.start()
        seen_sending = seen_receiving = False
        stat_lines: list[str] = []
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "the re-fill did not finish within 60 s"
            try:
                sa, sb = await stats(a.address), await stats(b.address)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.02)
                continue
            seen_sending |= sa.pair.refill_sending > 0
            seen_receiving |= sb.pair.refill_receiving > 0
            if sa.pair.refill_sending > 0:
                stat_lines.append(_pair_line(a.address, sa))  # what `pairq stat` prints meanwhile
            if sb.pair.refill_receiving > 0:
                stat_lines.append(_pair_line(b.address, sb))
            if sb.pair.standby_messages >= N and not sa.pair.refill_sending:
                break
            await asyncio.sleep(0.02)
        t_end = time.monotonic()
        assert seen_sending and seen_receiving, (seen_sending, seen_receiving)
        assert any("re-filling partner:" in ln for ln in stat_lines), stat_lines
        assert any("being re-filled:" in ln for ln in stat_lines), stat_lines
        print(stat_lines[0])
        while True:
            sa = await stats(a.address)
            if sa.pair.replication_lag == 0:
                break
            assert time.monotonic() - t_end < LAG_BOUND_S, (
                f"lag {sa.pair.replication_lag} after the re-fill"
            )
            await asyncio.sleep(0.05)
        await wait_healthy(a, b, timeout=10)
        log_a = await asyncio.to_thread(Path(a.log_path).read_text)
        log_b = await asyncio.to_thread(Path(b.log_path).read_text)
        assert any("re-filling partner" in ln and "done," in ln for ln in log_a.splitlines()), (
            log_a[-2000:]
        )
        assert any(
            "being re-filled by partner" in ln and "done," in ln for ln in log_b.splitlines()
        ), log_b[-2000:]
        for text, log in (("re-filling partner", log_a), ("being re-filled by partner", log_b)):
            progress = [ln for ln in log.splitlines() if text in ln and "so far" in ln]
            assert progress, f"no progress line for {text!r}"  # one per 100,000 messages at least
    finally:
        a.stop()
        b.stop()


async def test_a_refill_whose_range_ends_in_skipped_seqs_still_finishes(tmp_path: Path) -> None:
    """Regression (chaos harness, resilver-loss): a restart makes the owner skip to its
    high-water mark (100,000 seqs that hold nothing); a partner wiped afterwards is
    re-filled over a range that ends in those seqs, and the re-fill must still end."""
    a, b = make_pair(tmp_path)
    try:
        a.start()
        b.start()
        await wait_healthy(a, b)
        async with grpc.aio.insecure_channel(a.address) as ch:
            stub = pbg.BrokerServiceStub(ch)
            r = await stub.PublishBatch(
                pb.PublishBatchRequest(topic="t", messages=[pb.PublishItem(body=b"x")] * 10),
                timeout=30,
            )
            assert r.copies == 2
        # Both restarted (so neither takes the other's messages over): the owner skips
        # the seqs up to its high-water mark.
        a.kill()
        b.kill()
        a.start()
        b.start()
        await wait_healthy(a, b)
        b.kill()
        shutil.rmtree(b.data_dir)
        b.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                sa, sb = await stats(a.address), await stats(b.address)
            except grpc.aio.AioRpcError:
                sa = sb = None
            if (
                sa is not None
                and sb is not None
                and sb.pair.standby_messages >= 10
                and sa.pair.refill_sending == 0
                and sb.pair.refill_receiving == 0
                and sa.pair.connected
                and sb.pair.connected
            ):
                break
            assert time.monotonic() < deadline, (
                f"the re-fill never ended: sending {sa and sa.pair.refill_sending}, "
                f"receiving {sb and sb.pair.refill_receiving}"
            )
            await asyncio.sleep(0.05)
    finally:
        a.stop()
        b.stop()
