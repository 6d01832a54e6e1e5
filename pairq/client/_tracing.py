"""W3C trace context in message headers (OpenTelemetry API only; no SDK needed).

Publishing inside an active span opens a PRODUCER span (``<topic> publish``,
from the call to the durable ack) and adds its ``traceparent`` (and
``tracestate``) to the message headers, so the broker's span is its child; a consumer runs the handler of a message that carries
them inside a CONSUMER span whose parent is the producer's span, so publish,
delivery and handling form one trace. Without a configured tracer provider
these spans are non-recording and cost next to nothing; messages without
trace headers cost one header lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

TRACEPARENT = "traceparent"
_tracer = trace.get_tracer("pairq.client")


def inject(headers: Mapping[str, str] | None, span: Any = None) -> Mapping[str, str] | None:
    """``headers`` plus the trace context of ``span`` (default: the current span);
    unchanged without an active span, or when they carry a traceparent already."""
    if span is None and not trace.get_current_span().get_span_context().is_valid:
        return headers
    if headers and TRACEPARENT in headers:
        return headers
    carrier = dict(headers) if headers else {}
    ctx = trace.set_span_in_context(span) if span is not None else None
    propagate.inject(carrier, context=ctx)
    return carrier


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
        parent = propagate.extract(headers)
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
