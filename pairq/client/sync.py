"""``SyncProducer``: the Producer for scripts, on a private event loop in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from pairq.client.producer import Producer, PublishAck

__all__ = ["SyncProducer"]

T = TypeVar("T")


class SyncProducer:
    """A blocking Producer: ``with SyncProducer(brokers=[...]) as p: p.publish(topic, body)``.

    Runs an event loop in a daemon thread; every call blocks until its
    publish is answered. Safe to call from several threads at once (their
    publishes are batched together). Keyword options are the Producer's
    (``lookups=``, ``retry_timeout=``, ...), checked when it is made.
    """

    def __init__(self, brokers: Sequence[str] | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pairq-sync-producer", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._producer: Producer = self._run(self._make(brokers, options))
        except BaseException:
            self._shutdown()
            raise

    @staticmethod
    async def _make(brokers: Sequence[str] | None, options: dict[str, Any]) -> Producer:
        return Producer(brokers, **options)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def publish(
        self,
        topic: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        defer_ms: int = 0,
        id: bytes | None = None,
    ) -> PublishAck:
        """Publish one message and wait for its ack (see ``Producer.publish``)."""
        if self._closed:
            raise RuntimeError("SyncProducer is closed")
        return self._run(
            self._producer.publish(topic, body, headers=headers, defer_ms=defer_ms, id=id)
        )

    def publish_batch(
        self,
        topic: str,
        bodies: Iterable[bytes],
        *,
        headers: Mapping[str, str] | None = None,
        defer_ms: int = 0,
        ids: Sequence[bytes] | None = None,
    ) -> list[PublishAck]:
        """Publish a batch and wait for its acks (see ``Producer.publish_batch``)."""
        if self._closed:
            raise RuntimeError("SyncProducer is closed")
        return self._run(
            self._producer.publish_batch(
                topic, list(bodies), headers=headers, defer_ms=defer_ms, ids=ids
            )
        )

    def close(self) -> None:
        """Wait for outstanding publishes, close connections, stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._producer.close())
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
