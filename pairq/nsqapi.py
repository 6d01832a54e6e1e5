"""What nsqd's and nsqlookupd's HTTP APIs share (``pairq.broker.nsq.http``,
``pairq.lookup.nsqhttp``): NSQ's V1 answers, its error bodies, and tokens.

Rules (as NSQ v1.x's ``internal/http_api`` answers):

- 200: a string as text, None as an empty body, anything else as compact JSON
  (``application/json; charset=utf-8``); every V1 answer carries
  ``X-NSQ-Content-Type: nsq; version=1.0`` (``/ping`` is plain text, without it).
  NSQ v1 sends no ``{"status_code", "status_txt", "data"}`` envelope whatever the
  ``Accept`` header says, and neither pynsq nor nsqjs needs one.
- Not 200: ``{"message": CODE}`` with the status; a path nobody serves is 404
  ``NOT_FOUND``, a method the path does not take 405 ``METHOD_NOT_ALLOWED``, a
  bug 500 ``INTERNAL_ERROR`` (logged).
- TLS: with ``--tls-cert`` the API is served over HTTPS only, with the server's
  certificate (reloaded on SIGHUP like the gRPC port's), so it is no plaintext
  way around the gRPC port's TLS; client certificates are required with
  ``--tls-require-client-cert``, verified against ``--tls-ca`` when one is sent.
- Tokens: with an ``--auth-file`` a request identifies itself with
  ``Authorization: Bearer TOKEN`` (NSQ's HTTP APIs have no authentication of
  their own) or, without a token, by its verified client certificate's common
  name (``cert_cn``), as on gRPC; one that does neither is 401
  ``UNAUTHENTICATED: …``, a permission it lacks 403 ``PERMISSION_DENIED: …``
  naming the principal and what it lacks.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pairq.names import is_valid_name
from pairq.options import parse_hostport
from pairq.security.auth import CURRENT, Authenticator, Principal
from pairq.security.tls import TLSFiles

__all__ = [
    "V1_HEADER",
    "HttpError",
    "Listener",
    "authenticate",
    "error",
    "errors",
    "ok",
    "require",
    "server_ssl",
]

V1_HEADER = ("X-NSQ-Content-Type", "nsq; version=1.0")
JSON_TYPE = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """An answer other than 200: ``status`` and the ``message`` of its JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def topic_channel_args(request: web.Request) -> tuple[str, str]:
    """``?topic=T&channel=C``, both present and valid names, as nsqd and nsqlookupd
    check them (400 ``MISSING_ARG_*`` / ``INVALID_ARG_*``)."""
    q = request.query
    if "topic" not in q:
        raise HttpError(400, "MISSING_ARG_TOPIC")
    topic = q.getone("topic")
    if not is_valid_name(topic):
        raise HttpError(400, "INVALID_ARG_TOPIC")
    if "channel" not in q:
        raise HttpError(400, "MISSING_ARG_CHANNEL")
    channel = q.getone("channel")
    if not is_valid_name(channel):
        raise HttpError(400, "INVALID_ARG_CHANNEL")
    return topic, channel


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def ok(data: Any = None) -> web.Response:
    """NSQ's V1 200: text as is, None as an empty body, anything else as JSON."""
    if data is None:
        resp = web.Response(body=b"")
    elif isinstance(data, str):
        resp = web.Response(text=data)
    else:
        resp = web.Response(text=_json(data), content_type=JSON_TYPE, charset="utf-8")
    resp.headers[V1_HEADER[0]] = V1_HEADER[1]
    return resp


def error(status: int, message: str) -> web.Response:
    """NSQ's V1 error: ``{"message": message}``."""
    resp = web.Response(
        status=status, text=_json({"message": message}), content_type=JSON_TYPE, charset="utf-8"
    )
    resp.headers[V1_HEADER[0]] = V1_HEADER[1]
    return resp


def errors(
    log: logging.Logger, translate: Callable[[Exception], HttpError | None] | None = None
) -> Any:
    """The middleware that turns what a handler raises into NSQ's error answers;
    ``translate`` maps other exceptions (a server's domain errors), None: a bug."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except HttpError as exc:
            return error(exc.status, exc.message)
        except web.HTTPMethodNotAllowed:
            return error(405, "METHOD_NOT_ALLOWED")
        except web.HTTPNotFound:
            return error(404, "NOT_FOUND")
        except Exception as exc:
            mapped = translate(exc) if translate is not None else None
            if mapped is not None:
                return error(mapped.status, mapped.message)
            log.exception("internal error serving %s %s", request.method, request.path)
            return error(500, "INTERNAL_ERROR")

    return middleware


def server_ssl(tls: TLSFiles | None) -> ssl.SSLContext | None:
    """The HTTPS context for ``--tls-cert`` (None without): client certificates
    required with ``--tls-require-client-cert``, else verified when sent."""
    if tls is None:
        return None
    ctx = tls.server_context()  # reloaded with the files on SIGHUP
    ctx.verify_mode = (
        ssl.CERT_REQUIRED
        if tls.require_client_cert
        else (ssl.CERT_OPTIONAL if tls.ca else ssl.CERT_NONE)
    )
    return ctx


def _cert_cns(request: web.Request) -> list[str]:
    """Common names of the request's verified client certificate (none over HTTP)."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return []
    return [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]


class _Metadata:
    """What ``Authenticator.identify`` reads of a gRPC call, from an HTTP request."""

    def __init__(self, authorization: str, cns: list[str]) -> None:
        self._md = [("authorization", authorization)] if authorization else []
        self._cns = cns

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self._md

    def auth_context(self) -> dict[str, Any]:
        return {"x509_common_name": self._cns}


def authenticate(auth: Authenticator | None, request: web.Request) -> Principal | None:
    """The caller (None with authentication off), also set as the principal of this
    request's task (``pairq.security.auth.CURRENT``); 401 if it cannot be identified."""
    if auth is None:
        return None
    who = auth.identify(_Metadata(request.headers.get("Authorization", ""), _cert_cns(request)))
    if isinstance(who, str):
        text = who.replace(
            "'authorization: Bearer TOKEN' metadata", "'Authorization: Bearer TOKEN'"
        )
        raise HttpError(401, f"UNAUTHENTICATED: {text}")
    CURRENT.set(who)
    return who


def require(
    auth: Authenticator | None, request: web.Request, perms: str, topic: str, channel: str = ""
) -> None:
    """403 unless the caller has one of ``perms`` (``"publish|subscribe"``) on
    ``topic`` (and ``channel``); "" for ``perms``: authentication only."""
    p = authenticate(auth, request)
    if p is None or not perms:
        return
    wanted = perms.split("|")
    if not any(p.allows(perm, topic, channel) for perm in wanted):
        raise HttpError(403, f"PERMISSION_DENIED: {p.denial(wanted[0], topic, channel)}")


class Listener:
    """An aiohttp application served on HOST:PORT (HTTPS with ``ssl_context``):
    ``await start(address)`` returns
    the bound HOST:PORT (port 0 picks one); ``await stop()`` lets requests under way
    finish for up to ``grace`` seconds."""

    def __init__(
        self,
        app: web.Application,
        *,
        what: str,
        grace: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.what = what
        self.grace = grace
        self.address = ""
        self._runner: web.AppRunner | None = None

    async def start(self, address: str) -> str:
        host, port = parse_hostport(address, what=self.what)
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=self.grace)
        await runner.setup()
        site = web.TCPSite(runner, host.strip("[]"), port, ssl_context=self.ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"cannot listen on {self.what} {address}: {exc}") from exc
        self._runner = runner
        server = getattr(site, "_server", None)
        bound = server.sockets[0].getsockname()[1] if server is not None else port
        shown = f"[{host}]" if ":" in host and not host.startswith("[") else host  # IPv6
        self.address = f"{shown}:{bound}"
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
