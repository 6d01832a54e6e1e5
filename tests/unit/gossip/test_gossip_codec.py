from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pairq.gossip.codec import decode_message, decode_packet, encode_message, encode_packet
from pairq.gossip.errors import DecodeError, MetaTooLargeError
from pairq.gossip.messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    MemberState,
    Message,
    Nack,
    PairHeartbeat,
    Ping,
    PushPull,
    PushPullEntry,
    Suspect,
)
from pairq.gossip.meta import NodeMeta

names = st.text(min_size=1, max_size=40).filter(lambda s: 0 < len(s.encode()) <= 255)
hosts = st.sampled_from(["127.0.0.1", "10.1.2.3", "::1", "broker-a.example"])
addrs = st.tuples(hosts, st.integers(1, 65535))
u32 = st.integers(0, 2**32 - 1)
metas = st.builds(
    NodeMeta,
    role=st.sampled_from(["broker", "lookup", ""]),
    node_id=st.text(max_size=36).filter(lambda s: len(s.encode()) <= 255),
    pair=st.text(max_size=20).filter(lambda s: len(s.encode()) <= 255),
    grpc_address=st.sampled_from(["", "127.0.0.1:4150"]),
    start_epoch_ms=st.integers(0, 2**63),
)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, u32, names, names, addrs),
    st.builds(IndirectPing, u32, names, addrs, st.booleans(), names, addrs),
    st.builds(Ack, u32, names),
    st.builds(Nack, u32, names),
    st.builds(Suspect, u32, names, names),
    st.builds(Alive, u32, names, addrs, metas),
    st.builds(Dead, u32, names, names),
    st.builds(PairHeartbeat, u32, names, u32),
    st.builds(
        PushPull,
        st.booleans(),
        st.lists(
            st.builds(PushPullEntry, names, addrs, u32, st.sampled_from(list(MemberState)), metas),
            max_size=5,
        ).map(tuple),
    ),
)


@given(messages)
def test_message_roundtrip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


@given(st.lists(messages, min_size=1, max_size=6))
def test_packet_roundtrip(msgs: list[Message]) -> None:
    assert decode_packet(encode_packet(msgs)) == msgs


def test_ping_is_compact() -> None:
    raw = encode_message(Ping(1, "broker-1a", "broker-1b", ("10.0.0.12", 7946)))
    assert len(raw) < 50


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x01",
        b"\x63\x00",
        b"\xff\x00",
        b"\xff\x02\x00\x01\x03",
        b"\x03\x00\x00\x00\x01\x00",
    ],
)
def test_malformed_raises_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_packet(data)


def test_trailing_bytes_rejected() -> None:
    raw = encode_message(Ack(7, "a")) + b"x"
    with pytest.raises(DecodeError, match="trailing"):
        decode_message(raw)


def test_bad_utf8_and_state_rejected() -> None:
    with pytest.raises(DecodeError, match="UTF-8"):
        decode_message(b"\x03\x00\x00\x00\x01\x01\xff")
    entry = PushPullEntry("a", ("h", 1), 0, MemberState.ALIVE, NodeMeta())
    raw = bytearray(encode_message(PushPull(False, (entry,))))
    raw[1 + 1 + 2 + 2 + 2 + 2 + 4] = 9  # type, join, count, name, host, port, incarnation
    with pytest.raises(DecodeError, match="state"):
        decode_message(bytes(raw))


def test_meta_size_limit_is_a_clear_error() -> None:
    big = NodeMeta(role="broker", extra=tuple((f"k{i}", "v" * 100) for i in range(10)))
    with pytest.raises(MetaTooLargeError) as info:
        big.encode(limit=512)
    assert info.value.size > 512 and info.value.limit == 512
    assert "512" in str(info.value)


def test_fuzz_decoders_small() -> None:
    """20k random and mutated packets: only DecodeError, never a crash (1M: python -m pairq.gossip.fuzz)."""
    from pairq.gossip.fuzz import run_fuzz

    stats = run_fuzz(20_000, seed=1234)
    assert stats["total"] == 20_000
    assert stats["rejected"] > 1000  # the mutations really produce garbage
    assert stats["accepted"] > 100  # and some still parse: the decoders are exercised deeply


@pytest.mark.parametrize(
    "host",
    ["h" * 255, "a" * 64 + ".example", "bad host", "h\u00e9te", "-lead", "trail-", "a..b", ""],
)
def test_forged_host_names_are_rejected(host: str) -> None:
    """Issue 14: a 255-character host name in an Alive spread to every member, and each
    one's sendto raised UnicodeError (IDNA labels are at most 63 characters) forever."""
    raw = b"".join(
        [
            bytes([6]),  # ALIVE
            (1).to_bytes(4, "big"),
            bytes([4]) + b"evil",
            bytes([len(host.encode())]) + host.encode(),
            (7946).to_bytes(2, "big"),
            encode_message(Alive(1, "x", ("127.0.0.1", 1), NodeMeta()))[-2:],
        ]
    )
    with pytest.raises(DecodeError):
        decode_message(raw)


@pytest.mark.parametrize("host", ["a" * 63 + ".example", "10.0.0.1", "::1", "node_1.local."])
def test_legal_host_names_still_decode(host: str) -> None:
    msg = Alive(1, "n", (host, 7946), NodeMeta())
    assert decode_message(encode_message(msg)) == msg


@given(st.binary(max_size=300))
def test_every_decoded_host_can_be_sent_to(data: bytes) -> None:
    """Whatever decodes, its addresses pass the socket layer's IDNA step."""
    try:
        msgs = decode_packet(bytes([6]) + data)
    except DecodeError:
        return
    for m in msgs:
        assert isinstance(m, Alive)
        m.addr[0].encode("idna")
