"""Gossip exceptions: what the peer did wrong vs. what the caller did wrong."""

from __future__ import annotations

__all__ = ["DecodeError", "GossipError", "MetaTooLargeError", "SecurityError"]


class GossipError(Exception):
    """Base class of every gossip exception."""


class DecodeError(GossipError, ValueError):
    """The peer sent bytes that are not a valid gossip packet (never fatal: drop it)."""

    def __init__(self, reason: str, offset: int | None = None) -> None:
        self.reason = reason
        self.offset = offset
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"malformed gossip packet{where}: {reason}")


class SecurityError(DecodeError):
    """A packet failed authentication, carried the wrong label, or was replayed."""


class MetaTooLargeError(GossipError, ValueError):
    """The caller's node metadata encodes to more bytes than allowed."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"node metadata is {size} bytes encoded, the limit is {limit}; "
            "shorten the addresses/names or raise max_meta_size"
        )
