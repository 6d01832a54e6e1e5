"""nsqlookupd's answers from the lookup's Registry, with a fake clock: who is an NSQ
producer for /lookup (both brokers of a pair, NSQ TCP only, not dead, not
tombstoned) and what /nodes lists."""

from __future__ import annotations

from pairq.lookup.nsqhttp import lookup_answer, node_key, nodes_answer, producer
from pairq.lookup.registry import BrokerIdentity, Registry


def ident(node: str, pair: str, tcp: str = "", http: str = "") -> BrokerIdentity:
    return BrokerIdentity(
        node_id=node,
        grpc_address=f"10.0.0.{len(node)}:4150",
        pair=pair,
        version="0.1.0",
        hostname=f"host-{node}",
        nsq_tcp_address=tcp,
        http_address=http,
    )


def registry() -> tuple[Registry, dict[str, int]]:
    reg = Registry(heartbeat_interval=1.0, tombstone_lifetime=10.0)
    tokens = {
        "a": reg.connect(ident("a", "p1", "h1:4150", "h1:4151"), {"t": ["c"]}, 0.0),
        "b": reg.connect(ident("b", "p1", "h2:4150"), {}, 0.0),  # partner, no topic yet
        "c": reg.connect(ident("c", "p2", http="h3:4151"), {"t": ["d"]}, 0.0),  # no NSQ TCP
        "d": reg.connect(ident("d", "p3"), {"t": []}, 0.0),  # neither
        "e": reg.connect(ident("e", "p4", "h5:4150"), {"u": []}, 0.0),  # another topic
    }
    return reg, tokens


def ports(ans: dict[str, object]) -> list[tuple[str, int, int]]:
    return sorted(
        (p["broadcast_address"], p["tcp_port"], p["http_port"])  # type: ignore[index]
        for p in ans["producers"]  # type: ignore[attr-defined]
    )


def test_both_brokers_of_a_pair_that_serve_nsq_tcp_are_producers() -> None:
    reg, _ = registry()
    ans = lookup_answer(reg.lookup_topic("t", 0.5))
    assert ans["channels"] == ["c", "d"]
    assert ports(ans) == [("h1", 4150, 4151), ("h2", 4150, -1)]


def test_a_dead_broker_drops_out_and_a_suspect_one_stays() -> None:
    reg, tok = registry()
    reg.disconnect("b", tok["b"], 1.0)
    # closed but not yet dead_after (3 heartbeats): SUSPECT, still listed
    assert ("h2", 4150, -1) in ports(lookup_answer(reg.lookup_topic("t", 2.0)))
    # closed for 3 heartbeats without gossip: DEAD, gone from /lookup and /nodes
    assert ports(lookup_answer(reg.lookup_topic("t", 4.5))) == [("h1", 4150, 4151)]
    assert "h2" not in {p["broadcast_address"] for p in nodes_answer(reg.nodes(4.5))["producers"]}
    # refused at once after the stream closed (the process is gone): DEAD now
    reg.disconnect("a", tok["a"], 5.0)
    reg.refused("a", tok["a"])
    assert ports(lookup_answer(reg.lookup_topic("t", 5.0))) == []


def test_tombstoned_brokers_leave_lookup_but_not_nodes() -> None:
    reg, _ = registry()
    reg.tombstone("t", "a", 1.0)
    assert ports(lookup_answer(reg.lookup_topic("t", 1.5))) == [("h2", 4150, -1)]
    nodes = {p["hostname"]: p for p in nodes_answer(reg.nodes(1.5))["producers"]}
    assert nodes["host-a"]["topics"] == ["t"] and nodes["host-a"]["tombstones"] == [True]
    # the tombstone expires
    assert len(ports(lookup_answer(reg.lookup_topic("t", 12.0)))) == 2


def test_nodes_list_brokers_serving_either_nsq_api() -> None:
    reg, _ = registry()
    nodes = nodes_answer(reg.nodes(0.5))["producers"]
    assert sorted(n["hostname"] for n in nodes) == ["host-a", "host-b", "host-c", "host-e"]
    c = next(n for n in nodes if n["hostname"] == "host-c")
    assert (c["broadcast_address"], c["tcp_port"], c["http_port"]) == ("h3", -1, 4151)
    assert c["topics"] == ["t"] and c["tombstones"] == [False]


def test_producer_fields_and_node_key() -> None:
    p = producer(ident("a", "p1", "h1:4150", "h1:4151"))
    assert p == {
        "remote_address": "10.0.0.1:4150",
        "hostname": "host-a",
        "broadcast_address": "h1",
        "tcp_port": 4150,
        "http_port": 4151,
        "version": "0.1.0",
        "topology_zone": "",
        "topology_region": "",
    }
    assert node_key(ident("a", "p1", "h1:4150", "h1:4151")) == "h1:4151"
