"""pairq: NSQ hardened: durable redundant-pair message delivery over gRPC."""

__version__ = "0.1.0"
