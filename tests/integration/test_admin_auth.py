"""The console with ``--auth-file`` (issue 14): anonymous users can neither look nor
act, a user acts only with the permission the action needs, the login form makes a
session cookie, and every refusal is audit-logged. A real broker with the same auth
file, so the console's own token is checked there too."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import grpc

from pairq.admin import Admin, AdminOptions
from pairq.security.auth import hash_token
from pairq.testing import eventually, run_broker
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg

TOKENS = {
    "ops": "ops-token-0123456789",  # the console's own: admin everywhere
    "viewer": "viewer-token-0123456789",  # no permission at all
    "orders-admin": "orders-admin-token-0123",  # admin on orders only
}


def _auth_file(tmp: Path) -> str:
    p = tmp / "auth.toml"
    p.write_text(
        f'''
[[principal]]
name = "ops"
token_sha256 = "{hash_token(TOKENS["ops"])}"
admin = ["*"]
publish = ["*"]

[[principal]]
name = "viewer"
token_sha256 = "{hash_token(TOKENS["viewer"])}"

[[principal]]
name = "orders-admin"
token_sha256 = "{hash_token(TOKENS["orders-admin"])}"
admin = ["orders"]
'''
    )
    return str(p)


def _bearer(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who]}"}


async def test_console_refuses_anonymous_users_and_checks_each_action(tmp_path: Path) -> None:
    path = _auth_file(tmp_path)
    async with run_broker(tmp_path / "b", auth_file=path) as broker:
        ops = (("authorization", f"Bearer {TOKENS['ops']}"),)
        async with grpc.aio.insecure_channel(broker.address) as ch:
            stub = pbg.BrokerServiceStub(ch)
            for topic in ("orders", "audit"):
                await stub.CreateChannel(
                    pb.CreateChannelRequest(topic=topic, channel="c"), metadata=ops
                )
        audit = tmp_path / "audit.log"
        admin = Admin(
            AdminOptions(
                address="127.0.0.1:0",
                broker=(broker.address,),
                poll_interval=0.2,
                audit_log=str(audit),
                auth_file=path,
                token=TOKENS["ops"],
            )
        )
        await admin.start()

        def paused(topic: str) -> bool:
            return bool(broker.topics[topic].channels["c"].core.paused)

        def last_audit() -> dict:  # type: ignore[type-arg]
            return dict(json.loads(audit.read_text().splitlines()[-1]))

        try:
            async with aiohttp.ClientSession(admin.url) as http:
                # Anonymous: the API answers 401, pages go to the login form, actions do nothing.
                async with http.get("/api/topics") as r:
                    assert r.status == 401
                    assert "Bearer" in (await r.json())["error"]
                async with http.get("/topics/orders", allow_redirects=False) as r:
                    assert r.status == 303
                    assert r.headers["Location"] == "/login?next=/topics/orders"
                act = {"topic": "orders", "channel": "c", "confirm": True}
                async with http.post("/api/actions/pause-channel", json=act) as r:
                    assert r.status == 401
                form = {
                    "verb": "pause-channel",
                    "topic": "orders",
                    "channel": "c",
                    "confirm": "yes",
                }
                async with http.post("/action", data=form, allow_redirects=False) as r:
                    assert r.status == 303
                async with http.get("/api/topics", headers={"Authorization": "Bearer nope"}) as r:
                    assert r.status == 401  # an unknown token is anonymous, never a fallback
                assert not paused("orders")

                # The console's own token works at the broker: the viewer sees the topics.
                async def topics_listed() -> bool:
                    async with http.get("/api/topics", headers=_bearer("viewer")) as r:
                        assert r.status == 200
                        names = {t["name"] for t in (await r.json())["topics"]}
                        return names == {"orders", "audit"}

                await eventually(topics_listed, timeout=15)
                # The viewer may look but not act: 403 naming the permission; audited.
                async with http.post(
                    "/api/actions/pause-channel", json=act, headers=_bearer("viewer")
                ) as r:
                    assert r.status == 403
                    assert "'viewer' lacks admin permission" in (await r.json())["error"]
                assert not paused("orders")
                line = last_audit()
                assert line["who"].startswith("viewer@") and line["result"].startswith("refused")
                # orders-admin acts on orders, not on audit.
                async with http.post(
                    "/api/actions/pause-channel", json=act, headers=_bearer("orders-admin")
                ) as r:
                    assert r.status == 200, await r.text()
                assert paused("orders")
                assert last_audit()["who"].startswith("orders-admin@")
                other = {**act, "topic": "audit"}
                async with http.post(
                    "/api/actions/pause-channel", json=other, headers=_bearer("orders-admin")
                ) as r:
                    assert r.status == 403
                assert not paused("audit")
                async with http.post(
                    "/api/actions/publish",
                    json={"topic": "audit", "body": "x", "confirm": True},
                    headers=_bearer("orders-admin"),
                ) as r:
                    assert r.status == 403  # a test publish needs publish permission
                    assert "lacks publish permission" in (await r.json())["error"]

            # The login form: a wrong token is refused; the right one makes a session.
            # (unsafe: keep cookies of an IP-address host, as browsers do)
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(admin.url, cookie_jar=jar) as browser:
                async with browser.post("/login", data={"token": "wrong", "next": "/"}) as r:
                    assert r.status == 401
                    assert 'id="login-error"' in await r.text()
                async with browser.post(
                    "/login",
                    data={"token": TOKENS["orders-admin"], "next": "https://evil.example/"},
                    allow_redirects=False,
                ) as r:
                    assert r.status == 303
                    assert r.headers["Location"] == "/"  # no open redirect
                    cookie = r.cookies["pairq_session"]
                    assert cookie["httponly"] and cookie["samesite"] == "Strict"
                    assert TOKENS["orders-admin"] not in cookie.value
                async with browser.get("/topics") as r:
                    assert r.status == 200 and 'id="logout"' in await r.text()
                form = {
                    "verb": "unpause-channel",
                    "topic": "orders",
                    "channel": "c",
                    "confirm": "yes",
                }
                async with browser.post("/action", data=form) as r:
                    assert r.status == 200, await r.text()
                assert not paused("orders")
                async with browser.post("/logout", allow_redirects=False) as r:
                    assert r.status == 303
                async with browser.get("/api/topics") as r:
                    assert r.status == 401  # the session is gone
        finally:
            await admin.stop()
