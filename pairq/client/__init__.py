"""The pairq Python client: ``Producer``, ``Consumer``, ``Dedupe`` and ``SyncProducer``.

```python
from pairq.client import Consumer, Producer

async with Producer(brokers=["127.0.0.1:4150"]) as producer:
    ack = await producer.publish("orders", b"payload")      # ack.id (16 bytes), ack.copies
    acks = await producer.publish_batch("orders", [b"a", b"b"])

async def handle(msg):           # msg.id, .body, .headers, .attempts, .timestamp, .broker_id
    ...                          # return -> FIN; raise -> REQ with backoff; msg.touch() for long work

async with Consumer("orders", "billing", brokers=["127.0.0.1:4150"], handler=handle,
                    max_in_flight=200, dedupe="/var/lib/billing/dedupe.lmdb") as consumer:
    await consumer.wait_idle(timeout=5)   # or run until cancelled
```

- ``Producer`` batches concurrent ``publish()`` calls into ``PublishBatch`` RPCs
  (a lone publish goes out at once), makes every message id itself so retries
  are idempotent, retries UNAVAILABLE/DEADLINE_EXCEEDED with backoff and fails
  over along its broker list (e.g. both brokers of a pair).
- ``Consumer`` subscribes to every broker given, spreads ``max_in_flight`` as
  RDY credit (NSQ's rule), runs the handler with bounded concurrency, batches
  FINs, requeues failures with exponential backoff, answers heartbeats, and
  with ``dedupe`` runs the handler once per message id within the window.
  Without a handler, ``async for msg in consumer`` and answer each message.
- ``SyncProducer`` is the Producer for scripts (blocking calls).
- Errors are ``PairqError`` subclasses: ``InvalidError`` (bad input, not
  retried), ``UnavailableError`` (no broker took it in time), ``StoreFullError``,
  ``LimitExceededError`` (a limit such as the publish rate; the metadata names it).
"""

from __future__ import annotations

from pairq.client.consumer import Consumer, ConsumerStats, Handler
from pairq.client.dedupe import Dedupe, DedupeWindow, MemoryDedupe
from pairq.client.message import Message
from pairq.client.producer import Producer, PublishAck
from pairq.client.sync import SyncProducer
from pairq.errors import (
    InvalidError,
    LimitExceededError,
    NotFoundError,
    PairqError,
    StoreFullError,
    UnavailableError,
)

__all__ = [
    "Consumer",
    "ConsumerStats",
    "Dedupe",
    "DedupeWindow",
    "Handler",
    "InvalidError",
    "LimitExceededError",
    "MemoryDedupe",
    "Message",
    "NotFoundError",
    "PairqError",
    "Producer",
    "PublishAck",
    "StoreFullError",
    "SyncProducer",
    "UnavailableError",
]
