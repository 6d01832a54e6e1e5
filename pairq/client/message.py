"""A delivered message, as handed to a consumer's handler or iterator."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pairq.client.consumer import _Conn

__all__ = ["Message"]

# Answer states.
_PENDING = 0
_FINISHED = 1
_REQUEUED = 2


class Message:
    """One delivery of a message.

    ``id`` (16 bytes) is stable across redeliveries and brokers: use it as the
    idempotency key when the handler writes elsewhere. With a handler, the
    consumer answers for you (return: FIN, raise: REQ with backoff); call
    ``touch()`` during long work so the broker does not time the message out.
    When iterating (``Consumer.messages()``) call ``finish()`` or ``requeue()``
    yourself; a message left unanswered is requeued by the broker after the
    message timeout.
    """

    __slots__ = ("_conn", "_gen", "_pb", "_state", "id")

    def __init__(self, pb: Any, conn: _Conn, gen: int) -> None:
        self._pb = pb
        self._conn = conn
        self._gen = gen
        self._state = _PENDING
        self.id: bytes = pb.id

    @property
    def body(self) -> bytes:
        """The payload."""
        return bytes(self._pb.body)

    @property
    def headers(self) -> dict[str, str]:
        """Application headers (a copy)."""
        return dict(self._pb.headers)

    @property
    def attempts(self) -> int:
        """Delivery attempts including this one (1 on first delivery)."""
        return int(self._pb.attempts)

    @property
    def timestamp_ns(self) -> int:
        """When the broker accepted the message, Unix nanoseconds."""
        return int(self._pb.timestamp_ns)

    @property
    def timestamp(self) -> float:
        """When the broker accepted the message, Unix seconds (like ``time.time()``)."""
        return float(self._pb.timestamp_ns / 1e9)

    @property
    def broker_id(self) -> str:
        """Node id of the broker that delivered this message."""
        return str(self._pb.broker_id)

    @property
    def epoch(self) -> int:
        """Ownership epoch under which the broker delivered it."""
        return int(self._pb.epoch)

    @property
    def answered(self) -> bool:
        """Whether ``finish()`` or ``requeue()`` has been called."""
        return self._state != _PENDING

    def touch(self) -> None:
        """Ask the broker for more time (reset this message's timeout). Non-blocking."""
        if self._state == _PENDING:
            self._conn.touch(self)

    def finish(self) -> None:
        """Mark the message done (FIN). Non-blocking; FINs are batched."""
        if self._state == _PENDING:
            self._state = _FINISHED
            self._conn.consumer._answer(self, True, None)

    def requeue(self, delay_ms: int | None = None) -> None:
        """Give the message back (REQ); ``None`` uses the consumer's backoff by attempts."""
        if self._state == _PENDING:
            self._state = _REQUEUED
            self._conn.consumer._answer(self, False, delay_ms)

    def __repr__(self) -> str:
        return f"<Message id={self.id.hex()} attempts={self.attempts} body={len(self._pb.body)}B>"
