"""A delivered message, as handed to a consumer's handler or iterator."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from pairq.client.consumer_core import PENDING

if TYPE_CHECKING:
    from pairq.client.consumer_core import Outbox

__all__ = ["Answers", "Message"]


class Answers(Protocol):
    """Where a ``Message`` sends its answers (the consumer's session that delivered it).

    Each call is non-blocking and happens at most once per message for
    ``finish`` / ``requeue`` (the message checks it is still unanswered).
    """

    def finish(self, msg: Message) -> None: ...

    def requeue(self, msg: Message, delay_ms: int | None) -> None: ...

    def touch(self, msg: Message) -> None: ...


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

    __slots__ = ("_box", "_pb", "_state", "_to", "id")

    def __init__(self, pb: Any, to: Answers, box: Outbox) -> None:
        self._pb = pb
        self._to = to
        self._box = box
        self._state = PENDING
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
        return self._state != PENDING

    def touch(self) -> None:
        """Ask the broker for more time (reset this message's timeout). Non-blocking."""
        if self._state == PENDING:
            self._to.touch(self)

    def finish(self) -> None:
        """Mark the message done (FIN). Non-blocking; FINs are batched."""
        if self._state == PENDING:
            self._to.finish(self)

    def requeue(self, delay_ms: int | None = None) -> None:
        """Give the message back (REQ); ``None`` uses the consumer's backoff by attempts."""
        if self._state == PENDING:
            self._to.requeue(self, delay_ms)

    def __repr__(self) -> str:
        return f"<Message id={self.id.hex()} attempts={self.attempts} body={len(self._pb.body)}B>"
