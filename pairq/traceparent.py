"""The W3C ``traceparent`` value, read and written without a propagator.

OpenTelemetry's ``TraceContextTextMapPropagator`` builds a ``Context`` per call
and reads ``tracestate`` too; the broker reads one traceparent per traced
message and the client writes one per traced publish, so both use these two
functions where no tracestate is involved (OpenTelemetry API only, no SDK).

Rules (W3C Trace Context, as the propagator applies them):
- a value is ``version-traceid-spanid-flags``: two, 32, 16 and two lower-case
  hex digits; a later version may append ``-...`` fields, version 00 may not;
- version ``ff``, an all-zero trace or span id, anything longer than 512
  characters (the propagator's limit) or any other form is not a context;
- what :func:`format_traceparent` writes is version 00 of the span context's
  ids and flags, as the propagator writes it.
"""

from __future__ import annotations

import re

from opentelemetry.trace import SpanContext, TraceFlags

MAX_LENGTH = 512
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_VERSION_00 = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}").fullmatch
_FLAGS: dict[str, TraceFlags] = {}  # at most 256: the two hex digits seen


def parse_traceparent(traceparent: str) -> SpanContext | None:
    """The remote span context of a ``traceparent`` value (no trace state), or None
    when it is not a valid one (the module's rules). Version 00, what every
    producer writes, takes a shorter path (a traced broker parses up to 33 a
    request): one match of the whole value, no groups."""
    if len(traceparent) == 55 and _VERSION_00(traceparent) is not None:
        trace_hex, span_hex, flags = traceparent[3:35], traceparent[36:52], traceparent[53:]
    else:
        if len(traceparent) > MAX_LENGTH:
            return None
        m = _TRACEPARENT.fullmatch(traceparent)
        if m is None:
            return None
        version, trace_hex, span_hex, flags, rest = m.groups()
        if version == "ff" or (version == "00" and rest):
            return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    trace_flags = _FLAGS.get(flags)
    if trace_flags is None:
        trace_flags = _FLAGS[flags] = TraceFlags(int(flags, 16))
    return SpanContext(trace_id, span_id, True, trace_flags)


def format_traceparent(sc: SpanContext) -> str:
    """The version 00 ``traceparent`` of ``sc`` (its trace state is not carried)."""
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"
