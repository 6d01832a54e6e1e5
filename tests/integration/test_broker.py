"""The broker over real gRPC on loopback with a real LMDB store."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import grpc
import pytest
from rawclient import RawSub

from pairq.broker.broker import Broker
from pairq.broker.options import BrokerOptions
from pairq.client import Producer
from pairq.errors import PairqError, StoreFullError
from pairq.testing import eventually, run_broker
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg


def stub_for(b: Broker) -> pbg.BrokerServiceStub:
    return pbg.BrokerServiceStub(grpc.aio.insecure_channel(b.address))


async def publish(
    stub: pbg.BrokerServiceStub, topic: str, bodies: list[bytes], **kw: object
) -> list[bytes]:
    resp = await stub.PublishBatch(
        pb.PublishBatchRequest(topic=topic, messages=[pb.PublishItem(body=b, **kw) for b in bodies])  # type: ignore[arg-type]
    )
    return list(resp.ids)


async def test_publish_consume_fin_roundtrip(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        r = await stub.Publish(
            pb.PublishRequest(topic="t", message=pb.PublishItem(body=b"one", headers={"k": "v"}))
        )
        assert len(r.id) == 16 and r.copies == 1
        ids = await publish(stub, "t", [b"a", b"b", b"c"])
        sub = RawSub(stub, "t", "c")
        sub.rdy(10)
        await eventually(lambda: len(sub.messages) == 4)
        msgs = sub.take()
        assert [m.body for m in msgs] == [b"one", b"a", b"b", b"c"]
        assert [m.id for m in msgs[1:]] == ids
        assert dict(msgs[0].headers) == {"k": "v"}
        assert all(m.attempts == 1 and m.broker_id == b.node_id for m in msgs)
        assert msgs[0].timestamp_ns <= time.time_ns()
        sub.fin([m.id for m in msgs])
        await eventually(lambda: b.topics["t"].channels["c"].core.finished == 4)
        st = await stub.GetStats(pb.GetStatsRequest(topic="t"))
        ch = st.topics[0].channels[0]
        assert (ch.in_flight, ch.finished, ch.depth) == (0, 4, 0)
        assert ch.clients[0].finish_count == 4
        await sub.cancel()


async def test_every_channel_gets_every_message_and_consumers_share(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        await stub.CreateChannel(pb.CreateChannelRequest(topic="t", channel="a"))
        await stub.CreateChannel(pb.CreateChannelRequest(topic="t", channel="b"))
        await publish(stub, "t", [b"%d" % i for i in range(100)])
        a1, a2, bsub = RawSub(stub, "t", "a"), RawSub(stub, "t", "a"), RawSub(stub, "t", "b")
        a1.rdy(60)
        a2.rdy(60)
        bsub.rdy(100)
        await eventually(
            lambda: len(a1.messages) + len(a2.messages) == 100 and len(bsub.messages) == 100
        )
        assert {m.body for m in a1.messages + a2.messages} == {b"%d" % i for i in range(100)}
        assert a1.messages and a2.messages  # shared between the two consumers
        for s in (a1, a2, bsub):
            await s.cancel()


async def test_messages_before_first_channel_wait_later_channel_starts_at_head(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        await publish(stub, "t", [b"early1", b"early2"])
        first = RawSub(stub, "t", "first")
        first.rdy(10)
        await eventually(lambda: len(first.messages) == 2)
        await stub.CreateChannel(pb.CreateChannelRequest(topic="t", channel="late"))
        await publish(stub, "t", [b"after"])
        late = RawSub(stub, "t", "late")
        late.rdy(10)
        await eventually(lambda: len(late.messages) == 1 and len(first.messages) == 3)
        assert late.messages[0].body == b"after"
        await first.cancel()
        await late.cancel()


async def test_rdy_limits_in_flight_and_timeout_requeues_with_attempts(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        ids = await publish(stub, "t", [b"%d" % i for i in range(10)])
        sub = RawSub(stub, "t", "c", msg_timeout_ms=300)
        sub.rdy(3)
        await eventually(lambda: len(sub.messages) == 3)
        ch = b.topics["t"].channels["c"]
        assert ch.core.in_flight == 3 and ch.core.depth == 7
        first = [m.id for m in sub.messages]
        assert first == ids[:3]
        # Nothing is FIN'd: every 300 ms the 3 in flight time out and go to the back
        # of the queue, so the next deliveries are the next 3, never more than RDY.
        await eventually(lambda: len(sub.messages) >= 13, timeout=10)
        got = sub.take()
        assert {m.id for m in got} == set(ids)
        assert [m.id for m in got[:12]] == ids + ids[:2]
        assert all(m.attempts == 2 for m in got[10:])
        st = await stub.GetStats(pb.GetStatsRequest(topic="t"))
        assert st.topics[0].channels[0].timed_out >= 10
        assert st.topics[0].channels[0].in_flight <= 3
        await sub.cancel()


async def test_req_with_delay_touch_and_unknown_ids(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        await publish(stub, "t", [b"x"])
        sub = RawSub(stub, "t", "c", msg_timeout_ms=400)
        sub.rdy(1)
        await eventually(lambda: len(sub.messages) == 1)
        m = sub.take()[0]
        t0 = time.monotonic()
        sub.req([m.id], delay_ms=300)
        await eventually(lambda: len(sub.messages) == 1)
        assert time.monotonic() - t0 >= 0.28
        m2 = sub.take()[0]
        assert m2.id == m.id and m2.attempts == 2
        # TOUCH keeps it in flight past the original timeout.
        for _ in range(4):
            await asyncio.sleep(0.15)  # the thing under test is elapsed time itself
            sub.touch([m.id])
        assert sub.messages == []
        sub.fin([m.id])
        sub.fin([b"u" * 16])
        await eventually(lambda: len(sub.errors) == 1)
        assert sub.errors[0].code == pb.ERROR_CODE_FIN_FAILED
        assert list(sub.errors[0].ids) == [b"u" * 16]
        await eventually(lambda: b.topics["t"].channels["c"].core.finished == 1)
        await sub.cancel()


async def test_max_attempts_dead_letters_list_and_replay(tmp_path) -> None:
    async with run_broker(tmp_path, max_attempts=2) as b:
        stub = stub_for(b)
        ids = await publish(stub, "t", [b"poison", b"fine"])
        sub = RawSub(stub, "t", "c")
        sub.rdy(10)
        for _ in range(2):
            await eventually(lambda: any(m.id == ids[0] for m in sub.messages))
            for m in sub.take():
                if m.id == ids[0]:
                    sub.req([m.id])
                else:
                    sub.fin([m.id])
        dl = await stub.ListDeadLetters(pb.ListDeadLettersRequest(topic="t", channel="c"))
        await eventually(lambda: b.topics["t"].channels["c"].dlq_count == 1)
        dl = await stub.ListDeadLetters(pb.ListDeadLettersRequest(topic="t", channel="c"))
        assert dl.total == 1 and dl.messages[0].id == ids[0] and dl.messages[0].body == b"poison"
        assert dl.messages[0].attempts == 2
        r = await stub.ReplayDeadLetters(pb.ReplayDeadLettersRequest(topic="t", channel="c"))
        assert r.replayed == 1
        await eventually(lambda: len(sub.messages) == 1)
        m = sub.take()[0]
        assert m.id == ids[0] and m.attempts == 1
        sub.fin([m.id])
        await eventually(lambda: b.topics["t"].channels["c"].core.finished >= 2)
        dl = await stub.ListDeadLetters(pb.ListDeadLettersRequest(topic="t", channel="c"))
        assert dl.total == 0
        await sub.cancel()


async def test_deferred_publish_keeps_due_time_across_restart(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        await stub.CreateChannel(pb.CreateChannelRequest(topic="t", channel="c"))
        t_pub = time.monotonic()
        await publish(stub, "t", [b"later"], defer_ms=1500)
        await publish(stub, "t", [b"now"])
        sub = RawSub(stub, "t", "c")
        sub.rdy(5)
        await eventually(lambda: len(sub.messages) == 1)
        assert sub.take()[0].body == b"now"
        await sub.cancel()
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        sub = RawSub(stub, "t", "c")
        sub.rdy(5)
        await eventually(lambda: len(sub.messages) == 1, timeout=10)
        # "now" was never FIN'd, so it is redelivered; "later" still waits for its due time.
        assert sub.messages[0].body == b"now"
        await eventually(lambda: len(sub.messages) == 2, timeout=10)
        assert sub.messages[1].body == b"later"
        assert time.monotonic() - t_pub >= 1.4
        await sub.cancel()


async def test_requeue_delay_survives_restart(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        await publish(stub, "t", [b"m"])
        sub = RawSub(stub, "t", "c")
        sub.rdy(1)
        await eventually(lambda: len(sub.messages) == 1)
        t_req = time.monotonic()
        sub.req([sub.take()[0].id], delay_ms=1500)
        await eventually(lambda: b.topics["t"].channels["c"].core.deferred == 1)
        await eventually(lambda: not b.topics["t"].channels["c"].state_dirty)
        await sub.cancel()
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        sub = RawSub(stub, "t", "c")
        sub.rdy(1)
        # Read back from the log when a consumer arrives: still deferred, not ready.
        await eventually(lambda: b.topics["t"].channels["c"].core.deferred == 1)
        assert sub.messages == []
        await eventually(lambda: len(sub.messages) == 1, timeout=10)
        assert time.monotonic() - t_req >= 1.4
        assert sub.messages[0].attempts == 2
        await sub.cancel()


async def test_finished_messages_stay_finished_after_restart(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        ids = await publish(stub, "t", [b"%d" % i for i in range(50)])
        sub = RawSub(stub, "t", "c")
        sub.rdy(50)
        await eventually(lambda: len(sub.messages) == 50)
        # FIN every other message: progress is a floor plus sparse finished keys.
        sub.fin([m.id for m in sub.messages[::2]])
        await eventually(lambda: b.topics["t"].channels["c"].core.finished == 25)
        await sub.cancel()
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        sub = RawSub(stub, "t", "c")
        sub.rdy(100)
        await eventually(lambda: len(sub.messages) == 25)
        assert [m.id for m in sub.messages] == ids[1::2]
        await sub.cancel()


async def test_ephemeral_topic_and_channel(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        r = await stub.Publish(
            pb.PublishRequest(topic="e#ephemeral", message=pb.PublishItem(body=b"x"))
        )
        assert r.copies == 0
        sub = RawSub(stub, "e#ephemeral", "c#ephemeral")
        sub.rdy(5)
        await eventually(lambda: len(sub.messages) == 1)
        await sub.cancel()
        await eventually(lambda: "c#ephemeral" not in b.topics["e#ephemeral"].channels)
        # A durable topic's ephemeral channel disappears with its last consumer too.
        await publish(stub, "d", [b"y"])
        s2 = RawSub(stub, "d", "tail#ephemeral")
        s2.rdy(5)
        await eventually(lambda: len(s2.messages) == 1)
        await s2.cancel()
        await eventually(lambda: "tail#ephemeral" not in b.topics["d"].channels)
    async with run_broker(tmp_path) as b:
        assert "e#ephemeral" not in b.topics and "d" in b.topics
        assert "tail#ephemeral" not in b.topics["d"].channels


async def test_pause_unpause_empty_delete(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        await stub.CreateChannel(pb.CreateChannelRequest(topic="t", channel="c"))
        await stub.PauseChannel(pb.PauseChannelRequest(topic="t", channel="c"))
        await publish(stub, "t", [b"1", b"2"])
        sub = RawSub(stub, "t", "c")
        sub.rdy(5)
        await eventually(lambda: sub.accepted is not None)
        st = await stub.GetStats(pb.GetStatsRequest(topic="t", channel="c"))
        assert st.topics[0].channels[0].paused and st.topics[0].channels[0].depth == 2
        assert sub.messages == []
        await stub.UnpauseChannel(pb.UnpauseChannelRequest(topic="t", channel="c"))
        await eventually(lambda: len(sub.messages) == 2)
        await stub.PauseTopic(pb.PauseTopicRequest(topic="t"))
        await publish(stub, "t", [b"3"])
        await stub.EmptyChannel(pb.EmptyChannelRequest(topic="t", channel="c"))
        st = await stub.GetStats(pb.GetStatsRequest(topic="t"))
        assert st.topics[0].paused and st.topics[0].channels[0].depth == 0
        assert st.topics[0].channels[0].in_flight == 0
        await stub.UnpauseTopic(pb.UnpauseTopicRequest(topic="t"))
        await publish(stub, "t", [b"4"])
        await eventually(lambda: len(sub.messages) == 3)
        assert sub.messages[-1].body == b"4"
        await stub.DeleteTopic(pb.DeleteTopicRequest(topic="t"))
        await eventually(lambda: sub.ended.is_set())
        assert sub.status == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.GetStats(pb.GetStatsRequest(topic="t"))
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    async with run_broker(tmp_path) as b:
        assert "t" not in b.topics


async def test_bad_input_gets_clear_status_and_broker_keeps_serving(tmp_path) -> None:
    async with run_broker(tmp_path, max_msg_size=1000, max_rdy_count=50) as b:
        stub = stub_for(b)
        cases = [
            pb.PublishRequest(topic="bad name!", message=pb.PublishItem(body=b"x")),
            pb.PublishRequest(topic="x" * 65, message=pb.PublishItem(body=b"x")),
            pb.PublishRequest(topic="t", message=pb.PublishItem(body=b"")),
            pb.PublishRequest(topic="t", message=pb.PublishItem(body=b"x", id=b"short")),
        ]
        for req in cases:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await stub.Publish(req)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert ei.value.details()
            err = PairqError.from_rpc_error(ei.value)
            assert err.reason.startswith("ERROR_CODE_")
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.PublishBatch(pb.PublishBatchRequest(topic="t"))
        assert "1 to" in (ei.value.details() or "")
        # RDY above the cap ends that stream with INVALID_ARGUMENT.
        sub = RawSub(stub, "t", "c")
        sub.rdy(51)
        await eventually(lambda: sub.ended.is_set())
        assert sub.status == grpc.StatusCode.INVALID_ARGUMENT and "51" in sub.details
        # First message not identify.
        q: asyncio.Queue[pb.SubscribeRequest] = asyncio.Queue()
        q.put_nowait(pb.SubscribeRequest(ready=pb.SubscribeReady(count=1)))

        async def reqs():  # type: ignore[no-untyped-def]
            yield await q.get()
            await asyncio.Event().wait()

        with pytest.raises(grpc.aio.AioRpcError) as ei:
            async for _ in stub.Subscribe(reqs()):
                pass
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # Garbage bytes on the port: the connection dies, the broker does not.
        for junk in (b"\x00" * 100, b"GET / HTTP/1.1\r\n\r\n", bytes(range(256)) * 8):
            with socket.create_connection(("127.0.0.1", b.port)) as s:
                s.sendall(junk)
                s.settimeout(2)
                try:
                    s.recv(100)
                except (TimeoutError, ConnectionError):
                    pass
        r = await stub.Publish(pb.PublishRequest(topic="t", message=pb.PublishItem(body=b"ok")))
        assert len(r.id) == 16


async def test_heartbeat_timeout_disconnects_silent_consumer_and_requeues(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        await publish(stub, "t", [b"x"])
        silent = RawSub(stub, "t", "c", heartbeat_interval_ms=150)
        silent.auto_nop = False
        silent.rdy(1)
        await eventually(lambda: len(silent.messages) == 1)
        await eventually(lambda: silent.ended.is_set(), timeout=5)
        assert silent.status == grpc.StatusCode.DEADLINE_EXCEEDED
        live = RawSub(stub, "t", "c", heartbeat_interval_ms=150)
        live.rdy(1)
        await eventually(lambda: len(live.messages) == 1)
        assert live.messages[0].attempts == 2
        await eventually(lambda: live.heartbeats >= 3)
        assert not live.ended.is_set()
        await live.cancel()


async def test_close_drains_in_flight_then_ends(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        await publish(stub, "t", [b"1", b"2"])
        sub = RawSub(stub, "t", "c")
        sub.rdy(2)
        await eventually(lambda: len(sub.messages) == 2)
        sub.close()
        sub.fin([sub.messages[0].id])
        await asyncio.sleep(0)
        assert not sub.ended.is_set()
        sub.fin([sub.messages[1].id])
        await eventually(lambda: sub.ended.is_set())
        assert sub.status == grpc.StatusCode.OK


async def test_store_full_refuses_publish_but_delivers(tmp_path) -> None:
    cap = 16 * 1024 * 1024
    async with run_broker(
        tmp_path, max_store_bytes=cap, store_reserve_bytes=4 * 1024 * 1024, max_msg_size=65536
    ) as b:
        stub = stub_for(b)
        body = b"z" * 60000
        published = 0
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            for _ in range(1000):
                await stub.PublishBatch(
                    pb.PublishBatchRequest(topic="t", messages=[pb.PublishItem(body=body)] * 10)
                )
                published += 10
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "full" in (ei.value.details() or "")
        assert 0 < published < 1000 * 10
        st = await stub.GetStats(pb.GetStatsRequest())
        assert st.health.startswith("store full")
        # Delivery continues, and finishing frees room again.
        sub = RawSub(stub, "t", "c")
        sub.rdy(500)
        await eventually(lambda: len(sub.messages) >= published, timeout=20)
        sub.fin([m.id for m in sub.messages])
        await eventually(lambda: not b.store.full_reason, timeout=20)
        r = await stub.Publish(pb.PublishRequest(topic="t", message=pb.PublishItem(body=b"again")))
        assert r.copies == 1
        await sub.cancel()


async def test_health_and_reflection_are_served(tmp_path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with run_broker(tmp_path) as b:
        ch = grpc.aio.insecure_channel(b.address)
        h = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="pairq.v1.BrokerService")
        )
        assert h.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def one():  # type: ignore[no-untyped-def]
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names = []
        async for resp in refl.ServerReflectionInfo(one()):
            names = [s.name for s in resp.list_services_response.service]
            break
        assert "pairq.v1.BrokerService" in names


def test_options_validation_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="max-rdy-count"):
        BrokerOptions(max_rdy_count=0).validate()
    with pytest.raises(ValueError, match="HOST:PORT"):
        BrokerOptions(address="nope").validate()


async def test_backlog_larger_than_memory_is_read_back_in_chunks_without_loss(tmp_path) -> None:
    # Regression: a refill limited by the in-memory room once mistook "fewer rows
    # than a full chunk" for missing seqs and marked the rest of the log finished.
    async with run_broker(tmp_path, max_backlog=150) as b:
        stub = stub_for(b)
        ids: list[bytes] = []
        for _ in range(10):
            ids += await publish(stub, "t", [b"%d" % i for i in range(1000)])
        sub = RawSub(stub, "t", "c")
        sub.rdy(200)
        seen: list[bytes] = []

        def drain() -> bool:
            got = sub.take()
            if got:
                sub.fin([m.id for m in got])
                seen.extend(m.id for m in got)
            return len(seen) >= len(ids)

        await eventually(drain, timeout=30)
        assert seen == ids  # all of them, in order, once
        ch = b.topics["t"].channels["c"]
        await eventually(lambda: ch.floor == 10_000 and not ch.fin_mem)
        await sub.cancel()


def test_cli_port_in_use_is_one_clear_line(tmp_path) -> None:
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for cmd in (["broker", "--data-dir", str(tmp_path / "d")], ["lookup"]):
            proc = subprocess.run(
                [sys.executable, "-m", "pairq.cli", *cmd, "--address", f"127.0.0.1:{port}"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode != 0
            assert "address in use" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[
                -2000:
            ]


async def test_publish_stream_answers_each_request_and_survives_bad_ones(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        ch = grpc.aio.insecure_channel(b.address)
        call = pbg.BrokerServiceStub(ch).PublishStream()
        own = os.urandom(16)
        reqs = [
            pb.PublishStreamRequest(
                request_id=1,
                topic="t",
                messages=[pb.PublishItem(body=b"a"), pb.PublishItem(body=b"b")],
            ),
            pb.PublishStreamRequest(
                request_id=5, topic="t", messages=[pb.PublishItem(id=own, body=b"d")]
            ),
            pb.PublishStreamRequest(
                request_id=2, topic="bad topic!", messages=[pb.PublishItem(body=b"x")]
            ),
            pb.PublishStreamRequest(request_id=3, topic="t", messages=[]),
            pb.PublishStreamRequest(request_id=4, topic="t", messages=[pb.PublishItem(body=b"c")]),
        ]
        for r in reqs:
            await call.write(r)
        answers = {}
        for _ in reqs:
            resp = await asyncio.wait_for(call.read(), 5)
            answers[resp.request_id] = resp
        assert (
            len(answers[1].ids) == 2 and answers[1].copies == 1 and not answers[1].HasField("error")
        )
        assert (
            answers[2].error.code == pb.ERROR_CODE_BAD_TOPIC and "topic" in answers[2].error.message
        )
        assert answers[3].error.code == pb.ERROR_CODE_BAD_BATCH and not answers[3].ids
        assert len(answers[4].ids) == 1
        assert answers[5].copies == 1 and not answers[5].ids  # the client knows its own ids
        st = await pbg.BrokerServiceStub(ch).GetStats(pb.GetStatsRequest(topic="t"))
        assert st.topics[0].message_count == 4
        # Shutdown ends the stream cleanly (and promptly: the grace is not waited out).
        t0 = time.monotonic()
        await b.stop(grace=10)
        assert time.monotonic() - t0 < 5
        assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
        await ch.close()


async def test_a_producer_fails_over_from_a_full_store_to_a_broker_with_room(tmp_path) -> None:
    """Regression (chaos harness, disk-full): a full store on one broker must not stop a
    producer that has another broker to go to; only when all are full is it refused."""
    cap = 16 * 1024 * 1024
    async with (
        run_broker(
            tmp_path / "full",
            max_store_bytes=cap,
            store_reserve_bytes=4 * 1024 * 1024,
            max_msg_size=65536,
        ) as full,
        run_broker(tmp_path / "room") as room,
    ):
        stub = stub_for(full)
        body = b"z" * 60000
        with pytest.raises(grpc.aio.AioRpcError):
            for _ in range(1000):
                await stub.PublishBatch(
                    pb.PublishBatchRequest(topic="t", messages=[pb.PublishItem(body=body)] * 10)
                )
        async with Producer(brokers=[full.address, room.address], retry_timeout=10) as p:
            acks = [await p.publish("t", b"after %d" % i) for i in range(20)]
        assert all(a.copies == 1 for a in acks)
        st = await stub_for(room).GetStats(pb.GetStatsRequest(topic="t"))
        assert st.topics[0].message_count == 20
        async with Producer(brokers=[full.address], retry_timeout=5) as p:
            with pytest.raises(StoreFullError):
                await p.publish("t", b"nowhere")


async def test_a_range_that_never_settles_is_reported_not_silent(
    tmp_path, monkeypatch, caplog
) -> None:
    """Every reserved seq range must settle (Topic.reserve). One that does not holds
    the committed head, and with it every later fan-out, while the publishes behind
    it are still acknowledged: deliveries stop without a sign. The broker logs it."""
    import pairq.broker.broker as broker_mod

    monkeypatch.setattr(broker_mod, "STALL_CHECK_S", 0.05)
    monkeypatch.setattr(broker_mod, "STALL_REPORT_S", 0.3)
    async with run_broker(tmp_path) as b:
        async with Producer(b.address) as p:
            await p.publish("t", b"first")
            topic = b.topics["t"]
            assert topic.stalled(time.monotonic()) == 0.0
            stuck = topic.reserve(1)  # a bug's range: reserved, never settled
            await p.publish("t", b"behind it")  # acknowledged, but cannot fan out
            assert topic.committed_seq == stuck and topic.waiting_ranges == 1
            await eventually(
                lambda: any(
                    f"seq {stuck} has not settled" in r.getMessage() for r in caplog.records
                ),
                timeout=10,
            )
            topic.settle(stuck, 1, None)  # the range fails: the head moves on
            assert topic.committed_seq == stuck + 2 and topic.stalled(time.monotonic()) == 0.0


@pytest.mark.parametrize(
    ("headers", "refusal"),
    [
        ({"k": "v"}, None),
        ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, None),
        ({"a": "1", "b": "ü", "traceparent": "x"}, None),
        ({"": "v"}, "header names must not be empty"),
        ({"a": "1", "": "v"}, "header names must not be empty"),
        ({"k": "x" * (64 * 1024)}, "headers exceed 65536 bytes"),
        ({"a": "1", "k": "x" * (64 * 1024 - 2)}, "headers exceed 65536 bytes"),
    ],
    ids=["one", "traceparent", "three", "empty-name", "empty-name-of-two", "big", "big-of-two"],
)
async def test_headers_are_stored_as_sent_or_refused_with_a_reason(
    tmp_path, headers: dict[str, str], refusal: str | None
) -> None:
    """One header takes a shorter path than several (publishing.Publisher.record):
    both store the headers as sent and refuse the same bad ones."""
    async with run_broker(tmp_path) as b:
        stub = stub_for(b)
        item = pb.PublishItem(body=b"m", headers=headers)
        if refusal is not None:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Publish(pb.PublishRequest(topic="t", message=item))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refusal in (err.value.details() or "")
            resp = await stub.PublishStream(  # the same refusal inside a stream
                iter([pb.PublishStreamRequest(request_id=1, topic="t", messages=[item])])
            ).read()
            assert refusal in resp.error.message
            return
        await stub.Publish(pb.PublishRequest(topic="t", message=item))
        sub = RawSub(stub, "t", "c")
        sub.rdy(1)
        await eventually(lambda: len(sub.messages) == 1)
        assert dict(sub.messages[0].headers) == headers
        await sub.cancel()
