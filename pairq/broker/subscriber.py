"""One Subscribe stream: its outgoing queue, counters and liveness.

Memory per subscription is bounded: deliveries queued for the stream but not
yet written to it are counted in bytes (``queued_bytes``); at ``max_queued_bytes``
the subscriber asks its channel to hold it (``ChannelCore.hold``: nothing more
is delivered to it, its in-flight messages still time out and go to others),
and it is released once the writer has drained the queue to half of that. So a
consumer that stops reading its stream costs at most ``max_queued_bytes`` plus
one pump's deliveries plus gRPC's flow-control window, whatever it does next.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pairq.v1 import broker_pb2

if TYPE_CHECKING:
    from pairq.broker.channel_core import Entry

_ids = itertools.count(1)

DEFAULT_MAX_QUEUED_BYTES = 8 * 1024 * 1024


class Terminate:
    """Queued to end the stream with a gRPC status."""

    __slots__ = ("code", "message")

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message


class Subscriber:
    def __init__(
        self,
        *,
        client_id: str,
        hostname: str,
        user_agent: str,
        remote_address: str,
        msg_timeout: float,
        heartbeat_interval: float,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    ) -> None:
        self.cid = next(_ids)
        self.client_id = client_id
        self.hostname = hostname
        self.user_agent = user_agent
        self.remote_address = remote_address
        self.msg_timeout = msg_timeout
        self.heartbeat_interval = heartbeat_interval
        self.connected_at_ns = time.time_ns()
        self.last_seen = time.monotonic()
        # bytes: a serialized response; (bytes, fence): deliveries, made under the
        # pair's fence generation ``fence`` (re-checked at send time, see service.py).
        self.queue: asyncio.Queue[bytes | tuple[bytes, int] | Terminate | None] = asyncio.Queue()
        self.closing = False
        self.done = False
        self.rdy_granted = 0  # its share of --max-rdy-total
        self.writing = False  # the stream's writer is in a write (it may be stuck there)
        self.aborting = False  # the call's status is being sent (by the stream or the watchdog)
        self.max_queued_bytes = max_queued_bytes
        self.queued_bytes = 0  # deliveries queued, not yet taken by the stream's writer
        self.held = False
        self.holds = 0  # times delivery to it was suspended (stats)
        # Set by the channel it joins: suspend (True) / resume (False) delivery to it.
        self.on_hold: Callable[[bool], None] | None = None
        # How its channel encodes deliveries for it (a batch of entries -> bytes to
        # queue); None: the Subscribe stream's pre-encoded protobuf (wire.encode_deliveries).
        # Another protocol (NSQ's) supplies its own framing here.
        self.encode: Callable[[list[Entry]], bytes] | None = None

    def send_deliveries(self, data: bytes, count: int, fence: int = 0) -> None:
        self.queue.put_nowait((data, fence))
        self.queued_bytes += len(data)
        if not self.held and self.queued_bytes >= self.max_queued_bytes:
            self.held = True
            self.holds += 1
            if self.on_hold is not None:
                self.on_hold(True)

    def taken(self, nbytes: int) -> None:
        """The stream's writer took deliveries of ``nbytes`` off the queue."""
        self.queued_bytes -= nbytes
        if self.held and self.queued_bytes <= self.max_queued_bytes // 2:
            self.held = False
            if self.on_hold is not None and not self.done:
                self.on_hold(False)

    def send(self, msg: broker_pb2.SubscribeResponse) -> None:
        self.queue.put_nowait(msg.SerializeToString())

    def send_error(self, code: int, message: str, ids: list[bytes] | None = None) -> None:
        err = broker_pb2.SubscribeError(code=code, message=message, ids=ids or [])  # type: ignore[arg-type]
        self.send(broker_pb2.SubscribeResponse(error=err))

    def terminate(self, reason: str, code: int = broker_pb2.ERROR_CODE_DELETED) -> None:
        if not self.done:
            self.done = True
            self.queue.put_nowait(Terminate(code, reason))

    def disconnect(self, reason: str, code: int) -> None:
        """End the stream now: whatever is still queued is dropped (its messages are in
        flight in the channel and requeued when the subscriber is removed), then
        :meth:`terminate`."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued_bytes = 0
        self.terminate(reason, code)

    def finish_stream(self) -> None:
        if not self.done:
            self.done = True
            self.queue.put_nowait(None)
