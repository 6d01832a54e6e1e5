"""Compact binary codec for gossip messages.

Layout: one type byte, then fixed big-endian fields; strings are a length byte
and UTF-8; metadata is a u16 length and :meth:`NodeMeta.encode` bytes. A
compound packet is ``0xFF``, a count byte, then ``u16 length + message`` each.

Decoders never trust the input: every read is bounds-checked and any defect
raises :class:`DecodeError` (never IndexError, struct.error, ...), so a
receiver can drop the packet and carry on. An address's host must be an IP
literal or a DNS name a socket can send to (:func:`valid_host`): a forged one
would otherwise spread to every member and fail in each one's ``sendto``.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Sequence

from pairq.gossip.errors import DecodeError
from pairq.gossip.messages import (
    Ack,
    Addr,
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

__all__ = [
    "COMPOUND",
    "decode_message",
    "decode_packet",
    "encode_message",
    "encode_packet",
]

PING, INDIRECT_PING, ACK, NACK, SUSPECT, ALIVE, DEAD, PAIR_HB, PUSH_PULL = range(1, 10)
COMPOUND = 0xFF
MAX_ENTRIES = 65535

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
# A DNS name as sockets can resolve it: ASCII labels of 1-63 letters, digits,
# hyphens and underscores, at most 253 characters in all (anything longer or
# non-ASCII makes ``sendto`` raise UnicodeError in its IDNA step).
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def valid_host(host: str) -> bool:
    """``host`` is an IP literal or a DNS name a socket can send to."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if not host or len(host) > 253:
        return False
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return all(_LABEL.match(label) for label in labels)


class _Writer:
    __slots__ = ("buf",)

    def __init__(self, kind: int) -> None:
        self.buf = bytearray([kind])

    def u8(self, v: int) -> None:
        self.buf.append(v & 0xFF)

    def u16(self, v: int) -> None:
        self.buf += _U16.pack(v & 0xFFFF)

    def u32(self, v: int) -> None:
        self.buf += _U32.pack(v & 0xFFFFFFFF)

    def string(self, v: str) -> None:
        raw = v.encode("utf-8")
        if len(raw) > 255:
            raise ValueError(f"string too long for the gossip codec: {len(raw)} bytes")
        self.buf.append(len(raw))
        self.buf += raw

    def addr(self, a: Addr) -> None:
        self.string(a[0])
        self.u16(a[1])

    def meta(self, m: NodeMeta) -> None:
        raw = m.encode(limit=4096)
        self.u16(len(raw))
        self.buf += raw


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DecodeError(f"truncated: wanted {n} bytes", self.pos)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(_U16.unpack(self.take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def boolean(self) -> bool:
        v = self.u8()
        if v > 1:
            raise DecodeError(f"boolean byte must be 0 or 1, got {v}", self.pos - 1)
        return v == 1

    def string(self) -> str:
        raw = self.take(self.u8())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("string is not UTF-8", self.pos) from exc

    def name(self) -> str:
        s = self.string()
        if not s:
            raise DecodeError("empty member name", self.pos)
        return s

    def addr(self) -> Addr:
        host = self.string()
        port = self.u16()
        if not host or port == 0:
            raise DecodeError("address needs a host and a non-zero port", self.pos)
        if not valid_host(host):
            raise DecodeError(f"address host {host[:40]!r} is not an IP or DNS name", self.pos)
        return (host, port)

    def meta(self) -> NodeMeta:
        raw = self.take(self.u16())
        return NodeMeta.decode(raw)

    def state(self) -> MemberState:
        v = self.u8()
        try:
            return MemberState(v)
        except ValueError as exc:
            raise DecodeError(f"unknown member state {v}", self.pos - 1) from exc

    def end(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError(f"{len(self.data) - self.pos} trailing bytes", self.pos)


def encode_message(msg: Message) -> bytes:
    """Encode one message. Raises ValueError for a message we should never build."""
    match msg:
        case Ping(seq, target, source, source_addr):
            w = _Writer(PING)
            w.u32(seq)
            w.string(target)
            w.string(source)
            w.addr(source_addr)
        case IndirectPing(seq, target, target_addr, nack, source, source_addr):
            w = _Writer(INDIRECT_PING)
            w.u32(seq)
            w.string(target)
            w.addr(target_addr)
            w.u8(1 if nack else 0)
            w.string(source)
            w.addr(source_addr)
        case Ack(seq, source):
            w = _Writer(ACK)
            w.u32(seq)
            w.string(source)
        case Nack(seq, source):
            w = _Writer(NACK)
            w.u32(seq)
            w.string(source)
        case Suspect(inc, node, sender):
            w = _Writer(SUSPECT)
            w.u32(inc)
            w.string(node)
            w.string(sender)
        case Alive(inc, node, addr, meta):
            w = _Writer(ALIVE)
            w.u32(inc)
            w.string(node)
            w.addr(addr)
            w.meta(meta)
        case Dead(inc, node, sender):
            w = _Writer(DEAD)
            w.u32(inc)
            w.string(node)
            w.string(sender)
        case PairHeartbeat(seq, source, inc):
            w = _Writer(PAIR_HB)
            w.u32(seq)
            w.string(source)
            w.u32(inc)
        case PushPull(join, entries):
            if len(entries) > MAX_ENTRIES:
                raise ValueError("too many push-pull entries")
            w = _Writer(PUSH_PULL)
            w.u8(1 if join else 0)
            w.u16(len(entries))
            for e in entries:
                w.string(e.name)
                w.addr(e.addr)
                w.u32(e.incarnation)
                w.u8(int(e.state))
                w.meta(e.meta)
        case _:
            raise ValueError(f"not a gossip message: {msg!r}")
    return bytes(w.buf)


def _decode(r: _Reader) -> Message:
    kind = r.u8()
    msg: Message
    if kind == PING:
        msg = Ping(r.u32(), r.name(), r.name(), r.addr())
    elif kind == INDIRECT_PING:
        msg = IndirectPing(r.u32(), r.name(), r.addr(), r.boolean(), r.name(), r.addr())
    elif kind == ACK:
        msg = Ack(r.u32(), r.name())
    elif kind == NACK:
        msg = Nack(r.u32(), r.name())
    elif kind == SUSPECT:
        msg = Suspect(r.u32(), r.name(), r.name())
    elif kind == ALIVE:
        msg = Alive(r.u32(), r.name(), r.addr(), r.meta())
    elif kind == DEAD:
        msg = Dead(r.u32(), r.name(), r.name())
    elif kind == PAIR_HB:
        msg = PairHeartbeat(r.u32(), r.name(), r.u32())
    elif kind == PUSH_PULL:
        join = r.boolean()
        count = r.u16()
        entries = []
        for _ in range(count):
            entries.append(PushPullEntry(r.name(), r.addr(), r.u32(), r.state(), r.meta()))
        msg = PushPull(join, tuple(entries))
    else:
        raise DecodeError(f"unknown message type {kind}", r.pos - 1)
    r.end()
    return msg


def decode_message(data: bytes) -> Message:
    """Decode one message; raises :class:`DecodeError` on any malformed input."""
    try:
        return _decode(_Reader(bytes(data)))
    except DecodeError:
        raise
    except Exception as exc:  # defence in depth: no input may escape as another type
        raise DecodeError(f"{type(exc).__name__}: {exc}") from exc


def encode_packet(msgs: Sequence[Message]) -> bytes:
    """One message as is, several as a compound packet (at most 255)."""
    if not msgs:
        raise ValueError("empty packet")
    if len(msgs) == 1:
        return encode_message(msgs[0])
    if len(msgs) > 255:
        raise ValueError("at most 255 messages per compound packet")
    out = bytearray([COMPOUND, len(msgs)])
    for m in msgs:
        raw = encode_message(m)
        out += _U16.pack(len(raw))
        out += raw
    return bytes(out)


def compound_overhead(count: int) -> int:
    """Bytes a compound packet of ``count`` parts adds to its parts' sizes."""
    return 0 if count <= 1 else 2 + 2 * count


def decode_packet(data: bytes) -> list[Message]:
    """Decode a single or compound packet into its messages."""
    data = bytes(data)
    if not data:
        raise DecodeError("empty packet", 0)
    if data[0] != COMPOUND:
        return [decode_message(data)]
    r = _Reader(data, 1)
    count = r.u8()
    if count == 0:
        raise DecodeError("compound packet with no parts", 1)
    out: list[Message] = []
    for _ in range(count):
        part = r.take(r.u16())
        if part[:1] == bytes([COMPOUND]):
            raise DecodeError("nested compound packet", r.pos)
        out.append(decode_message(part))
    r.end()
    return out
