"""nsqd's HTTP API on real brokers (``--http-address``): every endpoint, its status
codes and bodies as nsqd v1.x answers them (nsqd/http.go, internal/http_api), and
that what it does is real: publishes reach a gRPC subscriber, the verbs pause,
empty and delete on the broker, tokens are required with --auth-file, and a pair
acknowledges a publish only with its two copies."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from rawclient import RawSub

from pairq.security.auth import hash_token
from pairq.testing import eventually, run_broker, run_pair
from pairq.v1 import broker_pb2_grpc as pbg

V1 = ("X-NSQ-Content-Type", "nsq; version=1.0")


class Http:
    """A tiny client: ``await h.call("POST", "/pub?topic=t", b"x")`` -> (status, body, headers)."""

    def __init__(self, address: str, token: str = "") -> None:
        self.base = f"http://{address}"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.session = aiohttp.ClientSession()

    async def call(
        self, method: str, path: str, data: bytes | None = None, **headers: str
    ) -> tuple[int, bytes, Any]:
        async with self.session.request(
            method, self.base + path, data=data, headers={**self.headers, **headers}
        ) as r:
            return r.status, await r.read(), r.headers

    async def err(self, method: str, path: str, data: bytes | None = None) -> tuple[int, str]:
        """(status, message) of an error answer, checking nsqd's error shape on the way."""
        status, body, headers = await self.call(method, path, data)
        assert headers.get(V1[0]) == V1[1], (path, dict(headers))
        assert headers["Content-Type"].startswith("application/json")
        parsed = json.loads(body)
        assert list(parsed) == ["message"], parsed
        return status, parsed["message"]

    async def close(self) -> None:
        await self.session.close()


def mpub_binary(*bodies: bytes) -> bytes:
    return struct.pack(">i", len(bodies)) + b"".join(struct.pack(">i", len(b)) + b for b in bodies)


async def test_ping_info_and_unknown_routes(tmp_path: Path) -> None:
    async with run_broker(tmp_path, http_address="127.0.0.1:0") as b:
        h = Http(b.http_address)
        try:
            status, body, headers = await h.call("GET", "/ping")
            assert (status, body) == (200, b"OK")
            assert headers["Content-Type"].startswith("text/plain")
            status, body, headers = await h.call("GET", "/info")
            assert status == 200 and headers[V1[0]] == V1[1]
            info = json.loads(body)
            host, _, port = b.http_address.rpartition(":")
            assert info["http_port"] == int(port) and info["broadcast_address"] == host
            assert info["tcp_port"] == -1  # no --nsq-tcp-address
            assert info["start_time"] == b.start_time_ns // 1_000_000_000
            assert info["version"] and info["pairq"]["node_id"] == b.node_id
            # Methods and paths nsqd does not serve.
            assert await h.err("POST", "/ping") == (405, "METHOD_NOT_ALLOWED")
            assert await h.err("GET", "/pub?topic=t") == (405, "METHOD_NOT_ALLOWED")
            assert await h.err("GET", "/topic/create?topic=t") == (405, "METHOD_NOT_ALLOWED")
            assert await h.err("GET", "/nope") == (404, "NOT_FOUND")
            # /dpub: /pub with a required defer (nsqd v1 has none; DPUB's name over HTTP)
            assert await h.err("POST", "/dpub?topic=t", b"x") == (400, "MISSING_ARG_DEFER")
        finally:
            await h.close()


async def test_publishes_reach_a_grpc_subscriber(tmp_path: Path) -> None:
    async with run_broker(tmp_path, http_address="127.0.0.1:0") as b:
        h = Http(b.http_address)
        stub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(b.address))
        try:
            assert (await h.call("POST", "/topic/create?topic=t"))[0] == 200
            assert (await h.call("POST", "/channel/create?topic=t&channel=c"))[0] == 200
            sub = RawSub(stub, "t", "c")
            sub.rdy(100)
            status, body, headers = await h.call("POST", "/pub?topic=t", b"one")
            assert (status, body) == (200, b"OK") and headers[V1[0]] == V1[1]
            assert headers["X-Pairq-Copies"] == "1"  # a single broker: one durable copy
            first_id = bytes.fromhex(headers["X-Pairq-Message-Id"])
            status, body, headers = await h.call("POST", "/mpub?topic=t", b"two\nthree\n\nfour\n")
            assert (status, body) == (200, b"OK")
            for flag in ("true", "1", "yes"):  # nsqd takes an unknown value as true
                status, body, _ = await h.call(
                    "POST", f"/mpub?topic=t&binary={flag}", mpub_binary(b"bin\n1", b"bin2")
                )
                assert (status, body) == (200, b"OK"), body
            await eventually(lambda: len(sub.messages) == 10)
            bodies = [m.body for m in sub.messages]
            assert bodies[:4] == [b"one", b"two", b"three", b"four"]
            assert bodies[4:] == [b"bin\n1", b"bin2"] * 3  # binary keeps newlines
            assert sub.messages[0].id == first_id
            sub.fin([m.id for m in sub.take()])
            # /pub?defer=MS: delivered no earlier than MS later.
            t0 = time.monotonic()
            status, _, _ = await h.call("POST", "/pub?topic=t&defer=400", b"later")
            assert status == 200
            await eventually(lambda: len(sub.messages) == 1, timeout=5)
            assert time.monotonic() - t0 >= 0.4
            assert sub.messages[0].body == b"later"
            sub.fin([m.id for m in sub.take()])
            t0 = time.monotonic()
            status, body, _ = await h.call("POST", "/dpub?topic=t&defer=300", b"dlater")
            assert (status, body) == (200, b"OK")
            await eventually(lambda: len(sub.messages) == 1, timeout=5)
            assert time.monotonic() - t0 >= 0.3 and sub.messages[0].body == b"dlater"
            # An empty text /mpub is OK and publishes nothing (nsqd), creating the topic.
            status, body, _ = await h.call("POST", "/mpub?topic=fresh", b"\n\n")
            assert (status, body) == (200, b"OK") and "fresh" in b.topics
            assert b.topics["fresh"].message_count == 0
            await sub.cancel()
        finally:
            await h.close()


async def test_publish_errors_answer_like_nsqd_and_store_nothing(tmp_path: Path) -> None:
    async with run_broker(
        tmp_path, http_address="127.0.0.1:0", max_msg_size=100, max_batch=3, max_defer_ms=1000
    ) as b:
        h = Http(b.http_address)
        try:
            big = b"x" * 101
            cases = [
                ("/pub", b"x", 400, "MISSING_ARG_TOPIC"),
                ("/pub?topic=", b"x", 400, "INVALID_TOPIC"),
                ("/pub?topic=a/b", b"x", 400, "INVALID_TOPIC"),
                ("/pub?topic=t", b"", 400, "MSG_EMPTY"),
                ("/pub?topic=t", big, 413, "MSG_TOO_BIG"),
                ("/pub?topic=t&defer=soon", b"x", 400, "INVALID_DEFER"),
                ("/pub?topic=t&defer=-1", b"x", 400, "INVALID_DEFER"),
                ("/pub?topic=t&defer=1001", b"x", 400, "INVALID_DEFER"),  # --max-defer-ms
                ("/mpub", b"x", 400, "MISSING_ARG_TOPIC"),
                ("/mpub?topic=t%20t", b"x", 400, "INVALID_TOPIC"),
                ("/mpub?topic=t", b"ok\n" + big, 413, "MSG_TOO_BIG"),
                ("/mpub?topic=t&binary=true", b"\0\0", 413, "BAD_BODY"),
                ("/mpub?topic=t&binary=true", struct.pack(">i", 0), 413, "BAD_BODY"),
                ("/mpub?topic=t&binary=true", struct.pack(">i", -5), 413, "BAD_BODY"),
                ("/mpub?topic=t&binary=true", mpub_binary(b"a") + b"\0", 200, ""),  # extra: ignored
                ("/mpub?topic=t&binary=true", struct.pack(">ii", 1, 0), 413, "BAD_MESSAGE"),
                (
                    "/mpub?topic=t&binary=true",
                    struct.pack(">ii", 1, 5) + b"abc",
                    413,
                    "BAD_MESSAGE",
                ),
                (
                    "/mpub?topic=t&binary=true",
                    struct.pack(">i", 2) + mpub_binary(big)[4:],
                    413,
                    "BAD_MESSAGE",
                ),
                ("/mpub?topic=t&binary=true", mpub_binary(b"a")[:-1], 413, "BAD_MESSAGE"),
            ]
            for path, body, status, message in cases:
                if status == 200:
                    assert (await h.call("POST", path, body))[0] == 200
                    continue
                assert await h.err("POST", path, body) == (status, message), path
            # Over --max-batch: pairq's limit, named with its flag.
            status, message = await h.err("POST", "/mpub?topic=t", b"1\n2\n3\n4")
            assert status == 413 and message.startswith("BAD_BATCH: ")
            assert "--max-batch=3" in message
            status, message = await h.err(
                "POST", "/mpub?topic=t&binary=1", mpub_binary(*[b"m"] * 4)
            )
            assert (status, message) == (413, "BAD_BODY")
            # Only the one good publish was stored.
            assert b.topics["t"].message_count == 1
        finally:
            await h.close()


async def test_topic_and_channel_verbs_act_on_the_broker(tmp_path: Path) -> None:
    async with run_broker(tmp_path, http_address="127.0.0.1:0") as b:
        h = Http(b.http_address)
        stub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(b.address))

        async def ok(path: str) -> None:
            status, body, headers = await h.call("POST", path)
            assert (status, body) == (200, b""), (path, status, body)
            assert headers[V1[0]] == V1[1]

        try:
            # Arguments and existence, as nsqd checks them.
            assert await h.err("POST", "/topic/create") == (400, "MISSING_ARG_TOPIC")
            assert await h.err("POST", "/topic/create?topic=a*b") == (400, "INVALID_TOPIC")
            assert await h.err("POST", "/topic/empty?topic=a*b") == (400, "INVALID_TOPIC")
            for verb in ("delete", "empty", "pause", "unpause"):
                assert await h.err("POST", f"/topic/{verb}?topic=none") == (404, "TOPIC_NOT_FOUND")
            for verb in ("delete", "pause"):  # nsqd only looks these names up
                assert await h.err("POST", f"/topic/{verb}?topic=a*b") == (404, "TOPIC_NOT_FOUND")
            for verb in ("create", "delete", "empty", "pause", "unpause"):
                v = f"/channel/{verb}"
                assert await h.err("POST", v) == (400, "MISSING_ARG_TOPIC")
                assert await h.err("POST", v + "?topic=a*b&channel=c") == (400, "INVALID_ARG_TOPIC")
                assert await h.err("POST", v + "?topic=t") == (400, "MISSING_ARG_CHANNEL")
                assert await h.err("POST", v + "?topic=t&channel=c*") == (
                    400,
                    "INVALID_ARG_CHANNEL",
                )
                assert await h.err("POST", v + "?topic=none&channel=c") == (404, "TOPIC_NOT_FOUND")
            assert "none" not in b.topics  # a channel is not made on a topic that does not exist

            await ok("/topic/create?topic=t")
            assert "t" in b.topics
            for verb in ("delete", "empty", "pause", "unpause"):
                status, message = await h.err("POST", f"/channel/{verb}?topic=t&channel=nope")
                assert (status, message) == (404, "CHANNEL_NOT_FOUND")
            await ok("/channel/create?topic=t&channel=c")
            ch = b.topics["t"].channels["c"]
            for i in range(3):
                assert (await h.call("POST", "/pub?topic=t", b"m%d" % i))[0] == 200
            await eventually(lambda: ch.depth == 3)

            # Paused channel: nothing delivered; unpaused: delivered.
            await ok("/channel/pause?topic=t&channel=c")
            assert ch.core.paused
            sub = RawSub(stub, "t", "c")
            sub.rdy(10)
            await eventually(lambda: sub.accepted is not None)
            await ok("/channel/unpause?topic=t&channel=c")
            assert not ch.core.paused
            await eventually(lambda: len(sub.messages) == 3)
            sub.fin([m.id for m in sub.take()])
            await sub.cancel()

            # Topic pause is persisted on the topic; empty drops the backlog.
            await ok("/topic/pause?topic=t")
            assert b.topics["t"].paused
            await ok("/topic/unpause?topic=t")
            assert not b.topics["t"].paused
            for i in range(2):
                assert (await h.call("POST", "/pub?topic=t", b"e%d" % i))[0] == 200
            await eventually(lambda: ch.depth == 2)
            await ok("/channel/empty?topic=t&channel=c")
            await eventually(lambda: ch.depth == 0)
            assert (await h.call("POST", "/pub?topic=t", b"again"))[0] == 200
            await eventually(lambda: ch.depth == 1)
            await ok("/topic/empty?topic=t")
            await eventually(lambda: ch.depth == 0)

            await ok("/channel/delete?topic=t&channel=c")
            assert "c" not in b.topics["t"].channels
            await ok("/topic/delete?topic=t")
            assert "t" not in b.topics
            assert await h.err("POST", "/topic/delete?topic=t") == (404, "TOPIC_NOT_FOUND")
        finally:
            await h.close()


async def test_stats_in_nsqds_shape(tmp_path: Path) -> None:
    async with run_broker(tmp_path, http_address="127.0.0.1:0") as b:
        h = Http(b.http_address)
        stub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(b.address))
        try:
            for path in ("/channel/create?topic=t&channel=c", "/topic/create?topic=u"):
                await h.call("POST", "/topic/create?topic=t")
                assert (await h.call("POST", path))[0] == 200
            await h.call("POST", "/channel/create?topic=t&channel=d")
            await h.call("POST", "/mpub?topic=t", b"1\n2\n3")
            sub = RawSub(stub, "t", "c", client_id="tester", user_agent="ua/1")
            sub.rdy(1)
            await eventually(lambda: len(sub.messages) == 1)

            status, body, headers = await h.call("GET", "/stats?format=json")
            assert status == 200 and headers["Content-Type"].startswith("application/json")
            stats = json.loads(body)
            assert set(stats) == {"version", "health", "start_time", "topics", "producers"}
            assert stats["health"] == "OK" and stats["start_time"] == b.start_time_ns // 10**9
            assert [t["topic_name"] for t in stats["topics"]] == ["t", "u"]
            t = stats["topics"][0]
            assert {
                "topic_name",
                "channels",
                "depth",
                "backend_depth",
                "message_count",
                "message_bytes",
                "paused",
                "e2e_processing_latency",
            } <= set(t)
            assert t["message_count"] == 3 and t["paused"] is False
            assert [c["channel_name"] for c in t["channels"]] == ["c", "d"]
            c = t["channels"][0]
            assert c["in_flight_count"] == 1 and c["depth"] == 2 and c["client_count"] == 1
            assert c["deferred_count"] == 0 and c["requeue_count"] == 0 and c["timeout_count"] == 0
            (client,) = c["clients"]
            assert client["client_id"] == "tester" and client["user_agent"] == "ua/1"
            assert client["ready_count"] == 1 and client["in_flight_count"] == 1
            assert client["state"] == 3 and client["connect_ts"] > 0
            assert t["channels"][1]["depth"] == 3 and t["channels"][1]["clients"] == []

            # Filters, and clients left out (null, as nsqd has them).
            one = json.loads((await h.call("GET", "/stats?format=json&topic=t&channel=d"))[1])
            assert [x["topic_name"] for x in one["topics"]] == ["t"]
            assert [x["channel_name"] for x in one["topics"][0]["channels"]] == ["d"]
            only_c = json.loads((await h.call("GET", "/stats?format=json&channel=c"))[1])
            assert [x["topic_name"] for x in only_c["topics"]] == ["t"]  # u has no channel c
            none = json.loads((await h.call("GET", "/stats?format=json&topic=absent"))[1])
            assert none["topics"] == []
            lean = json.loads((await h.call("GET", "/stats?format=json&include_clients=false"))[1])
            lc = lean["topics"][0]["channels"][0]
            assert lc["clients"] is None and lc["client_count"] == 1

            # The text form, for people.
            status, body, headers = await h.call("GET", "/stats")
            text = body.decode()
            assert status == 200 and headers["Content-Type"].startswith("text/plain")
            assert "Health: OK" in text and "[t              ]" in text and "inflt: 1" in text
            await sub.cancel()
        finally:
            await h.close()


TOKENS = {"producer": "tok-producer-0123456789", "admin": "tok-admin-0123456789"}


def _auth_file(tmp: Path) -> str:
    path = tmp / "auth.toml"
    path.write_text(
        f"""
[[principal]]
name = "producer"
token_sha256 = "{hash_token(TOKENS["producer"])}"
publish = ["orders"]
admin = ["orders:billing"]

[[principal]]
name = "admin"
token_sha256 = "{hash_token(TOKENS["admin"])}"
admin = ["*"]
"""
    )
    return str(path)


async def test_auth_file_requires_the_grpc_tokens_and_permissions(tmp_path: Path) -> None:
    async with run_broker(
        tmp_path / "b", http_address="127.0.0.1:0", auth_file=_auth_file(tmp_path)
    ) as b:
        anon = Http(b.http_address)
        wrong = Http(b.http_address, token="not-a-token")
        producer = Http(b.http_address, token=TOKENS["producer"])
        admin = Http(b.http_address, token=TOKENS["admin"])
        try:
            # Health and info stay open, like gRPC health checks.
            assert (await anon.call("GET", "/ping"))[:2] == (200, b"OK")
            assert (await anon.call("GET", "/info"))[0] == 200
            for h in (anon, wrong):
                status, message = await h.err("POST", "/pub?topic=orders", b"x")
                assert status == 401 and message.startswith("UNAUTHENTICATED: ")
                assert "Authorization: Bearer TOKEN" in message or "--auth-file" in message
            status, _, _ = await anon.call(
                "POST", "/pub?topic=orders", b"x", Authorization="Basic abc"
            )
            assert status == 401
            # Publish permission on the topic, as for gRPC.
            assert (await producer.call("POST", "/pub?topic=orders", b"x"))[:2] == (200, b"OK")
            assert (await producer.call("POST", "/mpub?topic=orders", b"y\nz"))[0] == 200
            status, message = await producer.err("POST", "/pub?topic=other", b"x")
            assert status == 403 and message.startswith("PERMISSION_DENIED: ")
            assert "'producer' lacks publish permission on topic 'other'" in message
            assert (await admin.err("POST", "/pub?topic=orders", b"x"))[0] == 403
            assert b.topics["orders"].message_count == 3 and "other" not in b.topics
            # Admin verbs: admin on the topic or TOPIC:CHANNEL.
            assert (await producer.call("POST", "/channel/create?topic=orders&channel=billing"))[
                0
            ] == 200
            status, message = await producer.err(
                "POST", "/channel/create?topic=orders&channel=audit"
            )
            assert status == 403 and "admin permission" in message
            assert (await producer.err("POST", "/topic/pause?topic=orders"))[0] == 403
            assert not b.topics["orders"].paused
            assert (await admin.call("POST", "/topic/pause?topic=orders"))[0] == 200
            assert b.topics["orders"].paused
            # /stats: admin on the topic, or on '*' for the whole broker.
            assert (await producer.err("GET", "/stats?format=json"))[0] == 403
            status, body, _ = await admin.call("GET", "/stats?format=json")
            assert status == 200 and json.loads(body)["topics"][0]["topic_name"] == "orders"
            assert (await anon.err("GET", "/stats"))[0] == 401
        finally:
            for h in (anon, wrong, producer, admin):
                await h.close()


async def test_without_auth_file_it_is_open(tmp_path: Path) -> None:
    async with run_broker(tmp_path, http_address="127.0.0.1:0") as b:
        h = Http(b.http_address, token="anything")  # ignored, like nsqd ignores it
        try:
            assert (await h.call("POST", "/pub?topic=t", b"x"))[:2] == (200, b"OK")
            assert (await h.call("POST", "/topic/pause?topic=t"))[0] == 200
        finally:
            await h.close()


async def test_a_pair_acknowledges_with_two_copies_and_refuses_without_the_partner(
    tmp_path: Path,
) -> None:
    async with run_pair(tmp_path, http_address="127.0.0.1:0") as (a, b):
        ha, hb = Http(a.http_address), Http(b.http_address)
        try:
            assert a.http_address != b.http_address
            assert (await ha.call("GET", "/ping"))[:2] == (200, b"OK")
            status, body, headers = await ha.call("POST", "/pub?topic=t", b"durable")
            assert (status, body) == (200, b"OK") and headers["X-Pairq-Copies"] == "2"
            status, _, headers = await hb.call("POST", "/mpub?topic=t", b"m1\nm2")
            assert status == 200 and headers["X-Pairq-Copies"] == "2"
            # Both brokers hold all three: their own as owner, the partner's as standby.
            assert a.pair is not None and b.pair is not None
            await eventually(lambda: a.pair.stats().standby_messages == 2)  # type: ignore[union-attr]
            await eventually(lambda: b.pair.stats().standby_messages == 1)  # type: ignore[union-attr]
            # Partner gone under --min-copies=2: 503 with a reason, not a silent OK.
            await b.stop(grace=0.5)
            status, message = await ha.err("POST", "/pub?topic=t", b"alone")
            assert status == 503 and message.startswith("UNAVAILABLE: ")
            assert "min-copies" in message or "partner" in message
            # ... and /ping says so, like nsqd's when it cannot take messages.
            status, body, _ = await ha.call("GET", "/ping")
            assert status == 500 and body.startswith(b"NOK - ") and b"partner" in body
        finally:
            await ha.close()
            await hb.close()


async def test_a_full_store_is_503_with_its_reason_and_ping_says_nok(tmp_path: Path) -> None:
    cap = 16 * 1024 * 1024
    async with run_broker(
        tmp_path,
        http_address="127.0.0.1:0",
        max_store_bytes=cap,
        store_reserve_bytes=4 * 1024 * 1024,
        max_msg_size=65536,
    ) as b:
        h = Http(b.http_address)
        try:
            batch = b"\n".join([b"z" * 60000] * 10)
            published = 0
            for _ in range(1000):
                status, body, _ = await h.call("POST", "/mpub?topic=t", batch)
                if status != 200:
                    break
                published += 10
            assert 0 < published < 10_000
            assert status == 503, body
            message = json.loads(body)["message"]
            assert message.startswith("STORE_FULL: ") and "full" in message[len("STORE_FULL: ") :]
            status, body, _ = await h.call("GET", "/ping")
            assert status == 500 and body.startswith(b"NOK - store full")
            stats = json.loads((await h.call("GET", "/stats?format=json"))[1])
            assert stats["health"].startswith("NOK - store full")
            assert b.topics["t"].message_count == published
        finally:
            await h.close()


async def test_with_tls_it_is_https_only_and_a_client_certificate_names_the_principal(
    tmp_path: Path,
) -> None:
    import ssl

    from certs import CA

    ca = CA(tmp_path / "ca")
    server = ca.issue("broker")
    client = ca.issue("http-app")
    auth_path = tmp_path / "auth.toml"
    auth_path.write_text('[[principal]]\nname = "app"\ncert_cn = "http-app"\npublish = ["mine"]\n')
    async with run_broker(
        tmp_path / "b",
        http_address="127.0.0.1:0",
        tls_cert=server.cert,
        tls_key=server.key,
        tls_ca=ca.path,
        auth_file=str(auth_path),
    ) as b:
        ctx = ssl.create_default_context(cafile=ca.path)
        with_cert = ssl.create_default_context(cafile=ca.path)
        with_cert.load_cert_chain(client.cert, client.key)
        async with aiohttp.ClientSession() as s:
            # plaintext gets no answer: the HTTP port is no way around TLS
            try:
                async with s.post(f"http://{b.http_address}/pub?topic=mine", data=b"x") as r:
                    plain: int | str = r.status
            except aiohttp.ClientError as exc:
                plain = type(exc).__name__
            assert plain != 200
            url = f"https://{b.http_address}"
            async with s.get(url + "/ping", ssl=ctx) as r:
                assert (r.status, await r.text()) == (200, "OK")
            # no certificate, no token: unauthenticated
            async with s.post(url + "/pub?topic=mine", data=b"x", ssl=ctx) as r:
                assert r.status == 401
            # the certificate's CN is the principal, with its permissions
            async with s.post(url + "/pub?topic=mine", data=b"x", ssl=with_cert) as r:
                assert (r.status, await r.text()) == (200, "OK")
            async with s.post(url + "/pub?topic=theirs", data=b"x", ssl=with_cert) as r:
                assert r.status == 403 and "'app' lacks publish" in await r.text()
        assert b.topics["mine"].message_count == 1 and "theirs" not in b.topics
