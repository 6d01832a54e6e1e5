"""One broker span per batch of traced messages (pairq.telemetry.batch_contexts,
batch_span and the deliver hook), with an in-memory exporter."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from pairq.broker import wire
from pairq.broker.channel_core import Entry
from pairq.telemetry import MAX_LINKS, batch_contexts, batch_span, deliver_spans
from pairq.traceparent import parse_traceparent


def tp(trace: int, span: int, flags: str = "01") -> str:
    return f"00-{trace:032x}-{span:016x}-{flags}"


def test_parse_traceparent_accepts_w3c_and_refuses_the_rest() -> None:
    sc = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert sc is not None and sc.is_remote and sc.trace_flags.sampled
    assert (sc.trace_id, sc.span_id) == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7)
    assert parse_traceparent(tp(1, 2, "00")).trace_flags.sampled is False  # type: ignore[union-attr]
    # a later version may append fields; version 00 may not
    assert parse_traceparent("01" + tp(1, 2)[2:] + "-x") is not None
    for bad in [
        "",
        "junk",
        tp(0, 2),  # all-zero trace id
        tp(1, 0),  # all-zero span id
        "ff" + tp(1, 2)[2:],  # version ff
        tp(1, 2) + "-x",  # version 00 with more
        tp(0xAB, 2).upper(),  # not lower-case hex
        "00-0x" + tp(1, 2)[5:],  # int() would take it
    ]:
        assert parse_traceparent(bad) is None, bad


def test_one_parent_and_a_link_per_other_distinct_context() -> None:
    parent, links, dropped = batch_contexts([tp(1, 1), tp(2, 2), tp(1, 1), tp(3, 3), "junk"])
    assert parent is not None and (parent.trace_id, parent.span_id) == (1, 1)
    assert [(lk.context.trace_id, lk.context.span_id) for lk in links] == [(2, 2), (3, 3)]
    assert dropped == 0
    assert batch_contexts(["junk", ""]) == (None, [], 0)


def test_the_parent_is_the_first_sampled_context_and_unsampled_ones_are_not_linked() -> None:
    parent, links, _ = batch_contexts([tp(1, 1, "00"), tp(2, 2, "01"), tp(3, 3, "03")])
    assert parent is not None and parent.trace_id == 2
    assert [lk.context.trace_id for lk in links] == [3]
    # none sampled: the first valid one, with no links (the span is not sampled either)
    parent, links, dropped = batch_contexts(["junk", tp(1, 1, "00"), tp(2, 2, "00")])
    assert parent is not None and parent.trace_id == 1 and not parent.trace_flags.sampled
    assert (links, dropped) == ([], 0)


def test_links_are_capped_and_the_rest_counted() -> None:
    values = [tp(i, i) for i in range(1, 302)]
    head = [tp(1, 1), "junk", tp(1, 1), tp(900, 1, "00")]  # before the cap: not links
    values = head + values
    values += values[:10]  # past the cap every value is counted, unread
    values += [tp(900 + i, 1, "00") for i in range(50)]
    parent, links, dropped = batch_contexts(values, max_links=128)
    assert parent is not None and parent.trace_id == 1
    assert [lk.context.trace_id for lk in links] == list(range(2, 130))
    # the 129th sampled context is values[4 + 128]; everything after it is counted
    assert dropped == len(values) - (len(head) + 129)
    # no links at all: the parent only
    parent, links, dropped = batch_contexts(values, max_links=0)
    assert parent is not None and parent.trace_id == 1 and links == []
    assert dropped == len(values) - 1


def recorder() -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("t"), exporter


def test_batch_span_counts_the_links_beyond_the_cap_and_is_a_root_without_context() -> None:
    tracer, exporter = recorder()
    values = [tp(i, i) for i in range(1, 200)]
    batch_span(tracer, "s", SpanKind.SERVER, values, {"k": 1}).end()
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.trace_id == 1
    assert MAX_LINKS == 32  # pairq's default (OTEL_SPAN_LINK_COUNT_LIMIT unset)
    assert len(span.links) == MAX_LINKS and span.dropped_links == 0
    assert dict(span.attributes or {}) == {"k": 1, "pairq.links_dropped": 199 - 1 - MAX_LINKS}
    exporter.clear()
    batch_span(tracer, "s", SpanKind.SERVER, ["junk"], {}).end()
    (span,) = exporter.get_finished_spans()
    assert span.parent is None and not span.links


def entry(key: int, traceparent: str | None) -> Entry:
    headers = wire.encode_headers({"traceparent": traceparent}) if traceparent else b""
    mid = key.to_bytes(16, "big")
    rec = wire.encode_record(mid, b"body", 1, 0, headers)
    return Entry(key=key, id=mid, payload=wire.record_message(rec))


def test_one_deliver_span_per_delivery_batch() -> None:
    tracer, exporter = recorder()
    hook = deliver_spans(tracer, lambda: "node")
    # no traced message in the batch: no span
    hook("t", "c", [entry(1, None), entry(2, None)])
    assert exporter.get_finished_spans() == ()
    hook("t", "c", [entry(1, None), entry(2, tp(7, 7)), entry(3, tp(8, 8)), entry(4, tp(9, 9))])
    (span,) = exporter.get_finished_spans()
    attrs: dict[str, Any] = dict(span.attributes or {})
    assert span.name == "pairq deliver" and span.parent is not None
    assert (span.context.trace_id, span.parent.span_id) == (7, 7)
    assert [(lk.context.trace_id, lk.context.span_id) for lk in span.links] == [(8, 8), (9, 9)]
    assert attrs["messaging.batch.message_count"] == 4 and "messaging.message.id" not in attrs
    assert attrs["messaging.consumer.group.name"] == "c" and attrs["pairq.broker_id"] == "node"
    exporter.clear()
    # a single message: its id and attempt are named
    hook("t", "c", [entry(5, tp(7, 7))])
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert attrs["messaging.message.id"] == (5).to_bytes(16, "big").hex() and not span.links
    assert attrs["pairq.attempts"] == 0


def test_unsampled_traffic_costs_one_parse_per_batch(monkeypatch: Any) -> None:
    """A batch whose contexts are all unsampled (a ratio sampler upstream said no)
    parses one value, the parent's, however many messages it holds; a sampled batch
    parses no more than the parent and the links it keeps."""
    import pairq.telemetry as telemetry

    calls: list[str] = []

    def counting(value: str) -> Any:
        calls.append(value)
        return parse_traceparent(value)

    monkeypatch.setattr(telemetry, "parse_traceparent", counting)
    parent, links, dropped = batch_contexts([tp(i, i, "00") for i in range(1, 1001)])
    assert parent is not None and parent.trace_id == 1 and (links, dropped) == ([], 0)
    assert len(calls) == 1
    calls.clear()
    parent, links, dropped = batch_contexts([tp(i, i) for i in range(1, 1001)], max_links=32)
    assert len(links) == 32 and dropped == 1000 - 33
    assert len(calls) == 33
