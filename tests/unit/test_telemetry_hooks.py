"""The end-to-end latency hook of pairq.telemetry, with a fake clock."""

from __future__ import annotations

from typing import Any

from pairq.broker import wire
from pairq.broker.channel_core import Entry
from pairq.telemetry import end_to_end_hook


def entry(ts_ns: int) -> Entry:
    rec = wire.encode_record(b"i" * 16, b"body", ts_ns)
    return Entry(key=1, id=b"i" * 16, payload=wire.record_message(rec))


def test_end_to_end_is_fin_time_minus_publish_timestamp() -> None:
    seen: list[tuple[float, dict[str, Any]]] = []
    hook = end_to_end_hook(lambda v, a: seen.append((v, a)), clock=lambda: 10_000_000_000)
    hook("t", "c", [entry(7_500_000_000), entry(9_999_000_000)])
    assert seen == [(2.5, {"topic": "t", "channel": "c"}), (0.001, {"topic": "t", "channel": "c"})]
    seen.clear()
    # a clock behind the publisher's (a takeover across skewed clocks): 0, not negative
    hook("t", "c", [entry(11_000_000_000)])
    assert seen == [(0.0, {"topic": "t", "channel": "c"})]
    seen.clear()
    # bytes without a timestamp are skipped
    hook("t", "c", [Entry(key=2, id=b"j" * 16, payload=b"junk")])
    assert seen == []
