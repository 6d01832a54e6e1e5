"""pairq: NSQ hardened: durable redundant-pair message delivery over gRPC."""
