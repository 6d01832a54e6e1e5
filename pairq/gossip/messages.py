"""The gossip protocol's messages as plain frozen dataclasses (no behaviour).

Names follow memberlist: ping / indirect ping / ack / nack for failure
detection; alive / suspect / dead for membership (dead with ``sender == node``
is a graceful leave); push-pull for the TCP anti-entropy exchange; plus
pairq's pair heartbeat.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pairq.gossip.meta import NodeMeta

__all__ = [
    "Ack",
    "Addr",
    "Alive",
    "Dead",
    "IndirectPing",
    "MemberState",
    "Message",
    "Nack",
    "PairHeartbeat",
    "Ping",
    "PushPull",
    "PushPullEntry",
    "Suspect",
]

Addr = tuple[str, int]


class MemberState(enum.IntEnum):
    """A member's state as one member believes it. LEFT is a graceful leave, not a failure."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe. ``target`` lets a restarted member at a reused address ignore it."""

    seq: int
    target: str
    source: str
    source_addr: Addr


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Ask the receiver to ping ``target`` for us and forward the ack (nack if none)."""

    seq: int
    target: str
    target_addr: Addr
    nack: bool
    source: str
    source_addr: Addr


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    source: str


@dataclass(frozen=True, slots=True)
class Nack:
    """An indirect prober is alive but got no ack from the target (Lifeguard)."""

    seq: int
    source: str


@dataclass(frozen=True, slots=True)
class Suspect:
    incarnation: int
    node: str
    sender: str


@dataclass(frozen=True, slots=True)
class Alive:
    incarnation: int
    node: str
    addr: Addr
    meta: NodeMeta


@dataclass(frozen=True, slots=True)
class Dead:
    """``sender == node`` means the node left gracefully."""

    incarnation: int
    node: str
    sender: str


@dataclass(frozen=True, slots=True)
class PairHeartbeat:
    """pairq's fast path between the two brokers of a pair."""

    seq: int
    source: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class PushPullEntry:
    name: str
    addr: Addr
    incarnation: int
    state: MemberState
    meta: NodeMeta


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full state sent over TCP; ``join`` marks the exchange a new member starts."""

    join: bool
    entries: tuple[PushPullEntry, ...]


Message = Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | PairHeartbeat | PushPull
