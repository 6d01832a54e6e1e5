"""Helpers for long-lived gRPC streams, shared by broker and client."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any


def identity(b: bytes) -> bytes:
    """A (de)serializer for messages that are already bytes."""
    return b


class SerialWriter:
    """Writes messages to one stream one at a time (grpc.aio allows a single
    outstanding write per call), in the order they were put.

    ``put`` from any task: with no write in flight, that task writes the
    message, and whatever others put meanwhile, itself; otherwise the message
    waits for the task already writing. The first failed write calls
    ``on_error`` once and drops everything queued; ``stop()`` drops it too.
    """

    __slots__ = ("_on_error", "_out", "_write", "_writing", "stopped")

    def __init__(
        self, write: Callable[[Any], Awaitable[Any]], on_error: Callable[[Exception], None]
    ) -> None:
        self._write = write
        self._on_error = on_error
        self._out: deque[Any] = deque()
        self._writing = False
        self.stopped = False

    async def put(self, msg: Any) -> None:
        if self.stopped:
            return
        self._out.append(msg)
        if self._writing:
            return  # the task already writing sends it next
        self._writing = True
        try:
            out = self._out
            while out and not self.stopped:
                await self._write(out.popleft())
        except Exception as exc:
            self.stop()
            self._on_error(exc)
        finally:
            self._writing = False

    @property
    def busy(self) -> bool:
        """A write is in flight: ``put`` only queues (and returns at once)."""
        return self._writing

    def stop(self) -> None:
        self.stopped = True
        self._out.clear()
