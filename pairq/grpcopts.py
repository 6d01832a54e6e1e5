"""gRPC channel/server options shared by every pairq process and client.

Keepalive settings must agree between servers and clients (a client that
pings more often than the server permits gets GOAWAY), and message-size
limits derive from the same max-message-size option everywhere.
"""

from __future__ import annotations

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024  # 1 MiB per message body (NSQ's default)
DEFAULT_MAX_BATCH = 5000  # messages per PublishBatch
# Room for a full batch of max-size messages plus framing is unreasonable
# (5 GB); the gRPC frame limit is instead max(64 MiB, 2 x max message).
GRPC_FRAME_FLOOR = 64 * 1024 * 1024

KEEPALIVE_TIME_MS = 10_000  # client pings every 10 s when idle
KEEPALIVE_TIMEOUT_MS = 5_000  # and drops the connection if no ack in 5 s
MIN_PING_INTERVAL_MS = 5_000  # server tolerates pings this often


def frame_limit(max_message_bytes: int) -> int:
    return max(GRPC_FRAME_FLOOR, 2 * max_message_bytes + 65536)


def server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    limit = frame_limit(max_message_bytes)
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
    ]


def client_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    limit = frame_limit(max_message_bytes)
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Fail fast and let pairq's own retry/failover logic decide.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
