"""In-memory mock network: whole clusters of :class:`Core` in one process, no sockets.

Time is simulated (a heap of events), every random choice comes from one seeded
``random.Random``, so a run is exactly reproducible from its seed. Links can
lose packets, delay them, and be cut by partitions; members can be killed
(``kill -9``: nothing more is sent or answered, TCP is refused), paused
(``SIGSTOP``: packets queue up and are handled, before any timer, on resume)
and restarted with the same name.

Packets go through the real codec, so byte counts are the real wire sizes
(without encryption).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pairq.gossip.codec import decode_packet, encode_packet
from pairq.gossip.config import GossipConfig
from pairq.gossip.core import Core
from pairq.gossip.events import MemberEvent, PushPullRequest, SendPacket, TcpPing
from pairq.gossip.messages import Addr, MemberState
from pairq.gossip.meta import NodeMeta

__all__ = ["MockNetwork", "SimNode"]


@dataclass(slots=True)
class SimNode:
    name: str
    addr: Addr
    core: Core
    alive: bool = True
    paused_until: float = 0.0
    inbox: list[tuple[Addr, bytes]] = field(default_factory=list)
    events: list[MemberEvent] = field(default_factory=list)
    tick_token: int = 0
    next_tick: float = float("inf")
    bytes_sent: int = 0
    # Simulated event-loop stalls: (start, end) windows in which the node does nothing.
    generation: int = 0

    def state_of(self, name: str) -> MemberState | None:
        m = self.core.member(name)
        return m.state if m else None


class MockNetwork:
    """A deterministic simulated network of gossip members."""

    def __init__(
        self,
        seed: int = 0,
        *,
        delay: float = 0.0005,
        jitter: float = 0.0005,
        loss: float = 0.0,
        start: float = 1000.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = start
        self.delay = delay
        self.jitter = jitter
        self.default_loss = loss
        self.link_loss: dict[tuple[str, str], float] = {}
        self.groups: list[set[str]] | None = None
        self.nodes: dict[str, SimNode] = {}
        self.by_addr: dict[Addr, SimNode] = {}
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._next_ip = 1

    # ------------------------------------------------------------ topology
    def add(
        self,
        name: str,
        config: GossipConfig,
        meta: NodeMeta | None = None,
        *,
        join: Iterable[str] = (),
    ) -> SimNode:
        """Create and start a member; ``join`` names existing members to join through."""
        addr = (f"10.0.{self._next_ip // 250}.{self._next_ip % 250 + 1}", 7946)
        self._next_ip += 1
        return self._boot(name, addr, config, meta or NodeMeta(node_id=name), join)

    def _boot(
        self, name: str, addr: Addr, config: GossipConfig, meta: NodeMeta, join: Iterable[str]
    ) -> SimNode:
        core = Core(config, name, addr, meta, self.now, random.Random(self.rng.getrandbits(64)))
        old = self.nodes.get(name)
        node = SimNode(name, addr, core, generation=(old.generation + 1) if old else 0)
        self.nodes[name] = node
        self.by_addr[addr] = node
        core.start(self.now)
        core.join(self.now, [self.nodes[j].addr for j in join])
        self._pump(node)
        return node

    def restart(
        self, name: str, *, join: Iterable[str] = (), meta: NodeMeta | None = None
    ) -> SimNode:
        """Start a fresh process with the same name and address (incarnation back to 0)."""
        old = self.nodes[name]
        old.alive = False
        return self._boot(name, old.addr, old.core.config, meta or old.core.meta, join)

    def kill(self, name: str) -> None:
        self.nodes[name].alive = False

    def pause(self, name: str, duration: float) -> None:
        """SIGSTOP for ``duration``: nothing runs; packets queue and are handled on resume."""
        node = self.nodes[name]
        node.paused_until = self.now + duration
        gen = node.generation

        def resume() -> None:
            if node.alive and node.generation == gen and self.nodes[name] is node:
                inbox, node.inbox = node.inbox, []
                for src, data in inbox:
                    self._deliver(node, src, data)
                self._tick(node)

        self._at(node.paused_until, resume)

    def partition(self, *groups: Iterable[str]) -> None:
        """Only members in the same group can talk (names not listed are isolated)."""
        self.groups = [set(g) for g in groups]

    def heal(self) -> None:
        self.groups = None

    def set_loss(self, a: str, b: str, p: float) -> None:
        """Loss probability on the a->b and b->a links."""
        self.link_loss[(a, b)] = p
        self.link_loss[(b, a)] = p

    def can_talk(self, a: str, b: str) -> bool:
        if self.groups is None:
            return True
        return any(a in g and b in g for g in self.groups)

    # ------------------------------------------------------------ running
    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            when, _, fn = heapq.heappop(self._heap)
            self.now = max(self.now, when)
            fn()
        self.now = max(self.now, t)

    def wait_for(
        self, cond: Callable[[], bool], timeout: float, step: float = 0.01
    ) -> float | None:
        """Run until ``cond()`` holds; the simulated seconds it took, or None at timeout."""
        start = self.now
        while self.now - start <= timeout:
            if cond():
                return self.now - start
            self.run_for(step)
        return None

    def flush(self, name: str) -> None:
        """Carry out what a member's core wants after a test called it directly."""
        self._pump(self.nodes[name])

    # ------------------------------------------------------------ observation
    def view(self, observer: str, target: str) -> MemberState | None:
        return self.nodes[observer].state_of(target)

    def all_see(
        self, target: str, state: MemberState, observers: Iterable[str] | None = None
    ) -> bool:
        names = (
            observers
            if observers is not None
            else [n for n, node in self.nodes.items() if node.alive and n != target]
        )
        return all(self.view(o, target) == state for o in names)

    def converged(self, names: Iterable[str] | None = None) -> bool:
        """Every live member sees every other live member alive."""
        live = [n for n, node in self.nodes.items() if node.alive] if names is None else list(names)
        return all(self.view(a, b) == MemberState.ALIVE for a in live for b in live if a != b)

    # ------------------------------------------------------------ internals
    def _at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), fn))

    def _running(self, node: SimNode) -> bool:
        return node.alive and self.nodes.get(node.name) is node and self.now >= node.paused_until

    def _schedule_tick(self, node: SimNode) -> None:
        nd = node.core.next_deadline()
        when = self.now + node.core.config.tick_interval
        if nd is not None:
            when = min(when, max(nd, self.now))
        if when >= node.next_tick and node.next_tick > self.now:
            return
        node.tick_token += 1
        token = node.tick_token
        node.next_tick = when

        def fire() -> None:
            if token == node.tick_token:
                node.next_tick = float("inf")
                self._tick(node)

        self._at(when, fire)

    def _tick(self, node: SimNode) -> None:
        if not self._running(node):
            return
        node.core.tick(self.now)
        self._pump(node)

    def _pump(self, node: SimNode) -> None:
        """Carry out the core's actions and collect its events."""
        node.events.extend(node.core.drain_events())
        for action in node.core.drain_actions():
            if isinstance(action, SendPacket):
                data = encode_packet(action.msgs)
                node.bytes_sent += len(data)
                node.core.stats.bytes_sent += len(data)
                self._send(node, action.addr, data)
            elif isinstance(action, TcpPing):
                self._stream(node, action.addr, self._bind_tcp_ping(node, action))
            elif isinstance(action, PushPullRequest):
                self._stream(node, action.addr, self._bind_push_pull(node, action))
        self._schedule_tick(node)

    def _send(self, src: SimNode, dst_addr: Addr, data: bytes) -> None:
        dst = self.by_addr.get(dst_addr)
        if dst is None or not self.can_talk(src.name, dst.name):
            return
        loss = self.link_loss.get((src.name, dst.name), self.default_loss)
        if loss and self.rng.random() < loss:
            return
        when = self.now + self.delay + self.rng.random() * self.jitter
        target = dst

        def arrive() -> None:
            if not target.alive or self.by_addr.get(dst_addr) is not target:
                return
            if self.now < target.paused_until:
                target.inbox.append((src.addr, data))
                return
            self._deliver(target, src.addr, data)

        self._at(when, arrive)

    def _deliver(self, node: SimNode, src: Addr, data: bytes) -> None:
        node.core.stats.bytes_received += len(data)
        node.core.receive(self.now, src, decode_packet(data))
        self._pump(node)

    def _stream(
        self, src: SimNode, dst_addr: Addr, complete: Callable[[SimNode | None], None]
    ) -> None:
        """A TCP exchange: refused at once if nobody listens, times out if cut or paused too long."""
        dst = self.by_addr.get(dst_addr)
        timeout = src.core.config.tcp_timeout
        gen = src.generation
        rtt = 2 * self.delay + self.rng.random() * self.jitter

        def finish(peer: SimNode | None) -> None:
            if src.alive and src.generation == gen and self.nodes.get(src.name) is src:
                complete(peer)
                self._pump(src)

        if dst is None or not dst.alive:
            self._at(self.now + rtt, lambda: finish(None))
            return
        if not self.can_talk(src.name, dst.name):
            self._at(self.now + timeout, lambda: finish(None))
            return
        ready = max(self.now + rtt, dst.paused_until + rtt)
        if ready - self.now > timeout:
            self._at(self.now + timeout, lambda: finish(None))
            return

        def done() -> None:
            if dst.alive and self.by_addr.get(dst_addr) is dst:
                finish(dst)
            else:
                finish(None)

        self._at(ready, done)

    def _bind_tcp_ping(self, node: SimNode, a: TcpPing) -> Callable[[SimNode | None], None]:
        return lambda peer: self._tcp_ping(node, peer, a)

    def _bind_push_pull(
        self, node: SimNode, a: PushPullRequest
    ) -> Callable[[SimNode | None], None]:
        return lambda peer: self._push_pull(node, peer, a)

    def _tcp_ping(self, node: SimNode, peer: SimNode | None, action: TcpPing) -> None:
        if peer is None or (action.ping.target and action.ping.target != peer.name):
            dst = self.by_addr.get(action.addr)
            refused = dst is None or not dst.alive
            node.core.tcp_ping_result(self.now, action.ping.seq, False, refused=refused)
            return
        peer.core.receive(self.now, node.addr, [action.ping])
        self._pump(peer)
        node.core.tcp_ping_result(self.now, action.ping.seq, True)

    def _push_pull(self, node: SimNode, peer: SimNode | None, action: PushPullRequest) -> None:
        if peer is None:
            return
        mine = node.core.local_state(action.join)
        theirs = peer.core.local_state(False)
        size = len(encode_packet([mine])) + len(encode_packet([theirs]))
        node.bytes_sent += size // 2
        peer.bytes_sent += size // 2
        peer.core.merge_remote(self.now, mine)
        self._pump(peer)
        node.core.merge_remote(self.now, theirs)
