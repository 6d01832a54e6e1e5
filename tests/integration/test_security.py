"""TLS/mTLS on client, pair and lookup links; bearer tokens with per-topic
permissions (--auth-file); certificate and auth-file reload on SIGHUP."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from certs import CA

from pairq.broker.options import BrokerOptions
from pairq.client import Consumer, Producer
from pairq.errors import PairqError
from pairq.lookup import Lookup, LookupOptions
from pairq.options import OptionsError
from pairq.security.auth import hash_token
from pairq.security.client import ClientSecurity
from pairq.testing import BrokerProcess, eventually, run_broker, run_pair
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg
from pairq.v1 import lookup_pb2 as lpb
from pairq.v1 import lookup_pb2_grpc as lpbg

TOKENS = {
    "producer": "tok-producer-" + "p" * 20,
    "reader": "tok-reader-" + "r" * 20,
    "admin": "tok-admin-" + "a" * 20,
}


def auth_file(tmp: Path, *, reader_publishes: bool = False) -> str:
    p = tmp / "auth.toml"
    p.write_text(
        f'''
[[principal]]
name = "producer"
token_sha256 = "{hash_token(TOKENS["producer"])}"
publish = ["orders", "audit.*"]

[[principal]]
name = "reader"
token_sha256 = "{hash_token(TOKENS["reader"])}"
subscribe = ["orders:billing"]
publish = {'["orders"]' if reader_publishes else "[]"}

[[principal]]
name = "admin"
token_sha256 = "{hash_token(TOKENS["admin"])}"
admin = ["*"]
'''
    )
    return str(p)


def write(path: str, text: str) -> None:
    Path(path).write_text(text)


def read(path: str) -> str:
    return Path(path).read_text()


def md(who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[who]}"),)


async def _code(aw: Any) -> grpc.StatusCode | None:
    try:
        await aw
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return None


async def test_tokens_permissions_and_reload(tmp_path: Path) -> None:
    path = auth_file(tmp_path)
    async with run_broker(tmp_path / "b", auth_file=path) as broker:
        async with grpc.aio.insecure_channel(broker.address) as ch:
            stub = pbg.BrokerServiceStub(ch)
            item = pb.PublishItem(body=b"x")
            # Anonymous, unknown token, malformed header: UNAUTHENTICATED saying what is missing.
            try:
                await stub.Publish(pb.PublishRequest(topic="orders", message=item))
                raise AssertionError("anonymous publish accepted")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "Bearer TOKEN" in (exc.details() or "")
            bad = (("authorization", "Bearer nope"),)
            assert (
                await _code(
                    stub.Publish(pb.PublishRequest(topic="orders", message=item), metadata=bad)
                )
                == grpc.StatusCode.UNAUTHENTICATED
            )
            assert (
                await _code(stub.GetStats(pb.GetStatsRequest())) == grpc.StatusCode.UNAUTHENTICATED
            )
            # A token without publish permission: PERMISSION_DENIED, nothing stored.
            try:
                await stub.Publish(
                    pb.PublishRequest(topic="orders", message=item), metadata=md("reader")
                )
                raise AssertionError("publish without permission accepted")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "'reader' lacks publish permission on topic 'orders'" in (
                    exc.details() or ""
                )
            assert "orders" not in broker.topics
            # The producer may publish to orders but not elsewhere, also on a PublishStream.
            async with Producer([broker.address], token=TOKENS["producer"], retry_timeout=2) as p:
                with pytest.raises(PairqError) as err:
                    await p.publish("secret", b"x")
                assert err.value.code == pb.ERROR_CODE_PERMISSION_DENIED
                ack = await p.publish("orders", b"hello")
                assert ack.copies == 1
            assert "secret" not in broker.topics
            # Anonymous producer: refused, not retried forever.
            async with Producer([broker.address], retry_timeout=2) as p:
                with pytest.raises(PairqError, match="Bearer"):
                    await p.publish("orders", b"x")
            # Subscribe: only where the token allows.
            call = stub.Subscribe(metadata=md("producer"))
            await call.write(
                pb.SubscribeRequest(
                    identify=pb.SubscribeIdentify(topic="orders", channel="billing")
                )
            )
            assert await _code(call.read()) == grpc.StatusCode.PERMISSION_DENIED
            got: list[bytes] = []
            c = Consumer(
                "orders",
                "billing",
                [broker.address],
                token=TOKENS["reader"],
                handler=lambda m: got.append(m.body),
            )
            await c.start()
            try:
                await eventually(lambda: got == [b"hello"])
            finally:
                await c.stop()
            # Admin verbs: anonymous and non-admin tokens refused, the admin token allowed.
            req = pb.DeleteTopicRequest(topic="orders")
            assert await _code(stub.DeleteTopic(req)) == grpc.StatusCode.UNAUTHENTICATED
            assert (
                await _code(stub.DeleteTopic(req, metadata=md("producer")))
                == grpc.StatusCode.PERMISSION_DENIED
            )
            assert "orders" in broker.topics
            stats = await stub.GetStats(pb.GetStatsRequest(), metadata=md("admin"))
            assert stats.broker_id
            # Health checks need no token.
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            h = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert h.status == health_pb2.HealthCheckResponse.SERVING
            # Reload (what SIGHUP does): the reader may publish now; a broken file keeps the old table.
            auth_file(tmp_path, reader_publishes=True)
            broker.reload()
            r = await stub.Publish(
                pb.PublishRequest(topic="orders", message=item), metadata=md("reader")
            )
            assert r.copies == 1
            write(path, "not toml [[[")
            broker.reload()
            r = await stub.Publish(
                pb.PublishRequest(topic="orders", message=item), metadata=md("reader")
            )
            assert r.copies == 1


def test_auth_file_and_tls_files_are_checked_at_start_up(tmp_path: Path) -> None:
    ca = CA(tmp_path / "ca")
    good = ca.issue("broker")
    expired = ca.issue("old", expired=True)
    other = ca.issue("other")
    bad_auth = tmp_path / "bad.toml"
    bad_auth.write_text('[[principal]]\nname = "x"\ntoken_sha256 = "the-token-itself"\n')
    cases = [
        ({"auth_file": str(bad_auth)}, "64 hex digits"),
        ({"auth_file": str(tmp_path / "missing.toml")}, "--auth-file"),
        ({"tls_cert": expired.cert, "tls_key": expired.key}, "expired on"),
        ({"tls_cert": good.cert, "tls_key": other.key}, "does not belong"),
        ({"tls_cert": good.cert}, "go together"),
        ({"tls_cert": good.cert, "tls_key": good.key, "tls_require_client_cert": True}, "needs"),
        (
            {"auth_file": auth_file(tmp_path), "pair": "p", "partner": "127.0.0.1:1"},
            "--pair-secret-file",
        ),
    ]
    for extra, words in cases:
        with pytest.raises(OptionsError, match=words):
            BrokerOptions(data_dir=str(tmp_path / "d"), **extra).validate()
    with pytest.raises(OptionsError, match="expired on"):
        LookupOptions(tls_cert=expired.cert, tls_key=expired.key).validate()


async def test_tls_and_mtls_refuse_plaintext_wrong_ca_and_missing_client_cert(
    tmp_path: Path,
) -> None:
    ca = CA(tmp_path / "ca")
    wrong = CA(tmp_path / "wrong", "wrong-ca")
    server = ca.issue("broker")
    client = ca.issue("client")
    async with run_broker(
        tmp_path / "b",
        tls_cert=server.cert,
        tls_key=server.key,
        tls_ca=ca.path,
        tls_require_client_cert=True,
    ) as broker:
        req = pb.GetStatsRequest(no_clients=True)

        async def attempt(sec: ClientSecurity | None) -> grpc.StatusCode | None:
            ch = sec.channel(broker.address) if sec else grpc.aio.insecure_channel(broker.address)
            try:
                return await _code(pbg.BrokerServiceStub(ch).GetStats(req, timeout=5))
            finally:
                await ch.close()

        assert await attempt(None) == grpc.StatusCode.UNAVAILABLE  # plaintext to TLS
        assert (
            await attempt(
                ClientSecurity(tls_ca=wrong.path, tls_cert=client.cert, tls_key=client.key)
            )
            == grpc.StatusCode.UNAVAILABLE
        )
        assert (
            await attempt(ClientSecurity(tls_ca=ca.path)) == grpc.StatusCode.UNAVAILABLE
        )  # no client cert
        assert (
            await attempt(ClientSecurity(tls_ca=ca.path, tls_cert=client.cert, tls_key=client.key))
            is None
        )
        kw = {"tls_ca": ca.path, "tls_cert": client.cert, "tls_key": client.key}
        async with Producer([broker.address], **kw) as p:
            assert (await p.publish("t", b"over tls")).copies == 1
        got: list[bytes] = []
        c = Consumer("t", "c", [broker.address], handler=lambda m: got.append(m.body), **kw)
        await c.start()
        try:
            await eventually(lambda: got == [b"over tls"])
        finally:
            await c.stop()


async def test_mtls_identity_maps_to_permissions(tmp_path: Path) -> None:
    ca = CA(tmp_path / "ca")
    server = ca.issue("broker")
    ops = ca.issue("ops.example")
    anon = ca.issue("nobody")
    path = tmp_path / "auth.toml"
    path.write_text(
        '[[principal]]\nname = "ops"\ncert_cn = "ops.example"\nadmin = ["*"]\npublish = ["*"]\n'
    )
    async with run_broker(
        tmp_path / "b",
        tls_cert=server.cert,
        tls_key=server.key,
        tls_ca=ca.path,
        tls_require_client_cert=True,
        auth_file=str(path),
    ) as broker:
        for who, expected in ((ops, None), (anon, grpc.StatusCode.UNAUTHENTICATED)):
            ch = ClientSecurity(tls_ca=ca.path, tls_cert=who.cert, tls_key=who.key).channel(
                broker.address
            )
            try:
                code = await _code(
                    pbg.BrokerServiceStub(ch).GetStats(pb.GetStatsRequest(), timeout=5)
                )
            finally:
                await ch.close()
            assert code == expected


async def test_pair_over_mtls_with_secret_survives_a_certificate_reload(tmp_path: Path) -> None:
    ca = CA(tmp_path / "ca")
    a_cert = ca.issue("pair-a")
    client = ca.issue("client")
    secret = tmp_path / "secret"
    secret.write_text(os.urandom(24).hex())
    # Both brokers use the same files here (one certificate for 127.0.0.1).
    async with run_pair(
        tmp_path / "pair",
        tls_cert=a_cert.cert,
        tls_key=a_cert.key,
        tls_ca=ca.path,
        tls_require_client_cert=True,
        pair_secret_file=str(secret),
    ) as (a, b):
        assert a.pair is not None and b.pair is not None
        await eventually(lambda: a.pair.stats().link == "tcp" and b.pair.stats().link == "tcp")
        kw = {"tls_ca": ca.path, "tls_cert": client.cert, "tls_key": client.key}
        async with Producer([a.address], **kw) as p:
            assert (await p.publish("t", b"1")).copies == 2
            link_before = (a.pair.sender.link, b.pair.sender.link)
            # A new certificate in the same files, then what SIGHUP does.
            fresh = ca.issue("pair-a-renewed")
            shutil.copy(fresh.cert, a_cert.cert)
            shutil.copy(fresh.key, a_cert.key)
            a.reload()
            b.reload()
            host, port = a.address.rsplit(":", 1)
            served = await asyncio.to_thread(
                ssl.get_server_certificate, (host, int(port)), ca_certs=ca.path
            )
            assert served.strip() == read(fresh.cert).strip()
            # The pair was not dropped, and new connections work.
            assert (a.pair.sender.link, b.pair.sender.link) == link_before
            assert a.pair.stats().auth_failures == 0
            async with Producer([a.address], **kw) as p2:
                assert (await p2.publish("t", b"2")).copies == 2
            assert (await p.publish("t", b"3")).copies == 2


async def test_lookup_with_auth_and_tls_takes_the_brokers_registration(tmp_path: Path) -> None:
    ca = CA(tmp_path / "ca")
    cert = ca.issue("lookup")
    path = auth_file(tmp_path)
    token = tmp_path / "broker.token"
    token.write_text(TOKENS["admin"] + "\n")
    lookup = Lookup(
        LookupOptions(
            address="127.0.0.1:0",
            tls_cert=cert.cert,
            tls_key=cert.key,
            tls_ca=ca.path,
            auth_file=path,
        )
    )
    await lookup.start()
    try:
        sec = dict(tls_cert=cert.cert, tls_key=cert.key, tls_ca=ca.path)
        async with run_broker(
            tmp_path / "b", lookup=(lookup.address,), lookup_token_file=str(token), **sec
        ) as broker:
            assert broker.registrar is not None
            await eventually(lambda: broker.registrar.connected[lookup.address])
            ch = ClientSecurity(tls_ca=ca.path).channel(lookup.address)
            try:
                stub = lpbg.LookupServiceStub(ch)
                assert (
                    await _code(stub.ListNodes(lpb.ListNodesRequest()))
                    == grpc.StatusCode.UNAUTHENTICATED
                )
                nodes = await stub.ListNodes(lpb.ListNodesRequest(), metadata=md("reader"))
                # Registering needs admin on '*' at the lookup.
                call = stub.Register(metadata=md("reader"))
                assert await _code(call.read()) == grpc.StatusCode.PERMISSION_DENIED
                assert len(nodes.nodes) == 1  # the broker registered over TLS with its token
            finally:
                await ch.close()
    finally:
        await lookup.stop()


def _pub(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pairq.cli", "pub", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_client_commands_and_a_real_broker_process_reloading_on_sighup(tmp_path: Path) -> None:
    ca = CA(tmp_path / "ca")
    cert = ca.issue("broker")
    path = auth_file(tmp_path)
    proc = BrokerProcess(
        tmp_path / "data",
        args=["--tls-cert", cert.cert, "--tls-key", cert.key, "--tls-ca", ca.path],
        log_path=str(tmp_path / "broker.log"),
    )
    proc.args += ["--auth-file", path]
    proc.start()
    try:
        base = ["--broker", proc.address, "--timeout", "3", "orders"]
        plain = _pub(*base, "x")  # plaintext to a TLS broker
        assert plain.returncode == 1 and "without --tls-ca" in plain.stderr, plain.stderr
        anon = _pub("--tls-ca", ca.path, *base, "x")
        assert anon.returncode == 1 and "Bearer TOKEN" in anon.stderr, anon.stderr
        denied = _pub("--tls-ca", ca.path, "--token", TOKENS["reader"], *base, "x")
        assert denied.returncode == 1 and "lacks publish" in denied.stderr, denied.stderr
        ok = _pub("--tls-ca", ca.path, "--token", TOKENS["producer"], *base, "x")
        assert ok.returncode == 0 and "copies 1" in ok.stdout, ok.stderr
        # SIGHUP re-reads the auth file: the reader may publish now.
        auth_file(tmp_path, reader_publishes=True)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "auth file" not in Path(proc.log_path).read_text():
            assert time.monotonic() < deadline, "no reload logged"
            time.sleep(0.05)
        again = _pub("--tls-ca", ca.path, "--token", TOKENS["reader"], *base, "x")
        assert again.returncode == 0, again.stderr
        assert proc.proc.poll() is None  # SIGHUP does not stop it
    finally:
        proc.stop()
