"""Message records: the on-disk format and the pre-encoded wire form.

A stored record is ``id (16 bytes) | due_ns (8, big-endian signed) | M``
where ``M`` is the protobuf encoding of the static fields of
``pairq.v1.Message`` (id, body, headers, timestamp_ns). Delivering a message
then costs only byte concatenation: ``M`` + the broker's fields + the
``attempts`` field, wrapped as ``SubscribeResponse.deliveries`` - no protobuf
object per message. The encoding is plain protobuf wire format, so every
client parses it with its generated stubs (tests check this against the
real protobuf library).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

_HDR = struct.Struct(">16sq")
HEADER_SIZE = _HDR.size  # 24
_NO_DUE = bytes(8)  # due_ns 0 in the header


def varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = [varint(i) for i in range(16384)]


def _v(n: int) -> bytes:
    return _SMALL_VARINTS[n] if n < 16384 else varint(n)


def _ld(tag: int, data: bytes) -> bytes:
    """A length-delimited field."""
    return bytes((tag,)) + _v(len(data)) + data


def encode_header(key: str, value: str) -> bytes:
    """One ``Message.headers`` map entry: what :func:`encode_headers` writes for it."""
    kb = key.encode()
    vb = value.encode()
    entry = b"\x0a" + _v(len(kb)) + kb + b"\x12" + _v(len(vb)) + vb
    return b"\x1a" + _v(len(entry)) + entry


def encode_headers(headers: Mapping[str, str]) -> bytes:
    return b"".join([encode_header(k, v) for k, v in headers.items()])


def timestamp_field(timestamp_ns: int) -> bytes:
    """Encoded ``Message.timestamp_ns`` (computed once per request, shared by its messages)."""
    return b"\x20" + varint(timestamp_ns)


def encode_record(
    msg_id: bytes,
    body: bytes,
    timestamp_ns: int,
    due_ns: int = 0,
    headers: bytes = b"",
    *,
    ts_field: bytes | None = None,
) -> bytes:
    """The stored record for one message (``headers`` from ``encode_headers``)."""
    return b"".join(
        (
            _HDR.pack(msg_id, due_ns),
            b"\x0a\x10",
            msg_id,
            b"\x12",
            _v(len(body)),
            body,
            headers,
            ts_field if ts_field is not None else timestamp_field(timestamp_ns),
        )
    )


def encode_plain_record(msg_id: bytes, body: bytes, ts_field: bytes) -> bytes:
    """``encode_record`` for the common case: no delay, no headers (the publish hot path)."""
    return b"".join((msg_id, _NO_DUE, b"\x0a\x10", msg_id, b"\x12", _v(len(body)), body, ts_field))


def record_id(rec: bytes) -> bytes:
    return rec[:16]


def record_due_ns(rec: bytes) -> int:
    return int(_HDR.unpack_from(rec)[1])


def record_message(rec: bytes) -> bytes:
    """The encoded static ``Message`` fields of a record."""
    return rec[HEADER_SIZE:]


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``pos``."""
    n = shift = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def message_parts(m: bytes) -> tuple[int, int]:
    """(where the headers start, ``timestamp_ns``) of record message bytes (as built by
    ``encode_record``: id, body, headers, timestamp); the headers end where the
    timestamp field begins. (0, 0) for bytes not of that shape."""
    try:
        if m[:2] != b"\x0a\x10" or m[18] != 0x12:
            return 0, 0
        n, pos = _read_varint(m, 19)
        pos += n
        start = pos
        while m[pos] == 0x1A:  # headers entries
            n, pos = _read_varint(m, pos + 1)
            pos += n
        if m[pos] != 0x20:
            return 0, 0
        return start, _read_varint(m, pos + 1)[0]
    except IndexError:
        return 0, 0


def message_timestamp_ns(m: bytes) -> int:
    """``timestamp_ns`` (when the broker accepted the publish) of record message bytes;
    0 if absent."""
    return message_parts(m)[1]


def has_headers(m: bytes) -> bool:
    """Whether record message bytes carry any header (cheap: no decoding)."""
    try:
        if m[:2] != b"\x0a\x10" or m[18] != 0x12:
            return False
        n, pos = _read_varint(m, 19)
        return m[pos + n] == 0x1A
    except IndexError:
        return False


def broker_fields(broker_id: str, epoch: int) -> bytes:
    """Encoded ``Message.broker_id`` and ``Message.epoch``, appended to every delivery."""
    out = _ld(0x32, broker_id.encode()) if broker_id else b""
    if epoch:
        out += b"\x38" + varint(epoch)
    return out


def encode_deliveries(items: Iterable[tuple[bytes, int]], suffix: bytes) -> bytes:
    """A serialized ``SubscribeResponse`` carrying ``deliveries``.

    ``items`` are (record message bytes, attempts); ``suffix`` from ``broker_fields``.
    """
    parts = []
    for m, attempts in items:
        body = m + suffix + b"\x28" + _v(attempts)
        parts.append(b"\x0a" + _v(len(body)) + body)
    inner = b"".join(parts)
    return b"\x12" + _v(len(inner)) + inner


def encode_prefix(msg_id: bytes, due_ns: int = 0) -> bytes:
    """The record header alone (``record = encode_prefix(id) + message bytes``)."""
    return _HDR.pack(msg_id, due_ns)


def body_and_timestamp(message: bytes) -> tuple[bytes, int]:
    """``(body, timestamp_ns)`` of a record's message bytes (``record_message``), for
    protocols that send messages in a form of their own (NSQ's): a scan of the
    plain protobuf fields, no protobuf object. Headers and other fields are skipped."""
    body = b""
    ts = 0
    pos = 0
    end = len(message)
    while pos < end:
        key, pos = _read_varint(message, pos)
        field, kind = key >> 3, key & 7
        if kind == 0:
            value, pos = _read_varint(message, pos)
            if field == 4:
                ts = value
        elif kind == 2:
            size, pos = _read_varint(message, pos)
            if field == 2:
                body = message[pos : pos + size]
            pos += size
        else:  # pragma: no cover - records hold only varint and length-delimited fields
            raise ValueError(f"unexpected wire type {kind} in a stored message")
    return body, ts
