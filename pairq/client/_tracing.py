"""W3C trace context in message headers (OpenTelemetry API only; no SDK needed).

Publishing inside an active span opens a PRODUCER span (``<topic> publish``,
from the call to the durable ack) and adds its ``traceparent`` (and
``tracestate``) to the message headers, so the broker's span is its child; a consumer runs the handler of a message that carries
them inside a CONSUMER span whose parent is the producer's span, so publish,
delivery and handling form one trace. Without a configured tracer provider
these spans are non-recording and cost next to nothing; messages without
trace headers cost one header lookup.

The headers are written and read by the configured propagator
(``OTEL_PROPAGATORS``, ``propagate.set_global_textmap``), with one shortcut per
message when it is the W3C one (trace context, with or without baggage, the
default): ``traceparent`` is formatted or parsed here, as the propagator does
it, when there is no baggage and no ``tracestate`` to carry (:func:`inject`,
:func:`extract`); anything else goes to the propagator.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pairq.traceparent import format_traceparent, parse_traceparent

TRACEPARENT = "traceparent"
_tracer = trace.get_tracer("pairq.client")
_W3C = (TraceContextTextMapPropagator, W3CBaggagePropagator)
_checked: list[Any] = [None, False]  # [textmap, whether it is the W3C one]


def w3c_propagation() -> bool:
    """Whether the global propagator is W3C trace context (and maybe baggage) only
    (checked once per propagator object)."""
    textmap = propagate.get_global_textmap()
    if _checked[0] is not textmap:
        parts = (
            getattr(textmap, "_propagators", None)
            if type(textmap) is CompositePropagator
            else [textmap]
        )
        ok = (
            isinstance(parts, (list, tuple))
            and any(type(p) is TraceContextTextMapPropagator for p in parts)
            and all(type(p) in _W3C for p in parts)
        )
        _checked[:] = [textmap, ok]
    return bool(_checked[1])


def inject(headers: Mapping[str, str] | None, span: Any = None) -> Mapping[str, str] | None:
    """``headers`` plus the trace context of ``span`` (default: the current span);
    unchanged without an active span, or when they carry a traceparent already."""
    if span is None and not trace.get_current_span().get_span_context().is_valid:
        return headers
    if headers and TRACEPARENT in headers:
        return headers
    carrier = dict(headers) if headers else {}
    if w3c_propagation() and not baggage.get_all():
        sc = (span if span is not None else trace.get_current_span()).get_span_context()
        if sc == trace.INVALID_SPAN_CONTEXT:
            return carrier
        if not sc.trace_state:  # what TraceContextTextMapPropagator.inject writes
            carrier[TRACEPARENT] = format_traceparent(sc)
            return carrier
    ctx = trace.set_span_in_context(span) if span is not None else None
    propagate.inject(carrier, context=ctx)
    return carrier


def extract(headers: Mapping[str, str]) -> otel_context.Context:
    """The context carried by ``headers`` (``propagate.extract``: a new context
    holding the remote parent span, if any)."""
    tp = headers.get(TRACEPARENT)
    if tp and w3c_propagation() and "tracestate" not in headers and "baggage" not in headers:
        sc = parse_traceparent(tp)
        if sc is not None:  # else the propagator decides (it takes a few more forms)
            return trace.set_span_in_context(trace.NonRecordingSpan(sc), otel_context.Context())
    return propagate.extract(headers)


def send_span(topic: str) -> Any:
    """A PRODUCER span for one publish, child of the current span; None without one
    (nothing to join: the publish is not traced)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    return _tracer.start_span(
        f"{topic} publish",
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "pairq",
            "messaging.operation": "publish",
            "messaging.destination.name": topic,
        },
    )


class ProcessSpan:
    """The span around one handler run, made current while the handler runs."""

    __slots__ = ("_span", "_token")

    def __init__(
        self, headers: Mapping[str, str], topic: str, channel: str, mid: bytes, attempts: int
    ) -> None:
        parent = extract(headers)
        self._span = _tracer.start_span(
            f"{topic} process",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "pairq",
                "messaging.operation": "process",
                "messaging.destination.name": topic,
                "messaging.consumer.group.name": channel,
                "messaging.message.id": mid.hex(),
                "pairq.attempts": attempts,
            },
        )
        self._token: Any = otel_context.attach(trace.set_span_in_context(self._span, parent))

    def end(self, exc: BaseException | None) -> None:
        otel_context.detach(self._token)
        if exc is not None:
            self._span.record_exception(exc)
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, repr(exc)))
        self._span.end()
