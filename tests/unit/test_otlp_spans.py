"""pairq.otlp_spans writes what the SDK's OTLP encoder writes: both encodings of
the same spans parse to equal ``ExportTraceServiceRequest`` messages, for every
kind of span pairq and its users make and for the attribute values the OTLP
types can and cannot carry; and the exporter built on it sends them to a real
collector (gRPC on loopback)."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tsp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tsg
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from pairq.otlp_spans import encode_spans, otlp_span_exporter
from pairq.telemetry import batch_span

Request = tsp.ExportTraceServiceRequest


def same(spans: list[Any]) -> Request:
    """Both encodings of ``spans``, asserted equal; the request."""
    ours = Request.FromString(encode_spans(spans))
    theirs = Request.FromString(sdk_encode(spans).SerializeToString())
    assert ours == theirs
    return ours


def recorded(limits: SpanLimits | None = None, resource: Resource | None = None) -> Any:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=resource or Resource.create({"service.name": "t"}), span_limits=limits
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def remote(trace_id: int, span_id: int, sampled: bool = True, state: str = "") -> SpanContext:
    return SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=TraceFlags(1 if sampled else 0),
        trace_state=TraceState.from_header([state]) if state else TraceState(),
    )


def test_spans_as_pairq_makes_them() -> None:
    provider, exporter = recorded()
    tracer = provider.get_tracer("pairq.client", "1.2.3", schema_url="https://s/1")
    with tracer.start_as_current_span("request", kind=SpanKind.SERVER):
        span = tracer.start_span(
            "t publish",
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "pairq", "messaging.destination.name": "t"},
        )
        span.set_attribute("pairq.copies", 2)
        span.end()
    parent = trace.set_span_in_context(trace.NonRecordingSpan(remote(7, 8, state="a=1,b=2")))
    consumer = tracer.start_span("t process", context=parent, kind=SpanKind.CONSUMER)
    consumer.record_exception(ValueError("boom"))
    consumer.set_status(Status(StatusCode.ERROR, "ValueError('boom')"))
    consumer.end()
    broker = provider.get_tracer("pairq.broker")  # a second scope, no version
    traceparents = [f"00-{i:032x}-{i:016x}-01" for i in range(1, 60)]
    batch_span(broker, "pairq publish", SpanKind.SERVER, traceparents, {"n": 59}).end()
    tracer.start_span("client", kind=SpanKind.CLIENT).end()
    spans = list(exporter.get_finished_spans())
    req = same(spans)
    (rs,) = req.resource_spans
    assert [s.scope.name for s in rs.scope_spans] == ["pairq.client", "pairq.broker"]
    assert sum(len(s.spans) for s in rs.scope_spans) == len(spans) == 5
    publish = rs.scope_spans[1].spans[0]
    assert len(publish.links) == 32 and publish.links[0].flags == 0x300  # remote contexts
    process = next(s for s in rs.scope_spans[0].spans if s.name == "t process")
    assert process.trace_state == "a=1,b=2" and process.events[0].name == "exception"
    assert process.status.code == 2 and process.flags == 0x300


def test_every_attribute_value_and_what_cannot_be_encoded() -> None:
    ctx = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(1))
    attributes: dict[str, Any] = {
        "s": "text",
        "empty": "",
        "utf8": "ünï ✓",
        "t": True,
        "f": False,
        "zero": 0,
        "neg": -5,
        "big": (1 << 63) - 1,
        "small": -(1 << 63),
        "pi": 3.25,
        "b": b"\x00\xff",
        "strs": ("a", "b"),
        "ints": (1, -2),
        "none": None,
        "nested": [("x", 1), {"k": [True, None]}],
        "map": {"a": 1, 2: "b"},
        "no_array": (),
        # left out (and logged) by both encoders:
        "huge": 1 << 63,
        "set": {1},
        "surrogate": "\ud800",
    }
    span = ReadableSpan(
        "attrs",
        context=ctx,
        attributes=attributes,
        events=[Event("e", {"k": 1}, timestamp=5), Event("bare", timestamp=6)],
        links=[Link(remote(3, 4), {"l": "v"}), Link(SpanContext(5, 6, is_remote=False))],
        start_time=10,
        end_time=20,
        resource=Resource({"r": 1}, schema_url="https://r"),
        instrumentation_scope=InstrumentationScope("sc", None, None, {"sa": "x"}),
        status=Status(StatusCode.OK),
        kind=SpanKind.INTERNAL,
    )
    req = same([span])
    kv = {a.key for a in req.resource_spans[0].scope_spans[0].spans[0].attributes}
    assert kv == set(attributes) - {"huge", "set", "surrogate"}


def test_links_with_and_without_attributes_and_with_attributes_all_dropped() -> None:
    """A link with no attributes takes the encoder's short path; one whose
    attributes were all dropped (a link attribute limit of 0) must not."""
    provider, exporter = recorded(SpanLimits(max_link_attributes=0))
    tracer = provider.get_tracer("links")
    links = [
        Link(remote(1, 2)),
        Link(SpanContext(3, 4, is_remote=False)),
        Link(remote(5, 6), {"dropped": "yes"}),
        Link(remote(7, 8, sampled=False)),
    ]
    tracer.start_span("s", links=links).end()
    (finished,) = exporter.get_finished_spans()
    pb = same([finished]).resource_spans[0].scope_spans[0].spans[0]
    assert [(lk.trace_id[-1], lk.flags, lk.dropped_attributes_count) for lk in pb.links] == [
        (1, 0x300, 0),
        (3, 0x100, 0),
        (5, 0x300, 1),
        (7, 0x300, 0),
    ]


def test_dropped_counts_unset_times_and_a_span_without_scope() -> None:
    provider, exporter = recorded(
        SpanLimits(max_attributes=2, max_events=1, max_links=1, max_event_attributes=1)
    )
    tracer = provider.get_tracer("limited")
    links = [Link(remote(i, i)) for i in range(1, 4)]
    span = tracer.start_span("s", attributes={"a": 1, "b": 2, "c": 3}, links=links)
    span.add_event("one", {"x": 1, "y": 2})
    span.add_event("two")
    span.end()
    (finished,) = exporter.get_finished_spans()
    req = same([finished])
    pb = req.resource_spans[0].scope_spans[0].spans[0]
    assert (pb.dropped_attributes_count, pb.dropped_events_count, pb.dropped_links_count) == (
        1,
        1,
        2,
    )
    bare = ReadableSpan("bare", context=SpanContext(9, 9, is_remote=False))
    same([bare])
    no_status = ReadableSpan("s", context=SpanContext(9, 9, is_remote=False), status=None)  # type: ignore[arg-type]
    assert not same([no_status]).resource_spans[0].scope_spans[0].spans[0].HasField("status")


def test_equal_resources_share_a_group_and_groups_keep_their_order() -> None:
    spans = []
    for name, resource in [("a", {"svc": "x"}), ("b", {"svc": "y"}), ("c", {"svc": "x"})]:
        provider, exporter = recorded(resource=Resource.create(resource))
        provider.get_tracer("t").start_span(name).end()
        spans += exporter.get_finished_spans()
    req = same(spans)
    assert [[s.name for s in rs.scope_spans[0].spans] for rs in req.resource_spans] == [
        ["a", "c"],
        ["b"],
    ]
    assert same([]) == Request()


class Collector(tsg.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.got = threading.Event()

    def Export(self, request: Request, context: Any) -> tsp.ExportTraceServiceResponse:
        self.requests.append(request)
        self.got.set()
        return tsp.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Any:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = Collector()
    tsg.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(0)


def test_the_exporter_sends_the_same_request_to_a_real_collector(collector: Any) -> None:
    servicer, port = collector
    provider, exporter = recorded()
    tracer = provider.get_tracer("pairq.client")
    for i in range(20):
        tracer.start_span(f"s{i}", attributes={"i": i}, links=[Link(remote(i + 1, 1))]).end()
    spans = list(exporter.get_finished_spans())
    otlp = otlp_span_exporter(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=5)
    try:
        assert otlp.export(spans) == SpanExportResult.SUCCESS
    finally:
        otlp.shutdown()
    assert servicer.got.wait(5)
    (got,) = servicer.requests
    assert got == sdk_encode(spans)
    assert sum(len(s.spans) for rs in got.resource_spans for s in rs.scope_spans) == 20


def test_the_exporter_falls_back_to_the_sdk_encoder(caplog: pytest.LogCaptureFixture) -> None:
    """A span the fast encoder cannot write (its name is not UTF-8) is encoded as
    the SDK does it (the SDK then fails on it in its own way)."""
    otlp = otlp_span_exporter(endpoint="127.0.0.1:1", insecure=True, timeout=1)
    try:
        good = ReadableSpan("fine", context=SpanContext(1, 1, is_remote=False))
        assert otlp._translate_data([good]) == sdk_encode([good])
        bad = ReadableSpan("\ud800", context=SpanContext(1, 1, is_remote=False))
        with pytest.raises(Exception):  # noqa: B017 - whatever the SDK's encoder raises
            otlp._translate_data([bad])
        assert "fast span encoding failed" in caplog.text
    finally:
        otlp.shutdown()
