"""The hand-encoded delivery bytes must be exactly what protobuf parses."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as s

from pairq.broker import wire
from pairq.v1 import broker_pb2 as pb


@given(
    body=s.binary(min_size=1, max_size=3000),
    headers=s.dictionaries(s.text(min_size=1, max_size=20), s.text(max_size=200), max_size=4),
    ts=s.integers(min_value=0, max_value=2**62),
    due=s.integers(min_value=0, max_value=2**62),
    attempts=s.integers(min_value=1, max_value=2**31),
    epoch=s.integers(min_value=0, max_value=2**63),
    broker=s.text(max_size=40),
)
def test_deliveries_roundtrip(body, headers, ts, due, attempts, epoch, broker) -> None:  # type: ignore[no-untyped-def]
    mid = bytes(range(16))
    rec = wire.encode_record(mid, body, ts, due, wire.encode_headers(headers))
    assert wire.record_id(rec) == mid and wire.record_due_ns(rec) == due
    data = wire.encode_deliveries(
        [(wire.record_message(rec), attempts)] * 3, wire.broker_fields(broker, epoch)
    )
    resp = pb.SubscribeResponse.FromString(data)
    assert resp.WhichOneof("event") == "deliveries"
    assert len(resp.deliveries.messages) == 3
    m = resp.deliveries.messages[2]
    assert (m.id, m.body, dict(m.headers), m.timestamp_ns, m.attempts, m.broker_id, m.epoch) == (
        mid,
        body,
        headers,
        ts,
        attempts,
        broker,
        epoch,
    )


def test_varint_matches_protobuf() -> None:
    for n in (0, 1, 127, 128, 300, 16383, 16384, 2**35, 2**63):
        m = pb.SubscribeReady(count=min(n, 2**32 - 1))
        assert m.SerializeToString() == (b"\x08" + wire.varint(m.count) if m.count else b"")


def test_message_parts_find_the_headers_and_the_timestamp() -> None:
    headers = wire.encode_headers({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    for body, hdrs in ((b"x", b""), (b"y" * 20000, headers), (b"z" * 200, headers)):
        m = wire.record_message(wire.encode_record(b"i" * 16, body, 1_700_000_000_123, 0, hdrs))
        start, ts = wire.message_parts(m)
        assert ts == 1_700_000_000_123 == wire.message_timestamp_ns(m)
        assert wire.has_headers(m) == bool(hdrs)
        assert m[start : start + len(hdrs)] == hdrs
        assert pb.Message.FromString(m).timestamp_ns == ts
    plain = wire.record_message(wire.encode_plain_record(b"i" * 16, b"b", wire.timestamp_field(7)))
    assert wire.message_timestamp_ns(plain) == 7 and not wire.has_headers(plain)
    assert wire.message_parts(b"") == (0, 0) and wire.message_parts(b"\x0a\x10" + b"i" * 16) == (
        0,
        0,
    )
