"""The contract a client in any language builds from proto/ (issue 17, item 1): the
broker's limits as clients are told them, a msg_timeout_ms above the maximum refused
(not capped) with its limit in the ErrorInfo, server reflection v1 beside v1alpha
on the broker and the lookup, over real gRPC, and Message.attempts after a takeover
(real broker processes, kill -9)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2 as alpha
from grpc_reflection.v1alpha import reflection_pb2_grpc as alpha_grpc
from rawclient import RawSub

from pairq.broker.options import BrokerOptions
from pairq.lookup.lookup import Lookup
from pairq.lookup.options import LookupOptions
from pairq.reflection import V1_SERVICE, V1ALPHA_SERVICE
from pairq.testing import BrokerProcess, free_port, run_broker
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg

# Not the defaults, so that a field filled from the wrong option (or a default) shows.
FLAGS: dict[str, Any] = {
    "max_msg_size": 4321,
    "max_batch": 77,
    "max_batch_bytes": 98765,
    "max_defer_ms": 54321,
    "max_msg_timeout_ms": 123_000,
    "msg_timeout_ms": 45_000,
    "max_rdy_count": 333,
    "max_rdy_total": 4444,
    "idempotency_window_s": 17,
    "max_publish_rate": 500,
    "max_topics": 55,
    "max_channels": 6,
    "max_clients": 777,
    "max_attempts": 9,
    "heartbeat_interval_ms": 2500,
}
CONSTANTS = {
    "min_heartbeat_interval_ms": 100,
    "max_heartbeat_interval_ms": 600_000,
    "max_header_bytes": 64 * 1024,
}


def _check_limits(limits: pb.BrokerLimits) -> None:
    fields = [f.name for f in pb.BrokerLimits.DESCRIPTOR.fields]
    # Every field is an option of the same name (set above) or a documented constant.
    assert set(fields) == set(FLAGS) | set(CONSTANTS)
    assert set(FLAGS) <= {f.name for f in BrokerOptions.__dataclass_fields__.values()}
    for name in fields:
        assert getattr(limits, name) == {**FLAGS, **CONSTANTS}[name], name


async def _first(call: Any) -> pb.SubscribeResponse:
    async for resp in call:
        return resp  # type: ignore[no-any-return]
    raise AssertionError("stream ended without an answer")


async def test_limits_in_subscribe_accepted_and_get_stats(tmp_path) -> None:
    async with run_broker(tmp_path, **FLAGS) as b:
        async with grpc.aio.insecure_channel(b.address) as ch:
            stub = pbg.BrokerServiceStub(ch)
            stats = await stub.GetStats(pb.GetStatsRequest())
            _check_limits(stats.limits)
            ident = pb.SubscribeIdentify(topic="t", channel="c")
            call = stub.Subscribe(iter([pb.SubscribeRequest(identify=ident)]))
            resp = await _first(call)
            call.cancel()
            assert resp.WhichOneof("event") == "accepted"
            _check_limits(resp.accepted.limits)
            assert resp.accepted.msg_timeout_ms == FLAGS["msg_timeout_ms"]
            assert resp.accepted.heartbeat_interval_ms == FLAGS["heartbeat_interval_ms"]


async def test_msg_timeout_above_the_maximum_is_refused_with_the_limit(tmp_path) -> None:
    async with run_broker(tmp_path, max_msg_timeout_ms=120_000) as b:
        async with grpc.aio.insecure_channel(b.address) as ch:
            stub = pbg.BrokerServiceStub(ch)

            def identify(ms: int) -> Any:
                ident = pb.SubscribeIdentify(topic="t", channel="c", msg_timeout_ms=ms)
                return stub.Subscribe(iter([pb.SubscribeRequest(identify=ident)]))

            # At the maximum: accepted, in effect as asked.
            call = identify(120_000)
            resp = await _first(call)
            call.cancel()
            assert resp.accepted.msg_timeout_ms == 120_000
            # One above: the stream ends before SubscribeAccepted, nothing capped.
            call = identify(120_001)
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await _first(call)
            err = ei.value
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "120001" in (err.details() or "") and "--max-msg-timeout-ms" in (
                err.details() or ""
            )
            md = dict(await call.trailing_metadata() or ())
            info = _error_info(md["grpc-status-details-bin"])
            assert info.reason == "ERROR_CODE_INVALID"
            assert info.domain == "pairq.dev"
            assert dict(info.metadata) == {"limit": "max_msg_timeout_ms", "max": "120000"}


def _error_info(raw: bytes) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo in a grpc-status-details-bin trailer, decoded as a client in any
    language does (google.rpc.Status, then its Any details)."""
    from google.rpc import status_pb2

    st = status_pb2.Status.FromString(raw)
    assert st.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    infos = []
    for d in st.details:
        info = error_details_pb2.ErrorInfo()
        if d.Unpack(info):
            infos.append(info)
    assert len(infos) == 1
    return infos[0]


def _v1_classes() -> tuple[Any, Any]:
    """ServerReflectionRequest/Response of grpc.reflection.v1, as a v1-only client has
    them (from the pool's v1 file, not the v1alpha classes)."""
    pool = descriptor_pool.Default()
    req = pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
    resp = pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    return message_factory.GetMessageClass(req), message_factory.GetMessageClass(resp)


async def _ask_v1(ch: grpc.aio.Channel, requests: list[dict[str, Any]]) -> list[Any]:
    req_cls, resp_cls = _v1_classes()
    call = ch.stream_stream(
        f"/{V1_SERVICE}/ServerReflectionInfo",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=resp_cls.FromString,
    )(iter([req_cls(**r) for r in requests]))
    return [r async for r in call]


async def _ask_v1alpha(ch: grpc.aio.Channel, requests: list[dict[str, Any]]) -> list[Any]:
    stub = alpha_grpc.ServerReflectionStub(ch)
    call = stub.ServerReflectionInfo(iter([alpha.ServerReflectionRequest(**r) for r in requests]))
    return [r async for r in call]


async def _check_reflection(
    address: str, service: str, method: str, message: str, field: str
) -> None:
    """Both reflection versions list ``service`` and both reflection services, and
    describe ``service``, its ``method`` and a field of ``message`` (grpcurl's
    ``describe`` asks for each by name) with the file defining them."""
    async with grpc.aio.insecure_channel(address) as ch:
        for ask in (_ask_v1, _ask_v1alpha):
            listed, described, reflected, *members, unknown = await ask(
                ch,
                [
                    {"list_services": ""},
                    {"file_containing_symbol": service},
                    {"file_containing_symbol": V1_SERVICE},
                    {"file_containing_symbol": f"{service}.{method}"},
                    {"file_containing_symbol": f"pairq.v1.{message}.{field}"},
                    {"file_containing_symbol": f"{service}.NoSuchMethod"},
                ],
            )
            for m in members:
                assert m.file_descriptor_response.file_descriptor_proto == (
                    described.file_descriptor_response.file_descriptor_proto
                ), ask.__name__
            assert unknown.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
            names = {s.name for s in listed.list_services_response.service}
            assert {service, V1_SERVICE, V1ALPHA_SERVICE, "grpc.health.v1.Health"} <= names
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in described.file_descriptor_response.file_descriptor_proto
            ]
            assert any(
                f.package == "pairq.v1" and any(m.name == message for m in f.message_type)
                for f in files
            ), ask.__name__
            v1 = [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in reflected.file_descriptor_response.file_descriptor_proto
            ]
            assert [f.package for f in v1] == ["grpc.reflection.v1"], ask.__name__
            assert [s.name for s in v1[0].service] == ["ServerReflection"]


async def test_broker_serves_reflection_v1_and_v1alpha(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        await _check_reflection(
            b.address, "pairq.v1.BrokerService", "Publish", "BrokerLimits", "max_batch"
        )


async def test_lookup_serves_reflection_v1_and_v1alpha() -> None:
    lk = Lookup(LookupOptions(address="127.0.0.1:0"))
    await lk.start()
    try:
        await _check_reflection(
            lk.address, "pairq.v1.LookupService", "LookupTopic", "LookupTopicRequest", "topic"
        )
    finally:
        await lk.stop(grace=0.5)


async def _until(cond: Any, timeout: float, what: str) -> None:
    """Poll the coroutine function ``cond`` until it is truthy, failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        await asyncio.sleep(0.05)


async def test_attempts_after_a_takeover_of_a_message_in_flight(tmp_path: Path) -> None:
    """Message.attempts as broker.proto states it: a message the owner had delivered
    (attempts 1) and was not told finished when it died (kill -9) is delivered by the
    partner with attempts 1 again, from the partner's id, under a new epoch."""
    pa, pb_ = free_port(), free_port()
    a = BrokerProcess(
        tmp_path / "a", port=pa, args=["--pair", "p", "--partner", f"127.0.0.1:{pb_}"]
    )
    b = BrokerProcess(
        tmp_path / "b", port=pb_, args=["--pair", "p", "--partner", f"127.0.0.1:{pa}"]
    )
    try:
        await asyncio.to_thread(a.start)
        await asyncio.to_thread(b.start)
        async with (
            grpc.aio.insecure_channel(a.address) as ca,
            grpc.aio.insecure_channel(b.address) as cb,
        ):
            sa, sb = pbg.BrokerServiceStub(ca), pbg.BrokerServiceStub(cb)

            async def paired() -> bool:
                for stub in (sa, sb):
                    p = (await stub.GetStats(pb.GetStatsRequest(), timeout=2)).pair
                    if not (p.connected and p.partner_connected and p.lease_remaining_ms):
                        return False
                return True

            await _until(paired, 20, "the pair connected")
            body = pb.PublishItem(body=b"in flight")
            r = await sa.Publish(pb.PublishRequest(topic="t", message=body), timeout=5)
            assert r.copies == 2
            on_b = RawSub(sb, "t", "c")  # B owns nothing yet: it delivers nothing
            on_b.rdy(10)
            on_a = RawSub(sa, "t", "c")
            on_a.rdy(10)

            async def delivered() -> bool:
                return len(on_a.messages) == 1

            await _until(delivered, 10, "A's delivery")
            first = on_a.messages[0]
            assert first.id == r.id and first.attempts == 1
            a_id = first.broker_id
            a.kill()  # never FIN'd, never requeued: no attempt count reached B

            async def taken_over() -> bool:
                return len(on_b.messages) == 1

            await _until(taken_over, 20, "B's delivery after the takeover")
            again = on_b.messages[0]
            assert again.id == r.id and again.body == b"in flight"
            assert again.attempts == 1, "the delivery in flight on A is not counted"
            assert again.broker_id != a_id and again.epoch != first.epoch
            await on_b.cancel()
            await on_a.cancel()
    finally:
        a.kill()
        b.kill()
