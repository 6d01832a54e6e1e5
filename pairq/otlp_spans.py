"""A fast OTLP encoding of finished spans: the bytes of an ``ExportTraceServiceRequest``.

The OpenTelemetry SDK's own encoder builds one protobuf object per span, link,
attribute and value from Python (about 50-70 µs a span, more with links, on the
exporter thread but under the process's GIL, so every traced process pays it
in CPU). This one writes the protobuf wire format directly (a few µs a span);
the exporter parses the bytes back into the request object in C
(:class:`FastOTLPSpanExporter`), so gRPC, retries and timeouts stay the SDK's.

Rules (what the SDK's ``encode_spans`` sends, field for field; the unit test
compares both on the same spans):
- spans are grouped by resource (equal resources share a group), then by
  instrumentation scope, each group in the order its first span came;
- a span carries trace and span id, its trace state when not empty, the parent
  span id when it has a parent, name, kind, start and end time, attributes,
  events, links (trace id, span id, attributes, flags: no trace state, as the
  SDK's), dropped counts, its status (possibly empty; none for a None status) and
  flags (``HAS_IS_REMOTE``, plus ``IS_REMOTE`` when the parent, or the linked
  context, is remote);
- an attribute value is a string, bool, int (int64), float, bytes, a sequence
  (array) or a mapping (key-value list) of those, None an empty value; an
  attribute whose value cannot be encoded (an int beyond int64, another type,
  a string that is not valid UTF-8) is left out and logged, as the SDK does.
Anything else the encoder cannot write (e.g. a span name that is not valid
UTF-8) raises: :class:`FastOTLPSpanExporter` then falls back to the SDK's
encoder for that batch.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("pairq.telemetry")

_SMALL = [bytes([i]) for i in range(128)]
_PACK_Q = struct.Struct("<Q").pack
_PACK_I = struct.Struct("<I").pack
_PACK_D = struct.Struct("<d").pack
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_FLAGS_LOCAL = _PACK_I(_HAS_IS_REMOTE)
_FLAGS_REMOTE = _PACK_I(_HAS_IS_REMOTE | _IS_REMOTE)
_KEYS: dict[str, bytes] = {}  # attribute key -> its encoded KeyValue.key field
_MAX_KEYS = 1024


class _Skip(Exception):
    """An attribute value the OTLP types cannot carry (the attribute is left out)."""


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: ``tag`` (one byte), length, ``payload``."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + payload


def _value(v: Any) -> bytes:
    """An ``AnyValue`` message (its content, without tag and length)."""
    if v is None:
        return b""
    if isinstance(v, bool):  # before int: bool is an int
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, str):
        try:
            return _field(b"\x0a", v.encode())
        except UnicodeEncodeError as exc:
            raise _Skip(str(exc)) from None
    if isinstance(v, int):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise _Skip(f"int {v} is beyond int64")
        return b"\x18" + _varint(v & 0xFFFFFFFFFFFFFFFF)
    if isinstance(v, float):
        return b"\x21" + _PACK_D(v)
    if isinstance(v, bytes):
        return _field(b"\x3a", v)
    if isinstance(v, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _value(x)) for x in v]))
    if isinstance(v, Mapping):
        return _field(
            b"\x32", b"".join([_field(b"\x0a", _key_value(str(k), x)) for k, x in v.items()])
        )
    raise _Skip(f"invalid type {type(v)} of value {v!r}")


def _key_value(key: str, v: Any) -> bytes:
    """A ``KeyValue`` message's content."""
    k = _KEYS.get(key)
    if k is None:
        k = _field(b"\x0a", key.encode())
        if len(_KEYS) < _MAX_KEYS:
            _KEYS[key] = k
    return k + _field(b"\x12", _value(v))


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> list[bytes]:
    """One ``tag`` field (a ``KeyValue``) per attribute that can be encoded."""
    out: list[bytes] = []
    if attributes:
        for key, v in attributes.items():
            try:
                out.append(_field(tag, _key_value(key, v)))
            except _Skip as exc:
                log.error("telemetry: attribute %s not exported: %s", key, exc)
    return out


def _uint(tag: bytes, n: int) -> bytes:
    return tag + _varint(n) if n else b""


def _span(s: Any) -> bytes:
    """A ``Span`` message's content."""
    ctx = s.context
    parts = [
        b"\x0a\x10",
        ctx.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        ctx.span_id.to_bytes(8, "big"),
    ]
    ts = ctx.trace_state
    if ts:
        parts.append(_field(b"\x1a", ",".join([f"{k}={v}" for k, v in ts.items()]).encode()))
    parent = s.parent
    if parent:
        parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    parts.append(_field(b"\x2a", s.name.encode()))
    parts.append(b"\x30" + _SMALL[s.kind.value + 1])  # SpanKind -> SPAN_KIND_*: one up
    if s.start_time:
        parts += (b"\x39", _PACK_Q(s.start_time))
    if s.end_time:
        parts += (b"\x41", _PACK_Q(s.end_time))
    parts += _attributes(b"\x4a", s.attributes)
    parts.append(_uint(b"\x50", s.dropped_attributes))
    for e in s.events:
        ev = [b"\x09", _PACK_Q(e.timestamp), _field(b"\x12", e.name.encode())]
        ev += _attributes(b"\x1a", e.attributes)
        ev.append(_uint(b"\x20", e.dropped_attributes))
        parts.append(_field(b"\x5a", b"".join(ev)))
    parts.append(_uint(b"\x60", s.dropped_events))
    for link in s.links:
        lc = link.context
        if not link.attributes and not link.dropped_attributes:
            # The common link (a traced message's context): 33 bytes, written at once.
            parts += (
                b"\x6a\x21\x0a\x10",
                lc.trace_id.to_bytes(16, "big"),
                b"\x12\x08",
                lc.span_id.to_bytes(8, "big"),
                b"\x35",
                _FLAGS_REMOTE if lc.is_remote else _FLAGS_LOCAL,
            )
            continue
        lk = [
            b"\x0a\x10",
            lc.trace_id.to_bytes(16, "big"),
            b"\x12\x08",
            lc.span_id.to_bytes(8, "big"),
        ]
        lk += _attributes(b"\x22", link.attributes)
        lk.append(_uint(b"\x28", link.dropped_attributes))
        lk += (b"\x35", _FLAGS_REMOTE if lc.is_remote else _FLAGS_LOCAL)
        parts.append(_field(b"\x6a", b"".join(lk)))
    parts.append(_uint(b"\x70", s.dropped_links))
    status = s.status
    if status is not None:
        st = _field(b"\x12", status.description.encode()) if status.description else b""
        st += _uint(b"\x18", status.status_code.value)
        parts.append(_field(b"\x7a", st))
    parts += (
        b"\x85\x01",
        _FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL,
    )
    return b"".join(parts)


def _scope(scope: Any) -> bytes:
    """An ``InstrumentationScope`` message's content (empty for None)."""
    if scope is None:
        return b""
    out = [_field(b"\x0a", scope.name.encode())] if scope.name else []
    if scope.version:
        out.append(_field(b"\x12", scope.version.encode()))
    out += _attributes(b"\x1a", scope.attributes)
    return b"".join(out)


def encode_spans(spans: Sequence[Any]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of finished SDK spans
    (``ReadableSpan``), as the module docstring states."""
    # resource -> scope -> encoded spans; a resource's hash is a JSON dump of its
    # attributes, so look each distinct object up once, not once per span
    groups: dict[Any, dict[Any, list[bytes]]] = {}
    by_id: dict[int, dict[Any, list[bytes]]] = {}
    for s in spans:
        resource = s.resource
        scopes = by_id.get(id(resource))
        if scopes is None:
            scopes = by_id[id(resource)] = groups.setdefault(resource, {})
        scope = s.instrumentation_scope or None
        encoded = scopes.get(scope)
        if encoded is None:
            encoded = scopes[scope] = []
        encoded.append(_field(b"\x12", _span(s)))
    out: list[bytes] = []
    for resource, scopes in groups.items():
        rs = [_field(b"\x0a", b"".join(_attributes(b"\x0a", resource.attributes)))]
        for scope, encoded in scopes.items():
            ss = [_field(b"\x0a", _scope(scope)), *encoded]
            if scope is not None and scope.schema_url:
                ss.append(_field(b"\x1a", scope.schema_url.encode()))
            rs.append(_field(b"\x12", b"".join(ss)))
        if resource.schema_url:
            rs.append(_field(b"\x1a", resource.schema_url.encode()))
        out.append(_field(b"\x0a", b"".join(rs)))
    return b"".join(out)


def otlp_span_exporter(**kwargs: Any) -> Any:
    """The SDK's gRPC ``OTLPSpanExporter`` (``kwargs`` passed on: endpoint,
    timeout, ...; the ``OTEL_EXPORTER_OTLP_*`` variables as it reads them) with
    :func:`encode_spans` as its encoder; the SDK's own encoder for a batch this
    one cannot write."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import (
        encode_spans as sdk_encode_spans,
    )
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    class FastOTLPSpanExporter(OTLPSpanExporter):
        def _translate_data(self, data: Sequence[Any]) -> Any:
            try:
                return ExportTraceServiceRequest.FromString(encode_spans(data))
            except Exception:
                log.exception("telemetry: fast span encoding failed; the SDK's encoder used")
                return sdk_encode_spans(data)

    return FastOTLPSpanExporter(**kwargs)
