"""Hypothesis stateful test: random faults on a simulated cluster, then healing.

Whatever sequence of kills, restarts, pauses, partitions and loss hypothesis
picks, no core may raise, nobody may see itself as anything but alive, and once
the faults stop and the dead are restarted the cluster must converge.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pairq.gossip import MemberState, NodeMeta, lan
from pairq.gossip.mock import MockNetwork

NAMES = [f"m{i}" for i in range(6)]
member = st.sampled_from(NAMES)


class ClusterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.net = MockNetwork(seed=7)
        self.cfg = lan(push_pull_interval=5.0)
        for i, n in enumerate(NAMES):
            meta = NodeMeta(role="broker", node_id=n, pair=f"p{i // 2}")
            self.net.add(n, self.cfg, meta, join=NAMES[:1] if i else [])
        assert self.net.wait_for(self.net.converged, 10.0) is not None
        self.incarnations = dict.fromkeys(NAMES, 0)

    @rule(seconds=st.floats(0.05, 3.0))
    def run(self, seconds: float) -> None:
        self.net.run_for(seconds)

    @rule(name=member)
    def kill(self, name: str) -> None:
        if sum(node.alive for node in self.net.nodes.values()) > 2:
            self.net.kill(name)

    @rule(name=member)
    def restart(self, name: str) -> None:
        if not self.net.nodes[name].alive:
            seeds = [n for n in NAMES if self.net.nodes[n].alive][:1]
            self.net.restart(name, join=seeds)
            self.incarnations[name] = 0

    @rule(name=member, seconds=st.floats(0.1, 2.5))
    def pause(self, name: str, seconds: float) -> None:
        if self.net.nodes[name].alive and self.net.now >= self.net.nodes[name].paused_until:
            self.net.pause(name, seconds)

    @rule(split=st.integers(1, len(NAMES) - 1))
    def partition(self, split: int) -> None:
        self.net.partition(NAMES[:split], NAMES[split:])

    @rule()
    def heal(self) -> None:
        self.net.heal()

    @rule(a=member, b=member, p=st.sampled_from([0.0, 0.3, 1.0]))
    def loss(self, a: str, b: str, p: float) -> None:
        if a != b:
            self.net.set_loss(a, b, p)

    @invariant()
    def self_view_is_alive_and_incarnation_monotonic(self) -> None:
        for n, node in self.net.nodes.items():
            if not node.alive:
                continue
            me = node.core.member(n)
            assert me is not None and me.state == MemberState.ALIVE
            assert node.core.incarnation >= self.incarnations[n]
            self.incarnations[n] = node.core.incarnation

    def teardown(self) -> None:
        """After every run: stop all faults, restart the dead, and demand convergence."""
        self.net.heal()
        self.net.link_loss.clear()
        for n in NAMES:
            if not self.net.nodes[n].alive:
                seeds = [m for m in NAMES if self.net.nodes[m].alive][:1]
                self.net.restart(n, join=seeds)
                self.incarnations[n] = 0
        took = self.net.wait_for(self.net.converged, 40.0, step=0.1)
        assert took is not None, "cluster did not converge after the faults stopped"


ClusterMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=20,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays deterministic
    database=None,
    suppress_health_check=list(HealthCheck),
)
TestClusterMachine = ClusterMachine.TestCase
