"""gRPC channels to brokers: addresses, keepalive and message-size options.

Keepalive and frame limits come from ``pairq.grpcopts`` so they agree with the
broker's server options (a client that pings more often than the server
permits gets GOAWAY "too_many_pings").
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc

from pairq import grpcopts
from pairq.errors import PairqError, UnavailableError
from pairq.security.client import ClientSecurity
from pairq.streams import SerialWriter, identity
from pairq.v1 import broker_pb2, broker_pb2_grpc

_PUBLISH_STREAM = "/pairq.v1.BrokerService/PublishStream"
_TRANSIENT = (
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.ABORTED,
)

# Room for the protobuf framing around bodies when sizing the channel limit.
_FRAMING_SLACK = 64 * 1024

DEFAULT_BROKER = "127.0.0.1:4150"


def normalize_address(address: str) -> str:
    """``host:port`` as given, with the default port 4150 added when missing."""
    address = address.strip()
    if not address:
        raise ValueError("empty broker address")
    if address.startswith("["):  # [v6]:port
        return address if "]:" in address else f"{address}:4150"
    if address.count(":") == 1:
        host, port = address.rsplit(":", 1)
        if not host or not port.isdigit():
            raise ValueError(f"invalid broker address {address!r}: expected HOST:PORT")
        return address
    if ":" not in address:
        return f"{address}:4150"
    return address  # a bare IPv6 literal or another gRPC target string


def channel_options(max_message_bytes: int, max_rpc_bytes: int = 0) -> list[tuple[str, Any]]:
    """Client channel options: ``pairq.grpcopts`` plus a frame limit fitting ``max_rpc_bytes``.

    The limit (both directions) is the shared ``frame_limit(max_message_bytes)``,
    raised when one RPC may carry more (a large batch).
    """
    limit = max(grpcopts.frame_limit(max_message_bytes), max_rpc_bytes + _FRAMING_SLACK)
    opts: dict[str, Any] = dict(grpcopts.client_options(max_message_bytes))
    opts["grpc.max_send_message_length"] = limit
    opts["grpc.max_receive_message_length"] = limit
    # Each Producer/Consumer gets its own connection instead of a subchannel
    # shared process-wide, so two clients in one process do not queue on one socket.
    opts["grpc.use_local_subchannel_pool"] = 1
    return list(opts.items())


class _StreamUnsupported(Exception):
    """The broker does not serve PublishStream (an older broker): use PublishBatch."""


class PublishStreamClient:
    """One ``PublishStream`` call to a broker, shared by every publish through a
    ``BrokerConn``: requests are tagged with a ``request_id`` and written one at
    a time; a reader task matches answers to waiting callers.

    Any failure of the stream (broker gone, reset, an unanswered request past
    its deadline) fails every request waiting on it with ``UnavailableError``
    and marks the stream ``broken``; the connection opens a new one for the
    next publish, and the producer retries with the same message ids.
    """

    def __init__(self, channel: Any, address: str) -> None:
        self.address = address
        self._call = channel.stream_stream(
            _PUBLISH_STREAM,
            request_serializer=identity,
            response_deserializer=broker_pb2.PublishStreamResponse.FromString,
        )()
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, asyncio.Future[broker_pb2.PublishStreamResponse]] = {}
        self._next_id = 1
        self._writer = SerialWriter(self._call.write, self._write_failed)
        self.broken: BaseException | None = None
        self._writes: set[asyncio.Task[None]] = set()  # writes of requests (see request)
        self._reader = self._loop.create_task(self._read())

    async def request(self, req: broker_pb2.PublishStreamRequest, timeout: float) -> Any:
        """Send one request; its answer (ids, copies) or the error it carried as an exception."""
        if self.broken is not None:
            raise self.broken
        rid = self._next_id
        self._next_id += 1
        req.request_id = rid
        fut: asyncio.Future[broker_pb2.PublishStreamResponse] = self._loop.create_future()
        self._pending[rid] = fut
        timer = self._loop.call_later(timeout, self._expire, rid, timeout)
        try:
            data = req.SerializeToString()
            if self._writer.busy:
                await self._writer.put(data)  # queued: the task writing sends it
            else:
                # This call would write itself: never past its deadline. grpc.aio's
                # write waits for the call's initial metadata to go out, and a call
                # cancelled before that (a broker that accepted the connection but never
                # answered: SIGSTOPped, overloaded) leaves the write waiting for ever.
                # The timer resolves ``fut`` at the deadline; a stuck write is left to
                # its task (cancelled on close).
                writing = self._loop.create_task(self._writer.put(data))
                self._writes.add(writing)
                writing.add_done_callback(self._writes.discard)
                await asyncio.wait((writing, fut), return_when=asyncio.FIRST_COMPLETED)
            resp = await fut
        finally:
            timer.cancel()
            self._pending.pop(rid, None)
        if resp.HasField("error"):
            raise PairqError.from_code(resp.error.code, resp.error.message, resp.error.metadata)
        return resp

    def _write_failed(self, exc: Exception) -> None:
        if isinstance(exc, grpc.aio.AioRpcError):
            self._break(self._error(exc))
        else:  # the call ended under us (e.g. cancelled)
            self._break(UnavailableError(f"publish stream to {self.address} ended: {exc}"))

    async def _read(self) -> None:
        try:
            while True:
                resp = await self._call.read()
                if resp is grpc.aio.EOF:
                    self._break(UnavailableError(f"broker {self.address} ended the publish stream"))
                    return
                fut = self._pending.pop(resp.request_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(resp)
        except grpc.aio.AioRpcError as exc:
            self._break(self._error(exc))
        except asyncio.CancelledError:
            self._break(UnavailableError("publish stream closed"))
            raise

    def _error(self, exc: grpc.aio.AioRpcError) -> BaseException:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return _StreamUnsupported(exc.details())
        err = PairqError.from_rpc_error(exc)
        if err.code == broker_pb2.ERROR_CODE_UNSPECIFIED and exc.code() in _TRANSIENT:
            # The stream broke (reset, cancelled, broker crash): retry elsewhere.
            return UnavailableError(f"publish stream to {self.address} failed: {err.message}")
        return err

    def _expire(self, rid: int, timeout: float) -> None:
        if rid in self._pending:
            self._break(
                UnavailableError(
                    f"broker {self.address} did not answer a publish within {timeout:g}s"
                )
            )

    def _break(self, err: BaseException) -> None:
        if self.broken is None:
            self.broken = err
        pending, self._pending = self._pending, {}
        self._writer.stop()
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(self.broken)
        self._call.cancel()

    async def close(self) -> None:
        self._break(UnavailableError("publish stream closed"))
        for w in list(self._writes):
            w.cancel()  # not awaited: a write stuck in grpc may never end
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader


class BrokerConn:
    """A lazily created ``grpc.aio`` channel and stub for one broker address."""

    __slots__ = ("_channel", "_options", "_pstream", "_security", "_stream_ok", "address", "stub")

    def __init__(
        self,
        address: str,
        *,
        max_message_bytes: int = grpcopts.DEFAULT_MAX_MESSAGE_BYTES,
        max_rpc_bytes: int = 0,
        security: ClientSecurity | None = None,
    ) -> None:
        self.address = normalize_address(address)
        self._security = security or ClientSecurity()
        self._options = channel_options(max_message_bytes, max_rpc_bytes)
        self._channel: Any = None
        self.stub: Any = None
        self._pstream: PublishStreamClient | None = None
        self._stream_ok = True

    def get_stub(self) -> Any:
        if self.stub is None:
            self._channel = self._security.channel(self.address, self._options)
            self.stub = broker_pb2_grpc.BrokerServiceStub(self._channel)
        return self.stub

    async def publish(self, req: broker_pb2.PublishStreamRequest, timeout: float) -> Any:
        """Store one batch on this broker: over the shared PublishStream, or with a
        PublishBatch call if the broker does not serve streams. Returns the answer
        (``.ids``, ``.copies``); raises ``PairqError`` (``UnavailableError`` when
        it may be retried)."""
        if self._stream_ok:
            self.get_stub()
            stream = self._pstream
            if stream is None or stream.broken is not None:
                stream = self._pstream = PublishStreamClient(self._channel, self.address)
            try:
                return await stream.request(req, timeout)
            except _StreamUnsupported:
                self._stream_ok = False
        batch = broker_pb2.PublishBatchRequest(topic=req.topic, messages=req.messages)
        try:
            return await self.get_stub().PublishBatch(batch, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise PairqError.from_rpc_error(exc) from None

    async def close(self) -> None:
        stream, self._pstream = self._pstream, None
        if stream is not None:
            await stream.close()
        ch, self._channel, self.stub = self._channel, None, None
        if ch is not None:
            await ch.close(grace=None)
