"""What the protocol core tells its embedder: member events and I/O actions."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pairq.gossip.messages import Addr, MemberState, Message, Ping
from pairq.gossip.meta import NodeMeta

__all__ = [
    "Action",
    "EventKind",
    "MemberEvent",
    "MemberView",
    "PushPullRequest",
    "SendPacket",
    "Stats",
    "TcpPing",
]


class EventKind(enum.Enum):
    """Member events.

    - JOIN: a name is seen for the first time (or again after it was forgotten).
    - UPDATE: an alive member changed its metadata.
    - SUSPECT: a member is suspected (it may still refute).
    - ALIVE: a SUSPECT, DEAD or LEFT member is alive again (refuted, or restarted).
    - DEAD: a member is declared failed.
    - LEFT: a member left gracefully (not a failure).
    """

    JOIN = "join"
    UPDATE = "update"
    SUSPECT = "suspect"
    ALIVE = "alive"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class MemberView:
    """An immutable snapshot of one member as the local member sees it."""

    name: str
    addr: Addr
    meta: NodeMeta
    incarnation: int
    state: MemberState

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": f"{self.addr[0]}:{self.addr[1]}",
            "state": self.state.name.lower(),
            "incarnation": self.incarnation,
            "meta": self.meta.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class MemberEvent:
    kind: EventKind
    member: MemberView
    at: float
    # DEAD only: the other members (never us, never the dead one) whose evidence
    # the verdict rests on: the member that declared it dead, members that
    # confirmed its suspicion, or helpers that answered our probes of it with a
    # nack (they are up, and could not reach it either). Empty: only our own
    # view, which is also what a member cut off from everyone sees.
    witnesses: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SendPacket:
    """Send these messages as one UDP packet to ``addr``."""

    addr: Addr
    msgs: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class TcpPing:
    """Ping over TCP; report with ``Core.tcp_ping_result(now, ping.seq, ok)``."""

    addr: Addr
    ping: Ping


@dataclass(frozen=True, slots=True)
class PushPullRequest:
    """Exchange full state over TCP: send ``Core.local_state(join)``, then
    ``Core.merge_remote(now, remote)`` with the answer."""

    addr: Addr
    join: bool


Action = SendPacket | TcpPing | PushPullRequest


@dataclass(slots=True)
class Stats:
    """Cumulative counters kept by the core (the transport adds bytes)."""

    probes: int = 0
    probe_failures: int = 0
    indirect_probes: int = 0
    suspects: int = 0
    deaths: int = 0
    pair_deaths: int = 0
    refutations: int = 0
    stale_refutes: int = 0
    stalls: int = 0
    packets_received: int = 0
    packets_sent: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    decode_errors: int = 0
    health: int = 0
    extra: dict[str, int] = field(default_factory=dict)
