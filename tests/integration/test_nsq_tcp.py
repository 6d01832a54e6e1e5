"""NSQ's TCP protocol V2 on real brokers (``--nsq-tcp-address``), with pynsq unchanged.

pynsq runs on tornado, whose IOLoop here is the test's own asyncio loop, so its
Writer and Reader run beside in-process brokers. The pair test runs real
``pairq broker`` processes and kills the owner with SIGKILL. A raw-socket test
checks the framing, heartbeats and errors byte by byte.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import nsq
import pytest

from pairq.security.auth import hash_token
from pairq.testing import BrokerProcess, eventually, free_port, run_broker
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg

TOPIC = "nsqt"


# ----------------------------------------------------------------------------- pynsq helpers
class Pubs:
    """pynsq Writer callbacks: results in order of completion."""

    def __init__(self) -> None:
        self.ok = 0
        self.errors: list[Any] = []

    def callback(self, conn: Any, data: Any) -> None:
        if isinstance(data, nsq.Error):
            self.errors.append(data)
        else:
            assert data == b"OK", data
            self.ok += 1


async def connected_writer(addresses: list[str]) -> nsq.Writer:
    w = nsq.Writer(addresses, reconnect_interval=0.2)
    await eventually(lambda: any(c.connected() for c in w.conns.values()), timeout=10)
    return w


def close_writer(w: nsq.Writer) -> None:
    w.reconnect_interval = 3600.0  # pynsq reconnects a closed connection otherwise
    for c in list(w.conns.values()):
        c.close()


def nsq_address(broker: Any) -> str:
    return f"127.0.0.1:{broker.nsq_tcp.port}"


def channel_stats(broker: Any, topic: str = TOPIC, channel: str = "c") -> Any:
    resp = broker.stats(topic, channel)
    if not resp.topics or not resp.topics[0].channels:
        return None
    return resp.topics[0].channels[0]


# ----------------------------------------------------------------------------- publish
async def test_pynsq_publishes_pub_mpub_dpub(tmp_path: Path) -> None:
    async with run_broker(tmp_path / "b", nsq_tcp_address="127.0.0.1:0") as broker:
        await broker.get_topic(TOPIC)
        t = await broker.get_topic(TOPIC)
        await t.get_channel("c")
        w = await connected_writer([nsq_address(broker)])
        pubs = Pubs()
        t0 = time.monotonic()
        w.pub(TOPIC, b"one", callback=pubs.callback)
        w.mpub(TOPIC, [b"two", b"three", b"four"], callback=pubs.callback)
        w.dpub(TOPIC, 700, b"late", callback=pubs.callback)
        await eventually(lambda: pubs.ok + len(pubs.errors) == 3, timeout=10)
        assert pubs.errors == []
        resp = broker.stats(TOPIC)
        assert resp.topics[0].message_count == 5

        got: dict[bytes, float] = {}

        def handler(msg: Any) -> bool:
            got[msg.body] = time.monotonic()
            return True

        r = nsq.Reader(
            topic=TOPIC,
            channel="c",
            message_handler=handler,
            nsqd_tcp_addresses=[nsq_address(broker)],
            max_in_flight=10,
        )
        try:
            await eventually(lambda: len(got) == 5, timeout=10)
            assert set(got) == {b"one", b"two", b"three", b"four", b"late"}
            assert got[b"late"] - t0 >= 0.65, "DPUB 700 ms was delivered early"
            await eventually(lambda: channel_stats(broker).finished == 5, timeout=5)
            # the pynsq producer and consumer show in GetStats like gRPC clients
            clients = channel_stats(broker).clients
            assert len(clients) == 1 and clients[0].user_agent.startswith("pynsq/")
            assert clients[0].finish_count == 5
        finally:
            r.close()
            close_writer(w)


async def test_pynsq_consumes_with_fin_req_touch(tmp_path: Path) -> None:
    """The Reader finds the broker through the lookup's nsqlookupd HTTP API."""
    lk = await nsq_lookup()
    try:
        await _fin_req_touch(tmp_path, lk)
    finally:
        await lk.stop()


async def _fin_req_touch(tmp_path: Path, lk: Any) -> None:
    async with run_broker(
        tmp_path / "b", nsq_tcp_address="127.0.0.1:0", lookup=(lk.address,)
    ) as broker:
        t = await broker.get_topic(TOPIC)
        await t.get_channel("c")
        await lookup_lists(lk, 1)
        w = await connected_writer([nsq_address(broker)])
        pubs = Pubs()
        w.mpub(TOPIC, [b"fin", b"req", b"touch"], callback=pubs.callback)
        await eventually(lambda: pubs.ok == 1, timeout=10)
        seen: list[tuple[bytes, int, bytes]] = []  # (body, attempts, id)
        touched_done = asyncio.Event()
        loop = asyncio.get_running_loop()
        touching: list[asyncio.Task[None]] = []

        async def keep_touching(msg: Any) -> None:
            # msg_timeout is 1 s: touch every 0.3 s for 2.5 s, then FIN
            end = time.monotonic() + 2.5
            while time.monotonic() < end:
                await asyncio.sleep(0.3)
                msg.touch()
            msg.finish()
            touched_done.set()

        def handler(msg: Any) -> None:
            msg.enable_async()
            seen.append((msg.body, msg.attempts, msg.id))
            if msg.body == b"req" and msg.attempts == 1:
                msg.requeue(delay=0, backoff=False)
            elif msg.body == b"touch":
                touching.append(loop.create_task(keep_touching(msg)))
            else:
                msg.finish()

        r = nsq.Reader(
            topic=TOPIC,
            channel="c",
            message_handler=handler,
            lookupd_http_addresses=[f"http://{lk.http_address}"],
            lookupd_poll_interval=1,
            max_in_flight=10,
            msg_timeout=1,
        )
        try:
            await asyncio.wait_for(touched_done.wait(), 10)
            await eventually(lambda: channel_stats(broker).finished == 3, timeout=5)
            bodies = [(b, a) for b, a, _ in seen]
            assert (b"req", 1) in bodies and (b"req", 2) in bodies, seen
            req_ids = {i for b, _, i in seen if b == b"req"}
            assert len(req_ids) == 1, "the redelivery carries the same NSQ id"
            assert [a for b, a in bodies if b == b"touch"] == [1], "TOUCH kept it in flight"
            cs = channel_stats(broker)
            assert cs.timed_out == 0 and cs.requeued == 1 and cs.depth == 0
            assert cs.in_flight == 0
        finally:
            r.close()
            close_writer(w)


# ----------------------------------------------------------------------------- raw socket
class Raw:
    """A bare NSQ V2 connection: commands out, frames in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r = reader
        self.w = writer

    @classmethod
    async def open(cls, port: int, magic: bytes = b"  V2") -> Raw:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(magic)
        return cls(r, w)

    def send(self, line: bytes, body: bytes | None = None) -> None:
        self.w.write(line + b"\n")
        if body is not None:
            self.w.write(struct.pack(">I", len(body)) + body)

    def identify(self, **data: Any) -> None:
        self.send(b"IDENTIFY", json.dumps(data).encode())

    async def frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        head = await asyncio.wait_for(self.r.readexactly(8), timeout)
        size, kind = struct.unpack(">II", head)
        return kind, await asyncio.wait_for(self.r.readexactly(size - 4), timeout)

    async def closed(self, timeout: float = 5.0) -> bool:
        """True once the broker closed the connection (EOF), reading past heartbeats."""
        try:
            rest = await asyncio.wait_for(self.r.read(), timeout)
        except (ConnectionError, TimeoutError):
            return isinstance(self.r.exception(), ConnectionError)
        return rest is not None

    def close(self) -> None:
        self.w.close()


async def expect_fatal(conn: Raw, code: bytes) -> bytes:
    kind, data = await conn.frame()
    assert kind == 1 and data.startswith(code + b" "), (kind, data)
    assert await conn.closed(), "a fatal error closes the connection"
    return data


async def test_raw_framing_heartbeats_and_errors(tmp_path: Path) -> None:
    async with run_broker(
        tmp_path / "b", nsq_tcp_address="127.0.0.1:0", max_msg_size=1000, max_batch=3
    ) as broker:
        port = broker.nsq_tcp.port

        # bad magic
        c = await Raw.open(port, b"HTTP")
        await expect_fatal(c, b"E_BAD_PROTOCOL")

        # IDENTIFY with feature negotiation: honest answers; then PUB OK
        c = await Raw.open(port)
        c.identify(feature_negotiation=True, heartbeat_interval=1000, snappy=True, tls_v1=True)
        kind, data = await c.frame()
        answer = json.loads(data)
        assert kind == 0
        assert answer["snappy"] is False, "snappy is not built"
        assert answer["tls_v1"] is False, "this broker has no --tls-cert"
        assert answer["deflate"] is False, "not asked for"
        assert answer["max_rdy_count"] == 2500
        assert answer["auth_required"] is False
        c.send(b"PUB " + TOPIC.encode(), b"x")
        assert await c.frame() == (0, b"OK")
        c.close()

        # a subscriber: messages are framed as NSQ's type 2; a late FIN is not fatal
        c = await Raw.open(port)
        c.identify(heartbeat_interval=1000, msg_timeout=5000)
        assert await c.frame() == (0, b"OK")
        c.send(b"SUB rawsub raw")
        assert await c.frame() == (0, b"OK")
        p = await Raw.open(port)
        p.send(b"PUB rawsub", b"hello")
        assert await p.frame() == (0, b"OK")
        p.close()
        c.send(b"RDY 5")
        kind, data = await c.frame()
        assert kind == 2
        ts, attempts = struct.unpack(">QH", data[:10])
        msg_id, body = data[10:26], data[26:]
        assert body == b"hello" and attempts == 1
        assert abs(ts - time.time_ns()) < 30e9
        assert len(msg_id) == 16 and all(ch in b"0123456789abcdef" for ch in msg_id)
        c.send(b"FIN " + msg_id)
        c.send(b"FIN " + msg_id)  # twice: the second fails, not fatally
        kind, data = await c.frame()
        assert kind == 1 and data.startswith(b"E_FIN_FAILED "), data
        c.send(b"TOUCH 0123456789abcdef")
        kind, data = await c.frame()
        assert kind == 1 and data.startswith(b"E_TOUCH_FAILED ")
        c.send(b"REQ 0123456789abcdef 0")
        kind, data = await c.frame()
        assert kind == 1 and data.startswith(b"E_REQ_FAILED ")
        c.send(b"NOP")
        c.send(b"CLS")
        assert await c.frame() == (0, b"CLOSE_WAIT")
        c.close()

        # heartbeats: sent every interval; two intervals of silence close the connection
        c = await Raw.open(port)
        c.identify(heartbeat_interval=200)
        assert await c.frame() == (0, b"OK")
        assert await c.frame() == (0, b"_heartbeat_")
        c.send(b"NOP")
        assert await c.frame() == (0, b"_heartbeat_")
        t0 = time.monotonic()
        assert await c.closed(timeout=5), "a silent client is disconnected"
        assert time.monotonic() - t0 < 2.0

        # fatal errors, each closing its connection
        cases: list[tuple[Callable[[Raw], None], bytes]] = [
            (lambda c: c.send(b"BOGUS"), b"E_INVALID"),
            (lambda c: c.send(b"PUB bad/topic", b"x"), b"E_BAD_TOPIC"),
            (lambda c: c.send(b"SUB " + TOPIC.encode() + b" bad/ch"), b"E_BAD_CHANNEL"),
            (lambda c: c.send(b"PUB " + TOPIC.encode(), b"x" * 1001), b"E_BAD_MESSAGE"),
            (lambda c: c.send(b"DPUB " + TOPIC.encode() + b" 999999999", b"x"), b"E_INVALID"),
            (lambda c: c.send(b"RDY 1"), b"E_INVALID"),  # not subscribed
            (lambda c: c.send(b"FIN 0123456789abcdef"), b"E_INVALID"),  # not subscribed
            (lambda c: c.send(b"IDENTIFY", b"{nope"), b"E_BAD_BODY"),
            (lambda c: c.send(b"AUTH", b"secret"), b"E_AUTH_DISABLED"),
            (lambda c: c.send(b"MPUB " + TOPIC.encode(), mpub_body([b"a"] * 4)), b"E_BAD_BODY"),
            (
                lambda c: c.send(b"MPUB " + TOPIC.encode(), mpub_body([b"a"], extra=b"zz")),
                b"E_BAD_BODY",
            ),
        ]
        for send, code in cases:
            c = await Raw.open(port)
            send(c)
            text = await expect_fatal(c, code)
            if code == b"E_BAD_MESSAGE":
                assert b"--max-msg-size" in text
        c = await Raw.open(port)
        c.send(b"SUB " + TOPIC.encode() + b" ch")
        assert await c.frame() == (0, b"OK")
        c.send(b"RDY 2501")
        text = await expect_fatal(c, b"E_INVALID")
        assert b"--max-rdy-count" in text

        # responses come back in command order, MPUB is one batch
        c = await Raw.open(port)
        for i in range(20):
            c.send(b"PUB " + TOPIC.encode(), b"m%d" % i)
        c.send(b"MPUB " + TOPIC.encode(), mpub_body([b"a", b"b", b"c"]))
        c.send(b"PUB bad/topic", b"x")
        for _ in range(21):
            assert await c.frame() == (0, b"OK")
        await expect_fatal(c, b"E_BAD_TOPIC")
        # nothing from the connections above stays behind
        await eventually(lambda: not broker.nsq_tcp.connections, timeout=5)


async def test_a_consumer_that_stops_reading_costs_bounded_memory(tmp_path: Path) -> None:
    """A raw NSQ consumer grants RDY and never reads: the broker stops delivering to it
    once --max-subscriber-buffer-bytes are queued (its socket buffer full), keeps it
    while it sends NOPs, and disconnects it once it is silent for two heartbeats; a
    healthy consumer on the same channel then gets every message."""
    buffer = 256 * 1024
    body = b"m" * 10_000
    async with run_broker(
        tmp_path / "b", nsq_tcp_address="127.0.0.1:0", max_subscriber_buffer_bytes=buffer
    ) as broker:
        port = broker.nsq_tcp.port
        t = await broker.get_topic("stuck")
        await t.get_channel("c")
        pub = await Raw.open(port)
        n = 3000  # 30 MB
        for _ in range(0, n, 100):
            pub.send(b"MPUB stuck", mpub_body([body] * 100))
        for _ in range(0, n, 100):
            assert await pub.frame() == (0, b"OK")
        pub.close()

        stuck = await Raw.open(port)
        stuck.identify(heartbeat_interval=500, msg_timeout=60_000)
        assert await stuck.frame() == (0, b"OK")
        stuck.send(b"SUB stuck c")
        assert await stuck.frame() == (0, b"OK")
        stuck.send(b"RDY 2500")
        await stuck.w.drain()

        def stuck_conn() -> Any:
            return next(
                (c for c in broker.nsq_tcp.connections if c.sub is not None and c.sub.held),
                None,
            )

        await eventually(lambda: stuck_conn() is not None, timeout=10)
        conn = stuck_conn()
        # alive (NOPs) but not reading: held, not disconnected, and nothing more is queued
        # for it: at most its buffer plus the one RDY window already handed over (the
        # same bound as a gRPC subscriber's), and one write's worth in the socket
        first = conn.sub.queued_bytes
        assert first <= buffer + 2500 * len(body)
        for _ in range(6):
            stuck.send(b"NOP")
            await stuck.w.drain()
            await asyncio.sleep(0.25)  # the length of the fault (NOPs keep it alive)
            assert conn in broker.nsq_tcp.connections and conn.sub.held
            assert conn.sub.queued_bytes <= first
            unsent = conn.writer.transport.get_write_buffer_size()
            assert unsent <= 2 * 1024 * 1024, unsent
        assert channel_stats(broker, "stuck", "c").depth > 0
        # silent now: disconnected after two heartbeat intervals, in-flight requeued
        await eventually(lambda: conn not in broker.nsq_tcp.connections, timeout=5)
        await eventually(lambda: channel_stats(broker, "stuck", "c").in_flight == 0, timeout=5)
        stuck.close()

        got = 0

        def handler(msg: Any) -> bool:
            nonlocal got
            got += 1
            return True

        r = nsq.Reader(
            topic="stuck",
            channel="c",
            message_handler=handler,
            nsqd_tcp_addresses=[f"127.0.0.1:{port}"],
            max_in_flight=500,
        )
        try:
            await eventually(lambda: channel_stats(broker, "stuck", "c").finished == n, timeout=60)
            assert channel_stats(broker, "stuck", "c").depth == 0
        finally:
            r.close()


async def test_a_client_that_does_not_read_its_answers_is_not_read_either(
    tmp_path: Path,
) -> None:
    """Commands whose answers pile up unread (here: failing FINs, each answered with an
    error frame) stop being read once ``MAX_PENDING`` answers wait: the broker's memory
    for the connection stays bounded whatever the client sends."""
    from pairq.broker.nsq.tcp import MAX_PENDING

    async with run_broker(tmp_path / "b", nsq_tcp_address="127.0.0.1:0") as broker:
        c = await Raw.open(broker.nsq_tcp.port)
        c.identify(heartbeat_interval=60_000)
        c.send(b"SUB flood c")
        line = b"FIN 0123456789abcdef\n"
        sent = 0
        for _ in range(400):  # up to 400 x 10,000 FINs (84 MB), never reading an answer
            c.w.write(line * 10_000)
            sent += 10_000
            try:
                await asyncio.wait_for(c.w.drain(), 0.5)
            except TimeoutError:
                break  # the broker stopped reading: TCP holds the client back
        else:
            raise AssertionError("the broker read 4,000,000 commands whose answers nobody read")
        (conn,) = broker.nsq_tcp.connections
        assert conn.answers.qsize() <= MAX_PENDING + 1
        assert conn.decoder.buffered <= 2 * 1024 * 1024
        assert conn.writer.transport.get_write_buffer_size() <= 1024 * 1024
        c.w.transport.abort()
        await eventually(lambda: not broker.nsq_tcp.connections, timeout=5)


async def test_max_clients_and_max_rdy_total_count_nsq_subscribers(tmp_path: Path) -> None:
    async with run_broker(
        tmp_path / "b", nsq_tcp_address="127.0.0.1:0", max_clients=2, max_rdy_total=30
    ) as broker:
        port = broker.nsq_tcp.port
        first = await Raw.open(port)
        first.send(b"SUB lim c")
        assert await first.frame() == (0, b"OK")
        first.send(b"RDY 20")
        second = await Raw.open(port)
        second.send(b"SUB lim c")
        assert await second.frame() == (0, b"OK")
        second.send(b"RDY 20")  # cut to the 10 left of --max-rdy-total (not an NSQ error)
        second.send(b"NOP")

        def rdys() -> list[int]:
            return sorted(c.ready_count for c in channel_stats(broker, "lim", "c").clients)

        await eventually(lambda: rdys() == [10, 20], timeout=5)
        third = await Raw.open(port)
        third.send(b"SUB lim c")
        text = await expect_fatal(third, b"E_SUB_FAILED")
        assert b"max_clients" in text or b"--max-clients" in text, text
        first.close()
        # its share comes back: the second may now have all it asked for
        await eventually(lambda: len(channel_stats(broker, "lim", "c").clients) == 1, timeout=5)
        second.send(b"RDY 25")
        await eventually(lambda: rdys() == [25], timeout=5)
        second.close()


async def test_tls_v1_is_negotiated_and_required_with_broker_tls(tmp_path: Path) -> None:
    from certs import CA

    ca = CA(tmp_path / "ca")
    server = ca.issue("broker")
    async with run_broker(
        tmp_path / "b",
        nsq_tcp_address="127.0.0.1:0",
        tls_cert=server.cert,
        tls_key=server.key,
        tls_ca=ca.path,
    ) as broker:
        port = broker.nsq_tcp.port
        # plaintext is refused: the NSQ port is no way around the gRPC port's TLS
        c = await Raw.open(port)
        c.send(b"PUB " + TOPIC.encode(), b"x")
        text = await expect_fatal(c, b"E_INVALID")
        assert b"TLS required" in text
        c = await Raw.open(port)
        c.identify(feature_negotiation=True)  # without tls_v1
        kind, data = await c.frame()
        assert kind == 0 and json.loads(data)["tls_v1"] is False
        c.send(b"NOP")
        await expect_fatal(c, b"E_INVALID")

        # pynsq with tls_v1 publishes and consumes over TLS, verifying the broker's cert
        tls: dict[str, Any] = {"tls_v1": True, "tls_options": {"ca_certs": ca.path}}
        w = nsq.Writer([f"127.0.0.1:{port}"], reconnect_interval=0.2, **tls)
        await eventually(lambda: any(x.connected() for x in w.conns.values()), timeout=10)
        pubs = Pubs()
        w.pub(TOPIC, b"secret", callback=pubs.callback)
        w.mpub(TOPIC, [b"a", b"b"], callback=pubs.callback)
        await eventually(lambda: pubs.ok == 2, timeout=10)
        got: list[bytes] = []

        def handler(msg: Any) -> bool:
            got.append(msg.body)
            return True

        r = nsq.Reader(
            topic=TOPIC,
            channel="c",
            message_handler=handler,
            nsqd_tcp_addresses=[f"127.0.0.1:{port}"],
            deflate=True,  # TLS first, then deflate inside it
            **tls,
        )
        try:
            await eventually(lambda: sorted(got) == [b"a", b"b", b"secret"], timeout=10)
            assert pubs.errors == []
        finally:
            r.close()
            close_writer(w)


async def test_mtls_client_certificate_names_the_principal(tmp_path: Path) -> None:
    """With --tls-require-client-cert and --auth-file, a client certificate whose CN is a
    principal's cert_cn is that principal without AUTH, as on gRPC."""
    from certs import CA

    ca = CA(tmp_path / "ca")
    server = ca.issue("broker")
    client = ca.issue("nsq-app")
    auth_path = tmp_path / "auth.toml"
    auth_path.write_text('[[principal]]\nname = "app"\ncert_cn = "nsq-app"\npublish = ["mine"]\n')
    async with run_broker(
        tmp_path / "b",
        nsq_tcp_address="127.0.0.1:0",
        tls_cert=server.cert,
        tls_key=server.key,
        tls_ca=ca.path,
        tls_require_client_cert=True,
        auth_file=str(auth_path),
    ) as broker:
        port = broker.nsq_tcp.port
        opts = {"ca_certs": ca.path, "certfile": client.cert, "keyfile": client.key}
        w = nsq.Writer([f"127.0.0.1:{port}"], reconnect_interval=0.2, tls_v1=True, tls_options=opts)
        await eventually(lambda: any(x.connected() for x in w.conns.values()), timeout=10)
        pubs = Pubs()
        w.pub("mine", b"x", callback=pubs.callback)
        await eventually(lambda: pubs.ok == 1, timeout=10)
        w.pub("theirs", b"x", callback=pubs.callback)
        await eventually(lambda: len(pubs.errors) == 1, timeout=10)
        assert "E_UNAUTHORIZED" in str(pubs.errors[0])
        close_writer(w)
        assert broker.stats("mine").topics[0].message_count == 1


async def test_deflate_is_negotiated_both_ways(tmp_path: Path) -> None:
    async with run_broker(tmp_path / "b", nsq_tcp_address="127.0.0.1:0") as broker:
        addr = nsq_address(broker)
        w = nsq.Writer([addr], reconnect_interval=0.2, deflate=True, deflate_level=9)
        await eventually(lambda: any(x.connected() for x in w.conns.values()), timeout=10)
        (conn,) = broker.nsq_tcp.connections
        assert conn.session.deflate_level == 6, "level 9 asked, capped at max_deflate_level"
        pubs = Pubs()
        bodies = [b"compressible " * 200 + b"%d" % i for i in range(50)]
        for body in bodies[:10]:
            w.pub(TOPIC, body, callback=pubs.callback)
        w.mpub(TOPIC, bodies[10:], callback=pubs.callback)
        await eventually(lambda: pubs.ok == 11, timeout=10)
        got: list[bytes] = []

        def handler(msg: Any) -> bool:
            got.append(msg.body)
            return True

        r = nsq.Reader(
            topic=TOPIC,
            channel="c",
            message_handler=handler,
            nsqd_tcp_addresses=[addr],
            max_in_flight=20,
            deflate=True,
            deflate_level=1,
        )
        try:
            await eventually(lambda: sorted(got) == sorted(bodies), timeout=10)
            await eventually(lambda: channel_stats(broker).finished == 50, timeout=5)
            levels = sorted(c.session.deflate_level for c in broker.nsq_tcp.connections)
            assert levels == [1, 6]
        finally:
            r.close()
            close_writer(w)


async def test_nsq_address_in_use_fails_start_cleanly(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="--nsq-tcp-address"):
            async with run_broker(tmp_path / "b", nsq_tcp_address=f"127.0.0.1:{port}"):
                pass
    # the gRPC side was stopped too: the same data dir starts again
    async with run_broker(tmp_path / "b", nsq_tcp_address="127.0.0.1:0") as broker:
        assert broker.nsq_tcp.port > 0


def mpub_body(bodies: list[bytes], extra: bytes = b"") -> bytes:
    out = struct.pack(">I", len(bodies))
    for b in bodies:
        out += struct.pack(">I", len(b)) + b
    return out + extra


async def test_auth_token_and_permissions(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    path.write_text(
        f"""
[[principal]]
name = "producer"
token_sha256 = "{hash_token("prod-token")}"
publish = ["{TOPIC}"]

[[principal]]
name = "reader"
token_sha256 = "{hash_token("read-token")}"
subscribe = ["{TOPIC}:allowed"]
"""
    )
    async with run_broker(
        tmp_path / "b", nsq_tcp_address="127.0.0.1:0", auth_file=str(path)
    ) as broker:
        port = broker.nsq_tcp.port
        c = await Raw.open(port)
        c.identify(feature_negotiation=True)
        kind, data = await c.frame()
        assert json.loads(data)["auth_required"] is True
        c.send(b"PUB " + TOPIC.encode(), b"x")
        await expect_fatal(c, b"E_AUTH_FIRST")

        c = await Raw.open(port)
        c.send(b"AUTH", b"wrong-token")
        await expect_fatal(c, b"E_AUTH_FAILED")

        c = await Raw.open(port)
        c.send(b"AUTH", b"prod-token")
        kind, data = await c.frame()
        assert kind == 0 and json.loads(data)["identity"] == "producer"
        c.send(b"PUB " + TOPIC.encode(), b"x")
        assert await c.frame() == (0, b"OK")
        c.send(b"PUB other", b"x")
        await expect_fatal(c, b"E_UNAUTHORIZED")

        c = await Raw.open(port)
        c.send(b"AUTH", b"read-token")
        await c.frame()
        c.send(b"SUB " + TOPIC.encode() + b" other")
        await expect_fatal(c, b"E_UNAUTHORIZED")

        # pynsq with auth_secret consumes where the token allows it
        got: list[bytes] = []

        def handler(msg: Any) -> bool:
            got.append(msg.body)
            return True

        r = nsq.Reader(
            topic=TOPIC,
            channel="allowed",
            message_handler=handler,
            nsqd_tcp_addresses=[f"127.0.0.1:{port}"],
            auth_secret="read-token",
        )
        try:
            await eventually(lambda: channel_stats(broker, TOPIC, "allowed") is not None)
            c = await Raw.open(port)
            c.send(b"AUTH", b"prod-token")
            await c.frame()
            c.send(b"PUB " + TOPIC.encode(), b"for-reader")
            assert await c.frame() == (0, b"OK")
            await eventually(lambda: b"for-reader" in got, timeout=10)
        finally:
            r.close()


# ----------------------------------------------------------------------------- a real pair
def make_pair(tmp: Path, *extra: str) -> tuple[BrokerProcess, BrokerProcess, int, int]:
    pa, pb_, na, nb = free_port(), free_port(), free_port(), free_port()
    common: list[str] = [*extra]  # defaults: --min-copies 2, an 800 ms lease
    a = BrokerProcess(
        tmp / "a",
        port=pa,
        log_path=str(tmp / "a.log"),
        args=[
            *("--pair", "p", "--partner", f"127.0.0.1:{pb_}", "--node-name", "broker-a"),
            *("--nsq-tcp-address", f"127.0.0.1:{na}", *common),
        ],
    )
    b = BrokerProcess(
        tmp / "b",
        port=pb_,
        log_path=str(tmp / "b.log"),
        args=[
            *("--pair", "p", "--partner", f"127.0.0.1:{pa}", "--node-name", "broker-b"),
            *("--nsq-tcp-address", f"127.0.0.1:{nb}", *common),
        ],
    )
    return a, b, na, nb


async def stats(address: str) -> pb.GetStatsResponse | None:
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            return await pbg.BrokerServiceStub(ch).GetStats(pb.GetStatsRequest(), timeout=2)
    except grpc.RpcError:
        return None


async def wait_pair(*procs: BrokerProcess, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = [await stats(p.address) for p in procs]
        if all(s is not None and s.pair.connected and s.pair.lease_remaining_ms > 0 for s in got):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"pair not healthy in {timeout} s: {got}")
        await asyncio.sleep(0.05)


def print_logs(tmp: Path) -> None:
    for name in ("a.log", "b.log"):
        f = tmp / name
        if f.exists():
            print(f"--- {name}\n" + "\n".join(f.read_text().splitlines()[-40:]))


async def publish_all(w: nsq.Writer, bodies: list[bytes], batch: int = 10) -> list[bytes]:
    """Publish with pynsq (MPUB batches); the bodies whose MPUB was answered OK."""
    acked: list[bytes] = []
    pending = 0

    for i in range(0, len(bodies), batch):
        chunk = bodies[i : i + batch]

        def cb(conn: Any, data: Any, chunk: list[bytes] = chunk) -> None:
            nonlocal pending
            pending -= 1
            if not isinstance(data, nsq.Error):
                acked.extend(chunk)

        pending += 1
        w.mpub(TOPIC, chunk, callback=cb)
    await eventually(lambda: pending == 0, timeout=20)
    return acked


async def nsq_lookup() -> Any:
    """An in-process lookup serving nsqlookupd's HTTP API (heartbeats every 200 ms)."""
    from pairq.lookup import Lookup, LookupOptions

    lk = Lookup(
        LookupOptions(address="127.0.0.1:0", http_address="127.0.0.1:0", heartbeat_interval_ms=200)
    )
    await lk.start()
    return lk


async def lookup_lists(lk: Any, n: int, topic: str = TOPIC, timeout: float = 20) -> None:
    """Until the lookup's ``/lookup?topic=...`` lists ``n`` NSQ producers."""
    import aiohttp

    async with aiohttp.ClientSession() as http:

        async def listed() -> bool:
            async with http.get(f"http://{lk.http_address}/lookup?topic={topic}") as r:
                return r.status == 200 and len((await r.json())["producers"]) == n

        await eventually(listed, timeout=timeout)


@pytest.mark.timeout(180)
async def test_pair_kill_owner_every_acked_message_arrives(tmp_path: Path) -> None:
    """pynsq's Writer publishes to the owner; the owner is killed; a pynsq Reader given
    only the lookup's nsqlookupd HTTP API (as NSQ consumers run) finishes every acked
    message from the partner, then the owner's new ones once it is back."""
    lk = await nsq_lookup()
    a, b, na, _ = make_pair(tmp_path, "--lookup", lk.address)
    a.start()
    b.start()
    r: nsq.Reader | None = None
    w: nsq.Writer | None = None
    try:
        await wait_pair(a, b)
        w = await connected_writer([f"127.0.0.1:{na}"])
        bodies = [b"before-%d" % i for i in range(300)]
        acked = await publish_all(w, bodies)
        assert len(acked) == len(bodies), "a healthy pair acks every publish"
        close_writer(w)

        received: dict[bytes, set[bytes]] = {}  # NSQ id -> bodies under it
        per_body: dict[bytes, int] = {}

        def handler(msg: Any) -> bool:
            received.setdefault(msg.id, set()).add(msg.body)
            per_body[msg.body] = per_body.get(msg.body, 0) + 1
            return True

        await lookup_lists(lk, 2)  # both brokers hold the topic (the partner as standby)
        a.kill()
        r = nsq.Reader(
            topic=TOPIC,
            channel="work",
            message_handler=handler,
            lookupd_http_addresses=[f"http://{lk.http_address}"],
            lookupd_poll_interval=1,
            max_in_flight=100,
        )
        await eventually(lambda: set(acked) <= set(per_body), timeout=30)
        assert all(len(v) == 1 for v in received.values()), "one id per message body"
        ids_by_body = {next(iter(v)): k for k, v in received.items()}
        assert len(ids_by_body) == len(acked)

        # recovery: the owner comes back, the pair heals, publishing to it works again
        a.start()
        await wait_pair(a, b, timeout=30)
        w = await connected_writer([f"127.0.0.1:{na}"])
        after = [b"after-%d" % i for i in range(100)]
        acked2 = await publish_all(w, after)
        assert len(acked2) == len(after)
        # the Reader reconnects to A within pynsq's 15 s and gets A's new messages
        await eventually(lambda: set(acked2) <= set(per_body), timeout=40)
        s = await stats(b.address)
        assert s is not None and s.pair.connected
    except BaseException:
        print_logs(tmp_path)
        raise
    finally:
        if r is not None:
            r.close()
        if w is not None:
            close_writer(w)
        a.stop()
        b.stop()
        await lk.stop()


async def test_pair_kill_owner_with_consumer_running(tmp_path: Path) -> None:
    """Messages in flight on the owner when it dies come again from the partner, with
    the same NSQ id: a consumer de-duplicating by id handles each once."""
    a, b, na, nb = make_pair(tmp_path)
    a.start()
    b.start()
    r: nsq.Reader | None = None
    w: nsq.Writer | None = None
    try:
        await wait_pair(a, b)
        handled: dict[bytes, bytes] = {}  # NSQ id -> body, the first time
        slow: list[Any] = []

        def handler(msg: Any) -> Any:
            if msg.id in handled:
                return True  # duplicate (redelivered after the failover)
            if msg.body.startswith(b"hold"):
                msg.enable_async()
                slow.append(msg)  # in flight on A when it dies: never answered
                handled[msg.id] = msg.body
                return None
            handled[msg.id] = msg.body
            return True

        r = nsq.Reader(
            topic=TOPIC,
            channel="work",
            message_handler=handler,
            nsqd_tcp_addresses=[f"127.0.0.1:{na}", f"127.0.0.1:{nb}"],
            max_in_flight=50,
        )
        await eventually(lambda: len(r.conns) == 2, timeout=10)
        w = await connected_writer([f"127.0.0.1:{na}"])
        acked = await publish_all(
            w, [b"hold-%d" % i for i in range(5)] + [b"m-%d" % i for i in range(95)]
        )
        assert len(acked) == 100
        await eventually(lambda: len(slow) == 5 and len(handled) == 100, timeout=20)
        held_ids = {m.id for m in slow}
        a.kill()
        # B takes over A's messages: the 5 unanswered ones come again, same ids
        redelivered: set[bytes] = set()
        orig = r.message_handler

        def watch(msg: Any) -> Any:
            if msg.id in held_ids:
                redelivered.add(msg.id)
            return orig(msg)

        r.set_message_handler(watch)
        await eventually(lambda: redelivered == held_ids, timeout=30)
        assert set(handled.values()) == set(acked)
    except BaseException:
        print_logs(tmp_path)
        raise
    finally:
        if r is not None:
            r.close()
        if w is not None:
            close_writer(w)
        a.stop()
        b.stop()


async def test_a_paused_owner_delivers_nothing_after_the_takeover(tmp_path: Path) -> None:
    """The delivery fence applies to NSQ subscribers: the owner is paused (SIGSTOP), its
    partner takes its messages over and they are finished there; when the ex-owner
    resumes, its NSQ consumer, which granted RDY meanwhile, gets none of them. (This is
    the channel's fence; the re-check right before the bytes leave is the gRPC stream's
    ``BrokerService.fence_allows``, shared, and tested in test_pair.py.)"""
    import os
    import signal

    a, b, na, nb = make_pair(tmp_path)
    a.start()
    b.start()
    try:
        await wait_pair(a, b)
        on_a = await Raw.open(na)
        on_a.identify(heartbeat_interval=60_000)
        assert await on_a.frame() == (0, b"OK")
        on_a.send(b"SUB " + TOPIC.encode() + b" work")
        assert await on_a.frame() == (0, b"OK")  # RDY 0: nothing delivered yet
        pub = await Raw.open(na)
        for i in range(50):
            pub.send(b"PUB " + TOPIC.encode(), b"x%d" % i)
        for _ in range(50):
            assert await pub.frame() == (0, b"OK")  # two copies each (--min-copies 2)
        pub.close()
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGSTOP)
        try:
            on_b = await Raw.open(nb)
            on_b.send(b"SUB " + TOPIC.encode() + b" work")
            assert await on_b.frame() == (0, b"OK")
            on_b.send(b"RDY 100")
            got = 0
            while got < 50:  # B took the 50 over once A's lease lapsed
                kind, data = await on_b.frame(timeout=20)
                if kind == 2:
                    got += 1
                    on_b.send(b"FIN " + data[10:26])
            on_a.send(b"RDY 100")  # queued in the socket while A is paused
            await on_a.w.drain()
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        await wait_pair(a, b, timeout=30)
        # A is back in the pair and has heard of the FINs: its consumer got nothing
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                kind, data = await on_a.frame(timeout=deadline - time.monotonic())
            except TimeoutError:
                break
            assert kind != 2, f"the ex-owner delivered {data[26:]!r} after the takeover"
        s = await stats(b.address)
        assert s is not None and s.pair.takeovers >= 1
        on_a.close()
        on_b.close()
    except BaseException:
        print_logs(tmp_path)
        raise
    finally:
        a.stop()
        b.stop()
