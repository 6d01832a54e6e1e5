"""NSQ's TCP protocol V2, sans-IO: bytes in -> commands out, frames out.

No sockets, no clock, no tasks: ``tcp.py`` owns those. ``Decoder`` turns the
bytes a client sends into commands; ``Session`` is one connection's state
machine (what may be sent when, IDENTIFY's negotiation, AUTH, the in-flight
id table); the ``*_frame`` functions build what the broker sends. Every rule
of the protocol as pairq speaks it is here:

**Framing (broker -> client).** ``size (4, big-endian) | frame type (4) | data``
where ``size`` counts the type and the data. Type 0 is a response (``OK``,
``_heartbeat_``, ``CLOSE_WAIT``, IDENTIFY's and AUTH's JSON), 1 an error
(``E_CODE text``), 2 a message: ``timestamp_ns (8) | attempts (2) | id (16) |
body``. Attempts above 65535 are sent as 65535.

**Commands (client -> broker).** The connection starts with the 4 magic bytes
``"  V2"`` (anything else: ``E_BAD_PROTOCOL``, fatal). Then each command is a
line ``NAME [PARAM ...]\\n`` (a trailing ``\\r`` is dropped; params are split
on single spaces), at most ``MAX_LINE`` bytes. IDENTIFY, AUTH, PUB, DPUB and
MPUB are followed by ``size (4) | body``; MPUB's body is ``count (4)`` then
``size (4) | message`` per message, and must be filled exactly by them.
Sizes are checked before a body is buffered, so a client declaring a huge
body costs nothing: PUB/DPUB bodies must be 1 to --max-msg-size bytes
(``E_BAD_MESSAGE``); an MPUB body at most --max-batch-bytes plus its framing,
1 to --max-batch messages (``E_BAD_BODY``), each 1 to --max-msg-size bytes
(``E_BAD_MESSAGE``); IDENTIFY and AUTH bodies 1 to ``MAX_CONTROL_BODY`` bytes
(``E_BAD_BODY``). Counts and delays are decimal digits only (no sign), at
most 10 of them. Topic and channel names follow pairq's (NSQ's) rules
(``E_BAD_TOPIC`` / ``E_BAD_CHANNEL``). A message id is exactly 16 bytes.

**Errors.** As nsqd: every error of parsing, state, IDENTIFY, AUTH, RDY or a
publish (``E_INVALID``, ``E_BAD_*``, ``E_PUB_FAILED``, ``E_MPUB_FAILED``,
``E_DPUB_FAILED``, ``E_AUTH_*``, ``E_UNAUTHORIZED``, ``E_SUB_FAILED``) is
*fatal*: the error frame is sent and the connection closed. Only
``E_FIN_FAILED``, ``E_REQ_FAILED`` and ``E_TOUCH_FAILED`` leave it open (a
late FIN fails that command, not the consumer). Once the decoder has raised
a fatal error it raises the same error again, so nothing after garbage is
ever taken for a command (no desynchronisation).

**States.** INIT -> (SUB) SUBSCRIBED -> (CLS) CLOSING. IDENTIFY and AUTH only
in INIT; SUB only in INIT and only with heartbeats on; RDY only when
subscribed (ignored once CLOSING), 0 to --max-rdy-count, else fatal
``E_INVALID`` (as nsqd: clients would otherwise disagree on their credit);
FIN, REQ, TOUCH when subscribed or closing; CLS only when subscribed, answered
``CLOSE_WAIT``; PUB, MPUB, DPUB, NOP in any state. REQ's delay is clamped to
0..--max-defer-ms (as nsqd clamps it); DPUB's must be within it (``E_INVALID``).

**IDENTIFY.** A JSON object; unknown keys are ignored. ``heartbeat_interval``
(ms): -1 disables heartbeats (then no SUB), 0 keeps the broker's default,
else 100 to 600000 (pairq's range, also used by gRPC subscribers).
``msg_timeout`` (ms): 0 keeps the default, else 1 to --max-msg-timeout-ms.
``output_buffer_size`` (-1, 0, or 64 to 65536 bytes) and
``output_buffer_timeout`` (-1, 0 or 1 to 30000 ms) are accepted and echoed
(every frame is written at once, so no buffering delays them).
``sample_rate`` (0 to 99) is accepted and answered 0: pairq does not sample.
``client_id``, ``hostname``, ``user_agent`` are kept (at most 256 characters)
and shown in GetStats. With ``feature_negotiation`` the answer is JSON with
``max_rdy_count``, ``version``, ``max_msg_timeout``, ``msg_timeout``,
``auth_required``, ``snappy`` false (not built), ``tls_v1`` true when the
client asked for it and the broker has TLS (--tls-cert), and ``deflate`` true
when the client asked for it, with ``deflate_level`` its ``deflate_level``
(default 6) capped at ``max_deflate_level`` (6); without feature negotiation,
``OK``.

**TLS.** After an answer with ``tls_v1`` true the connection becomes TLS (the
caller upgrades it; ``Session.upgrading``), and ``OK`` is sent over TLS; bytes
the client sent after IDENTIFY before the handshake are ``E_INVALID``. When the
broker has TLS, TLS is required (as nsqd's --tls-required): every command but
IDENTIFY before the upgrade is ``E_INVALID ... (TLS required)``, fatal, so the
NSQ port is never a plaintext way around the gRPC port's TLS.

**Deflate.** After an answer with ``deflate`` true (and after TLS, when both),
everything both ways is raw deflate (RFC 1951, no zlib header), each write
flushed with a sync flush, and ``OK`` is the first compressed frame
(``Session.deflating`` until the caller switched; ``deflated``).

**AUTH.** Only when the broker runs with --auth-file (else ``E_AUTH_DISABLED``),
once, in INIT. The secret is a pairq token; unknown: ``E_AUTH_FAILED``. The
answer is ``{"identity", "identity_url", "permission_count"}``. A verified TLS
client certificate whose common name is a principal's ``cert_cn`` identifies
the caller without AUTH (an AUTH replaces it), as on gRPC. With auth on,
PUB/MPUB/DPUB/SUB with neither: ``E_AUTH_FIRST``; without the publish
(subscribe) permission on the topic (channel): ``E_UNAUTHORIZED``, exactly
the rules of ``pairq.security.auth``.

**Ids.** A pairq id is 16 arbitrary bytes; NSQ clients treat the 16-byte id as
text. The NSQ id of a message is the 16 lowercase hex digits of the 64-bit
BLAKE2b hash of its pairq id (``nsq_id``): the same on both brokers of a pair
and across reconnects, so a consumer that de-duplicates by id does so across
a failover. Each connection keeps a table NSQ id -> pairq id of what it was
delivered (``Session.delivered``), consulted by FIN, REQ and TOUCH; FIN and
REQ remove the entry. The table holds at most ``2 * max_rdy_count + 64``
entries (only RDY can be in flight; the oldest entry goes first, so an id the
client never answered, whose message timed out, does not stay for ever).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import struct
from collections.abc import Callable
from typing import Any

from pairq.names import is_valid_name

MAGIC = b"  V2"
FRAME_RESPONSE = 0
FRAME_ERROR = 1
FRAME_MESSAGE = 2
OK = b"OK"
HEARTBEAT = b"_heartbeat_"
CLOSE_WAIT = b"CLOSE_WAIT"
MAX_LINE = 4096
MAX_CONTROL_BODY = 64 * 1024  # IDENTIFY and AUTH bodies
MIN_HEARTBEAT_MS = 100
MAX_HEARTBEAT_MS = 600_000
MAX_OUTPUT_BUFFER_SIZE = 65536
MAX_OUTPUT_BUFFER_TIMEOUT_MS = 30_000
_U32 = struct.Struct(">I")
_FRAME = struct.Struct(">II")
_MSG = struct.Struct(">QH")

# Commands that do not close the connection when they fail.
NON_FATAL = frozenset({"E_FIN_FAILED", "E_REQ_FAILED", "E_TOUCH_FAILED"})


class ProtocolError(Exception):
    """An NSQ error: ``code`` (``E_*``) and text; ``fatal`` ones close the connection."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message

    @property
    def fatal(self) -> bool:
        return self.code not in NON_FATAL

    def frame(self) -> bytes:
        return frame(FRAME_ERROR, f"{self.code} {self.message}".encode())


# ------------------------------------------------------------------ frames out
def frame(kind: int, data: bytes) -> bytes:
    return _FRAME.pack(len(data) + 4, kind) + data


OK_FRAME = frame(FRAME_RESPONSE, OK)
HEARTBEAT_FRAME = frame(FRAME_RESPONSE, HEARTBEAT)
CLOSE_WAIT_FRAME = frame(FRAME_RESPONSE, CLOSE_WAIT)


def message_frame(timestamp_ns: int, attempts: int, msg_id: bytes, body: bytes) -> bytes:
    """A message frame (``msg_id``: the 16-byte NSQ id)."""
    size = 4 + 8 + 2 + 16 + len(body)
    return b"".join(
        (
            _FRAME.pack(size, FRAME_MESSAGE),
            _MSG.pack(max(0, timestamp_ns) & 0xFFFFFFFFFFFFFFFF, min(attempts, 0xFFFF)),
            msg_id,
            body,
        )
    )


def nsq_id(pairq_id: bytes) -> bytes:
    """The NSQ id of a pairq message id (see the module docstring)."""
    return hashlib.blake2b(pairq_id, digest_size=8).hexdigest().encode()


# ------------------------------------------------------------------ commands in
@dataclasses.dataclass(frozen=True)
class Identify:
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Auth:
    secret: bytes


@dataclasses.dataclass(frozen=True)
class Sub:
    topic: str
    channel: str


@dataclasses.dataclass(frozen=True)
class Pub:
    topic: str
    body: bytes


@dataclasses.dataclass(frozen=True)
class Mpub:
    topic: str
    bodies: list[bytes]


@dataclasses.dataclass(frozen=True)
class Dpub:
    topic: str
    defer_ms: int
    body: bytes


@dataclasses.dataclass(frozen=True)
class Rdy:
    count: int


@dataclasses.dataclass(frozen=True)
class Fin:
    id: bytes


@dataclasses.dataclass(frozen=True)
class Req:
    id: bytes
    delay_ms: int


@dataclasses.dataclass(frozen=True)
class Touch:
    id: bytes


@dataclasses.dataclass(frozen=True)
class Cls:
    pass


@dataclasses.dataclass(frozen=True)
class Nop:
    pass


Command = Identify | Auth | Sub | Pub | Mpub | Dpub | Rdy | Fin | Req | Touch | Cls | Nop


def _number(raw: bytes, what: str) -> int:
    if not raw or len(raw) > 10 or not raw.isdigit():
        raise ProtocolError("E_INVALID", f"{what} {raw[:32]!r} is not a number")
    return int(raw)


def _topic(raw: bytes, cmd: str) -> str:
    name = raw.decode("utf-8", "replace")
    if not is_valid_name(name):
        raise ProtocolError(
            "E_BAD_TOPIC",
            f"{cmd} topic name {name[:80]!r} is not valid: use 1-64 characters from "
            "[.a-zA-Z0-9_-], optionally followed by '#ephemeral'",
        )
    return name


def _msg_id(raw: bytes, cmd: str) -> bytes:
    if len(raw) != 16:
        raise ProtocolError("E_INVALID", f"{cmd}: invalid message ID (must be 16 bytes)")
    return raw


class Decoder:
    """Bytes from one client -> commands. ``feed`` what arrives, then call
    ``next_command`` until it returns None (more bytes needed). It raises
    ``ProtocolError`` (always fatal) for bad input, and again on every later call."""

    def __init__(self, *, max_msg_size: int, max_batch: int, max_batch_bytes: int) -> None:
        self.max_msg_size = max_msg_size
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self._buf = bytearray()
        self._pos = 0  # where the next command starts in ``_buf``
        self._magic = False
        self._broken: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        if self._broken is None:
            self._buf += data

    def next_command(self) -> Command | None:
        if self._broken is not None:
            raise self._broken
        try:
            cmd = self._next()
        except ProtocolError as exc:
            self._broken = exc
            self._buf.clear()
            self._pos = 0
            raise
        if cmd is None and self._pos:
            # everything decodable is decoded: drop it once (not per command)
            del self._buf[: self._pos]
            self._pos = 0
        return cmd

    def _next(self) -> Command | None:
        buf = self._buf
        pos = self._pos
        if not self._magic:
            if len(buf) < 4:
                if not MAGIC.startswith(bytes(buf)):
                    raise ProtocolError("E_BAD_PROTOCOL", f"bad magic {bytes(buf)!r}")
                return None
            if bytes(buf[:4]) != MAGIC:
                raise ProtocolError(
                    "E_BAD_PROTOCOL", f"bad magic {bytes(buf[:4])!r}: this is NSQ's protocol V2"
                )
            pos = self._pos = 4
            self._magic = True
        nl = buf.find(b"\n", pos, pos + MAX_LINE + 1)
        if nl < 0:
            if len(buf) - pos > MAX_LINE:
                raise ProtocolError("E_INVALID", f"command line longer than {MAX_LINE} bytes")
            return None
        line = bytes(buf[pos:nl])
        if line.endswith(b"\r"):
            line = line[:-1]
        params = line.split(b" ")
        name = params[0]
        result = self._command(name, params, nl + 1)
        if result is None:
            return None
        cmd, end = result
        self._pos = end
        return cmd

    def _body(self, at: int) -> bytes | None:
        """The 4-byte size at ``at``, or None when not all here."""
        if len(self._buf) < at + 4:
            return None
        return bytes(self._buf[at : at + 4])

    def _sized(self, at: int, code: str, cmd: str, limit: int) -> tuple[bytes, int] | None:
        raw = self._body(at)
        if raw is None:
            return None
        (size,) = _U32.unpack(raw)
        if size == 0 or size >= 0x80000000:
            raise ProtocolError(code, f"{cmd} invalid body size {_signed(size)}")
        if size > limit:
            raise ProtocolError(code, f"{cmd} body too big {size} > {limit}{_limit_name(cmd)}")
        end = at + 4 + size
        if len(self._buf) < end:
            return None
        return bytes(self._buf[at + 4 : end]), end

    def _command(self, name: bytes, params: list[bytes], at: int) -> tuple[Command, int] | None:
        n = len(params)
        if name == b"NOP":
            return Nop(), at
        if name == b"RDY":
            return Rdy(_number(params[1], "RDY count") if n > 1 else 1), at
        if name == b"FIN":
            if n < 2:
                raise ProtocolError("E_INVALID", "FIN insufficient number of params")
            return Fin(_msg_id(params[1], "FIN")), at
        if name == b"TOUCH":
            if n < 2:
                raise ProtocolError("E_INVALID", "TOUCH insufficient number of params")
            return Touch(_msg_id(params[1], "TOUCH")), at
        if name == b"REQ":
            if n < 3:
                raise ProtocolError("E_INVALID", "REQ insufficient number of params")
            return Req(_msg_id(params[1], "REQ"), _number(params[2], "REQ timeout")), at
        if name == b"CLS":
            return Cls(), at
        if name == b"SUB":
            if n < 3:
                raise ProtocolError("E_INVALID", "SUB insufficient number of parameters")
            topic = _topic(params[1], "SUB")
            channel = params[2].decode("utf-8", "replace")
            if not is_valid_name(channel):
                raise ProtocolError(
                    "E_BAD_CHANNEL",
                    f"SUB channel name {channel[:80]!r} is not valid: use 1-64 characters "
                    "from [.a-zA-Z0-9_-], optionally followed by '#ephemeral'",
                )
            return Sub(topic, channel), at
        if name == b"PUB" or name == b"DPUB":
            cmd = name.decode()
            need = 2 if name == b"PUB" else 3
            if n < need:
                raise ProtocolError("E_INVALID", f"{cmd} insufficient number of parameters")
            topic = _topic(params[1], cmd)
            defer = 0
            if name == b"DPUB":
                defer = _number(params[2], "DPUB timeout")
            got = self._sized(at, "E_BAD_MESSAGE", cmd, self.max_msg_size)
            if got is None:
                return None
            body, end = got
            if name == b"PUB":
                return Pub(topic, body), end
            return Dpub(topic, defer, body), end
        if name == b"MPUB":
            if n < 2:
                raise ProtocolError("E_INVALID", "MPUB insufficient number of parameters")
            topic = _topic(params[1], "MPUB")
            limit = self.max_batch_bytes + 4 + 4 * self.max_batch
            got = self._sized(at, "E_BAD_BODY", "MPUB", limit)
            if got is None:
                return None
            body, end = got
            return Mpub(topic, self._mpub(body)), end
        if name == b"IDENTIFY":
            got = self._sized(at, "E_BAD_BODY", "IDENTIFY", MAX_CONTROL_BODY)
            if got is None:
                return None
            body, end = got
            try:
                data = json.loads(body)
            except ValueError:
                raise ProtocolError("E_BAD_BODY", "IDENTIFY failed to decode JSON body") from None
            if not isinstance(data, dict):
                raise ProtocolError("E_BAD_BODY", "IDENTIFY body must be a JSON object")
            return Identify(data), end
        if name == b"AUTH":
            if n != 1:
                raise ProtocolError("E_INVALID", "AUTH invalid number of parameters")
            got = self._sized(at, "E_BAD_BODY", "AUTH", MAX_CONTROL_BODY)
            if got is None:
                return None
            return Auth(got[0]), got[1]
        raise ProtocolError("E_INVALID", f"invalid command {name[:32]!r}")

    def _mpub(self, body: bytes) -> list[bytes]:
        if len(body) < 4:
            raise ProtocolError("E_BAD_BODY", "MPUB failed to read message count")
        (count,) = _U32.unpack_from(body)
        if count == 0 or count >= 0x80000000:
            raise ProtocolError("E_BAD_BODY", f"MPUB invalid message count {_signed(count)}")
        if count > self.max_batch:
            raise ProtocolError(
                "E_BAD_BODY",
                f"MPUB has {count} messages; this broker takes at most {self.max_batch} "
                "in one MPUB (--max-batch): split the batch",
            )
        out: list[bytes] = []
        pos = 4
        for i in range(count):
            if len(body) < pos + 4:
                raise ProtocolError("E_BAD_MESSAGE", f"MPUB failed to read message({i}) body size")
            (size,) = _U32.unpack_from(body, pos)
            if size == 0 or size >= 0x80000000:
                raise ProtocolError(
                    "E_BAD_MESSAGE", f"MPUB invalid message({i}) body size {_signed(size)}"
                )
            if size > self.max_msg_size:
                raise ProtocolError(
                    "E_BAD_MESSAGE",
                    f"MPUB message too big {size} > {self.max_msg_size} (--max-msg-size)",
                )
            pos += 4
            if len(body) < pos + size:
                raise ProtocolError("E_BAD_MESSAGE", "MPUB failed to read message body")
            out.append(body[pos : pos + size])
            pos += size
        if pos != len(body):
            raise ProtocolError(
                "E_BAD_BODY", f"MPUB body has {len(body) - pos} bytes after its {count} messages"
            )
        return out


def _signed(n: int) -> int:
    return n - 0x100000000 if n >= 0x80000000 else n


def _limit_name(cmd: str) -> str:
    return {
        "PUB": " (--max-msg-size)",
        "DPUB": " (--max-msg-size)",
        "MPUB": " (--max-batch-bytes plus 4 bytes per message and 4 for the count)",
    }.get(cmd, "")


# ------------------------------------------------------------------ the session
class State(enum.Enum):
    INIT = "init"
    SUBSCRIBED = "subscribed"
    CLOSING = "closing"


@dataclasses.dataclass(frozen=True)
class Config:
    """The broker's side of the negotiation (from its options)."""

    max_rdy_count: int
    msg_timeout_ms: int
    max_msg_timeout_ms: int
    heartbeat_interval_ms: int
    max_defer_ms: int
    auth_required: bool
    version: str
    tls: bool = False  # the broker can upgrade connections to TLS (and requires it)
    max_deflate_level: int = 6  # 0: deflate not offered


Allows = Callable[[str, str, str], bool]


class Session:
    """One connection's protocol state (see the module docstring for the rules).

    ``accept(cmd)`` checks a decoded command against the state and returns
    either the frame to answer at once (IDENTIFY, NOP, CLS, an ignored RDY:
    ``b""`` for no answer) or the command for the caller to carry out (AUTH,
    SUB, PUB, MPUB, DPUB, RDY, and FIN/REQ/TOUCH with the pairq id resolved:
    ``Resolved``). It raises ``ProtocolError``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = State.INIT
        self.heartbeat_ms = config.heartbeat_interval_ms
        self.msg_timeout_ms = config.msg_timeout_ms
        self.client_id = ""
        self.hostname = ""
        self.user_agent = ""
        self.output_buffer_size = 16 * 1024
        self.output_buffer_timeout_ms = 250
        self.identified = False
        self.tls = False  # upgraded to TLS
        self.upgrading = False  # the last IDENTIFY's answer says tls_v1: upgrade now
        self.deflate_level = 0  # deflate in use at this level (0: not)
        self.deflating = 0  # ... agreed by the last IDENTIFY's answer: switch now
        # the principal's ``allows(perm, topic, channel)`` once AUTH succeeded
        self.allows: Allows | None = None
        self.identity = ""
        self.by_cert = False  # ``allows`` is the TLS client certificate's (AUTH may replace it)
        self._in_flight: dict[bytes, bytes] = {}  # NSQ id -> pairq id
        self.max_table = 2 * config.max_rdy_count + 64

    # ---------------------------------------------------------- ids
    def delivered(self, pairq_id: bytes) -> bytes:
        """Record a delivery of ``pairq_id`` on this connection; its NSQ id."""
        nid = nsq_id(pairq_id)
        table = self._in_flight
        table.pop(nid, None)
        table[nid] = pairq_id
        while len(table) > self.max_table:
            del table[next(iter(table))]
        return nid

    @property
    def table_size(self) -> int:
        return len(self._in_flight)

    def _resolve(self, nid: bytes, cmd: str, drop: bool) -> bytes:
        pid = self._in_flight.pop(nid, None) if drop else self._in_flight.get(nid)
        if pid is None:
            raise ProtocolError(
                f"E_{cmd}_FAILED",
                f"{cmd} {nid.decode('ascii', 'replace')} failed: not in flight on this "
                "connection (timed out and requeued, already finished, or unknown id)",
            )
        return pid

    # ---------------------------------------------------------- commands
    def accept(self, cmd: Command) -> bytes | Command | Resolved:
        st = self.state
        if self.config.tls and not self.tls and not isinstance(cmd, Identify):
            raise ProtocolError(
                "E_INVALID",
                f"cannot {type(cmd).__name__.upper()} in current state (TLS required: "
                "IDENTIFY with tls_v1 true and feature_negotiation)",
            )
        if isinstance(cmd, Nop):
            return b""
        if isinstance(cmd, Identify):
            if st is not State.INIT:
                raise ProtocolError("E_INVALID", "cannot IDENTIFY in current state")
            return self._identify(cmd.data)
        if isinstance(cmd, Auth):
            if st is not State.INIT:
                raise ProtocolError("E_INVALID", "cannot AUTH in current state")
            if self.allows is not None and not self.by_cert:
                raise ProtocolError("E_INVALID", "AUTH already set")
            if not self.config.auth_required:
                raise ProtocolError(
                    "E_AUTH_DISABLED", "AUTH disabled (this broker runs without --auth-file)"
                )
            return cmd
        if isinstance(cmd, Pub | Mpub | Dpub):
            name = type(cmd).__name__.upper()
            self._check_auth(name, "publish", cmd.topic, "")
            if isinstance(cmd, Dpub) and cmd.defer_ms > self.config.max_defer_ms:
                raise ProtocolError(
                    "E_INVALID",
                    f"DPUB timeout {cmd.defer_ms} out of range 0-{self.config.max_defer_ms} "
                    "(--max-defer-ms)",
                )
            return cmd
        if isinstance(cmd, Sub):
            if st is not State.INIT:
                raise ProtocolError("E_INVALID", "cannot SUB in current state")
            if self.heartbeat_ms <= 0:
                raise ProtocolError("E_INVALID", "cannot SUB with heartbeats disabled")
            self._check_auth("SUB", "subscribe", cmd.topic, cmd.channel)
            self.state = State.SUBSCRIBED
            return cmd
        if isinstance(cmd, Rdy):
            if st is State.CLOSING:
                return b""  # as nsqd: ignored after CLS
            if st is not State.SUBSCRIBED:
                raise ProtocolError("E_INVALID", "cannot RDY in current state")
            if cmd.count > self.config.max_rdy_count:
                raise ProtocolError(
                    "E_INVALID",
                    f"RDY count {cmd.count} out of range 0-{self.config.max_rdy_count} "
                    "(--max-rdy-count)",
                )
            return cmd
        if isinstance(cmd, Cls):
            if st is not State.SUBSCRIBED:
                raise ProtocolError("E_INVALID", "cannot CLS in current state")
            self.state = State.CLOSING
            return CLOSE_WAIT_FRAME
        # FIN, REQ, TOUCH
        name = type(cmd).__name__.upper()
        if st is State.INIT:
            raise ProtocolError("E_INVALID", f"cannot {name} in current state")
        if isinstance(cmd, Fin):
            return Resolved("FIN", self._resolve(cmd.id, "FIN", True), cmd.id, 0)
        if isinstance(cmd, Req):
            delay = min(cmd.delay_ms, self.config.max_defer_ms)
            return Resolved("REQ", self._resolve(cmd.id, "REQ", True), cmd.id, delay)
        return Resolved("TOUCH", self._resolve(cmd.id, "TOUCH", False), cmd.id, 0)

    def upgraded(self) -> bytes:
        """The connection is TLS now: the frame to send over it."""
        self.upgrading = False
        self.tls = True
        return OK_FRAME

    def deflated(self) -> bytes:
        """Both directions are deflated now: the frame to send (compressed)."""
        self.deflate_level, self.deflating = self.deflating, 0
        return OK_FRAME

    def _check_auth(self, cmd: str, perm: str, topic: str, channel: str) -> None:
        if not self.config.auth_required:
            return
        if self.allows is None:
            raise ProtocolError("E_AUTH_FIRST", f"AUTH required before {cmd}")
        if not self.allows(perm, topic, channel):
            raise ProtocolError(
                "E_UNAUTHORIZED",
                f"AUTH failed for {cmd} on {topic!r} {channel!r}: {self.identity!r} lacks "
                f"{perm} permission",
            )

    def certified(self, identity: str, allows: Allows) -> None:
        """The TLS client certificate names a principal (``cert_cn``): it is the
        caller's until an AUTH names another (as gRPC: a token wins over a cert)."""
        self.allows = allows
        self.identity = identity
        self.by_cert = True

    def authenticated(self, identity: str, allows: Allows | None, permission_count: int) -> bytes:
        """The caller looked the secret up: its principal (``allows`` None: unknown)."""
        if allows is None:
            raise ProtocolError("E_AUTH_FAILED", "AUTH failed")
        if permission_count == 0:
            raise ProtocolError("E_UNAUTHORIZED", "AUTH no authorizations found")
        self.allows = allows
        self.identity = identity
        self.by_cert = False
        body = {"identity": identity, "identity_url": "", "permission_count": permission_count}
        return frame(FRAME_RESPONSE, json.dumps(body).encode())

    def _identify(self, data: dict[str, Any]) -> bytes:
        cfg = self.config

        def num(key: str, default: int) -> int:
            v = data.get(key, default)
            if v is None:
                return default
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ProtocolError("E_BAD_BODY", f"IDENTIFY {key} must be a number")
            return int(v)

        def text(key: str) -> str:
            v = data.get(key, "")
            return (v if isinstance(v, str) else str(v))[:256]

        hb = num("heartbeat_interval", 0)
        if hb == -1:
            heartbeat = -1
        elif hb == 0:
            heartbeat = cfg.heartbeat_interval_ms
        elif MIN_HEARTBEAT_MS <= hb <= MAX_HEARTBEAT_MS:
            heartbeat = hb
        else:
            raise ProtocolError(
                "E_BAD_BODY",
                f"IDENTIFY heartbeat interval ({hb}) is invalid: -1, 0 or "
                f"{MIN_HEARTBEAT_MS}-{MAX_HEARTBEAT_MS} ms",
            )
        mt = num("msg_timeout", 0)
        if mt == 0:
            timeout = cfg.msg_timeout_ms
        elif 1 <= mt <= cfg.max_msg_timeout_ms:
            timeout = mt
        else:
            raise ProtocolError(
                "E_BAD_BODY",
                f"IDENTIFY msg timeout ({mt}) is invalid: 1-{cfg.max_msg_timeout_ms} ms "
                "(--max-msg-timeout-ms)",
            )
        obs = num("output_buffer_size", 0)
        if obs == 0:
            obs = 16 * 1024
        elif obs != -1 and not 64 <= obs <= MAX_OUTPUT_BUFFER_SIZE:
            raise ProtocolError(
                "E_BAD_BODY",
                f"IDENTIFY output buffer size ({obs}) is invalid: -1, 0 or 64-{MAX_OUTPUT_BUFFER_SIZE}",
            )
        obt = num("output_buffer_timeout", 0)
        if obt == 0:
            obt = 250
        elif obt != -1 and not 1 <= obt <= MAX_OUTPUT_BUFFER_TIMEOUT_MS:
            raise ProtocolError(
                "E_BAD_BODY",
                f"IDENTIFY output buffer timeout ({obt}) is invalid: -1, 0 or "
                f"1-{MAX_OUTPUT_BUFFER_TIMEOUT_MS} ms",
            )
        sr = num("sample_rate", 0)
        if not 0 <= sr <= 99:
            raise ProtocolError("E_BAD_BODY", f"IDENTIFY sample rate ({sr}) is invalid: 0-99")
        self.heartbeat_ms = heartbeat
        self.msg_timeout_ms = timeout
        self.output_buffer_size = obs
        self.output_buffer_timeout_ms = obt
        self.client_id = text("client_id") or text("short_id")
        self.hostname = text("hostname") or text("long_id")
        self.user_agent = text("user_agent")
        self.identified = True
        if not data.get("feature_negotiation"):
            return OK_FRAME
        tls = self.config.tls and not self.tls and bool(data.get("tls_v1"))
        level = 0
        if data.get("deflate") and cfg.max_deflate_level and not self.deflate_level:
            asked = num("deflate_level", 6)
            if not 1 <= asked <= 9:
                raise ProtocolError(
                    "E_BAD_BODY", f"IDENTIFY deflate_level ({asked}) is invalid: 1-9"
                )
            level = min(asked, cfg.max_deflate_level)
        self.upgrading = tls
        self.deflating = level
        answer = {
            "max_rdy_count": cfg.max_rdy_count,
            "version": cfg.version,
            "max_msg_timeout": cfg.max_msg_timeout_ms,
            "msg_timeout": timeout,
            "tls_v1": tls,
            "deflate": bool(level),
            "deflate_level": level,
            "max_deflate_level": cfg.max_deflate_level,
            "snappy": False,
            "sample_rate": 0,
            "auth_required": cfg.auth_required,
            "output_buffer_size": obs,
            "output_buffer_timeout": obt,
        }
        return frame(FRAME_RESPONSE, json.dumps(answer).encode())


@dataclasses.dataclass(frozen=True)
class Resolved:
    """FIN, REQ or TOUCH with the message's pairq id (``delay_ms``: REQ's, clamped)."""

    cmd: str
    pairq_id: bytes
    nsq_id: bytes
    delay_ms: int

    def failed(self) -> ProtocolError:
        """The (non-fatal) error when the channel does not hold the message in flight."""
        return ProtocolError(
            f"E_{self.cmd}_FAILED",
            f"{self.cmd} {self.nsq_id.decode('ascii', 'replace')} failed: not in flight on "
            "this connection (timed out and requeued, already finished, or unknown id)",
        )
