"""The pairq broker: store, topics, channels, delivery, pairs, gRPC service.

    from pairq.broker import Broker, BrokerOptions

    broker = Broker(BrokerOptions(address="127.0.0.1:0", data_dir="/tmp/b"))
    await broker.start(); ...; await broker.stop()

The names are loaded on first use, so importing a submodule (``pairq.broker.store``)
does not import the whole broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pairq.broker.broker import Broker
    from pairq.broker.options import BrokerOptions

__all__ = ["Broker", "BrokerOptions"]


def __getattr__(name: str) -> Any:
    if name == "Broker":
        from pairq.broker.broker import Broker

        return Broker
    if name == "BrokerOptions":
        from pairq.broker.options import BrokerOptions

        return BrokerOptions
    raise AttributeError(f"module 'pairq.broker' has no attribute {name!r}")
