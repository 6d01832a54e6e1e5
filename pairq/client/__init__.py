"""The pairq Python client: ``Producer``, ``Consumer``, ``Dedupe`` and ``SyncProducer``.

```python
from pairq.client import Producer, Consumer
async with Producer(brokers=["127.0.0.1:4150"]) as producer:
    ack = await producer.publish("orders", b"payload")   # ack.id (16 bytes), ack.copies
async def handle(msg):           # return -> FIN; raise -> REQ with backoff
    ...
async with Consumer("orders", "billing", brokers=["127.0.0.1:4150"], handler=handle) as c:
    await c.wait_idle(timeout=5)
```
"""

from __future__ import annotations

from pairq.client.consumer import Consumer, ConsumerStats, Handler
from pairq.client.dedupe import Dedupe
from pairq.client.message import Message
from pairq.client.producer import Producer, PublishAck
from pairq.client.sync import SyncProducer
from pairq.errors import InvalidError, NotFoundError, PairqError, StoreFullError, UnavailableError

__all__ = [
    "Consumer",
    "ConsumerStats",
    "Dedupe",
    "Handler",
    "InvalidError",
    "Message",
    "NotFoundError",
    "PairqError",
    "Producer",
    "PublishAck",
    "StoreFullError",
    "SyncProducer",
    "UnavailableError",
]
