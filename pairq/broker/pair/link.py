"""The pair's plain TCP replication link: length-prefixed protobuf frames.

The ``Replicate`` gRPC stream is always the handshake (hello, welcome: pair
name, node ids, what the partner holds). The welcome may then offer a TCP
port and a one-time token (see ``proto/pairq/v1/replication.proto``); the
sender connects, sends the token as its first frame, and both directions
carry the same ``ReplicateRequest`` / ``ReplicateResponse`` messages as the
gRPC stream would, each as a 4-byte big-endian length and the serialized
message.

Why: on this project's 2-core test machine a stream message through Python
gRPC costs about 170 us of CPU per side and 0.3 ms one way, a TCP write about
60 us and 0.07 ms (echo benchmarks in benchmarks/README.md), and every pair
publish crosses the link twice (batch, ack). ``FramedLink`` offers the two
calls the replication code uses on a gRPC call or context (``ReplicaLink``),
so the protocol logic in ``sender.py`` and ``receiver.py`` is the same over
both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import grpc

TOKEN_BYTES = 16
_HIGH_WATER = 4 * 1024 * 1024  # wait for the socket to drain above this much buffered
_CHUNK = 1024 * 1024  # a bigger frame is read in chunks of this, each reported (on_progress)


class LinkError(Exception):
    """The peer sent something that is not a frame of this protocol."""


class ReplicaLink(Protocol):
    """Either transport of a replication session, as the sender and the receiver use
    it: the ``Replicate`` gRPC stream (the sender's call, the receiver's servicer
    context) or a ``FramedLink``. The messages are ``ReplicateRequest`` one way and
    ``ReplicateResponse`` the other, the same on both.
    """

    async def read(self) -> Any:
        """The peer's next message, or ``grpc.aio.EOF`` once it is gone (a
        ``FramedLink`` raises ``LinkError`` for a frame that is not one)."""
        ...

    async def write(self, msg: Any) -> None:
        """Send ``msg``, waiting while the transport's buffers are full."""
        ...


class FramedLink:
    """One end of the TCP link (``parse`` turns a frame into a message)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        parse: Callable[[bytes], Any],
        max_frame: int,
    ) -> None:
        self._r = reader
        self._w = writer
        self._parse = parse
        self._max = max_frame
        self.closed = False
        # Called as each chunk of a big frame arrives: the receiver counts the
        # partner as heard while its bytes flow, not only once a whole frame is in
        # (an 8 MiB frame on a loaded host can take longer than the lease).
        self.on_progress: Callable[[], None] | None = None

    async def read(self) -> Any:
        """The next message; ``grpc.aio.EOF`` once the connection is closed or broken.
        Raises ``LinkError`` for an oversized or undecodable frame."""
        try:
            head = await self._r.readexactly(4)
            n = int.from_bytes(head, "big")
            if n > self._max:
                raise LinkError(
                    f"replication frame of {n} bytes exceeds the {self._max}-byte limit"
                )
            if n <= _CHUNK or self.on_progress is None:
                data = await self._r.readexactly(n)
            else:
                parts = []
                left = n
                while left:
                    part = await self._r.readexactly(min(_CHUNK, left))
                    left -= len(part)
                    parts.append(part)
                    self.on_progress()
                data = b"".join(parts)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return grpc.aio.EOF
        try:
            return self._parse(data)
        except Exception as exc:  # protobuf DecodeError and friends
            raise LinkError(f"undecodable replication frame: {exc}") from exc

    async def write(self, msg: Any) -> None:
        await self.write_raw(msg.SerializeToString())

    def send(self, msg: Any) -> None:
        """Queue a small message without waiting for the socket (e.g. an ack from a
        callback); a closed link drops it."""
        if not self.closed:
            self._frame(msg.SerializeToString())

    async def write_raw(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionError("replication link closed")
        self._frame(data)
        if self._w.transport.get_write_buffer_size() > _HIGH_WATER:
            await self._w.drain()

    def _frame(self, data: bytes) -> None:
        if len(data) < 65536:
            self._w.write(len(data).to_bytes(4, "big") + data)
        else:  # no copy of a big batch
            self._w.writelines((len(data).to_bytes(4, "big"), data))

    def close(self) -> None:
        """Drop the connection at once: abort, not close, which would first wait to
        flush what is buffered (forever, to a stopped peer) and leave a writer
        blocked in ``drain``."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self._w.transport.abort()


async def read_token(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """The first frame of a new connection: the session token (or b"" if it is not one)."""
    return await read_frame(reader, TOKEN_BYTES, timeout)


async def read_frame(reader: asyncio.StreamReader, size: int, timeout: float) -> bytes:
    """A frame of exactly ``size`` bytes (the handshake's token, nonce, proof), or
    b"" for anything else, a timeout or a closed connection."""
    try:
        head = await asyncio.wait_for(reader.readexactly(4), timeout)
        n = int.from_bytes(head, "big")
        if n != size:
            return b""
        return await asyncio.wait_for(reader.readexactly(n), timeout)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
        return b""
