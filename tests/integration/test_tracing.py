"""One trace spans producer -> broker publish -> partner (replicate) -> deliver ->
the consumer's handler, on a real pair (in-process brokers on loopback, real gRPC
and the real replication link, both the TCP link and the gRPC stream), collected
with an in-memory exporter; a batch of messages from many traces gets one broker
span per request, linked to every trace."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

_SCRIPT = r"""
import asyncio, json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pairq.client import Consumer, Producer
from pairq.testing import run_pair

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
LINK = sys.argv[1]

async def main():
    async with run_pair(replication_address=LINK) as (a, b):
        on_tcp = bool(b.pair.receiver.links)
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("request") as span:
            async with Producer([a.address]) as p:
                ack = await p.publish("t", b"traced")
            trace_id = span.get_span_context().trace_id
        async with Consumer("t", "c", [a.address, b.address], handler=lambda m: None) as c:
            await c.wait_idle(timeout=10)
        ids = {"a": a.node_id, "b": b.node_id}
    out = [[s.name, s.context.trace_id, s.kind.name, dict(s.attributes or {}).get("pairq.copies"),
            s.context.span_id, s.parent.span_id if s.parent else None,
            dict(s.attributes or {}).get("pairq.broker_id")]
           for s in exporter.get_finished_spans()]
    print(json.dumps({"trace_id": trace_id, "copies": ack.copies, "spans": out, "ids": ids,
                      "on_tcp": on_tcp}))
asyncio.run(main())
"""


@pytest.mark.parametrize("link", ["auto", "off"])
def test_one_trace_spans_producer_publish_replicate_deliver_and_handler(link: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, link], capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # the replication link this run used: the TCP link ("auto") or the gRPC stream ("off")
    assert out["on_tcp"] == (link == "auto"), out
    tid, ids = out["trace_id"], out["ids"]
    spans = {name: row for name, *row in out["spans"]}
    assert {"t publish", "pairq publish", "pairq replicate", "pairq deliver", "t process"} <= set(
        spans
    ), out["spans"]

    def span_id(name: str) -> int:
        return int(spans[name][3])

    def parent(name: str) -> int:
        return int(spans[name][4])

    for name in spans:
        if name != "request":
            assert spans[name][0] == tid, (name, out["spans"])
    assert spans["t publish"][1:3] == ["PRODUCER", 2], out["spans"]
    assert spans["pairq publish"][1:3] == ["SERVER", 2], out["spans"]
    assert spans["pairq publish"][5] == ids["a"]
    # producer span -> the broker's publish span -> the partner's replicate span
    assert parent("pairq publish") == span_id("t publish"), out["spans"]
    assert spans["pairq replicate"][1] == "SERVER" and spans["pairq replicate"][5] == ids["b"]
    assert parent("pairq replicate") == span_id("pairq publish"), out["spans"]
    # the owner's deliver span and the handler's span, both under the producer's
    assert spans["pairq deliver"][5] == ids["a"], out["spans"]
    assert parent("pairq deliver") == span_id("t publish"), out["spans"]
    assert spans["t process"][1] == "CONSUMER", out["spans"]
    assert parent("t process") == span_id("t publish"), out["spans"]


_BATCH_SCRIPT = r"""
import asyncio, json, sys
import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pairq.client import Consumer
from pairq.client._tracing import inject, send_span
from pairq.testing import run_pair
from pairq.v1 import broker_pb2 as pb, broker_pb2_grpc as pbg

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
N = int(sys.argv[1])

async def main():
    async with run_pair() as (a, b):
        tracer = trace.get_tracer("test")
        producers, items = [], []
        for i in range(N):  # N messages, each from its own trace (its own request span)
            with tracer.start_as_current_span(f"request {i}"):
                span = send_span("t")
                producers.append(span)
                items.append(pb.PublishItem(body=b"%d" % i, headers=inject(None, span)))
        async with grpc.aio.insecure_channel(a.address) as ch:
            r = await pbg.BrokerServiceStub(ch).PublishBatch(
                pb.PublishBatchRequest(topic="t", messages=items)
            )
        for span in producers:
            span.end()
        handled = []
        async with Consumer("t", "c", [a.address, b.address],
                            handler=lambda m: handled.append(m.body)) as c:
            await c.wait_idle(timeout=10)
    def ctx(c):
        return [c.trace_id, c.span_id]
    out = [{"name": s.name, "ctx": ctx(s.context), "parent": ctx(s.parent) if s.parent else None,
            "links": [ctx(l.context) for l in s.links], "attrs": dict(s.attributes or {})}
           for s in exporter.get_finished_spans()]
    print(json.dumps({"copies": r.copies, "handled": len(handled), "spans": out,
                      "producers": [ctx(s.get_span_context()) for s in producers]}))
asyncio.run(main())
"""


def test_a_batch_of_traced_messages_gets_one_publish_span_linked_to_every_trace() -> None:
    n = 5
    proc = subprocess.run(
        [sys.executable, "-c", _BATCH_SCRIPT, str(n)], capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["copies"] == 2 and out["handled"] == n, out
    producers = out["producers"]
    assert len({t for t, _ in producers}) == n  # n distinct traces

    def named(name: str) -> list[dict[str, Any]]:
        return [s for s in out["spans"] if s["name"] == name]

    # ONE publish span for the request: child of the first message's producer span,
    # linked to the other n-1
    (publish,) = named("pairq publish")
    assert publish["parent"] == producers[0], publish
    assert publish["links"] == producers[1:], publish
    assert publish["attrs"]["messaging.batch.message_count"] == n
    assert "pairq.links_dropped" not in publish["attrs"]
    # ONE replicate span on the partner for the batch that carried it
    (replicate,) = named("pairq replicate")
    assert replicate["parent"] == publish["ctx"] and replicate["links"] == [], replicate
    # deliver spans (one per delivery batch) reach every message's trace, once
    delivered = [c for s in named("pairq deliver") for c in [s["parent"], *s["links"]]]
    assert sorted(delivered) == sorted(producers), named("pairq deliver")
    # every message's own trace still reaches its handler span
    handlers = named("t process")
    assert sorted(s["parent"] for s in handlers) == sorted(producers), handlers


async def test_a_traced_publish_skips_the_idempotency_lookup_as_an_untraced_one_does() -> None:
    """``new_ids`` (the client vouches every id is new) means the same with tracing on:
    the lookup is skipped, so an id stored before is stored again, as without
    tracing (tracing on once dropped the flag and paid the lookup per message)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from pairq.testing import run_broker
    from pairq.v1 import broker_pb2 as pb

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced = {"traceparent": f"00-{7:032x}-{8:016x}-01"}
    async with run_broker() as broker:
        for topic, tracer in [("untraced", None), ("traced", provider.get_tracer("t"))]:
            broker.tracer = tracer
            item = pb.PublishItem(id=topic.encode().ljust(16, b"."), body=b"x", headers=traced)
            await broker.publisher.publish_messages(topic, [item])
            await broker.publisher.publish_messages(topic, [item])  # a retry: found
            assert broker.topics[topic].message_count == 1, topic
            await broker.publisher.publish_messages(topic, [item], new_ids=True)
            assert broker.topics[topic].message_count == 2, topic
    assert [s.name for s in exporter.get_finished_spans()] == ["pairq publish"] * 3


def test_broker_and_pairq_pub_processes_export_their_spans_by_otlp_to_a_collector(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the standard OTEL variables, a real ``pairq broker`` and a real ``pairq
    pub`` send their spans (pairq's own OTLP encoding, pairq.otlp_spans) to a real
    collector: the broker's publish span in the publisher's trace, under its span,
    with the broker's resource; ``pairq pub`` -> its producer span -> the broker's
    publish span, one trace."""
    import threading
    import time
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tsp
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tsg

    from pairq.testing import BrokerProcess
    from pairq.v1 import broker_pb2 as pb
    from pairq.v1 import broker_pb2_grpc as pbg

    got: list[Any] = []
    arrived = threading.Event()

    class Collector(tsg.TraceServiceServicer):  # type: ignore[misc]
        def Export(self, request: Any, context: Any) -> Any:
            got.append(request)
            arrived.set()
            return tsp.ExportTraceServiceResponse()

    def spans(name: str) -> list[tuple[dict[str, str], Any]]:
        """(resource attributes, span) of every span called ``name`` received."""
        return [
            ({a.key: a.value.string_value for a in rs.resource.attributes}, s)
            for req in list(got)
            for rs in req.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
            if s.name == name
        ]

    def wait_for(*names: str) -> None:
        deadline = time.monotonic() + 15
        while not all(spans(n) for n in names) and time.monotonic() < deadline:
            arrived.wait(0.5)
            arrived.clear()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    tsg.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # ms: export soon
    broker = BrokerProcess(tmp_path / "data", args=["--log-level", "warning"])
    trace_id, span_id = 0x1234_5678_9ABC, 0xDEF0
    try:
        broker.start()
        item = pb.PublishItem(
            body=b"x", headers={"traceparent": f"00-{trace_id:032x}-{span_id:016x}-01"}
        )
        with grpc.insecure_channel(broker.address) as ch:
            pbg.BrokerServiceStub(ch).PublishBatch(
                pb.PublishBatchRequest(topic="t", messages=[item]), timeout=10
            )
        wait_for("pairq publish")
        (resource, span), *_ = spans("pairq publish")
        assert int.from_bytes(span.trace_id, "big") == trace_id
        assert int.from_bytes(span.parent_span_id, "big") == span_id
        assert span.kind == span.SPAN_KIND_SERVER
        attrs = {a.key: a.value for a in span.attributes}
        assert attrs["messaging.destination.name"].string_value == "t"
        assert attrs["messaging.batch.message_count"].int_value == 1
        assert resource["service.name"] == "pairq-broker"

        got.clear()
        cmd = [sys.executable, "-m", "pairq.cli", "pub", "--broker", broker.address, "u", "hi"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-3000:]
        wait_for("pairq pub", "u publish", "pairq publish")
        (_, cli), (_, producer), (_, publish) = (
            spans(n)[0] for n in ("pairq pub", "u publish", "pairq publish")
        )
        assert cli.trace_id == producer.trace_id == publish.trace_id
        assert producer.parent_span_id == cli.span_id and producer.kind == span.SPAN_KIND_PRODUCER
        assert publish.parent_span_id == producer.span_id
        copies = {a.key: a.value.int_value for a in producer.attributes}["pairq.copies"]
        assert copies == 1
    finally:
        broker.terminate()
        server.stop(0)
