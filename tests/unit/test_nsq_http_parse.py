"""The pure parts of nsqd's HTTP API on the broker: /mpub's two framings, the
pairq-error-to-status table, and the /stats shape."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pairq.broker.limits import limit_exceeded
from pairq.broker.nsq.http import (
    from_pairq,
    nsq_stats,
    parse_bool,
    parse_mpub_binary,
    parse_mpub_text,
)
from pairq.errors import NotFoundError, PairqError, StoreFullError, UnavailableError
from pairq.nsqapi import HttpError
from pairq.v1 import broker_pb2 as pb


def frame(*bodies: bytes) -> bytes:
    return struct.pack(">i", len(bodies)) + b"".join(struct.pack(">i", len(b)) + b for b in bodies)


def test_text_mpub_splits_on_newlines_and_drops_empty_messages() -> None:
    assert parse_mpub_text(b"a\n\nb\nc\n", 10) == [b"a", b"b", b"c"]
    assert parse_mpub_text(b"", 10) == []
    with pytest.raises(HttpError) as e:
        parse_mpub_text(b"ok\n" + b"x" * 11, 10)
    assert (e.value.status, e.value.message) == (413, "MSG_TOO_BIG")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "BAD_BODY"),
        (b"\0\0\0", "BAD_BODY"),
        (struct.pack(">i", 0), "BAD_BODY"),
        (struct.pack(">i", -1), "BAD_BODY"),
        (frame(b"a", b"b", b"c", b"d"), "BAD_BODY"),  # over max_count
        (struct.pack(">i", 1), "BAD_MESSAGE"),
        (struct.pack(">ii", 1, 0), "BAD_MESSAGE"),
        (struct.pack(">ii", 1, -3), "BAD_MESSAGE"),
        (struct.pack(">ii", 1, 11) + b"x" * 11, "BAD_MESSAGE"),  # over max_msg_size
        (struct.pack(">ii", 2, 1) + b"x", "BAD_MESSAGE"),  # second message missing
        (struct.pack(">ii", 1, 4) + b"abc", "BAD_MESSAGE"),  # short body
    ],
)
def test_binary_mpub_errors_are_nsqds(body: bytes, message: str) -> None:
    with pytest.raises(HttpError) as e:
        parse_mpub_binary(body, 10, 3)
    assert (e.value.status, e.value.message) == (413, message)


@given(st.lists(st.binary(min_size=1, max_size=10), min_size=1, max_size=3), st.binary(max_size=8))
def test_binary_mpub_round_trips_and_ignores_trailing_bytes(
    bodies: list[bytes], tail: bytes
) -> None:
    assert parse_mpub_binary(frame(*bodies) + tail, 10, 3) == bodies


@given(st.binary(max_size=64))
def test_binary_mpub_never_raises_anything_but_its_answer(data: bytes) -> None:
    try:
        msgs = parse_mpub_binary(data, 10, 3)
    except HttpError as exc:
        assert exc.status == 413 and exc.message in ("BAD_BODY", "BAD_MESSAGE")
    else:
        assert 1 <= len(msgs) <= 3 and all(1 <= len(m) <= 10 for m in msgs)


def test_bool_parameters_as_nsqd_reads_them() -> None:
    assert parse_bool("true", False) and parse_bool("1", False)
    assert not parse_bool("false", True) and not parse_bool("0", True)
    assert parse_bool("yes", True) and not parse_bool(None, False)


def test_pairq_errors_map_to_statuses_with_their_reason() -> None:
    def m(exc: PairqError, nf: str = "TOPIC_NOT_FOUND") -> tuple[int, str]:
        e = from_pairq(exc, nf)
        return e.status, e.message

    assert m(NotFoundError("gone")) == (404, "TOPIC_NOT_FOUND")
    assert m(NotFoundError("gone"), "CHANNEL_NOT_FOUND") == (404, "CHANNEL_NOT_FOUND")
    assert m(StoreFullError("store 98% full")) == (503, "STORE_FULL: store 98% full")
    assert m(UnavailableError("partner down; retry")) == (503, "UNAVAILABLE: partner down; retry")
    status, message = m(limit_exceeded("max_publish_rate", 10, "too fast"))
    assert status == 429 and message == "TOO_MANY: too fast (--max-publish-rate=10)"
    status, message = m(limit_exceeded("max_batch", 3, "4", pb.ERROR_CODE_BAD_BATCH))
    assert status == 413 and message.startswith("BAD_BATCH: ")
    assert m(PairqError("denied", code=pb.ERROR_CODE_PERMISSION_DENIED))[0] == 403
    assert m(PairqError("odd"))[0] == 500


def test_stats_shape_filters_and_null_clients() -> None:
    resp = pb.GetStatsResponse(version="1", health="store full: 99%", start_time_ns=5 * 10**9)
    t = resp.topics.add(name="b", depth=2, message_count=7)
    t.channels.add(name="z", depth=1).clients.add(client_id="x", connected_at_ns=3 * 10**9)
    t.channels.add(name="y", depth=4)
    resp.topics.add(name="a", ephemeral=True, depth=3)
    s = nsq_stats(resp, "", "", True)
    assert s["health"] == "NOK - store full: 99%" and s["start_time"] == 5
    assert [x["topic_name"] for x in s["topics"]] == ["a", "b"]
    assert s["topics"][0]["backend_depth"] == 0 and s["topics"][1]["backend_depth"] == 2
    assert [c["channel_name"] for c in s["topics"][1]["channels"]] == ["y", "z"]
    assert s["topics"][1]["channels"][1]["clients"][0]["connect_ts"] == 3
    assert nsq_stats(resp, "b", "z", False)["topics"][0]["channels"][0]["clients"] is None
    assert [x["topic_name"] for x in nsq_stats(resp, "", "y", True)["topics"]] == ["b"]
    assert nsq_stats(resp, "nope", "", True)["topics"] == []


def test_advertised_addresses_are_dialable() -> None:
    import socket

    from pairq.broker.registration import advertised

    assert advertised("") == ""
    assert advertised("127.0.0.1:4151") == "127.0.0.1:4151"
    assert advertised("0.0.0.0:4151") == f"{socket.gethostname()}:4151"
    assert advertised("[::]:4150") == f"{socket.gethostname()}:4150"
    assert advertised("[::1]:4150") == "[::1]:4150"
