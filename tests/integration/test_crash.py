"""Crash safety with real processes: kill -9 a broker at random instants, 20 cycles.

Several producers publish (singles, batches, deferred) and a consumer
consumes while the broker process is SIGKILLed at a random instant and
restarted. Checks:
* every acknowledged publish is delivered (0 lost);
* a message FIN'd well before a kill (>= FIN_MARGIN s) is never delivered again:
  only FINs whose commit had not completed may come back;
* deferred messages are never delivered before their due time, restarts included.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import grpc
from rawclient import RawSub

from pairq.testing import BrokerProcess, eventually
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg

CYCLES = 20
FIN_MARGIN = 1.0  # s: a FIN sent this long before a kill must have been committed
DEFER_MS = 1500


class World:
    def __init__(self) -> None:
        self.acked: set[bytes] = set()
        self.deferred_due: dict[bytes, float] = {}  # id -> earliest wall time allowed
        self.delivered: dict[bytes, int] = {}
        self.fin_time: dict[bytes, float] = {}  # id -> monotonic time the FIN was sent
        self.violations: list[str] = []
        self.kills: list[float] = []
        self.sent_serial = 0


async def producer(
    stub: pbg.BrokerServiceStub, w: World, stop: asyncio.Event, rng: random.Random, pid: int
) -> None:
    while not stop.is_set():
        kind = rng.random()
        try:
            if kind < 0.4:
                body = b"s%d-%d" % (pid, w.sent_serial)
                w.sent_serial += 1
                r = await stub.Publish(
                    pb.PublishRequest(topic="t", message=pb.PublishItem(body=body)), timeout=2
                )
                w.acked.add(r.id)
            elif kind < 0.9:
                items = [pb.PublishItem(body=b"b%d" % i) for i in range(rng.randint(2, 50))]
                r = await stub.PublishBatch(
                    pb.PublishBatchRequest(topic="t", messages=items), timeout=2
                )
                w.acked.update(r.ids)
            else:
                sent = time.time()
                r = await stub.Publish(
                    pb.PublishRequest(
                        topic="t", message=pb.PublishItem(body=b"deferred", defer_ms=DEFER_MS)
                    ),
                    timeout=2,
                )
                w.acked.add(r.id)
                w.deferred_due[r.id] = sent + DEFER_MS / 1000.0
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.01)  # broker down: back off, then retry (not acked)


async def consumer(stub: pbg.BrokerServiceStub, w: World, stop: asyncio.Event) -> None:
    sub = RawSub(stub, "t", "c", msg_timeout_ms=5000)
    sub.rdy(500)
    try:
        while not stop.is_set() and not sub.ended.is_set():
            await asyncio.sleep(0.005)
            msgs = sub.take()
            if not msgs:
                continue
            now_wall = time.time()
            now = time.monotonic()
            ids = []
            for m in msgs:
                due = w.deferred_due.get(m.id)
                if due is not None and now_wall < due - 0.05:
                    w.violations.append(
                        f"deferred {m.id.hex()} delivered {due - now_wall:.3f}s early"
                    )
                fin_at = w.fin_time.get(m.id)
                if fin_at is not None and any(
                    k - fin_at >= FIN_MARGIN for k in w.kills if k > fin_at
                ):
                    w.violations.append(
                        f"{m.id.hex()} FIN'd {FIN_MARGIN}s+ before a kill came back"
                    )
                w.delivered[m.id] = w.delivered.get(m.id, 0) + 1
                ids.append(m.id)
                w.fin_time.setdefault(m.id, now)
            sub.fin(ids)
    finally:
        await sub.cancel()


async def test_kill9_cycles_lose_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261126)
    w = World()
    broker = BrokerProcess(tmp_path / "data", log_path=str(tmp_path / "broker.log"))
    try:
        for _cycle in range(CYCLES):
            broker.start()
            channel = grpc.aio.insecure_channel(broker.address)
            stub = pbg.BrokerServiceStub(channel)
            stop = asyncio.Event()
            tasks = [asyncio.create_task(producer(stub, w, stop, rng, i)) for i in range(3)]
            tasks.append(asyncio.create_task(consumer(stub, w, stop)))
            await asyncio.sleep(rng.uniform(0.3, 1.2))  # the random kill instant is the point
            w.kills.append(time.monotonic())
            broker.kill()
            await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await channel.close()
        # Final drain: everything acknowledged must come out.
        broker.start()
        channel = grpc.aio.insecure_channel(broker.address)
        stub = pbg.BrokerServiceStub(channel)
        stop = asyncio.Event()
        task = asyncio.create_task(consumer(stub, w, stop))
        await eventually(lambda: w.acked <= set(w.delivered), timeout=30)
        stop.set()
        await task
        rc = broker.terminate()
        assert rc == 0, "SIGTERM must drain and exit 0"
        await channel.close()
    finally:
        broker.stop()
    lost = w.acked - set(w.delivered)
    dup = sum(n - 1 for n in w.delivered.values() if n > 1)
    print(
        f"acked={len(w.acked)} delivered={len(w.delivered)} redelivered={dup} "
        f"deferred={len(w.deferred_due)} kills={len(w.kills)}"
    )
    assert len(w.acked) > 1000
    assert w.deferred_due
    assert not lost, f"{len(lost)} acknowledged messages lost"
    assert not w.violations, w.violations[:5]
