"""Limits (issue 14 item 5): exceeding one gives RESOURCE_EXHAUSTED with the limit in the
message and its name in the ErrorInfo metadata, and never harms other clients."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rawclient import RawSub

from pairq.broker.limits import RateLimiter
from pairq.testing import eventually, run_broker
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg


def _stub(address: str) -> pbg.BrokerServiceStub:
    """A stub on a connection of its own (no subchannel shared with other stubs)."""
    opts = [("grpc.use_local_subchannel_pool", 1)]
    return pbg.BrokerServiceStub(grpc.aio.insecure_channel(address, options=opts))


def _limit(err: grpc.aio.AioRpcError, reason: str = "ERROR_CODE_TOO_MANY") -> dict[str, str]:
    st = rpc_status.from_call(err)
    assert st is not None
    for d in st.details:
        info = error_details_pb2.ErrorInfo()
        if d.Unpack(info):
            assert info.reason == reason
            return dict(info.metadata)
    raise AssertionError("no ErrorInfo")


async def _refused(
    call: object, name: str, value: int, reason: str = "ERROR_CODE_TOO_MANY"
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await call  # type: ignore[misc]
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, ei.value.details()
    flag = "--" + name.replace("_", "-")
    assert f"{flag}={value}" in (ei.value.details() or "")
    assert _limit(ei.value, reason) == {"limit": name, "max": str(value)}


def _items(n: int, size: int = 1) -> list[pb.PublishItem]:
    return [pb.PublishItem(body=b"x" * size)] * n


async def test_size_batch_topic_and_channel_limits(tmp_path) -> None:
    async with run_broker(
        tmp_path,
        max_msg_size=1000,
        max_batch=10,
        max_batch_bytes=5000,
        max_topics=2,
        max_channels=1,
    ) as b:
        stub = _stub(b.address)
        big = pb.PublishItem(body=b"x" * 1001)
        # Too large a message or batch keeps its reason (the client's InvalidError: do not
        # retry it unchanged), with RESOURCE_EXHAUSTED as its status.
        await _refused(
            stub.Publish(pb.PublishRequest(topic="t", message=big)),
            "max_msg_size",
            1000,
            "ERROR_CODE_BAD_MESSAGE",
        )
        await _refused(
            stub.PublishBatch(pb.PublishBatchRequest(topic="t", messages=_items(11))),
            "max_batch",
            10,
            "ERROR_CODE_BAD_BATCH",
        )
        await _refused(
            stub.PublishBatch(pb.PublishBatchRequest(topic="t", messages=_items(6, 1000))),
            "max_batch_bytes",
            5000,
            "ERROR_CODE_BAD_BATCH",
        )
        await stub.CreateTopic(pb.CreateTopicRequest(topic="a"))
        await stub.CreateTopic(pb.CreateTopicRequest(topic="b"))
        await _refused(stub.CreateTopic(pb.CreateTopicRequest(topic="c")), "max_topics", 2)
        await stub.CreateChannel(pb.CreateChannelRequest(topic="a", channel="c1"))
        await _refused(
            stub.CreateChannel(pb.CreateChannelRequest(topic="a", channel="c2")),
            "max_channels",
            1,
        )
        # Everything within the limits still works.
        r = await stub.PublishBatch(pb.PublishBatchRequest(topic="a", messages=_items(5, 1000)))
        assert len(r.ids) == 5


async def test_max_clients_refuses_the_extra_subscriber_only(tmp_path) -> None:
    async with run_broker(tmp_path, max_clients=2) as b:
        stub = _stub(b.address)
        first, second = RawSub(stub, "t", "c"), RawSub(stub, "t", "c")
        await eventually(lambda: first.accepted is not None and second.accepted is not None)
        third = RawSub(stub, "t", "c")
        await eventually(lambda: third.ended.is_set())
        assert third.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-clients=2" in third.details
        first.rdy(10)
        await stub.PublishBatch(pb.PublishBatchRequest(topic="t", messages=_items(3)))
        await eventually(lambda: len(first.messages) == 3)
        assert not first.ended.is_set() and not second.ended.is_set()
        await second.cancel()
        # A slot freed: a new subscriber is accepted.
        fourth = RawSub(stub, "t", "c")
        await eventually(lambda: fourth.accepted is not None)
        await first.cancel()
        await fourth.cancel()


async def test_max_rdy_total_cuts_the_grant_that_would_exceed_it(tmp_path) -> None:
    async with run_broker(tmp_path, max_rdy_total=10) as b:
        stub = _stub(b.address)
        a, c = RawSub(stub, "t", "c"), RawSub(stub, "t", "c")
        await eventually(lambda: a.accepted is not None and c.accepted is not None)
        a.rdy(8)
        await eventually(lambda: b.service.rdy_total == 8)
        c.rdy(5)
        await eventually(lambda: len(c.errors) == 1)
        assert c.errors[0].code == pb.ERROR_CODE_TOO_MANY
        assert (
            "RDY 5 cut to 2" in c.errors[0].message and "--max-rdy-total=10" in c.errors[0].message
        )
        await stub.PublishBatch(pb.PublishBatchRequest(topic="t", messages=_items(20)))
        await eventually(lambda: len(a.messages) == 8 and len(c.messages) == 2)
        assert not a.ended.is_set() and not c.ended.is_set()
        # Lowering one grant frees credit for the other.
        a.rdy(0)
        c.rdy(5)
        await eventually(lambda: len(c.messages) == 5)
        assert len(c.errors) == 1
        await a.cancel()
        await c.cancel()
        await eventually(lambda: b.service.rdy_total == 0)


async def test_publish_rate_limits_one_connection_not_the_others(tmp_path) -> None:
    async with run_broker(tmp_path, max_publish_rate=100, max_batch=50) as b:
        greedy, polite = _stub(b.address), _stub(b.address)  # two connections
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            for _ in range(10):
                await greedy.PublishBatch(pb.PublishBatchRequest(topic="t", messages=_items(50)))
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _limit(ei.value) == {"limit": "max_publish_rate", "max": "100"}
        r = await polite.PublishBatch(pb.PublishBatchRequest(topic="t", messages=_items(50)))
        assert len(r.ids) == 50


def test_rate_limiter_rules() -> None:
    rl = RateLimiter(10)
    assert rl.allow("a", 10, 0.0)
    assert not rl.allow("a", 1, 0.0)  # bucket empty; nothing taken
    assert rl.allow("b", 10, 0.0)  # another client has its own bucket
    assert not rl.allow("a", 6, 0.5) and rl.allow("a", 5, 0.5)  # refills at 10/s
    assert rl.allow("a", 10, 10.0) and not rl.allow("a", 11, 100.0)  # at most one second's worth
    rl.allow("c", 1, 200.0)
    assert len(rl) == 1  # idle, refilled buckets are forgotten
    assert RateLimiter(0).allow("x", 10**9, 0.0)
