"""Regression tests for undecodable requests and error messages that echo huge input
(issue 14): INVALID_ARGUMENT with a short message and no traceback, on the broker and
the lookup, also inside a Subscribe or PublishStream stream (which end with that status,
not OK); a 100 kB name comes back as NOT_FOUND/INVALID_ARGUMENT, never a metadata-size
error."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from pairq.errors import MAX_MESSAGE_CHARS, PairqError
from pairq.lookup import Lookup, LookupOptions
from pairq.testing import run_broker, run_pair
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg
from pairq.v1 import lookup_pb2 as lpb
from pairq.v1 import lookup_pb2_grpc as lpbg

# Bytes no protobuf parser accepts: field 1 as a length-delimited value running past the end,
# an invalid wire type 7, a truncated varint.
GARBAGE = [b"\x0a\xff\xff\xff\x0f", b"\x0f", b"\x08\xff", b"\xff" * 11]


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


async def _raw_unary(address: str, method: str, data: bytes) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as ch:
        call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await call(data)
    return ei.value


async def _raw_stream(address: str, method: str, frames: list[bytes]) -> grpc.aio.AioRpcError:
    """A bidi stream that sends ``frames`` then waits; the server must end it with an error."""

    async with grpc.aio.insecure_channel(address) as ch:
        # The write API, not a request iterator: nothing of the test's own client is left
        # running when the server ends the call.
        call = ch.stream_stream(method, request_serializer=None, response_deserializer=None)()
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            async with asyncio.timeout(10):
                for f in frames:
                    await call.write(f)
                while await call.read() is not grpc.aio.EOF:
                    pass
                await call  # the status
    return ei.value


def _check_invalid(err: grpc.aio.AioRpcError) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    details = err.details() or ""
    assert "undecodable" in details and len(details) < 400
    assert PairqError.from_rpc_error(err).reason == "ERROR_CODE_INVALID"


async def test_broker_answers_undecodable_requests_invalid_argument_without_traceback(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with run_broker(tmp_path) as b:
        svc = "/pairq.v1.BrokerService/"
        for method in ("Publish", "PublishBatch", "CreateTopic", "GetStats", "ListDeadLetters"):
            for junk in GARBAGE:
                _check_invalid(await _raw_unary(b.address, svc + method, junk))
        # Inside a Subscribe stream: as the first message, and after a valid identify.
        ident = pb.SubscribeRequest(
            identify=pb.SubscribeIdentify(topic="t", channel="c")
        ).SerializeToString()
        _check_invalid(await _raw_stream(b.address, svc + "Subscribe", [GARBAGE[0]]))
        _check_invalid(await _raw_stream(b.address, svc + "Subscribe", [ident, GARBAGE[1]]))
        # PublishStream: requests before the garbage are answered, then the stream ends.
        ok = pb.PublishStreamRequest(
            request_id=1, topic="t", messages=[pb.PublishItem(body=b"x")]
        ).SerializeToString()
        _check_invalid(await _raw_stream(b.address, svc + "PublishStream", [ok, GARBAGE[2]]))
        stub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(b.address))
        r = await stub.Publish(pb.PublishRequest(topic="t", message=pb.PublishItem(body=b"ok")))
        assert len(r.id) == 16
    assert not _tracebacks(caplog), [r.getMessage() for r in _tracebacks(caplog)]


async def test_lookup_answers_undecodable_requests_invalid_argument_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    lk = Lookup(LookupOptions(address="127.0.0.1:0"))
    await lk.start()
    try:
        svc = "/pairq.v1.LookupService/"
        for method in ("LookupTopic", "ListNodes", "TombstoneTopic", "CreateTopicRegistration"):
            for junk in GARBAGE:
                _check_invalid(await _raw_unary(lk.address, svc + method, junk))
        _check_invalid(await _raw_stream(lk.address, svc + "Register", [GARBAGE[0]]))
    finally:
        await lk.stop()
    assert not _tracebacks(caplog), [r.getMessage() for r in _tracebacks(caplog)]


async def test_huge_names_come_back_as_short_errors_not_metadata_overflow(tmp_path) -> None:
    huge = "n" * 100_000
    lk = Lookup(LookupOptions(address="127.0.0.1:0"))
    await lk.start()
    try:
        stub = lpbg.LookupServiceStub(grpc.aio.insecure_channel(lk.address))
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.TombstoneTopic(lpb.TombstoneTopicRequest(topic="t", node=huge))
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND, ei.value.details()
        assert "(100000 chars)" in (ei.value.details() or "")
        assert len(ei.value.details() or "") <= MAX_MESSAGE_CHARS
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await stub.LookupTopic(lpb.LookupTopicRequest(topic=huge))
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await lk.stop()
    async with run_broker(tmp_path) as b:
        bstub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(b.address))
        for call in (
            bstub.Publish(pb.PublishRequest(topic=huge, message=pb.PublishItem(body=b"x"))),
            bstub.CreateChannel(pb.CreateChannelRequest(topic="t", channel=huge)),
            bstub.GetStats(pb.GetStatsRequest(topic=huge)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await call
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
            assert len(ei.value.details() or "") < 400


def test_status_of_any_error_fits_in_grpc_trailers() -> None:
    err = PairqError("x" * 1_000_000, code=pb.ERROR_CODE_INVALID, name="y" * 1_000_000)
    status = err.to_status()
    assert len(status.details) <= MAX_MESSAGE_CHARS
    assert sum(len(v) for _, v in status.trailing_metadata) < 4096


async def test_replication_service_answers_garbage_invalid_argument(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with run_pair(tmp_path) as (a, _b):
        for junk in GARBAGE:
            err = await _raw_stream(a.address, "/pairq.v1.ReplicationService/Replicate", [junk])
            _check_invalid(err)
        assert a.pair is not None and a.pair.connected and a.pair.partner_connected
    assert not _tracebacks(caplog), [r.getMessage() for r in _tracebacks(caplog)]
