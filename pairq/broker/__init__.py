"""The pairq broker: store, topics, channels, delivery, gRPC service."""
