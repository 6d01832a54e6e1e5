"""``pairq admin``: the web console and its JSON API, on aiohttp.

Routes (every page has its ``/api/`` twin serving the same data as JSON):

=========================  ===============================================
``/``                      overview: pairs healthy or degraded, alerts, rates
``/nodes``                 every broker: pair, state (dead ones shown dead),
                           gossip state, version, health, topics
``/pairs``                 replication up/down, lag, lease, epoch, standby
                           copies, re-fill progress, takeovers
``/topics``                per-broker depth, messages, rates; publish a test message
``/topics/{t}``            one topic: brokers, channels, actions, charts
``/topics/{t}/{c}``        one channel: counts, clients, dead letters, actions
``/lookups``               every lookup and the gossip members it sees
``/audit``                 the audit log, newest first
``/static/…``              the console's own CSS and script (nothing from outside)
``/metrics``               its own metrics, Prometheus text (``metrics.py``)
``POST /action``           a form action: answered with a confirmation page,
                           carried out when re-posted with ``confirm=yes``
``POST /api/actions/{v}``  the same from scripts: a JSON body with the fields
                           and ``"confirm": true`` (409 without it)
=========================  ===============================================

Every action carried out (or refused by the cluster) is written to the audit
log (:mod:`pairq.admin.audit`). With ``--auth-file`` the console logs its users
in and checks each action against their permissions (:mod:`pairq.admin.login`);
without it, it has no login of its own: bind it to loopback (the default) or put
it behind a proxy that authenticates and sets ``X-Forwarded-User``, which the
audit log records. A form post whose
``Origin`` is another site is refused, and the JSON API only takes
``application/json`` bodies, so another web page cannot make a browser act.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from pairq.admin import pages
from pairq.admin.audit import AuditLog
from pairq.admin.cluster import VERBS, ActionError, ClusterView
from pairq.admin.login import COOKIE, Sessions, from_token, required
from pairq.admin.metrics import render, start_admin_metrics
from pairq.admin.options import AdminOptions
from pairq.security.auth import AuthTable, Principal

__all__ = ["Admin", "AdminOptions"]

log = logging.getLogger("pairq.admin")

STATIC = Path(__file__).parent / "static"

_DESCRIBE = {
    "pause-topic": "Pause delivery on every channel of topic {topic} on every broker?",
    "unpause-topic": "Unpause topic {topic} on every broker?",
    "empty-topic": "Drop EVERY message of topic {topic} and all its channels?",
    "delete-topic": "Delete topic {topic}, its channels and all their messages?",
    "pause-channel": "Pause delivery on channel {topic}/{channel} on every broker?",
    "unpause-channel": "Unpause channel {topic}/{channel} on every broker?",
    "empty-channel": "Drop every queued and in-flight message of {topic}/{channel}?",
    "delete-channel": "Delete channel {topic}/{channel} and its progress?",
    "tombstone": "Tombstone topic {topic} on broker {node} (consumers stop connecting there for it)?",
    "redrive": "Put {which} dead letters of {topic}/{channel} back into the channel?",
    "purge": "Delete {which} dead letters of {topic}/{channel} for good?",
    "peek": "Show up to {limit} messages of {topic}/{channel} (nothing is consumed)?",
    "publish": "Publish a test message to topic {topic}?",
    "dead-letters": "List dead letters of {topic}/{channel}?",
}


# Paths anyone may fetch when the console runs with --auth-file.
_OPEN_PATHS = ("/login", "/logout", "/metrics")
# The logged-in principal of a request (absent without --auth-file).
_PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("pairq_principal", Principal)


class Forbidden(ActionError):
    """The logged-in user lacks the permission an action needs (HTTP 403)."""


def who(request: web.Request) -> str:
    p = request.get(_PRINCIPAL)
    user = (
        p.name
        if p is not None
        else (request.headers.get("X-Forwarded-User") or request.headers.get("X-Remote-User"))
    )
    return f"{user or 'anonymous'}@{request.remote or '?'}"


def _describe(verb: str, params: dict[str, Any]) -> str:
    fmt = _DESCRIBE.get(verb, verb + "?")
    ids = params.get("ids") or []
    values = {
        "topic": params.get("topic", ""),
        "channel": params.get("channel", ""),
        "node": params.get("node", ""),
        "limit": params.get("limit") or 20,
        "which": f"the {len(ids)} selected" if ids else "ALL",
    }
    return fmt.format(**values)


class Admin:
    """The console: ``await Admin(opts).start()``; ``address`` is where it listens."""

    def __init__(self, options: AdminOptions) -> None:
        options.validate()
        self.options = options
        self.view = ClusterView(
            list(options.lookup),
            list(options.broker),
            interval=options.poll_interval,
            timeout=options.timeout,
            security=options.security,
        )
        self.audit = AuditLog(options.audit_log or None)
        # --auth-file: raises ValueError naming the file and the problem.
        self.auth = AuthTable.load(options.auth_file) if options.auth_file else None
        self.sessions = Sessions()
        self.app = web.Application(middlewares=[self._authenticate] if self.auth else [])
        self._routes()
        self._runner: web.AppRunner | None = None
        self.address = options.address
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        start_admin_metrics(self.view.counters)
        self.view.start()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        host, _, port = self.options.address.rpartition(":")
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.address = f"{host}:{server.sockets[0].getsockname()[1]}"
        log.info("pairq admin listening on http://%s/", self.address)

    async def stop(self, grace: float = 1.0) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.view.close()
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()

    @property
    def url(self) -> str:
        return f"http://{self.address}/"

    # ------------------------------------------------------------ routes
    def _routes(self) -> None:
        r = self.app.router
        r.add_get("/", self.h_overview)
        r.add_get("/nodes", self.h_nodes)
        r.add_get("/pairs", self.h_pairs)
        r.add_get("/topics", self.h_topics)
        r.add_get("/topics/{topic}", self.h_topic)
        r.add_get("/topics/{topic}/{channel}", self.h_channel)
        r.add_get("/lookups", self.h_lookups)
        r.add_get("/audit", self.h_audit)
        r.add_post("/action", self.h_action_form)
        r.add_get("/api/overview", self.api_overview)
        r.add_get("/api/nodes", self.api_nodes)
        r.add_get("/api/pairs", self.api_pairs)
        r.add_get("/api/topics", self.api_topics)
        r.add_get("/api/topics/{topic}", self.api_topic)
        r.add_get("/api/topics/{topic}/{channel}", self.api_channel)
        r.add_get("/api/lookups", self.api_lookups)
        r.add_get("/api/audit", self.api_audit)
        r.add_get("/api/rates", self.api_rates)
        r.add_post("/api/actions/{verb}", self.api_action)
        r.add_static("/static", STATIC, append_version=False)
        r.add_get("/metrics", self.h_metrics)
        if self.auth is not None:
            r.add_get("/login", self.h_login_form)
            r.add_post("/login", self.h_login)
            r.add_post("/logout", self.h_logout)

    # ------------------------------------------------------------ login
    def _principal(self, request: web.Request) -> Principal | None:
        """Who sent ``request``: a bearer token, else a live session cookie."""
        assert self.auth is not None
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            return from_token(self.auth, token) if scheme.lower() == "bearer" else None
        sid = request.cookies.get(COOKIE, "")
        name = self.sessions.get(sid, time.monotonic()) if sid else None
        if name is None:
            return None
        # by name, in the table in force: a principal removed from the file is logged out
        return next((p for p in self.auth.by_token.values() if p.name == name), None)

    @web.middleware
    async def _authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if path in _OPEN_PATHS or path.startswith("/static/"):
            return await handler(request)
        p = self._principal(request)
        if p is None:
            if path.startswith("/api/"):
                return web.json_response(
                    {
                        "error": "this console requires a login: send 'Authorization: Bearer "
                        "TOKEN' with a token from its --auth-file"
                    },
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="pairq admin"'},
                )
            raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs)}")
        request[_PRINCIPAL] = p
        return await handler(request)

    async def h_login_form(self, request: web.Request) -> web.Response:
        return self._html(
            "Log in", pages.login(_safe_next(request.query.get("next", "")), ""), "", refresh=False
        )

    async def h_login(self, request: web.Request) -> web.Response:
        form = await request.post()
        nxt = _safe_next(str(form.get("next", "")))
        assert self.auth is not None
        p = from_token(self.auth, str(form.get("token", "")))
        if p is None:
            self.audit.write(f"anonymous@{request.remote or '?'}", "login", {}, "refused")
            return self._html(
                "Log in",
                pages.login(nxt, "That token is not in this console's --auth-file."),
                "",
                status=401,
                refresh=False,
            )
        sid = self.sessions.create(p.name, time.monotonic())
        self.audit.write(f"{p.name}@{request.remote or '?'}", "login", {}, "ok")
        resp = web.HTTPSeeOther(nxt)
        resp.set_cookie(
            COOKIE, sid, httponly=True, samesite="Strict", max_age=int(self.sessions.ttl), path="/"
        )
        raise resp

    async def h_logout(self, request: web.Request) -> web.Response:
        self.sessions.drop(request.cookies.get(COOKIE, ""))
        resp = web.HTTPSeeOther("/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    def _check_allowed(self, request: web.Request, verb: str, params: dict[str, Any]) -> None:
        """Raise :class:`ActionError` (403) unless the logged-in user may do ``verb``."""
        p = request.get(_PRINCIPAL)
        if self.auth is None or p is None:
            return
        perm, topic, channel = required(
            verb, str(params.get("topic") or ""), str(params.get("channel") or "")
        )
        if not p.allows(perm, topic, channel):
            raise Forbidden(p.denial(perm, topic, channel))

    async def _snap(self) -> Any:
        if not self.view.polled.is_set():
            await asyncio.wait_for(self.view.polled.wait(), self.options.timeout * 5)
        return self.view.snapshot

    def _html(
        self,
        title: str,
        body: str,
        path: str,
        flash: str = "",
        status: int = 200,
        refresh: bool = True,
    ) -> web.Response:
        return web.Response(
            text=pages.page(
                title,
                body,
                path=path,
                flash=flash,
                refresh=refresh,
                logout=self.auth is not None and title != "Log in",
            ),
            content_type="text/html",
            status=status,
        )

    def _charts(self, keys: list[tuple[str, str]]) -> str:
        return "".join(pages.chart(self.view.history.series(k), title=t) for k, t in keys)

    # ------------------------------------------------------------ pages
    async def h_overview(self, request: web.Request) -> web.Response:
        snap = await self._snap()
        keys = [(f"topic:{t['name']}", f"publish {t['name']}") for t in snap.topics[:8]]
        return self._html(
            "Overview",
            pages.overview(snap, self._charts(keys)),
            "/",
            request.query.get("flash", ""),
        )

    async def h_nodes(self, request: web.Request) -> web.Response:
        return self._html("Nodes", pages.nodes(await self._snap()), "/nodes")

    async def h_pairs(self, request: web.Request) -> web.Response:
        return self._html("Pairs", pages.pairs(await self._snap()), "/pairs")

    async def h_topics(self, request: web.Request) -> web.Response:
        return self._html(
            "Topics", pages.topics(await self._snap()), "/topics", request.query.get("flash", "")
        )

    async def h_topic(self, request: web.Request) -> web.Response:
        snap = await self._snap()
        name = request.match_info["topic"]
        t = snap.topic(name)
        if t is None:
            return self._html(
                f"Topic {name}", "<p>No broker holds this topic.</p>", "/topics", status=404
            )
        keys = [(f"topic:{name}", f"publish {name}")] + [
            (f"channel:{name}/{c['name']}", f"deliver {c['name']}") for c in t["channels"]
        ]
        return self._html(
            f"Topic {name}",
            pages.topic(snap, t, self._charts(keys)),
            "/topics",
            request.query.get("flash", ""),
        )

    async def h_channel(self, request: web.Request) -> web.Response:
        snap = await self._snap()
        tname, cname = request.match_info["topic"], request.match_info["channel"]
        c = snap.channel(tname, cname)
        if c is None:
            return self._html(
                f"Channel {tname}/{cname}",
                "<p>No broker holds this channel.</p>",
                "/topics",
                status=404,
            )
        dead: list[dict[str, Any]] = []
        if c["dead_lettered"]:
            try:
                dead = (
                    await self.view.act(
                        "dead-letters", {"topic": tname, "channel": cname, "limit": 100}
                    )
                )["messages"]
            except ActionError as exc:
                log.warning("dead letters of %s/%s: %s", tname, cname, exc)
        charts = self._charts([(f"channel:{tname}/{cname}", f"deliver {cname}")])
        return self._html(
            f"Channel {tname}/{cname}",
            pages.channel(snap, c, dead, charts),
            "/topics",
            request.query.get("flash", ""),
        )

    async def h_lookups(self, request: web.Request) -> web.Response:
        return self._html("Lookups & gossip", pages.lookups(await self._snap()), "/lookups")

    async def h_metrics(self, request: web.Request) -> web.Response:
        body, content_type = render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def h_audit(self, request: web.Request) -> web.Response:
        return self._html("Audit log", pages.audit(self.audit.recent()), "/audit")

    # ------------------------------------------------------------ actions
    async def _do(self, request: web.Request, verb: str, params: dict[str, Any]) -> dict[str, Any]:
        target = {
            k: v
            for k, v in params.items()
            if k in ("topic", "channel", "node", "ids", "limit", "headers", "body") and v
        }
        try:
            self._check_allowed(request, verb, params)
        except Forbidden as exc:
            self.audit.write(who(request), verb, target, f"refused: {exc}")
            raise
        try:
            out = await self.view.act(verb, params)
        except ActionError as exc:
            self.audit.write(who(request), verb, target, f"error: {exc}")
            self.view.counters.acted(verb, ok=False)
            raise
        self.audit.write(who(request), verb, target, "ok")
        self.view.counters.acted(verb, ok=True)
        if verb not in ("peek", "dead-letters"):
            await self.view.poll()  # the pages show the change at once
        return out

    async def h_action_form(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text="cross-site form post refused")
        form = await request.post()
        verb = str(form.get("verb", ""))
        if verb not in VERBS:
            raise web.HTTPBadRequest(text=f"unknown action {verb!r}")
        params: dict[str, Any] = {
            k: str(form.get(k, ""))
            for k in ("topic", "channel", "node", "body", "headers", "limit")
        }
        params["ids"] = [str(i) for i in form.getall("ids", []) if str(i)]
        back = str(form.get("back", "")) or _back_for(params, request.headers.get("Referer", ""))
        if form.get("confirm") != "yes":
            fields = [("verb", verb)] + [(k, v) for k, v in params.items() if k != "ids" and v]
            fields += [("ids", i) for i in params["ids"]]
            return self._html(
                "Confirm",
                pages.confirm(verb, fields, _describe(verb, params), back),
                "",
                status=200,
            )
        try:
            out = await self._do(request, verb, params)
        except ActionError as exc:
            return self._html(
                "Action failed",
                pages.result(f"{verb} failed: {exc}", back, None),
                "",
                status=403 if isinstance(exc, Forbidden) else 502,
            )
        return self._html("Done", pages.result(out["message"], back, out.get("messages")), "")

    async def api_action(self, request: web.Request) -> web.Response:
        verb = request.match_info["verb"]
        if verb not in VERBS:
            return web.json_response(
                {"error": f"unknown action {verb!r}", "actions": list(VERBS)}, status=404
            )
        if request.content_type != "application/json":
            return web.json_response({"error": "send a JSON body (application/json)"}, status=415)
        try:
            params = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        if not isinstance(params, dict):
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        if params.get("confirm") is not True:
            return web.json_response(
                {
                    "error": 'confirmation required: send "confirm": true',
                    "would": _describe(verb, params),
                },
                status=409,
            )
        try:
            out = await self._do(request, verb, params)
        except ActionError as exc:
            return web.json_response(
                {"error": str(exc)}, status=403 if isinstance(exc, Forbidden) else 502
            )
        return web.json_response(out)

    # ------------------------------------------------------------ JSON API
    async def api_overview(self, request: web.Request) -> web.Response:
        return web.json_response((await self._snap()).overview())

    async def api_nodes(self, request: web.Request) -> web.Response:
        return web.json_response({"nodes": (await self._snap()).nodes})

    async def api_pairs(self, request: web.Request) -> web.Response:
        return web.json_response({"pairs": (await self._snap()).pairs})

    async def api_topics(self, request: web.Request) -> web.Response:
        return web.json_response({"topics": (await self._snap()).topics})

    async def api_topic(self, request: web.Request) -> web.Response:
        t = (await self._snap()).topic(request.match_info["topic"])
        if t is None:
            return web.json_response({"error": "no broker holds this topic"}, status=404)
        return web.json_response(t)

    async def api_channel(self, request: web.Request) -> web.Response:
        c = (await self._snap()).channel(request.match_info["topic"], request.match_info["channel"])
        if c is None:
            return web.json_response({"error": "no broker holds this channel"}, status=404)
        return web.json_response(c)

    async def api_lookups(self, request: web.Request) -> web.Response:
        return web.json_response({"lookups": (await self._snap()).lookups})

    async def api_audit(self, request: web.Request) -> web.Response:
        return web.json_response({"entries": self.audit.recent()})

    async def api_rates(self, request: web.Request) -> web.Response:
        h = self.view.history
        return web.json_response(
            {"now": time.monotonic(), "series": {k: h.series(k) for k in h.keys()}}
        )


def _safe_next(nxt: str) -> str:
    """Where to go after logging in: a local path only (no open redirect)."""
    if nxt.startswith("/") and not nxt.startswith("//") and "\\" not in nxt:
        return nxt
    return "/"


def _back_for(params: dict[str, Any], referer: str) -> str:
    """Where the result page links back to: the page the form was on."""
    path = urlsplit(referer).path if referer else ""
    if path.startswith("/") and not path.startswith("//"):
        return path
    if params.get("topic") and params.get("channel"):
        return f"/topics/{quote(params['topic'])}/{quote(params['channel'])}"
    if params.get("topic"):
        return f"/topics/{quote(params['topic'])}"
    return "/"
