"""A Producer facing a broker that accepted the connection but never answers (SIGSTOPped
before the Producer's first call: its PublishStream's initial metadata never goes out).

Found by the chaos harness (pause-long, seed 1): grpc.aio's stream write waits for the
call's metadata to be sent, and a call cancelled before that leaves the write waiting for
ever. ``PublishStreamClient.request`` wrote inline, so a publish to such a broker never
returned (past ``retry_timeout``) and ``Producer.close()`` hung with it. Now the publish
fails with UnavailableError at its deadline, close is immediate, and once the broker
resumes the next publish succeeds."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from pairq.client import Producer
from pairq.errors import UnavailableError
from pairq.testing import BrokerProcess, free_port


async def test_a_publish_to_a_stopped_broker_ends_at_its_deadline(tmp_path: Path) -> None:
    b = BrokerProcess(tmp_path / "b", port=free_port(), log_path=str(tmp_path / "b.log"))
    b.start()
    assert b.proc is not None
    os.kill(b.proc.pid, signal.SIGSTOP)
    try:
        p = Producer(brokers=[b.address], retry_timeout=3.0, rpc_timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(UnavailableError):
            await asyncio.wait_for(p.publish_batch("t", [b"x"] * 10), 10)
        assert time.monotonic() - t0 < 6.0, "the publish outlived its retry_timeout"
        t1 = time.monotonic()
        await asyncio.wait_for(p.close(), 5)
        assert time.monotonic() - t1 < 2.0
        # recovery: the broker resumes and a new Producer publishes
        os.kill(b.proc.pid, signal.SIGCONT)
        async with Producer(brokers=[b.address], retry_timeout=10.0) as q:
            ack = await q.publish("t", b"after")
            assert ack.copies == 1
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
        b.stop()
