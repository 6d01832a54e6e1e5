"""nsqlookupd's HTTP API on a real lookup (``--http-address``): what NSQ clients
given ``lookupd_http_addresses`` read. Brokers register over the real
registration stream; ``/lookup`` lists both brokers of a pair with their NSQ TCP
ports (only brokers that serve NSQ TCP), ``/topics``, ``/channels``, ``/nodes``,
tombstones, and a dead broker drops out within a stated bound."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
import time
from pathlib import Path
from typing import Any

import aiohttp

from pairq.broker.options import BrokerOptions
from pairq.broker.registration import LookupRegistrar
from pairq.lookup import Lookup, LookupOptions
from pairq.testing import BrokerProcess, eventually, free_port

V1 = ("X-NSQ-Content-Type", "nsq; version=1.0")


@dataclasses.dataclass
class _Topic:
    channels: dict[str, object]


@dataclasses.dataclass
class FakeBroker:
    """What a registrar reads of a broker, for registrations with chosen NSQ addresses.
    Its gRPC address has nobody listening, so once its stream closes the lookup's
    probe is refused and it is answered dead at once (as a killed broker is)."""

    node_id: str
    pair_name: str
    nsq_tcp_address: str
    http_address: str
    topics: dict[str, _Topic]
    address: str = dataclasses.field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    start_time_ns: int = dataclasses.field(default_factory=time.time_ns)
    pair: Any = None

    @property
    def options(self) -> BrokerOptions:
        return BrokerOptions(pair=self.pair_name)


def topics(**spec: list[str]) -> dict[str, _Topic]:
    return {name: _Topic(dict.fromkeys(chans)) for name, chans in spec.items()}


class Http:
    def __init__(self, address: str) -> None:
        self.base = f"http://{address}"
        self.session = aiohttp.ClientSession()

    async def get(self, path: str, method: str = "GET") -> tuple[int, Any]:
        async with self.session.request(method, self.base + path) as r:
            body = await r.read()
            if path != "/ping":
                assert r.headers.get(V1[0]) == V1[1], path
            if r.headers.get("Content-Type", "").startswith("application/json"):
                return r.status, json.loads(body)
            return r.status, body

    async def close(self) -> None:
        await self.session.close()


async def until(cond: Any, timeout: float) -> None:
    """Wait for the async condition ``cond()`` (polling), failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


async def _lookup(**opts: Any) -> Lookup:
    lk = Lookup(LookupOptions(address="127.0.0.1:0", http_address="127.0.0.1:0", **opts))
    await lk.start()
    return lk


def _registrar(broker: Any, lookup: Lookup) -> LookupRegistrar:
    r = LookupRegistrar(broker, [lookup.address], poll_interval=0.05, initial_backoff=0.05)
    r.start()
    return r


def _ports(producers: list[dict[str, Any]]) -> set[tuple[str, int, int]]:
    return {(p["broadcast_address"], p["tcp_port"], p["http_port"]) for p in producers}


async def test_lookup_lists_both_brokers_of_a_pair_and_only_nsq_producers() -> None:
    lk = await _lookup(heartbeat_interval_ms=100, inactivity_timeout_s=5.0)
    h = Http(lk.http_address)
    # Pair p1: A holds t (channel c), its partner B has not registered t yet; both
    # serve NSQ TCP. C (pair p2) holds t but serves only the HTTP API: no NSQ
    # client can consume from it, so it is no producer. D serves neither.
    a = FakeBroker("node-a", "p1", "127.0.0.1:41501", "127.0.0.1:41511", topics(t=["c"], u=[]))
    b = FakeBroker("node-b", "p1", "127.0.0.1:41502", "", topics(u=["x"]))
    c = FakeBroker("node-c", "p2", "", "127.0.0.1:41513", topics(t=["d"]))
    d = FakeBroker("node-d", "p3", "", "", topics(v=[]))
    regs = [_registrar(x, lk) for x in (a, b, c, d)]
    try:
        await eventually(lambda: all(all(r.connected.values()) for r in regs), timeout=10)
        assert await h.get("/ping") == (200, b"OK")
        assert (await h.get("/info"))[1] == {"version": lk_version()}

        status, ans = await h.get("/lookup?topic=t")
        assert status == 200 and set(ans) == {"channels", "producers"}
        assert sorted(ans["channels"]) == ["c", "d"]
        assert _ports(ans["producers"]) == {
            ("127.0.0.1", 41501, 41511),
            ("127.0.0.1", 41502, -1),  # B: the partner, listed though it has not t
        }
        pa = next(p for p in ans["producers"] if p["tcp_port"] == 41501)
        assert pa["remote_address"] == a.address and pa["version"] and "hostname" in pa
        assert {"topology_zone", "topology_region"} <= set(pa)

        assert await h.get("/lookup") == (400, {"message": "MISSING_ARG_TOPIC"})
        assert await h.get("/lookup?topic=none") == (404, {"message": "TOPIC_NOT_FOUND"})
        assert await h.get("/lookup?topic=t", "POST") == (405, {"message": "METHOD_NOT_ALLOWED"})
        assert await h.get("/nope") == (404, {"message": "NOT_FOUND"})
        assert await h.get("/topics") == (200, {"topics": ["t", "u", "v"]})
        assert await h.get("/channels?topic=t") == (200, {"channels": ["c", "d"]})
        assert await h.get("/channels?topic=none") == (200, {"channels": []})
        assert await h.get("/channels") == (400, {"message": "MISSING_ARG_TOPIC"})

        status, nodes = await h.get("/nodes")
        assert status == 200
        by_port = {(n["tcp_port"], n["http_port"]): n for n in nodes["producers"]}
        assert set(by_port) == {(41501, 41511), (41502, -1), (-1, 41513)}  # not D
        na = by_port[(41501, 41511)]
        assert na["topics"] == ["t", "u"] and na["tombstones"] == [False, False]

        # Tombstone t on A (named as nsqlookupd names it): gone from /lookup?topic=t,
        # still in /nodes with its flag.
        status, _ = await h.get("/topic/tombstone?topic=t&node=127.0.0.1:41511", "POST")
        assert status == 200
        _, ans = await h.get("/lookup?topic=t")
        assert _ports(ans["producers"]) == {("127.0.0.1", 41502, -1)}
        _, nodes = await h.get("/nodes")
        na = next(n for n in nodes["producers"] if n["tcp_port"] == 41501)
        assert na["tombstones"] == [True, False]
        assert (await h.get("/topic/tombstone?topic=t", "POST"))[1] == {
            "message": "MISSING_ARG_NODE"
        }

        # Operator registrations, as nsqlookupd's.
        assert (await h.get("/topic/create?topic=made", "POST"))[0] == 200
        assert (await h.get("/channel/create?topic=made&channel=ch", "POST"))[0] == 200
        assert "made" in (await h.get("/topics"))[1]["topics"]
        assert (await h.get("/lookup?topic=made"))[1] == {"channels": ["ch"], "producers": []}
        assert (await h.get("/channel/delete?topic=made&channel=ch", "POST"))[0] == 200
        assert (await h.get("/channel/delete?topic=made&channel=ch", "POST"))[1] == {
            "message": "CHANNEL_NOT_FOUND"
        }
        assert (await h.get("/channel/create?topic=made", "POST"))[1] == {
            "message": "MISSING_ARG_CHANNEL"
        }
        assert (await h.get("/topic/create?topic=a*b", "POST"))[1] == {
            "message": "INVALID_ARG_TOPIC"
        }
        assert (await h.get("/topic/delete?topic=made", "POST"))[0] == 200
        assert "made" not in (await h.get("/topics"))[1]["topics"]

        # B's stream closes and its gRPC port refuses: it is dead, and leaves /lookup
        # and /nodes within the probe's first attempt (bound: 2 s, the lookup's
        # dead_after of 3 heartbeats is 0.3 s here).
        await regs[1].stop()
        t0 = time.monotonic()

        async def b_gone() -> bool:
            _, ans = await h.get("/lookup?topic=u")
            return all(p["tcp_port"] != 41502 for p in ans["producers"])

        await until(b_gone, timeout=2.0)
        assert time.monotonic() - t0 < 2.0
        _, nodes = await h.get("/nodes")
        assert all(n["tcp_port"] != 41502 for n in nodes["producers"])
        _, ans = await h.get("/lookup?topic=u")
        assert _ports(ans["producers"]) == {("127.0.0.1", 41501, 41511)}
    finally:
        for r in regs:
            await r.stop()
        await h.close()
        await lk.stop()


def lk_version() -> str:
    from pairq import __version__

    return __version__


async def test_real_brokers_advertise_their_bound_ports_and_a_killed_one_drops_out(
    tmp_path: Path,
) -> None:
    lk = await _lookup(heartbeat_interval_ms=200, inactivity_timeout_s=10.0)
    h = Http(lk.http_address)
    pa, pb_ = free_port(), free_port()
    procs = [
        BrokerProcess(
            tmp_path / name,
            port=port,
            args=[
                "--pair",
                "p1",
                "--partner",
                f"127.0.0.1:{partner}",
                "--lookup",
                lk.address,
                "--http-address",
                "127.0.0.1:0",  # port 0: the lookup must learn the bound ports
                "--nsq-tcp-address",
                "127.0.0.1:0",
            ],
        )
        for name, port, partner in (("a", pa, pb_), ("b", pb_, pa))
    ]
    try:
        for p in procs:
            p.start()

        async def both() -> bool:
            _, nodes = await h.get("/nodes")
            return len(nodes["producers"]) == 2

        await until(both, timeout=20)
        _, nodes = await h.get("/nodes")
        ports = [n["http_port"] for n in nodes["producers"]]
        assert all(p > 0 for p in ports) and len(set(ports)) == 2
        assert {n["remote_address"] for n in nodes["producers"]} == {
            f"127.0.0.1:{pa}",
            f"127.0.0.1:{pb_}",
        }
        # The advertised HTTP port is the broker's: it answers nsqd's /ping there.
        for n in nodes["producers"]:
            async with h.session.get(f"http://127.0.0.1:{n['http_port']}/ping") as r:
                assert (r.status, await r.text()) == (200, "OK")
        # A topic published to A: /lookup lists A and its partner B, with their NSQ ports.
        http_a = next(
            n["http_port"] for n in nodes["producers"] if n["remote_address"].endswith(f":{pa}")
        )

        async def published() -> bool:
            # Just after the pair links up, its first copy may still be refused with
            # 503 UNAVAILABLE "... retry": retry, as a producer does.
            async with h.session.post(f"http://127.0.0.1:{http_a}/pub?topic=t", data=b"x") as r:
                if r.status == 503:
                    return False
                assert r.status == 200 and r.headers["X-Pairq-Copies"] == "2", await r.text()
                return True

        await until(published, timeout=10)

        async def listed() -> bool:
            status, ans = await h.get("/lookup?topic=t")
            return status == 200 and len(ans["producers"]) == 2

        await until(listed, timeout=10)
        _, ans = await h.get("/lookup?topic=t")
        tcp = {p["remote_address"]: p["tcp_port"] for p in ans["producers"]}
        assert set(tcp) == {f"127.0.0.1:{pa}", f"127.0.0.1:{pb_}"}
        assert all(port > 0 for port in tcp.values()) and len(set(tcp.values())) == 2
        for port in tcp.values():  # NSQ's protocol answers there: an error frame
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"  V2BOGUS\n")
            size, frame_type = struct.unpack(">ii", await reader.readexactly(8))
            assert frame_type == 1  # FrameTypeError
            assert (await reader.readexactly(size - 4)).startswith(b"E_INVALID")
            writer.close()
        # kill -9 B: its stream breaks and its port refuses; it leaves /lookup and
        # /nodes within 2 s (the probe answers at once; without it, 3 heartbeats = 0.6 s).
        procs[1].kill()
        t0 = time.monotonic()

        async def one() -> bool:
            _, nodes = await h.get("/nodes")
            _, ans = await h.get("/lookup?topic=t")
            a_only = [f"127.0.0.1:{pa}"]
            return [n["remote_address"] for n in nodes["producers"]] == a_only and [
                p["remote_address"] for p in ans["producers"]
            ] == a_only

        await until(one, timeout=2.0)
        assert time.monotonic() - t0 < 2.0
    finally:
        for p in procs:
            p.stop()
        await h.close()
        await lk.stop()


async def test_lookup_auth_file_asks_for_the_grpc_tokens(tmp_path: Path) -> None:
    from pairq.security.auth import hash_token

    path = tmp_path / "auth.toml"
    path.write_text(
        f"""
[[principal]]
name = "reader"
token_sha256 = "{hash_token("reader-token-0123456789")}"
subscribe = ["t"]
"""
    )
    lk = await _lookup(auth_file=str(path))
    h = Http(lk.http_address)
    try:
        lk.registry.create_topic("t")
        lk.registry.create_topic("u")
        assert await h.get("/ping") == (200, b"OK")
        assert (await h.get("/info"))[0] == 200
        status, ans = await h.get("/lookup?topic=t")
        assert status == 401 and ans["message"].startswith("UNAUTHENTICATED: ")
        assert (await h.get("/topics"))[0] == 401
        h.session.headers["Authorization"] = "Bearer reader-token-0123456789"
        assert await h.get("/lookup?topic=t") == (200, {"channels": [], "producers": []})
        status, ans = await h.get("/lookup?topic=u")
        assert status == 403 and ans["message"].startswith("PERMISSION_DENIED: 'reader' lacks")
        assert (await h.get("/topics"))[1] == {"topics": ["t", "u"]}
        assert (await h.get("/topic/create?topic=t", "POST"))[0] == 403  # admin needed
    finally:
        await h.close()
        await lk.stop()


async def test_pynsq_reader_given_only_the_lookupd_consumes_from_both_brokers_of_a_pair(
    tmp_path: Path,
) -> None:
    import nsq  # pynsq, unchanged, from PyPI (the test extra)

    from pairq.testing import run_pair

    lk = await _lookup(heartbeat_interval_ms=200)
    h = Http(lk.http_address)
    try:
        async with run_pair(
            tmp_path,
            lookup=(lk.address,),
            nsq_tcp_address="127.0.0.1:0",
            http_address="127.0.0.1:0",
        ) as (a, b):
            # Each broker owns (and alone delivers) what was published to it.
            for i in range(10):
                async with h.session.post(
                    f"http://{a.http_address}/pub?topic=t", data=b"a%d" % i
                ) as r:
                    assert r.status == 200 and r.headers["X-Pairq-Copies"] == "2"
            async with h.session.post(
                f"http://{b.http_address}/mpub?topic=t",
                data=b"\n".join(b"b%d" % i for i in range(10)),
            ) as r:
                assert r.status == 200 and r.headers["X-Pairq-Copies"] == "2"

            async def both_listed() -> bool:
                status, ans = await h.get("/lookup?topic=t")
                return status == 200 and len(ans["producers"]) == 2

            await until(both_listed, timeout=10)
            _, ans = await h.get("/lookup?topic=t")
            want = {("127.0.0.1", int(x.nsq_tcp_address.rpartition(":")[2])) for x in (a, b)}
            assert {(p["broadcast_address"], p["tcp_port"]) for p in ans["producers"]} == want

            got: list[bytes] = []

            def handler(msg: Any) -> bool:
                got.append(msg.body)
                return True

            reader = nsq.Reader(
                topic="t",
                channel="c",
                message_handler=handler,
                lookupd_http_addresses=[f"http://{lk.http_address}"],
                lookupd_poll_interval=1,
                max_in_flight=10,
            )
            try:
                await eventually(lambda: len(set(got)) == 20, timeout=20)
                assert sorted(set(got)) == sorted(
                    [b"a%d" % i for i in range(10)] + [b"b%d" % i for i in range(10)]
                )
                assert len(reader.conns) == 2  # it found and connected to both brokers
                for x in (a, b):
                    await eventually(
                        lambda x=x: x.topics["t"].channels["c"].core.finished == 10, timeout=10
                    )
            finally:
                reader.close()
    finally:
        await h.close()
        await lk.stop()
