"""The NSQ protocol V2 codec and session (pairq.broker.nsq.protocol), without sockets."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairq.broker import wire
from pairq.broker.nsq import protocol as p
from pairq.v1 import broker_pb2 as pb

CFG = p.Config(
    max_rdy_count=100,
    msg_timeout_ms=60_000,
    max_msg_timeout_ms=900_000,
    heartbeat_interval_ms=30_000,
    max_defer_ms=3_600_000,
    auth_required=False,
    version="pairq-test",
)


def decoder() -> p.Decoder:
    return p.Decoder(max_msg_size=100, max_batch=5, max_batch_bytes=300)


def sized(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def mpub(bodies: list[bytes]) -> bytes:
    return sized(struct.pack(">I", len(bodies)) + b"".join(sized(b) for b in bodies))


def decode_all(data: bytes, d: p.Decoder | None = None) -> list[p.Command]:
    d = d or decoder()
    d.feed(data)
    out = []
    while (cmd := d.next_command()) is not None:
        out.append(cmd)
    return out


def error_of(data: bytes) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        decode_all(data)
    return info.value


# ----------------------------------------------------------------------------- frames
def test_frames() -> None:
    assert p.frame(p.FRAME_RESPONSE, b"OK") == b"\x00\x00\x00\x06\x00\x00\x00\x00OK"
    assert p.HEARTBEAT_FRAME == b"\x00\x00\x00\x0f\x00\x00\x00\x00_heartbeat_"
    f = p.message_frame(123, 2, b"0123456789abcdef", b"body")
    size, kind, ts, attempts = struct.unpack(">IIQH", f[:18])
    assert (size, kind, ts, attempts) == (len(f) - 4, p.FRAME_MESSAGE, 123, 2)
    assert f[18:34] == b"0123456789abcdef" and f[34:] == b"body"
    assert struct.unpack(">H", p.message_frame(1, 70000, b"x" * 16, b"b")[16:18])[0] == 0xFFFF
    err = p.ProtocolError("E_BAD_TOPIC", "nope")
    assert err.frame() == p.frame(p.FRAME_ERROR, b"E_BAD_TOPIC nope") and err.fatal
    assert not p.ProtocolError("E_FIN_FAILED", "x").fatal


def test_nsq_id_is_16_hex_digits_stable_and_distinct() -> None:
    a, b = bytes(16), bytes(15) + b"\x01"
    assert p.nsq_id(a) == p.nsq_id(a) and len(p.nsq_id(a)) == 16
    assert all(c in b"0123456789abcdef" for c in p.nsq_id(a))
    assert p.nsq_id(a) != p.nsq_id(b)


def test_body_and_timestamp_of_stored_records() -> None:
    rec = wire.encode_record(b"i" * 16, b"hello", 1234567, 0, wire.encode_headers({"k": "v"}))
    assert wire.body_and_timestamp(wire.record_message(rec)) == (b"hello", 1234567)
    plain = wire.encode_plain_record(b"j" * 16, b"x" * 300, wire.timestamp_field(99))
    assert wire.body_and_timestamp(wire.record_message(plain)) == (b"x" * 300, 99)
    # the protobuf library agrees on what the fields are
    m = pb.Message.FromString(wire.record_message(rec))
    assert (m.body, m.timestamp_ns) == (b"hello", 1234567)


# ----------------------------------------------------------------------------- decoding
def test_every_command_decodes() -> None:
    data = (
        p.MAGIC
        + b"IDENTIFY\n"
        + sized(b'{"client_id": "c"}')
        + b"AUTH\n"
        + sized(b"secret")
        + b"SUB t c#ephemeral\n"
        + b"PUB t\n"
        + sized(b"m")
        + b"MPUB t\n"
        + mpub([b"a", b"bb"])
        + b"DPUB t 250\n"
        + sized(b"d")
        + b"RDY 7\r\n"
        + b"RDY\n"
        + b"FIN 0123456789abcdef\n"
        + b"REQ 0123456789abcdef 10\n"
        + b"TOUCH 0123456789abcdef\n"
        + b"CLS\n"
        + b"NOP\n"
    )
    i = b"0123456789abcdef"
    assert decode_all(data) == [
        p.Identify({"client_id": "c"}),
        p.Auth(b"secret"),
        p.Sub("t", "c#ephemeral"),
        p.Pub("t", b"m"),
        p.Mpub("t", [b"a", b"bb"]),
        p.Dpub("t", 250, b"d"),
        p.Rdy(7),
        p.Rdy(1),
        p.Fin(i),
        p.Req(i, 10),
        p.Touch(i),
        p.Cls(),
        p.Nop(),
    ]


def test_partial_input_waits_for_more() -> None:
    d = decoder()
    stream = p.MAGIC + b"PUB t\n" + sized(b"hello")
    for byte in stream[:-1]:
        d.feed(bytes((byte,)))
        assert d.next_command() is None
    d.feed(stream[-1:])
    assert d.next_command() == p.Pub("t", b"hello")
    assert d.next_command() is None and d.buffered == 0


@pytest.mark.parametrize(
    ("data", "code", "text"),
    [
        (b"GET / HTTP/1.1\r\n", "E_BAD_PROTOCOL", "bad magic"),
        (p.MAGIC + b"HELLO\n", "E_INVALID", "invalid command"),
        (p.MAGIC + b"x" * (p.MAX_LINE + 1), "E_INVALID", "longer than"),
        (p.MAGIC + b"PUB\n", "E_INVALID", "insufficient"),
        (p.MAGIC + b"PUB bad/name\n", "E_BAD_TOPIC", "not valid"),
        (p.MAGIC + b"SUB t bad/name\n", "E_BAD_CHANNEL", "not valid"),
        (p.MAGIC + b"PUB t\n" + struct.pack(">I", 0), "E_BAD_MESSAGE", "invalid body size 0"),
        (p.MAGIC + b"PUB t\n" + struct.pack(">I", 101), "E_BAD_MESSAGE", "--max-msg-size"),
        (p.MAGIC + b"PUB t\n" + b"\xff\xff\xff\xff", "E_BAD_MESSAGE", "size -1"),
        (p.MAGIC + b"DPUB t -5\n", "E_INVALID", "not a number"),
        (p.MAGIC + b"DPUB t\n", "E_INVALID", "insufficient"),
        (p.MAGIC + b"RDY x\n", "E_INVALID", "not a number"),
        (p.MAGIC + b"RDY 99999999999\n", "E_INVALID", "not a number"),
        (p.MAGIC + b"FIN short\n", "E_INVALID", "16 bytes"),
        (p.MAGIC + b"FIN\n", "E_INVALID", "insufficient"),
        (p.MAGIC + b"REQ 0123456789abcdef\n", "E_INVALID", "insufficient"),
        (p.MAGIC + b"TOUCH\n", "E_INVALID", "insufficient"),
        (p.MAGIC + b"MPUB t\n" + mpub([b"a"] * 6), "E_BAD_BODY", "--max-batch"),
        (p.MAGIC + b"MPUB t\n" + sized(struct.pack(">I", 0)), "E_BAD_BODY", "count 0"),
        (p.MAGIC + b"MPUB t\n" + sized(b"\x00"), "E_BAD_BODY", "count"),
        (p.MAGIC + b"MPUB t\n" + struct.pack(">I", 400), "E_BAD_BODY", "--max-batch-bytes"),
        (
            p.MAGIC + b"MPUB t\n" + sized(struct.pack(">I", 2) + sized(b"a")),
            "E_BAD_MESSAGE",
            "message(1)",
        ),
        (
            p.MAGIC + b"MPUB t\n" + sized(struct.pack(">I", 1) + sized(b"x" * 101)),
            "E_BAD_MESSAGE",
            "--max-msg-size",
        ),
        (
            p.MAGIC + b"MPUB t\n" + sized(struct.pack(">I", 1) + sized(b"a") + b"zz"),
            "E_BAD_BODY",
            "after its 1 messages",
        ),
        (p.MAGIC + b"IDENTIFY\n" + sized(b"{bad"), "E_BAD_BODY", "JSON"),
        (p.MAGIC + b"IDENTIFY\n" + sized(b"[1]"), "E_BAD_BODY", "JSON object"),
        (p.MAGIC + b"IDENTIFY\n" + struct.pack(">I", 1 << 20), "E_BAD_BODY", "too big"),
        (p.MAGIC + b"AUTH x\n", "E_INVALID", "AUTH invalid number"),
    ],
)
def test_bad_input_is_a_fatal_error(data: bytes, code: str, text: str) -> None:
    err = error_of(data)
    assert err.code == code and err.fatal
    assert text in err.message, err.message


def test_a_broken_decoder_stays_broken() -> None:
    d = decoder()
    d.feed(p.MAGIC + b"BOGUS\nNOP\n")
    with pytest.raises(p.ProtocolError):
        d.next_command()
    d.feed(b"NOP\n")
    for _ in range(3):
        with pytest.raises(p.ProtocolError) as info:
            d.next_command()
        assert info.value.code == "E_INVALID"


# ----------------------------------------------------------------------------- the session
def test_identify_negotiates_honestly() -> None:
    s = p.Session(CFG)
    out = s.accept(
        p.Identify(
            {
                "feature_negotiation": True,
                "heartbeat_interval": 5000,
                "msg_timeout": 2000,
                "snappy": True,
                "deflate": True,
                "tls_v1": True,
                "sample_rate": 10,
                "client_id": "cid",
                "hostname": "h",
                "user_agent": "ua/1",
                "unknown_key": 1,
            }
        )
    )
    assert isinstance(out, bytes)
    answer = json.loads(out[8:])
    assert answer["snappy"] is answer["tls_v1"] is False  # not built / no broker TLS
    assert answer["deflate"] is True and answer["deflate_level"] == 6
    assert s.deflating == 6 and s.deflate_level == 0
    assert s.deflated() == p.OK_FRAME and (s.deflating, s.deflate_level) == (0, 6)
    assert answer["sample_rate"] == 0 and answer["auth_required"] is False
    assert answer["max_rdy_count"] == 100 and answer["msg_timeout"] == 2000
    assert answer["max_msg_timeout"] == 900_000 and answer["version"] == "pairq-test"
    assert (s.heartbeat_ms, s.msg_timeout_ms) == (5000, 2000)
    assert (s.client_id, s.hostname, s.user_agent) == ("cid", "h", "ua/1")
    assert p.Session(CFG).accept(p.Identify({})) == p.OK_FRAME


def test_deflate_level_is_capped_and_checked() -> None:
    s = p.Session(CFG)
    out = s.accept(p.Identify({"feature_negotiation": True, "deflate": True, "deflate_level": 9}))
    assert isinstance(out, bytes) and json.loads(out[8:])["deflate_level"] == 6
    with pytest.raises(p.ProtocolError) as info:
        p.Session(CFG).accept(
            p.Identify({"feature_negotiation": True, "deflate": True, "deflate_level": 10})
        )
    assert info.value.code == "E_BAD_BODY"
    off = p.Session(p.Config(**{**CFG.__dict__, "max_deflate_level": 0}))
    out = off.accept(p.Identify({"feature_negotiation": True, "deflate": True}))
    assert isinstance(out, bytes) and json.loads(out[8:])["deflate"] is False
    assert not off.deflating


@pytest.mark.parametrize(
    "data",
    [
        {"heartbeat_interval": 50},
        {"heartbeat_interval": 600_001},
        {"msg_timeout": 900_001},
        {"msg_timeout": "x"},
        {"output_buffer_size": 10},
        {"output_buffer_timeout": 40_000},
        {"sample_rate": 100},
    ],
)
def test_identify_refuses_out_of_range_values(data: dict[str, object]) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.Session(CFG).accept(p.Identify(data))
    assert info.value.code == "E_BAD_BODY" and info.value.fatal


def test_states() -> None:
    s = p.Session(CFG)
    for cmd in (p.Rdy(1), p.Fin(b"x" * 16), p.Req(b"x" * 16, 0), p.Touch(b"x" * 16), p.Cls()):
        with pytest.raises(p.ProtocolError) as info:
            s.accept(cmd)
        assert info.value.code == "E_INVALID" and "current state" in info.value.message
    assert s.accept(p.Pub("t", b"x")) == p.Pub("t", b"x")  # publishing in any state
    assert s.accept(p.Sub("t", "c")) == p.Sub("t", "c")
    assert s.state is p.State.SUBSCRIBED
    for cmd in (p.Sub("t", "c"), p.Identify({})):
        with pytest.raises(p.ProtocolError):
            s.accept(cmd)
    assert s.accept(p.Rdy(100)) == p.Rdy(100)
    with pytest.raises(p.ProtocolError) as info:
        s.accept(p.Rdy(101))
    assert info.value.fatal and "--max-rdy-count" in info.value.message
    assert s.accept(p.Cls()) == p.CLOSE_WAIT_FRAME
    assert s.accept(p.Rdy(5)) == b""  # ignored once closing
    with pytest.raises(p.ProtocolError):
        s.accept(p.Cls())


def test_sub_needs_heartbeats() -> None:
    s = p.Session(CFG)
    s.accept(p.Identify({"heartbeat_interval": -1}))
    assert s.heartbeat_ms == -1
    with pytest.raises(p.ProtocolError) as info:
        s.accept(p.Sub("t", "c"))
    assert "heartbeats disabled" in info.value.message


def test_in_flight_table_maps_nsq_ids_to_pairq_ids() -> None:
    s = p.Session(CFG)
    s.accept(p.Sub("t", "c"))
    pid = b"\x00\xffpairq-id-bytes"
    nid = s.delivered(pid)
    assert nid == p.nsq_id(pid)
    touched = s.accept(p.Touch(nid))
    assert touched == p.Resolved("TOUCH", pid, nid, 0)
    req = s.accept(p.Req(nid, 10**9))
    assert isinstance(req, p.Resolved) and req.pairq_id == pid
    assert req.delay_ms == CFG.max_defer_ms  # clamped, as nsqd does
    with pytest.raises(p.ProtocolError) as info:
        s.accept(p.Fin(nid))  # REQ dropped it: until redelivered, unknown here
    assert info.value.code == "E_FIN_FAILED" and not info.value.fatal
    s.delivered(pid)  # redelivered: the same NSQ id
    assert s.accept(p.Fin(nid)) == p.Resolved("FIN", pid, nid, 0)
    assert s.table_size == 0
    # bounded: the oldest entries go first
    for i in range(s.max_table + 10):
        s.delivered(i.to_bytes(16, "big"))
    assert s.table_size == s.max_table
    with pytest.raises(p.ProtocolError):
        s.accept(p.Fin(p.nsq_id((0).to_bytes(16, "big"))))
    last = (s.max_table + 9).to_bytes(16, "big")
    assert isinstance(s.accept(p.Fin(p.nsq_id(last))), p.Resolved)


def test_auth_rules() -> None:
    cfg = p.Config(**{**CFG.__dict__, "auth_required": True})
    s = p.Session(cfg)
    with pytest.raises(p.ProtocolError) as info:
        s.accept(p.Pub("t", b"x"))
    assert info.value.code == "E_AUTH_FIRST"
    assert s.accept(p.Auth(b"tok")) == p.Auth(b"tok")
    with pytest.raises(p.ProtocolError) as info:
        s.authenticated("", None, 0)
    assert info.value.code == "E_AUTH_FAILED"
    with pytest.raises(p.ProtocolError) as info:
        s.authenticated("nobody", lambda *_: False, 0)
    assert info.value.code == "E_UNAUTHORIZED"

    def allows(perm: str, topic: str, channel: str) -> bool:
        return (perm, topic) == ("publish", "ok") or (perm, topic, channel) == (
            "subscribe",
            "ok",
            "c",
        )

    answer = json.loads(s.authenticated("app", allows, 2)[8:])
    assert answer == {"identity": "app", "identity_url": "", "permission_count": 2}
    with pytest.raises(p.ProtocolError) as info:
        s.accept(p.Auth(b"again"))
    assert "already set" in info.value.message
    assert s.accept(p.Pub("ok", b"x")) == p.Pub("ok", b"x")
    for cmd in (p.Pub("no", b"x"), p.Mpub("no", [b"x"]), p.Dpub("no", 1, b"x"), p.Sub("ok", "d")):
        with pytest.raises(p.ProtocolError) as info:
            s.accept(cmd)
        assert info.value.code == "E_UNAUTHORIZED"
    assert s.accept(p.Sub("ok", "c")) == p.Sub("ok", "c")
    with pytest.raises(p.ProtocolError) as info:
        p.Session(CFG).accept(p.Auth(b"x"))
    assert info.value.code == "E_AUTH_DISABLED"


def test_tls_is_offered_and_required_when_the_broker_has_it() -> None:
    plain = p.Session(CFG)
    out = plain.accept(p.Identify({"feature_negotiation": True, "tls_v1": True}))
    assert isinstance(out, bytes) and json.loads(out[8:])["tls_v1"] is False
    assert not plain.upgrading
    s = p.Session(p.Config(**{**CFG.__dict__, "tls": True}))
    with pytest.raises(p.ProtocolError) as info:
        s.accept(p.Pub("t", b"x"))
    assert info.value.fatal and "TLS required" in info.value.message
    out = s.accept(p.Identify({"feature_negotiation": True, "tls_v1": True}))
    assert isinstance(out, bytes) and json.loads(out[8:])["tls_v1"] is True
    assert s.upgrading
    assert s.upgraded() == p.OK_FRAME and s.tls and not s.upgrading
    assert s.accept(p.Pub("t", b"x")) == p.Pub("t", b"x")
    # a second IDENTIFY does not upgrade again
    again = s.accept(p.Identify({"feature_negotiation": True, "tls_v1": True}))
    assert isinstance(again, bytes) and json.loads(again[8:])["tls_v1"] is False


def test_a_certificate_principal_until_auth_replaces_it() -> None:
    s = p.Session(p.Config(**{**CFG.__dict__, "auth_required": True}))
    s.certified("by-cert", lambda perm, topic, channel: topic == "a")
    assert s.accept(p.Pub("a", b"x")) == p.Pub("a", b"x")
    with pytest.raises(p.ProtocolError) as info:
        s.accept(p.Pub("b", b"x"))
    assert info.value.code == "E_UNAUTHORIZED"
    s = p.Session(p.Config(**{**CFG.__dict__, "auth_required": True}))
    s.certified("by-cert", lambda perm, topic, channel: topic == "a")
    assert s.accept(p.Auth(b"tok")) == p.Auth(b"tok")  # a token wins over the cert
    s.authenticated("by-token", lambda perm, topic, channel: topic == "b", 1)
    assert s.accept(p.Pub("b", b"x")) == p.Pub("b", b"x") and s.identity == "by-token"
    with pytest.raises(p.ProtocolError) as info:
        s.accept(p.Auth(b"again"))
    assert "already set" in info.value.message


def test_dpub_delay_within_max_defer() -> None:
    s = p.Session(CFG)
    with pytest.raises(p.ProtocolError) as info:
        s.accept(p.Dpub("t", CFG.max_defer_ms + 1, b"x"))
    assert info.value.code == "E_INVALID" and "--max-defer-ms" in info.value.message


# ----------------------------------------------------------------------------- properties
names = st.text(alphabet="abcXYZ09._-", min_size=1, max_size=12)
# Any 16 bytes but the separators (a line's trailing \r is dropped, as nsqd does: real
# ids are hex digits)
ids = st.binary(min_size=16, max_size=16).filter(
    lambda b: b" " not in b and b"\n" not in b and not b.endswith(b"\r")
)
bodies = st.binary(min_size=1, max_size=40)
commands = st.one_of(
    st.builds(lambda d: p.Identify(d), st.dictionaries(names, st.integers(0, 9), max_size=3)),
    st.builds(p.Auth, bodies),
    st.builds(p.Sub, names, names),
    st.builds(p.Pub, names, bodies),
    st.builds(p.Mpub, names, st.lists(bodies, min_size=1, max_size=5)),
    st.builds(p.Dpub, names, st.integers(0, 10**6), bodies),
    st.builds(p.Rdy, st.integers(0, 10**6)),
    st.builds(p.Fin, ids),
    st.builds(p.Req, ids, st.integers(0, 10**6)),
    st.builds(p.Touch, ids),
    st.just(p.Cls()),
    st.just(p.Nop()),
)


def encode(cmd: p.Command) -> bytes:
    match cmd:
        case p.Identify(data):
            return b"IDENTIFY\n" + sized(json.dumps(data).encode())
        case p.Auth(secret):
            return b"AUTH\n" + sized(secret)
        case p.Sub(t, c):
            return f"SUB {t} {c}\n".encode()
        case p.Pub(t, b):
            return f"PUB {t}\n".encode() + sized(b)
        case p.Mpub(t, bs):
            return f"MPUB {t}\n".encode() + mpub(bs)
        case p.Dpub(t, ms, b):
            return f"DPUB {t} {ms}\n".encode() + sized(b)
        case p.Rdy(n):
            return f"RDY {n}\n".encode()
        case p.Fin(i):
            return b"FIN " + i + b"\n"
        case p.Req(i, ms):
            return b"REQ " + i + f" {ms}\n".encode()
        case p.Touch(i):
            return b"TOUCH " + i + b"\n"
        case p.Cls():
            return b"CLS\n"
        case _:
            return b"NOP\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(commands, max_size=12), st.lists(st.integers(1, 50), max_size=30))
def test_any_split_of_a_valid_stream_decodes_to_the_same_commands(
    cmds: list[p.Command], cuts: list[int]
) -> None:
    data = p.MAGIC + b"".join(encode(c) for c in cmds)
    d = decoder()
    out: list[p.Command] = []
    pos = 0
    for n in [*cuts, len(data)]:
        d.feed(data[pos : pos + n])
        pos += n
        while (cmd := d.next_command()) is not None:
            out.append(cmd)
    assert out == cmds


@settings(max_examples=500, deadline=None)
@given(st.lists(commands, max_size=6), st.binary(max_size=200), st.lists(commands, max_size=4))
def test_garbage_never_raises_anything_but_a_protocol_error_nor_desynchronises(
    before: list[p.Command], garbage: bytes, after: list[p.Command]
) -> None:
    """Valid commands, then arbitrary bytes, then valid commands again: the decoder
    yields the commands before the garbage, then either commands that the bytes
    really encode or a fatal error that sticks (nothing later is taken as a command)."""
    data = p.MAGIC + b"".join(encode(c) for c in before) + garbage
    data += b"".join(encode(c) for c in after)
    d = decoder()
    d.feed(data)
    out: list[p.Command] = []
    failed = None
    try:
        while (cmd := d.next_command()) is not None:
            out.append(cmd)
    except p.ProtocolError as exc:
        failed = exc
    assert out[: len(before)] == before
    if failed is not None:
        assert failed.fatal
        d.feed(b"NOP\n")
        with pytest.raises(p.ProtocolError):
            d.next_command()
    # whatever was decoded also runs through a session without any other exception
    s = p.Session(CFG)
    for cmd in out:
        try:
            s.accept(cmd)
        except p.ProtocolError:
            break


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_protocol_errors(data: bytes) -> None:
    for prefix in (b"", p.MAGIC):
        d = decoder()
        d.feed(prefix + data)
        try:
            while d.next_command() is not None:
                pass
        except p.ProtocolError:
            pass
