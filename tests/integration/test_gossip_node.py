"""Real sockets on 127.0.0.1: Gossip members in one event loop, plus the CLI and agent."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from pairq.cli.members import format_members
from pairq.gossip.config import GossipConfig, local
from pairq.gossip.events import EventKind, MemberEvent
from pairq.gossip.messages import MemberState
from pairq.gossip.meta import NodeMeta
from pairq.gossip.node import Gossip
from pairq.gossip.observe import fetch_members

KEY_A = bytes(range(16))
KEY_B = bytes(range(16, 48))


async def until(cond: Callable[[], bool], within: float, what: str) -> float:
    """Wait for a condition with a deadline; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < within:
        if cond():
            return loop.time() - start
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


def cfg(**kw: object) -> GossipConfig:
    return local(bind_host="127.0.0.1", bind_port=0, **kw)


async def start(
    name: str, pair: str = "", config: GossipConfig | None = None, join: Sequence[Gossip] = ()
) -> Gossip:
    meta = NodeMeta(role="broker", node_id=name, pair=pair, grpc_address="127.0.0.1:4150")
    g = Gossip(config or cfg(), meta)
    await g.start()
    if join:
        assert await g.join([f"{j.address[0]}:{j.address[1]}" for j in join]) >= 1
    return g


def state(g: Gossip, name: str) -> MemberState | None:
    m = g.core.member(name)
    return m.state if m else None


def all_alive(nodes: Sequence[Gossip]) -> bool:
    return all(
        len([m for m in g.members() if m.state == MemberState.ALIVE]) == len(nodes) for g in nodes
    )


@pytest.fixture
async def trio() -> AsyncIterator[list[Gossip]]:
    a = await start("a", pair="p1")
    b = await start("b", pair="p1", join=[a])
    c = await start("c", join=[a])
    nodes = [a, b, c]
    await until(lambda: all_alive(nodes), 5, "join")
    yield nodes
    for g in nodes:
        await g.stop(leave=False)


async def test_join_events_and_metadata(trio: list[Gossip]) -> None:
    a, _, c = trio
    seen: list[MemberEvent] = []
    q = c.events()
    c.subscribe(seen.append)
    a.update_meta(NodeMeta(role="broker", node_id="a", pair="p1", grpc_address="127.0.0.1:9999"))
    await until(lambda: any(e.kind == EventKind.UPDATE for e in seen), 3, "update event")
    ev = await asyncio.wait_for(q.get(), 1)
    assert ev.kind == EventKind.UPDATE and ev.member.meta.grpc_address == "127.0.0.1:9999"
    assert c.local_member.name == "c" and c.local_member.state == MemberState.ALIVE


async def test_crashed_partner_detected_by_pair_fast_path(trio: list[Gossip]) -> None:
    a, b, c = trio
    await until(lambda: b.stats.extra.get("pair_heartbeats", 0) > 3, 2, "heartbeats")
    await b.stop(leave=False)  # sockets gone without a word: a crash as seen from outside
    took = await until(lambda: state(a, "b") == MemberState.DEAD, 3, "a sees b dead")
    assert took < 1.5
    assert a.stats.pair_deaths == 1
    await until(lambda: state(c, "b") == MemberState.DEAD, 3, "c learns b is dead")


async def test_graceful_leave_is_left(trio: list[Gossip]) -> None:
    a, b, c = trio
    await c.stop(leave=True)
    await until(
        lambda: state(a, "c") == MemberState.LEFT and state(b, "c") == MemberState.LEFT, 3, "left"
    )
    assert a.stats.deaths == 0


async def test_members_cli_view(trio: list[Gossip]) -> None:
    a, _, _ = trio
    members = await fetch_members(f"127.0.0.1:{a.address[1]}")
    assert sorted(m.name for m in members) == ["a", "b", "c"]
    table = format_members(members)
    assert "alive" in table and "p1" in table
    # The observer never shows up as a member.
    assert len(a.members()) == 3


async def test_encrypted_cluster_rejects_plain_and_other_label() -> None:
    a = await start("a", config=cfg(keys=(KEY_A,), label="prod"))
    b = await start("b", config=cfg(keys=(KEY_A,), label="prod"), join=[a])
    plain = await start("p")
    other = await start("o", config=cfg(keys=(KEY_A,), label="staging"))
    try:
        await until(lambda: state(a, "b") == MemberState.ALIVE, 3, "encrypted join")
        assert await plain.join([f"127.0.0.1:{a.address[1]}"], within=0.5) == 0
        assert await other.join([f"127.0.0.1:{a.address[1]}"], within=0.5) == 0
        assert state(a, "p") is None and state(a, "o") is None
        assert a.stats.decode_errors >= 2
    finally:
        for g in (a, b, plain, other):
            await g.stop(leave=False)


async def test_packets_with_the_wrong_key_are_ignored_and_counted() -> None:
    """Issue 14: a node holding another key cannot join, is never listed, and every
    packet of its that reached a member is counted as a decode error there."""
    a = await start("a", config=cfg(keys=(KEY_A,)))
    b = await start("b", config=cfg(keys=(KEY_A,)), join=[a])
    wrong = await start("w", config=cfg(keys=(KEY_B,)))
    try:
        await until(lambda: state(a, "b") == MemberState.ALIVE, 3, "encrypted join")
        before = a.stats.decode_errors
        assert await wrong.join([f"127.0.0.1:{a.address[1]}"], within=0.5) == 0
        await until(lambda: a.stats.decode_errors > before, 3, "wrong-key packets counted")
        rounds = a.stats.probes + 3
        await until(lambda: a.stats.probes >= rounds, 10, "gossip rounds")
        assert state(a, "w") is None and state(b, "w") is None
        assert state(wrong, "a") is None and state(wrong, "b") is None
        assert state(a, "b") == MemberState.ALIVE and a.stats.suspects == 0
    finally:
        for g in (a, b, wrong):
            await g.stop(leave=False)


async def test_forged_packet_with_a_255_char_host_is_dropped_and_counted(
    trio: list[Gossip], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14: one forged Alive whose address is a 255-character host name spread to every
    member, each logging a UnicodeError traceback every few seconds. Now it is dropped on
    arrival and counted as a decode error."""
    import logging
    import socket

    from pairq.gossip.codec import encode_message
    from pairq.gossip.messages import Alive

    caplog.set_level(logging.DEBUG)
    a = trio[0]
    forged = encode_message(Alive(9, "evil", ("h" * 255, 7946), NodeMeta(role="broker")))
    before = a.stats.decode_errors
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(3):
            s.sendto(forged, ("127.0.0.1", a.address[1]))
    await until(lambda: a.stats.decode_errors >= before + 3, 3, "forged packets counted")
    # A few gossip rounds later nobody knows the forged member and nothing was logged.
    rounds = a.stats.probes + 5
    await until(lambda: a.stats.probes >= rounds, 10, "gossip rounds")
    assert all(state(g, "evil") is None for g in trio)
    bad = [r for r in caplog.records if r.exc_info or "UnicodeError" in r.getMessage()]
    assert not bad, [r.getMessage() for r in bad]


async def test_key_rotation_without_false_suspicion() -> None:
    nodes = [await start("a", config=cfg(keys=(KEY_A,)))]
    for n in "bc":
        nodes.append(await start(n, config=cfg(keys=(KEY_A,)), join=nodes[:1]))
    try:
        await until(lambda: all_alive(nodes), 3, "join")
        for g in nodes:
            g.keyring.install(KEY_B)
        for g in nodes:  # members switch one at a time: mixed primaries meanwhile
            g.keyring.use(KEY_B)
            probes = g.stats.probes
            await until(lambda g=g, p=probes: g.stats.probes > p + 1, 3, "probes on the new key")
        for g in nodes:
            g.keyring.remove(KEY_A)
        before = [g.stats.probes for g in nodes]
        await until(
            lambda: all(g.stats.probes > p + 2 for g, p in zip(nodes, before, strict=True)),
            5,
            "probes",
        )
        assert all(g.stats.suspects == 0 for g in nodes)
        assert all(g.stats.decode_errors == 0 for g in nodes)
        assert all(m.state == MemberState.ALIVE for g in nodes for m in g.members())
    finally:
        for g in nodes:
            await g.stop(leave=False)


def _wait_line(
    path: Path, pred: Callable[[dict[str, object]], bool], within: float
) -> dict[str, object]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                e = json.loads(line)
                if pred(e):
                    return e  # type: ignore[no-any-return]
        time.sleep(0.02)
    raise AssertionError(f"no matching line in {path} within {within}s")


def test_agent_processes_members_cli_and_kill(tmp_path: Path) -> None:
    """The standalone agent: real processes, SIGKILL by our own PID, the members CLI."""
    from pairq.cli.members import register as add_members_command

    events = [tmp_path / f"{n}.jsonl" for n in "ab"]
    procs: list[subprocess.Popen[bytes]] = []
    agent = [sys.executable, "-m", "pairq.gossip.agent", "--profile", "local", "--meta", "pair=p"]
    try:
        procs.append(subprocess.Popen([*agent, "--name", "a", "--events", str(events[0])]))
        addr = str(_wait_line(events[0], lambda e: e["ev"] == "ready", 15)["addr"])
        procs.append(
            subprocess.Popen([*agent, "--name", "b", "--join", addr, "--events", str(events[1])])
        )
        _wait_line(events[0], lambda e: e["ev"] == "join" and e["member"] == "b", 15)

        parser = argparse.ArgumentParser(prog="pairq")
        add_members_command(parser.add_subparsers(dest="cmd"))
        args = parser.parse_args(["members", "--gossip", addr, "--json"])
        code = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, json; from pairq.cli.members import run_members;"
                "import argparse; sys.exit(run_members(argparse.Namespace(**json.loads(sys.argv[1]))))",
                json.dumps(vars(args) | {"func": None}),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert code.returncode == 0, code.stderr
        listed = json.loads(code.stdout)
        assert {m["name"] for m in listed} == {"a", "b"}
        assert all(m["state"] == "alive" and m["meta"]["pair"] == "p" for m in listed)

        procs[1].kill()
        killed = time.time()
        e = _wait_line(events[0], lambda e: e["ev"] == "dead" and e["member"] == "b", 5)
        assert float(e["t"]) - killed < 1.5  # type: ignore[arg-type]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


async def test_metrics_are_reported_per_member(trio: list[Gossip]) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from pairq.gossip.metrics import create_instruments

    a = trio[0]
    await until(lambda: a.stats.probes > 0 and a.stats.bytes_sent > 0, 3, "some traffic")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    create_instruments(provider.get_meter("pairq.gossip"))
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        (m.name, str(p.attributes.get("member"))): p.value  # type: ignore[union-attr, attr-defined]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.data.data_points
    }
    assert points[("pairq.gossip.probes", "a")] > 0
    assert points[("pairq.gossip.sent", "a")] > 0
    assert 0 <= points[("pairq.gossip.health_score", "a")] < a.config.awareness_max_multiplier
    assert ("pairq.gossip.refutations", "b") in points
    provider.shutdown()
