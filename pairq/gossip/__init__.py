"""pairq gossip: SWIM + Lifeguard membership and failure detection, like HashiCorp memberlist.

Public surface (everything else is private):

- :class:`Gossip` - the embeddable asyncio member (``node.py``).
- :class:`GossipConfig` and the profiles :func:`lan`, :func:`wan`, :func:`local` (``config.py``).
- :class:`NodeMeta` - role, node_id, pair, grpc_address, start epoch (``meta.py``).
- :class:`MemberEvent`, :class:`EventKind`, :class:`MemberView`, :class:`MemberState` - events API.
- :class:`Core` - the sans-IO protocol state machine, and :class:`MockNetwork` to run
  whole clusters of it deterministically (tests, simulations).
- :class:`Keyring` - AES-GCM keys (install / use / remove).
- Exceptions: :class:`GossipError`, :class:`DecodeError`, :class:`SecurityError`,
  :class:`MetaTooLargeError`, :class:`ConfigError`.
"""

from __future__ import annotations

from pairq.gossip.config import ConfigError, GossipConfig, lan, local, wan
from pairq.gossip.core import Core
from pairq.gossip.errors import DecodeError, GossipError, MetaTooLargeError, SecurityError
from pairq.gossip.events import EventKind, MemberEvent, MemberView, Stats
from pairq.gossip.messages import MemberState
from pairq.gossip.meta import NodeMeta
from pairq.gossip.mock import MockNetwork
from pairq.gossip.node import Gossip, parse_addr
from pairq.gossip.security import Keyring, KeyringError

__all__ = [
    "ConfigError",
    "Core",
    "DecodeError",
    "EventKind",
    "Gossip",
    "GossipConfig",
    "GossipError",
    "Keyring",
    "KeyringError",
    "MemberEvent",
    "MemberState",
    "MemberView",
    "MetaTooLargeError",
    "MockNetwork",
    "NodeMeta",
    "SecurityError",
    "Stats",
    "lan",
    "local",
    "parse_addr",
    "wan",
]
