"""pairq lookup: the topology service (nsqlookupd's role).

Public surface:

- :class:`Lookup` - the daemon as an importable object (``lookup.py``).
- :class:`LookupOptions` - every option and its default (``options.py``).
- :class:`Registry` and its answer types - the pure registry core (``registry.py``).

Brokers register with :class:`pairq.broker.registration.LookupRegistrar`;
clients discover with :class:`pairq.client.discovery.Discovery`. The wire
contract is ``proto/pairq/v1/lookup.proto``.
"""

from __future__ import annotations

from pairq.lookup.lookup import Lookup
from pairq.lookup.options import LookupOptions
from pairq.lookup.registry import (
    BrokerIdentity,
    BrokerStatus,
    Liveness,
    NodeAnswer,
    Registry,
    TopicAnswer,
    TopicBroker,
    TopicPair,
    UnknownNodeError,
)

__all__ = [
    "BrokerIdentity",
    "BrokerStatus",
    "Liveness",
    "Lookup",
    "LookupOptions",
    "NodeAnswer",
    "Registry",
    "TopicAnswer",
    "TopicBroker",
    "TopicPair",
    "UnknownNodeError",
]
