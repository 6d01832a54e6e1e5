"""gRPC channels to brokers: addresses, keepalive and message-size options.

Keepalive must agree with the broker's server options (a client pinging more
often than the server permits gets GOAWAY "too_many_pings"). The shared values
are meant to live in ``pairq.grpcopts``; until that module exists the client
uses the module-private fallbacks below.
"""

from __future__ import annotations

import importlib
from typing import Any

import grpc

from pairq.v1 import broker_pb2_grpc

_shared: Any
try:  # shared constants, once the broker side publishes them
    _shared = importlib.import_module("pairq.grpcopts")
except ImportError:  # pragma: no cover - depends on what has landed
    _shared = None

# Fallbacks (milliseconds). The client pings an otherwise silent connection
# every 30 s and gives up on it 10 s later; the broker must allow pings at
# least that often (grpc.http2.min_ping_interval_without_data_ms <= 30000).
_KEEPALIVE_TIME_MS: int = int(getattr(_shared, "KEEPALIVE_TIME_MS", 30_000))
_KEEPALIVE_TIMEOUT_MS: int = int(getattr(_shared, "KEEPALIVE_TIMEOUT_MS", 10_000))

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
    return address  # bare IPv6 literal with port, or a gRPC target string


def channel_options(
    max_message_bytes: int, max_receive_bytes: int | None = None
) -> list[tuple[str, Any]]:
    """Options for a client channel whose RPC messages may be up to ``max_message_bytes``.

    ``max_receive_bytes`` sets a different limit for what the broker sends
    (-1: unlimited); by default it equals the send limit.
    """
    limit = int(max_message_bytes) + _FRAMING_SLACK
    if max_receive_bytes is None:
        rlimit = limit
    else:
        rlimit = -1 if max_receive_bytes < 0 else int(max_receive_bytes) + _FRAMING_SLACK
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", rlimit),
        ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        # Each Producer/Consumer gets its own connection (not a shared
        # subchannel), so two clients in one process do not queue behind each other.
        ("grpc.use_local_subchannel_pool", 1),
    ]


class BrokerConn:
    """A lazily created ``grpc.aio`` channel and stub for one broker address."""

    __slots__ = ("_channel", "_options", "address", "stub")

    def __init__(
        self, address: str, *, max_message_bytes: int, max_receive_bytes: int | None = None
    ) -> None:
        self.address = normalize_address(address)
        self._options = channel_options(max_message_bytes, max_receive_bytes)
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
