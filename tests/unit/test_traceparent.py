"""The traceparent shortcuts (pairq.traceparent, pairq.client._tracing's inject and
extract) give what OpenTelemetry's propagators give, and step aside for any
other propagator, for baggage and for trace state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.propagators.textmap import CarrierT, Getter, Setter, TextMapPropagator
from opentelemetry.trace import SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState

from pairq.client import _tracing
from pairq.traceparent import MAX_LENGTH, format_traceparent, parse_traceparent

W3C = TraceContextTextMapPropagator()


def propagator_context(value: str) -> SpanContext | None:
    sc = trace.get_current_span(W3C.extract({"traceparent": value})).get_span_context()
    return sc if sc.is_valid else None


GOOD = [
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-03",
    "00-00000000000000000000000000000001-0000000000000001-ff",
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later-fields",
    "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
]
BAD = [
    "",
    "junk",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  # 00 with more
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    "00-0x4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",  # int() would take it
    "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-" + "x" * MAX_LENGTH,  # too long
]


def test_parse_agrees_with_the_propagator() -> None:
    for value in GOOD:
        sc = parse_traceparent(value)
        assert sc is not None and sc.is_remote, value
        assert sc == propagator_context(value), value
    for value in BAD:
        assert parse_traceparent(value) is None, value
        assert propagator_context(value) is None, value
    # the one form the propagator takes and the shortcut does not (extract() then
    # asks the propagator): surrounding white space
    padded = f"  {GOOD[0]} "
    assert parse_traceparent(padded) is None and propagator_context(padded) is not None
    longest = GOOD[4][: MAX_LENGTH - 1].ljust(MAX_LENGTH, "x")
    assert parse_traceparent(longest) is not None and propagator_context(longest) is not None


def test_format_writes_what_the_propagator_writes() -> None:
    for trace_id, span_id, flags in [(1, 1, 0), (2**128 - 1, 2**64 - 1, 1), (0xAB, 0xCD, 3)]:
        sc = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(flags))
        carrier: dict[str, str] = {}
        W3C.inject(carrier, trace.set_span_in_context(trace.NonRecordingSpan(sc)))
        assert format_traceparent(sc) == carrier["traceparent"]
        back = parse_traceparent(carrier["traceparent"])
        assert back is not None
        assert (back.trace_id, back.span_id, back.trace_flags) == (trace_id, span_id, flags)


class Custom(TextMapPropagator):
    """A non-W3C propagator: its own header."""

    def inject(
        self, carrier: CarrierT, context: Any = None, setter: Setter[CarrierT] | None = None
    ) -> None:
        sc = trace.get_current_span(context).get_span_context()
        carrier["x-trace"] = f"{sc.trace_id:x}:{sc.span_id:x}"  # type: ignore[index]

    def extract(
        self, carrier: CarrierT, context: Any = None, getter: Getter[CarrierT] | None = None
    ) -> otel_context.Context:
        t, s = carrier["x-trace"].split(":")  # type: ignore[index]
        sc = SpanContext(int(t, 16), int(s, 16), is_remote=True, trace_flags=TraceFlags(1))
        return trace.set_span_in_context(trace.NonRecordingSpan(sc), otel_context.Context())

    @property
    def fields(self) -> set[str]:
        return {"x-trace"}


@pytest.fixture
def textmap() -> Iterator[Any]:
    """Set the global propagator for one test (restored after)."""
    saved = propagate.get_global_textmap()
    try:
        yield propagate.set_global_textmap
    finally:
        propagate.set_global_textmap(saved)


def span(state: str = "", flags: int = 1) -> trace.Span:
    ts = TraceState.from_header([state]) if state else TraceState()
    sc = SpanContext(0xA1, 0xB2, is_remote=False, trace_flags=TraceFlags(flags), trace_state=ts)
    return trace.NonRecordingSpan(sc)


def by_propagator(s: trace.Span, headers: dict[str, str] | None = None) -> dict[str, str]:
    carrier = dict(headers or {})
    propagate.inject(carrier, context=trace.set_span_in_context(s))
    return carrier


def test_inject_writes_what_the_configured_propagator_writes(textmap: Any) -> None:
    assert _tracing.w3c_propagation()  # the default: tracecontext,baggage
    for s in [span(), span(flags=0), span("vendor=x")]:
        assert _tracing.inject({"k": "v"}, s) == by_propagator(s, {"k": "v"})
        with trace.use_span(s):
            assert _tracing.inject(None) == by_propagator(s)
    # baggage in the current context rides along (the propagator writes it)
    token = otel_context.attach(baggage.set_baggage("user", "42"))
    try:
        got = _tracing.inject(None, span())
        assert got == by_propagator(span()) and got is not None and "baggage" in got
    finally:
        otel_context.detach(token)
    # nothing to carry / already carried
    assert _tracing.inject({"k": "v"}) == {"k": "v"}
    mine = {"traceparent": GOOD[0]}
    assert _tracing.inject(mine, span()) is mine
    # OTEL_PROPAGATORS / set_global_textmap is honoured: no traceparent then
    textmap(Custom())
    assert not _tracing.w3c_propagation()
    assert _tracing.inject(None, span()) == {"x-trace": "a1:b2"}
    textmap(W3C)  # trace context alone is W3C too
    assert _tracing.w3c_propagation()


def parent_of(ctx: otel_context.Context) -> SpanContext:
    return trace.get_current_span(ctx).get_span_context()


def test_extract_reads_what_the_configured_propagator_reads(textmap: Any) -> None:
    cases = [
        {"traceparent": GOOD[0]},
        {"traceparent": GOOD[1], "other": "x"},
        {"traceparent": GOOD[0], "tracestate": "vendor=x"},
        {"traceparent": GOOD[0], "baggage": "user=42"},
        {"traceparent": f" {GOOD[0]} "},
        {"traceparent": BAD[2]},
        {},
    ]
    for headers in cases:
        ours, theirs = _tracing.extract(headers), propagate.extract(headers)
        assert parent_of(ours) == parent_of(theirs), headers
        assert baggage.get_all(ours) == baggage.get_all(theirs), headers
    assert parent_of(_tracing.extract(cases[2])).trace_state.get("vendor") == "x"
    # not the current context's: a new one, as the propagator's
    token = otel_context.attach(baggage.set_baggage("mine", "1"))
    try:
        assert baggage.get_all(_tracing.extract(cases[0])) == {}
    finally:
        otel_context.detach(token)
    textmap(Custom())
    got = parent_of(_tracing.extract({"traceparent": GOOD[0], "x-trace": "5:6"}))
    assert (got.trace_id, got.span_id) == (5, 6)


_HEXISH = "0123456789abcdefABF-x_ +"


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(GOOD[:4]),
    st.lists(st.tuples(st.integers(0, 54), st.sampled_from(_HEXISH)), max_size=3),
)
def test_the_version_00_shortcut_agrees_with_the_propagator(value: str, edits: Any) -> None:
    """Any one-to-three character change of a version 00 value (the length kept:
    the form the shortcut takes): parsed as the propagator reads it, or refused
    as it refuses it."""
    chars = list(value)
    for at, ch in edits:
        chars[at] = ch
    mutated = "".join(chars)
    assert parse_traceparent(mutated) == propagator_context(mutated), mutated
