"""The Python client against the real broker over loopback gRPC."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from pairq.client import Consumer, Dedupe, InvalidError, Message, Producer
from pairq.testing import eventually, free_port, run_broker
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg


async def stats(address: str, topic: str) -> pb.TopicStats:
    async with grpc.aio.insecure_channel(address) as ch:
        resp = await pbg.BrokerServiceStub(ch).GetStats(pb.GetStatsRequest(topic=topic))
    return resp.topics[0]


async def create_channel(address: str, topic: str, channel: str) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        await pbg.BrokerServiceStub(ch).CreateChannel(
            pb.CreateChannelRequest(topic=topic, channel=channel)
        )


async def test_publish_consume_roundtrip(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b:
        async with Producer([b.address]) as p:
            ack = await p.publish("orders", b"payload", headers={"k": "v"})
            assert len(ack.id) == 16 and ack.copies == 1
            acks = await p.publish_batch("orders", [b"a", b"b"])
            assert len(acks) == 2 and all(a.copies == 1 for a in acks)
        got: list[Message] = []

        async def handle(msg: Message) -> None:
            got.append(msg)

        async with Consumer("orders", "billing", [b.address], handler=handle) as c:
            await c.wait_idle(timeout=10)
            assert c.stats.finished == 3
        assert [m.body for m in got] == [b"payload", b"a", b"b"]
        assert [m.id for m in got] == [ack.id] + [a.id for a in acks]
        assert got[0].headers == {"k": "v"}
        assert all(m.attempts == 1 and m.broker_id == b.node_id for m in got)
        assert abs(got[0].timestamp - time.time()) < 60
        t = await stats(b.address, "orders")
        ch = t.channels[0]
        assert (ch.depth, ch.in_flight, ch.finished) == (0, 0, 3)


async def test_concurrent_publishes_coalesce_into_few_rpcs(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b:
        await create_channel(b.address, "t", "c")
        async with Producer([b.address], max_batches_in_flight=2) as p:
            await p.publish("t", b"first")
            assert p.rpc_count == 1  # a lone publish goes out at once
            acks = await asyncio.gather(*(p.publish("t", b"%d" % i) for i in range(3000)))
            assert len({a.id for a in acks}) == 3000
            assert p.rpc_count < 1 + 30
        t = await stats(b.address, "t")
        assert t.message_count == 3001
        assert t.channels[0].depth == 3001


async def test_publish_retries_until_broker_is_back_with_the_same_id(tmp_path: Path) -> None:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    async with run_broker(tmp_path / "b", address=addr) as b:
        await create_channel(b.address, "t", "c")
    async with Producer([addr], retry_backoff=0.02, retry_backoff_max=0.1) as p:
        mid = bytes(range(16))
        task = asyncio.ensure_future(p.publish("t", b"late", id=mid))
        await eventually(lambda: p.rpc_count >= 2)  # failed at least once
        assert not task.done()
        async with run_broker(tmp_path / "b", address=addr):
            ack = await asyncio.wait_for(task, 20)
            assert ack.id == mid
            got: list[Message] = []
            async with Consumer("t", "c", [addr], handler=got.append) as c:
                await c.wait_idle(timeout=10)
            assert [(m.id, m.body) for m in got] == [(mid, b"late")]


async def test_invalid_input_raised_not_retried(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b, Producer([b.address]) as p:
        with pytest.raises(InvalidError):
            await p.publish("no spaces", b"x")
        with pytest.raises(InvalidError):
            await p.publish("t", b"")
        with pytest.raises(InvalidError):
            await p.publish("t", b"x" * (1024 * 1024 + 1))
        assert p.rpc_count == 0
    with pytest.raises(InvalidError):
        Consumer("t", "bad channel", ["127.0.0.1:1"])


async def test_failed_handler_requeues_with_backoff(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b:
        async with Producer([b.address]) as p:
            await p.publish("t", b"x")
        seen: list[tuple[int, float]] = []

        def handle(msg: Message) -> None:
            seen.append((msg.attempts, time.monotonic()))
            if msg.attempts < 3:
                raise RuntimeError("not yet")

        async with Consumer("t", "c", [b.address], handler=handle, requeue_delay=0.2) as c:
            await eventually(lambda: c.stats.finished == 1, timeout=10)
            assert c.stats.requeued == 2 and c.stats.handler_errors == 2
        assert [a for a, _ in seen] == [1, 2, 3]
        assert seen[1][1] - seen[0][1] >= 0.18  # 0.2 s after the first failure
        assert seen[2][1] - seen[1][1] >= 0.38  # then 0.4 s


async def test_touch_keeps_a_long_handler_alive(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b:
        async with Producer([b.address]) as p:
            await p.publish("t", b"slow")
        attempts: list[int] = []

        async def handle(msg: Message) -> None:
            attempts.append(msg.attempts)
            for _ in range(8):  # 0.8 s of work, with a 0.3 s message timeout
                await asyncio.sleep(0.1)
                msg.touch()

        async with Consumer("t", "c", [b.address], handler=handle, msg_timeout_ms=300) as c:
            await c.wait_idle(timeout=10)
            assert c.stats.finished == 1 and c.stats.touched == 8
        assert attempts == [1]
        t = await stats(b.address, "t")
        assert t.channels[0].timed_out == 0


async def test_without_touch_the_message_times_out(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b:
        async with Producer([b.address]) as p:
            await p.publish("t", b"slow")
        attempts: list[int] = []

        async def handle(msg: Message) -> None:
            attempts.append(msg.attempts)
            if msg.attempts == 1:
                await asyncio.sleep(0.6)

        # dedupe=False: with it (the default) the redelivery would wait for the run in progress.
        async with Consumer(
            "t", "c", [b.address], handler=handle, msg_timeout_ms=200, dedupe=False
        ) as c:
            await eventually(lambda: c.stats.finished >= 1, timeout=10)
            await c.wait_idle(timeout=10)
        assert attempts[:2] == [1, 2]


async def test_wait_idle_times_out_while_busy(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b:
        async with Producer([b.address]) as p:
            await p.publish("t", b"x")
        release = asyncio.Event()

        async def handle(msg: Message) -> None:
            await release.wait()

        async with Consumer("t", "c", [b.address], handler=handle) as c:
            with pytest.raises(TimeoutError):
                await c.wait_idle(timeout=0.5)
            assert c.in_flight == 1
            release.set()
            await c.wait_idle(timeout=5)
            assert c.stats.finished == 1


async def test_wait_idle_raises_when_no_broker_reachable() -> None:
    async with Consumer("t", "c", [f"127.0.0.1:{free_port()}"], handler=lambda m: None) as c:
        with pytest.raises(TimeoutError):
            await c.wait_idle(timeout=0.3)


async def test_handler_concurrency_is_bounded_by_max_in_flight(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b:
        async with Producer([b.address]) as p:
            await p.publish_batch("t", [b"%d" % i for i in range(200)])
        active = peak = 0

        async def handle(msg: Message) -> None:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1

        async with Consumer("t", "c", [b.address], handler=handle, max_in_flight=20) as c:
            await c.wait_idle(timeout=20)
            assert c.stats.finished == 200
        assert 1 < peak <= 20


async def test_rdy_is_spread_over_brokers(tmp_path: Path) -> None:
    async with run_broker(tmp_path / "a") as a, run_broker(tmp_path / "b") as b:
        async with Producer([a.address]) as pa, Producer([b.address]) as pb_:
            await pa.publish_batch("t", [b"a%d" % i for i in range(50)])
            await pb_.publish_batch("t", [b"b%d" % i for i in range(50)])
        got: list[bytes] = []
        async with Consumer(
            "t",
            "c",
            [a.address, b.address],
            handler=lambda m: got.append(m.body),
            max_in_flight=200,
        ) as c:
            await c.wait_idle(timeout=10)
            assert c.connected == 2
            for addr in (a.address, b.address):
                t = await stats(addr, "t")
                assert t.channels[0].clients[0].ready_count == 100
        assert sorted(got) == sorted(
            [b"a%d" % i for i in range(50)] + [b"b%d" % i for i in range(50)]
        )


async def test_consumer_reconnects_after_broker_restart(tmp_path: Path) -> None:
    port = free_port()
    addr = f"127.0.0.1:{port}"
    got: list[bytes] = []
    async with Consumer(
        "t",
        "c",
        [addr],
        handler=lambda m: got.append(m.body),
        reconnect_backoff=0.02,
        reconnect_backoff_max=0.2,
    ) as c:
        async with run_broker(tmp_path, address=addr) as b:
            async with Producer([b.address]) as p:
                await p.publish("t", b"1")
            await eventually(lambda: got == [b"1"])
        await eventually(lambda: c.connected == 0)
        async with run_broker(tmp_path, address=addr) as b:
            async with Producer([b.address]) as p:
                await p.publish("t", b"2")
            await eventually(lambda: got == [b"1", b"2"], timeout=15)
            assert c.stats.reconnects >= 1


async def test_stop_finishes_running_handlers(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b:
        async with Producer([b.address]) as p:
            await p.publish_batch("t", [b"%d" % i for i in range(10)])
        done: list[bytes] = []
        started = asyncio.Event()

        async def handle(msg: Message) -> None:
            started.set()
            await asyncio.sleep(0.2)
            done.append(msg.body)

        c = Consumer("t", "c", [b.address], handler=handle, max_in_flight=10)
        await c.start()
        await started.wait()
        await c.stop()
        assert len(done) == 10 and c.stats.finished == 10
        t = await stats(b.address, "t")
        assert (t.channels[0].in_flight, t.channels[0].finished) == (0, 10)


async def test_iterate_messages_without_handler(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b:
        async with Producer([b.address]) as p:
            await p.publish_batch("t", [b"1", b"2", b"3"])
        bodies = []
        async with Consumer("t", "c", [b.address]) as c:
            async for msg in c:
                bodies.append(msg.body)
                if msg.body == b"2":
                    msg.requeue(0)
                else:
                    msg.finish()
                if len(bodies) == 4:
                    break
            assert sorted(bodies) == [b"1", b"2", b"2", b"3"]


async def test_dedupe_runs_handler_once_per_id(tmp_path: Path) -> None:
    async with run_broker(tmp_path / "b") as b:
        mid = bytes(16)
        with Dedupe(tmp_path / "dd.lmdb") as dd:
            dd.add(bytes([1]) * 16)  # handled before: arrives as a duplicate
        async with Producer([b.address]) as p:
            await p.publish("t", b"seen", id=bytes([1]) * 16)
            await p.publish("t", b"new", id=mid)
        runs: list[bytes] = []
        async with Consumer(
            "t",
            "c",
            [b.address],
            handler=lambda m: runs.append(m.body),
            dedupe=tmp_path / "dd.lmdb",
        ) as c:
            await c.wait_idle(timeout=10)
            assert runs == [b"new"]
            assert (c.stats.duplicates, c.stats.finished) == (1, 1)
            # The same id again, later (e.g. redelivered after a failover):
            async with Producer([b.address]) as p:
                await p.publish("t", b"new again", id=mid)
            await c.wait_idle(timeout=10)
            assert runs == [b"new"]
        t = await stats(b.address, "t")
        assert t.channels[0].in_flight == 0 and t.channels[0].depth == 0
        # A second consumer with the same window also skips them (persistent).
        with Dedupe(tmp_path / "dd.lmdb") as dd:
            assert mid in dd and bytes([1]) * 16 in dd


async def test_dedupe_holds_concurrent_duplicates(tmp_path: Path) -> None:
    async with run_broker(tmp_path / "a") as a, run_broker(tmp_path / "b") as b:
        mid = bytes([7]) * 16
        async with Producer([a.address]) as pa, Producer([b.address]) as pb_:
            await pa.publish("t", b"x", id=mid)  # the same message on both brokers
            await pb_.publish("t", b"x", id=mid)
        runs = 0
        gate = asyncio.Event()

        async def handle(msg: Message) -> None:
            nonlocal runs
            runs += 1
            await gate.wait()

        async with Consumer(
            "t", "c", [a.address, b.address], handler=handle, dedupe=tmp_path / "dd"
        ) as c:
            await eventually(lambda: c.stats.received == 2)
            gate.set()
            await c.wait_idle(timeout=10)
            assert runs == 1
            assert (c.stats.finished, c.stats.duplicates) == (1, 1)


async def test_heartbeats_are_answered(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b:
        async with Consumer(
            "t", "c", [b.address], handler=lambda m: None, heartbeat_interval_ms=100
        ) as c:
            # The broker drops a client silent for two intervals; 10 heartbeats
            # later the one stream is still there.
            await eventually(lambda: c.stats.heartbeats >= 10, timeout=10)
            assert c.stats.reconnects == 0 and c.connected == 1


async def test_stop_is_quick_when_no_broker_is_reachable() -> None:
    c = Consumer("t", "c", [f"127.0.0.1:{free_port()}"], handler=lambda m: None)
    await c.start()
    await eventually(lambda: c.stats.reconnects >= 1)
    t0 = time.monotonic()
    await c.stop()
    assert time.monotonic() - t0 < 1.0


async def test_asyncio_timeout_inside_a_handler_only_fails_that_message(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b:
        async with Producer([b.address]) as p:
            await p.publish_batch("t", [b"slow", b"fast"])
        results: list[tuple[bytes, int]] = []

        async def handle(msg: Message) -> None:
            results.append((msg.body, msg.attempts))
            if msg.body == b"slow" and msg.attempts == 1:
                async with asyncio.timeout(0.05):
                    await asyncio.sleep(10)

        async with Consumer("t", "c", [b.address], handler=handle, requeue_delay=0.01) as c:
            await eventually(lambda: c.stats.finished == 2, timeout=10)
            assert c.stats.handler_errors == 1 and c.stats.requeued == 1
        assert sorted(results) == [(b"fast", 1), (b"slow", 1), (b"slow", 2)]


_TRACE_SCRIPT = r"""
import asyncio, json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pairq.client import Consumer, Producer
from pairq.testing import run_broker

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

async def main():
    async with run_broker() as b:
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("request") as span:
            async with Producer([b.address]) as p:
                await p.publish("t", b"traced")
            trace_id = span.get_span_context().trace_id
        async with Producer([b.address]) as p:
            await p.publish("t", b"plain")
        inner = []
        def handle(msg):
            inner.append((msg.body.decode(), trace.get_current_span().get_span_context().trace_id))
        async with Consumer("t", "c", [b.address], handler=handle) as c:
            await c.wait_idle(timeout=10)
    spans = [s for s in exporter.get_finished_spans() if s.name == "t process"]
    print(json.dumps({"trace_id": trace_id, "inner": inner,
                      "spans": [[s.context.trace_id, s.kind.name] for s in spans]}))
asyncio.run(main())
"""


def test_trace_context_links_publish_and_handler() -> None:
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _TRACE_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    tid = out["trace_id"]
    assert out["inner"] == [["traced", tid], ["plain", 0]]
    assert out["spans"] == [[tid, "CONSUMER"]]


async def test_stop_requeues_unanswered_iterated_messages(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b:
        async with Producer([b.address]) as p:
            await p.publish("t", b"x")
        c = Consumer("t", "c", [b.address], stop_timeout=30)
        async for msg in c:
            assert msg.body == b"x"
            break  # never answered
        t0 = time.monotonic()
        await c.stop()
        assert time.monotonic() - t0 < 3
        assert c.stats.requeued == 1
        got: list[Message] = []
        async with Consumer("t", "c", [b.address], handler=got.append) as c2:
            await c2.wait_idle(timeout=10)
        assert [(m.body, m.attempts) for m in got] == [(b"x", 2)]


async def test_package_docstring_example_runs(tmp_path: Path) -> None:
    import textwrap

    import pairq.client

    doc = pairq.client.__doc__ or ""
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    async with run_broker(tmp_path / "b") as b:
        code = code.replace("127.0.0.1:4150", b.address).replace(
            "/var/lib/billing/dedupe.lmdb", str(tmp_path / "dd.lmdb")
        )
        src = "async def _example():\n" + textwrap.indent(code, "    ") + "\n    return ack, acks\n"
        ns: dict[str, object] = {}
        exec(src, ns)
        ack, acks = await ns["_example"]()  # type: ignore[operator]
        assert len(ack.id) == 16 and len(acks) == 2


async def test_deferred_publish_and_pausing_with_max_in_flight(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b:
        got: list[tuple[bytes, float]] = []
        async with Consumer(
            "t", "c", [b.address], handler=lambda m: got.append((m.body, time.monotonic()))
        ) as c:
            await c.wait_idle(timeout=5)
            async with Producer([b.address]) as p:
                t0 = time.monotonic()
                await p.publish("t", b"later", defer_ms=300)
                await p.publish("t", b"now")
                await eventually(lambda: len(got) == 2)
            assert [body for body, _ in got] == [b"now", b"later"]
            assert got[1][1] - t0 >= 0.29
            c.set_max_in_flight(0)  # pause
            deadline = time.monotonic() + 10
            while (await stats(b.address, "t")).channels[0].clients[0].ready_count != 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            async with Producer([b.address]) as p:
                await p.publish("t", b"held")
            t = await stats(b.address, "t")
            assert t.channels[0].depth == 1 and len(got) == 2
            c.set_max_in_flight(10)
            await eventually(lambda: len(got) == 3)


async def test_handler_raising_cancelled_error_is_a_failure_not_a_dead_worker(
    tmp_path: Path,
) -> None:
    async with run_broker(tmp_path) as b:
        async with Producer([b.address]) as p:
            await p.publish_batch("t", [b"a", b"b", b"c"])
        seen: list[tuple[bytes, int]] = []

        async def handle(msg: Message) -> None:
            seen.append((msg.body, msg.attempts))
            if msg.attempts == 1 and msg.body == b"a":
                fut = asyncio.get_running_loop().create_future()
                fut.cancel()
                await fut  # raises CancelledError inside the handler

        async with Consumer("t", "c", [b.address], handler=handle, requeue_delay=0.01) as c:
            await eventually(lambda: c.stats.finished == 3, timeout=10)
            assert c.stats.handler_errors == 1
        assert sorted(seen) == [(b"a", 1), (b"a", 2), (b"b", 1), (b"c", 1)]


async def consume_all(address: str, topic: str, channel: str) -> list[Message]:
    got: list[Message] = []
    async with Consumer(topic, channel, [address], handler=got.append) as c:
        await c.wait_idle(timeout=10)
    return got


async def test_concurrent_publish_batches_share_rpcs(tmp_path: Path) -> None:
    async with run_broker(tmp_path) as b:
        await create_channel(b.address, "t", "c")
        async with Producer([b.address]) as p:
            await p.publish_batch("t", [b"warm"])
            assert p.rpc_count == 1
            calls: list[list[bytes]] = []
            acks: list[list[bytes]] = []

            async def worker(w: int) -> None:
                for r in range(10):
                    bodies = [b"%d-%d-%d" % (w, r, i) for i in range(100)]
                    calls.append(bodies)
                    acks.append([a.id for a in await p.publish_batch("t", bodies)])

            await asyncio.gather(*(worker(w) for w in range(16)))
            # 160 calls of 100, as the benchmark makes them, in far fewer RPCs.
            assert p.rpc_count - 1 <= 40
        got = await consume_all(b.address, "t", "c")
    assert len(got) == 1 + 16_000 and len({m.id for m in got}) == len(got)
    pos = {m.body: i for i, m in enumerate(got)}
    ids = {m.body: m.id for m in got}
    for bodies, call_ids in zip(calls, acks, strict=True):
        first = pos[bodies[0]]
        assert [pos[x] for x in bodies] == list(range(first, first + 100))  # contiguous, in order
        assert [ids[x] for x in bodies] == call_ids


async def test_invalid_batch_call_fails_alone_against_the_broker(tmp_path: Path) -> None:
    async with run_broker(tmp_path, max_msg_size=1000) as b:
        await create_channel(b.address, "t", "c")
        async with Producer([b.address], max_batches_in_flight=1) as p:
            await p.publish("t", b"warm")
            calls = [[b"%d-%d" % (c, i) for i in range(10)] for c in range(8)]
            calls[3][5] = b"x" * 2000  # the client allows it; the broker does not
            results = await asyncio.gather(
                *(p.publish_batch("t", bodies) for bodies in calls), return_exceptions=True
            )
            assert isinstance(results[3], InvalidError)
            assert all(isinstance(r, list) for i, r in enumerate(results) if i != 3)
            assert p.rpc_count <= 2 + 2 * 3  # one shared RPC, then halving to the bad call
        got = await consume_all(b.address, "t", "c")
    assert sorted(m.body for m in got) == sorted(
        [b"warm"] + [x for i, c in enumerate(calls) if i != 3 for x in c]
    )


async def test_coalesced_batches_fit_a_broker_with_a_smaller_max_batch(tmp_path: Path) -> None:
    async with run_broker(tmp_path, max_batch=100) as b:
        async with Producer([b.address]) as p:  # max_batch_size 5000 by default
            results = await asyncio.gather(
                *(p.publish_batch("t", [b"%d-%d" % (c, i) for i in range(40)]) for c in range(20))
            )
        assert [len(r) for r in results] == [40] * 20
        assert (await stats(b.address, "t")).message_count == 800


async def test_publish_batches_retried_with_the_same_ids(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    async with run_broker(tmp_path / "b", address=addr) as b:
        await create_channel(b.address, "t", "c")
    async with Producer([addr], retry_backoff=0.02, retry_backoff_max=0.1) as p:
        mine = [bytes([9, i]) * 8 for i in range(5)]
        tasks = [
            asyncio.ensure_future(p.publish_batch("t", [b"a%d" % i for i in range(5)], ids=mine)),
            *(
                asyncio.ensure_future(p.publish_batch("t", [b"%d-%d" % (c, i) for i in range(20)]))
                for c in range(5)
            ),
        ]
        await eventually(lambda: p.rpc_count >= 3)  # failed a few times
        assert not any(t.done() for t in tasks)
        async with run_broker(tmp_path / "b", address=addr):
            results = await asyncio.wait_for(asyncio.gather(*tasks), 20)
            got = await consume_all(addr, "t", "c")
    assert [a.id for a in results[0]] == mine
    acked = {a.id for r in results for a in r}
    assert len(acked) == 105 and sorted(m.id for m in got) == sorted(acked)
    assert all(m.attempts == 1 for m in got)
