"""gRPC channels to brokers: addresses, keepalive and message-size options.

Keepalive and frame limits come from ``pairq.grpcopts`` so they agree with the
broker's server options (a client that pings more often than the server
permits gets GOAWAY "too_many_pings").
"""

from __future__ import annotations

from typing import Any

import grpc

from pairq import grpcopts
from pairq.v1 import broker_pb2_grpc

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


class BrokerConn:
    """A lazily created ``grpc.aio`` channel and stub for one broker address."""

    __slots__ = ("_channel", "_options", "address", "stub")

    def __init__(
        self,
        address: str,
        *,
        max_message_bytes: int = grpcopts.DEFAULT_MAX_MESSAGE_BYTES,
        max_rpc_bytes: int = 0,
    ) -> None:
        self.address = normalize_address(address)
        self._options = channel_options(max_message_bytes, max_rpc_bytes)
        self._channel: Any = None
        self.stub: Any = None

    def get_stub(self) -> Any:
        if self.stub is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=self._options)
            self.stub = broker_pb2_grpc.BrokerServiceStub(self._channel)
        return self.stub

    async def close(self) -> None:
        ch, self._channel, self.stub = self._channel, None, None
        if ch is not None:
            await ch.close(grace=None)
