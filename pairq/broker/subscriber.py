"""One Subscribe stream: its outgoing queue, counters and liveness."""

from __future__ import annotations

import asyncio
import itertools
import time

from pairq.v1 import broker_pb2

_ids = itertools.count(1)


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

    def send_deliveries(self, data: bytes, count: int, fence: int = 0) -> None:
        self.queue.put_nowait((data, fence))

    def send(self, msg: broker_pb2.SubscribeResponse) -> None:
        self.queue.put_nowait(msg.SerializeToString())

    def send_error(self, code: int, message: str, ids: list[bytes] | None = None) -> None:
        err = broker_pb2.SubscribeError(code=code, message=message, ids=ids or [])  # type: ignore[arg-type]
        self.send(broker_pb2.SubscribeResponse(error=err))

    def terminate(self, reason: str, code: int = broker_pb2.ERROR_CODE_DELETED) -> None:
        if not self.done:
            self.done = True
            self.queue.put_nowait(Terminate(code, reason))

    def finish_stream(self) -> None:
        if not self.done:
            self.done = True
            self.queue.put_nowait(None)
