"""Which gossip member is the partner, and what gossip's events say about it: pure.

Gossip names a broker by its node id, and a broker without ``--node-name`` takes
its node id from its store: a broker whose data dir was wiped (a lost disk) or
moved aside (a store found corrupt, re-silvered) comes back under a *new* node id
at the same address. Gossip holds the previous incarnation for a while (alive,
then suspect, then dead, as for any member that stopped answering), so for a few
seconds two members of the pair share one address, and the death of the old one
comes after the new one is up. That death is true, but it is no verdict on the
partner: taken for one, it armed a witnessed takeover of a live partner at the
next lapse of the lease (chaos ``mixed`` seed 3, session 9 of tests/chaos/README).

The rules (``PartnerView.on_event``; tests/unit/test_partner_view*.py check each):

- **Not me.** A member of my pair is me, in this run or an earlier one, when it
  has my node id, or my gossip address, or my gRPC address (a wildcard host
  tells nothing and is not compared). Nothing about it is about the partner: my
  own earlier run's death is the most common stale verdict of all (a wiped
  broker learns its old incarnation from the others' views, then sees it die).
- **Not at the partner's address.** A member of my pair whose gRPC address and
  the partner address I am configured with (``--partner``) are both IP literals,
  and differ, is no incarnation of the partner: it is an earlier run of me on
  another host (a broker replaced by a wiped one at a new address: its old
  incarnation matches none of my addresses), or a partner my configuration no
  longer names. Nothing about it is about the partner (ELSEWHERE). Before this
  rule the moved broker took its own old incarnation for its partner until the
  real partner's JOIN reached it, and its death for the partner's
  (tests/unit/test_partner_view_stateful.py found it). A host name on either
  side cannot be compared, and the next rule decides alone.
- **The newest incarnation is the partner.** Every other broker of my pair is an
  incarnation of the partner (a pair has two brokers); the partner is the one
  that started last (``NodeMeta.start_epoch_ms``, which gossip carries to tell a
  restart from a refute, the latest seen for a node id; between equal start times,
  the one learned last). An
  older incarnation's events say nothing about the partner: its death is not the
  partner's death, its return not the partner's.
- **The verdict is the current partner's state.** The pair is told (``Seen.dead``)
  whenever an event is about the current partner (DEAD: dead, witnessed when the
  event names witnesses; JOIN / ALIVE: alive) or makes another incarnation the
  current one (then its own state, alive unless gossip already declared it dead).
  SUSPECT, UPDATE and LEFT of the current partner change nothing (as before: a
  graceful leave is no failure, and a suspicion is no verdict).
- **Members besides the pair.** A JOIN or ALIVE of any other member (a lookup, a
  broker of another pair) tells the pair that takeover now needs a witness.

Why not the pair link's word on the partner's identity: the hello carries the
partner's store id, which is not its gossip node id under ``--node-name``; and
until the new incarnation's hello arrives the link still names the old one, so it
could not overrule a newer live member anyway. Gossip's own start times answer
the question in every case the link could, and before it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pairq.gossip.events import EventKind, MemberEvent

# A member's state as this view keeps it.
ALIVE = "alive"
DEAD = "dead"
LEFT = "left"

# What an event was about (``Seen.about``).
PARTNER = "partner"  # the current partner incarnation
EARLIER_PARTNER = "earlier-partner"  # an older incarnation of the partner
ME = "me"  # this broker, or an earlier run of it
ELSEWHERE = "elsewhere"  # in my pair, at an IP that is neither mine nor the partner's
OTHER = "other"  # a member besides the pair

_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
# Incarnations remembered (the oldest dead ones are forgotten beyond this).
MAX_INCARNATIONS = 16


def _ip_literal(host_port: str) -> bool:
    """Whether "host:port" names its host by an IP address (comparable as text)."""
    host = host_port.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_port(addr: object) -> str:
    """``(host, port)`` or "host:port" as "host:port"; "" for a wildcard host."""
    if isinstance(addr, tuple) and len(addr) == 2:
        host, port = str(addr[0]), str(addr[1])
    else:
        host, _, port = str(addr).rpartition(":")
    return "" if host in _WILDCARD_HOSTS else f"{host}:{port}"


@dataclass(frozen=True)
class Seen:
    """What one gossip event means to the pair.

    ``dead``: the verdict on the partner to hand the pair now (None: no change);
    ``witnessed``: a dead verdict rests on another member's evidence.
    ``witnesses_exist``: a member besides the pair is alive (takeover needs a witness).
    ``about``: whom the event was about (PARTNER, EARLIER_PARTNER, ME, OTHER),
    ``partner``: the current partner incarnation's node id ("" unknown),
    for the log."""

    about: str
    dead: bool | None = None
    witnessed: bool = False
    witnesses_exist: bool = False
    partner: str = ""


@dataclass
class _Incarnation:
    node_id: str
    start_ms: int
    order: int  # when this view learned it (later = larger)
    state: str = ALIVE
    witnessed: bool = False  # its death rests on another member's evidence

    def key(self) -> tuple[int, int]:
        return (self.start_ms, self.order)


class PartnerView:
    """Gossip's members as incarnations of this broker's partner (see the module
    rules). Events in (``on_event``), what they mean out (``Seen``); no I/O."""

    def __init__(
        self,
        *,
        pair: str,
        node_id: str,
        addresses: tuple[object, ...] = (),
        partner_address: str = "",
    ) -> None:
        """``addresses``: this broker's gossip and gRPC addresses (what an earlier
        run of it advertised too); ``partner_address``: the partner's gRPC address as
        this broker is configured (``--partner``; "" none)."""
        self.pair = pair
        self.node_id = node_id
        self.my_addresses = frozenset(a for a in (_host_port(x) for x in addresses) if a)
        self.partner_address = _host_port(partner_address)  # "" for none or a wildcard
        self._partner_ip = _ip_literal(self.partner_address)
        self._incarnations: dict[str, _Incarnation] = {}
        self._learned = 0
        self.partner = ""  # node id of the current partner incarnation ("" none known)

    # ------------------------------------------------------------ classification
    def is_me(self, event: MemberEvent) -> bool:
        """The member is this broker, in this run or an earlier one."""
        m = event.member
        if m.meta.node_id == self.node_id or m.name == self.node_id:
            return True
        theirs = {_host_port(m.addr), _host_port(m.meta.grpc_address)} - {""}
        return bool(theirs & self.my_addresses)

    def is_elsewhere(self, event: MemberEvent) -> bool:
        """The member is in my pair at an IP address that is not my partner's (see the
        module rules): comparable only when both addresses are IP literals."""
        if not self._partner_ip:
            return False
        theirs = _host_port(event.member.meta.grpc_address)
        return bool(theirs) and _ip_literal(theirs) and theirs != self.partner_address

    def _in_pair(self, event: MemberEvent) -> bool:
        meta = event.member.meta
        return bool(self.pair) and meta.role == "broker" and meta.pair == self.pair

    def current(self) -> _Incarnation | None:
        if not self._incarnations:
            return None
        return max(self._incarnations.values(), key=_Incarnation.key)

    # ------------------------------------------------------------ events
    def on_event(self, event: MemberEvent) -> Seen:
        kind = event.kind
        if event.member.meta.node_id == self.node_id:
            return Seen(ME, partner=self.partner)
        if not self._in_pair(event):
            alive = kind in (EventKind.JOIN, EventKind.ALIVE)
            return Seen(OTHER, witnesses_exist=alive, partner=self.partner)
        if self.is_me(event):
            return Seen(ME, partner=self.partner)
        if self.is_elsewhere(event) and event.member.meta.node_id not in self._incarnations:
            return Seen(ELSEWHERE, partner=self.partner)
        node_id = event.member.meta.node_id
        inc = self._incarnations.get(node_id)
        started = event.member.meta.start_epoch_ms
        if inc is None:
            self._learned += 1
            inc = _Incarnation(node_id, started, self._learned)
            self._incarnations[node_id] = inc
        # The same node id started again (a restart, or a store brought back): its
        # latest start is what counts.
        inc.start_ms = max(inc.start_ms, started)
        if kind == EventKind.DEAD:
            inc.state, inc.witnessed = DEAD, bool(event.witnesses)
        elif kind in (EventKind.JOIN, EventKind.ALIVE):
            inc.state, inc.witnessed = ALIVE, False
        elif kind == EventKind.LEFT:
            inc.state, inc.witnessed = LEFT, False
        before = self.partner
        cur = self.current()
        assert cur is not None
        self.partner = cur.node_id
        self._forget_old()
        if cur is not inc:
            return Seen(EARLIER_PARTNER, partner=self.partner)
        told = before != self.partner or kind in (EventKind.DEAD, EventKind.JOIN, EventKind.ALIVE)
        if not told or inc.state == LEFT:
            return Seen(PARTNER, partner=self.partner)
        dead = inc.state == DEAD
        return Seen(PARTNER, dead=dead, witnessed=dead and inc.witnessed, partner=self.partner)

    def _forget_old(self) -> None:
        """Keep at most MAX_INCARNATIONS: forget the oldest ones that are not alive."""
        while len(self._incarnations) > MAX_INCARNATIONS:
            gone = [i for i in self._incarnations.values() if i.state != ALIVE]
            gone = [i for i in gone if i.node_id != self.partner]
            if not gone:
                return
            del self._incarnations[min(gone, key=_Incarnation.key).node_id]

    # ------------------------------------------------------------ queries
    def verdict(self) -> tuple[bool, bool] | None:
        """(dead, witnessed) of the current partner incarnation; None: none known, or
        it left."""
        cur = self.current()
        if cur is None or cur.state == LEFT:
            return None
        return (cur.state == DEAD, cur.state == DEAD and cur.witnessed)

    def check_invariants(self) -> None:
        """Verify the bookkeeping (for tests). Raises AssertionError."""
        cur = self.current()
        assert (cur.node_id if cur is not None else "") == self.partner, "partner not the newest"
        assert self.node_id not in self._incarnations, "this broker taken for its partner"
        orders = [i.order for i in self._incarnations.values()]
        assert len(set(orders)) == len(orders), "two incarnations learned at once"
        for i in self._incarnations.values():
            assert i.state in (ALIVE, DEAD, LEFT), i.state
            assert not i.witnessed or i.state == DEAD, f"{i.node_id}: witnessed but {i.state}"
