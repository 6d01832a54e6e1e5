"""Node metadata: what every member tells the others about itself.

Encoded compactly (not JSON) because it rides in every alive message and every
push-pull entry. Unknown extra keys are carried so newer members can add fields.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pairq.gossip.errors import DecodeError, MetaTooLargeError

__all__ = ["META_VERSION", "NodeMeta"]

META_VERSION = 1
_U64 = struct.Struct(">Q")


def _put_str(out: bytearray, value: str, what: str) -> None:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise MetaTooLargeError(len(raw), 255) from ValueError(f"{what} longer than 255 bytes")
    out.append(len(raw))
    out += raw


@dataclass(frozen=True, slots=True)
class NodeMeta:
    """A member's metadata. ``role`` is e.g. ``"broker"`` or ``"lookup"``."""

    role: str = ""
    node_id: str = ""
    pair: str = ""
    grpc_address: str = ""
    # Process start time in milliseconds since the epoch: tells a restart from a refute.
    start_epoch_ms: int = 0
    extra: tuple[tuple[str, str], ...] = field(default=())

    def encode(self, limit: int = 512) -> bytes:
        """Binary form; raises :class:`MetaTooLargeError` above ``limit`` bytes."""
        out = bytearray([META_VERSION])
        for what, value in (
            ("role", self.role),
            ("node_id", self.node_id),
            ("pair", self.pair),
            ("grpc_address", self.grpc_address),
        ):
            _put_str(out, value, what)
        if not 0 <= self.start_epoch_ms < 2**64:
            raise ValueError("start_epoch_ms out of range")
        out += _U64.pack(self.start_epoch_ms)
        if len(self.extra) > 255:
            raise MetaTooLargeError(len(self.extra), 255)
        out.append(len(self.extra))
        for key, value in self.extra:
            _put_str(out, key, "extra key")
            _put_str(out, value, "extra value")
        if len(out) > limit:
            raise MetaTooLargeError(len(out), limit)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> NodeMeta:
        """Parse :meth:`encode`'s output; raises :class:`DecodeError` on anything else."""
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if n < 0 or pos + n > len(data):
                raise DecodeError("node metadata truncated", pos)
            chunk = data[pos : pos + n]
            pos += n
            return bytes(chunk)

        def string() -> str:
            n = take(1)[0]
            raw = take(n)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DecodeError("node metadata string is not UTF-8", pos) from exc

        if not data:
            return cls()
        version = take(1)[0]
        if version != META_VERSION:
            raise DecodeError(f"unknown node metadata version {version}", 0)
        role, node_id, pair, grpc_address = string(), string(), string(), string()
        (epoch,) = _U64.unpack(take(8))
        extra = tuple((string(), string()) for _ in range(take(1)[0]))
        if pos != len(data):
            raise DecodeError("trailing bytes after node metadata", pos)
        return cls(role, node_id, pair, grpc_address, epoch, extra)

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form (for ``pairq members --json``)."""
        return {
            "role": self.role,
            "node_id": self.node_id,
            "pair": self.pair,
            "grpc_address": self.grpc_address,
            "start_epoch_ms": self.start_epoch_ms,
            "extra": dict(self.extra),
        }
