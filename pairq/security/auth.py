"""Bearer tokens and mTLS identities, their permissions, and the gRPC server
interceptor that enforces them (``--auth-file``).

The auth file (TOML, one ``[[principal]]`` table each)::

    [[principal]]
    name = "orders-app"
    token_sha256 = "9f86d0...e3"          # sha256 hex of the token; the token itself is never stored
    publish = ["orders", "orders.*"]      # topic patterns
    subscribe = ["orders:billing"]        # TOPIC[:CHANNEL] patterns (no channel: any)
    admin = []                            # TOPIC[:CHANNEL]; "*" also covers broker-wide actions

    [[principal]]
    name = "ops"
    cert_cn = "ops.example.com"           # an mTLS client certificate's common name
    admin = ["*"]

The rules:

- A caller is identified by ``authorization: Bearer TOKEN`` metadata (the
  sha256 of TOKEN must be some principal's ``token_sha256``) or, without a
  token, by the common name of its verified mTLS client certificate
  (``cert_cn``). Neither: ``UNAUTHENTICATED``. A token that matches nothing is
  ``UNAUTHENTICATED`` too, never the anonymous fallback.
- Patterns are shell-style (``fnmatch``: ``*``, ``?``, ``[..]``), matched
  case-sensitively against the whole name; ``TOPIC:CHANNEL`` matches a
  channel, a bare ``TOPIC`` every channel of the topics it matches. An
  action on no topic (stats of the whole broker, a lookup registration)
  matches only patterns that match the empty name, such as ``*``.
- ``publish`` allows publishing to a topic; ``subscribe`` allows Subscribe on a
  channel (and lookups of its topic); ``admin`` allows the admin verbs (create,
  delete, empty, pause a topic or channel, dead letters, stats). No
  permission implies another.
- Missing permission: ``PERMISSION_DENIED`` naming the principal, the
  permission and the topic/channel. Health checks need nothing; the pair's
  ``Replicate`` and ``Repair`` are authenticated by the pair secret instead
  (``pairq.security.pairauth``).
- ``Authenticator.reload()`` (SIGHUP) reads the file again; a file that does
  not load leaves the previous table in force and is logged.

Tokens should be random (``python -m pairq.security.auth`` makes one and its
line for the file): a sha256 of a guessable token is no protection.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import hashlib
import inspect
import logging
import secrets
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from pairq.errors import PairqError
from pairq.v1 import broker_pb2 as pb

__all__ = [
    "ADMIN",
    "ANY_CHANNEL",
    "PUBLISH",
    "SUBSCRIBE",
    "AuthInterceptor",
    "AuthTable",
    "Authenticator",
    "Principal",
    "check_publish",
    "hash_token",
]

log = logging.getLogger("pairq.security")

PUBLISH = "publish"
SUBSCRIBE = "subscribe"
ADMIN = "admin"
_PERMS = (PUBLISH, SUBSCRIBE, ADMIN)

# The principal of the RPC being served (None: authentication is off).
CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "pairq_principal", default=None
)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# The channel of an action on a topic as a whole that any channel permission covers
# (looking up where a topic is: a consumer allowed ``t:c`` may find ``t``); never a
# channel name (names have no NUL).
ANY_CHANNEL = "\x00"


def _matches(patterns: tuple[str, ...], topic: str, channel: str) -> bool:
    for p in patterns:
        tp, _, cp = p.partition(":")
        if fnmatch.fnmatchcase(topic, tp) and (
            not cp or channel == ANY_CHANNEL or fnmatch.fnmatchcase(channel, cp)
        ):
            return True
    return False


@dataclass(frozen=True)
class Principal:
    """Who a caller is and what it may do."""

    name: str
    token_sha256: str = ""
    cert_cn: str = ""
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()

    def allows(self, perm: str, topic: str, channel: str = "") -> bool:
        return _matches(getattr(self, perm), topic, channel)

    def denial(self, perm: str, topic: str, channel: str = "") -> str:
        """The PERMISSION_DENIED message for a missing permission."""
        what = (
            f"topic {topic[:80]!r}"
            + (f" channel {channel[:80]!r}" if channel and channel != ANY_CHANNEL else "")
            if topic
            else "this broker-wide action (needs the pattern '*')"
        )
        have = ", ".join(getattr(self, perm)) or "none"
        return f"{self.name!r} lacks {perm} permission on {what} (its {perm} patterns: {have})"


@dataclass
class AuthTable:
    """The principals of one auth file."""

    by_token: dict[str, Principal] = field(default_factory=dict)
    by_cn: dict[str, Principal] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str) -> AuthTable:
        """Read and check ``path``; ``ValueError`` naming the file and the problem."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ValueError(f"--auth-file {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"--auth-file {path}: not TOML: {exc}") from None
        unknown = set(data) - {"principal"}
        if unknown:
            raise ValueError(
                f"--auth-file {path}: unknown key(s) {sorted(unknown)}; expected [[principal]] tables"
            )
        table = cls()
        for i, entry in enumerate(data.get("principal", [])):
            where = f"--auth-file {path}: principal #{i + 1}"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: must be a table")
            bad = set(entry) - {"name", "token_sha256", "cert_cn", *_PERMS}
            if bad:
                raise ValueError(f"{where}: unknown key(s) {sorted(bad)}")
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"{where}: needs a name")
            perms: dict[str, tuple[str, ...]] = {}
            for perm in _PERMS:
                v = entry.get(perm, [])
                if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
                    raise ValueError(f"{where} ({name}): {perm} must be a list of patterns")
                perms[perm] = tuple(v)
            digest = str(entry.get("token_sha256", "")).lower()
            cn = str(entry.get("cert_cn", ""))
            if bool(digest) == bool(cn):
                raise ValueError(f"{where} ({name}): needs exactly one of token_sha256, cert_cn")
            if digest and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
                raise ValueError(
                    f"{where} ({name}): token_sha256 must be 64 hex digits (the sha256 of the token, not the token)"
                )
            p = Principal(name=name, token_sha256=digest, cert_cn=cn, **perms)
            index = table.by_token if digest else table.by_cn
            key = digest or cn
            if key in index:
                raise ValueError(
                    f"{where} ({name}): the same token or cert_cn as {index[key].name!r}"
                )
            index[key] = p
        return table


class Authenticator:
    """The auth file in force (``reload`` on SIGHUP) and who a call's caller is."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.table = AuthTable.load(path)

    def reload(self) -> bool:
        """Read the file again; on an error keep the old table (logged). True: reloaded."""
        try:
            self.table = AuthTable.load(self.path)
        except ValueError as exc:
            log.error("auth file not reloaded, the previous one stays in force: %s", exc)
            return False
        log.info(
            "auth file %s reloaded: %d principal(s)",
            self.path,
            len(self.table.by_token) + len(self.table.by_cn),
        )
        return True

    def identify(self, context: Any) -> Principal | str:
        """The caller's principal, or the UNAUTHENTICATED message."""
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                v = value.decode() if isinstance(value, bytes) else str(value)
                scheme, _, token = v.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    return "the authorization metadata must be 'Bearer TOKEN'"
                token = token.strip()
                break
        if token:
            p = self.table.by_token.get(hash_token(token))
            return (
                p
                if p is not None
                else "the token is not in this server's --auth-file (mistyped or revoked?)"
            )
        with contextlib.suppress(Exception):  # no TLS: no auth context
            cns = context.auth_context().get("x509_common_name") or []
            for cn in cns:
                p = self.table.by_cn.get(cn.decode() if isinstance(cn, bytes) else cn)
                if p is not None:
                    return p
        return (
            "this server requires authentication: send 'authorization: Bearer TOKEN' metadata "
            "(token= on Producer/Consumer, --token on pairq commands) or an mTLS certificate listed in its --auth-file"
        )


def check_publish(topic: str) -> None:
    """Raise PERMISSION_DENIED unless the RPC's caller may publish to ``topic``
    (nothing to check when authentication is off). Called where every publish
    enters the broker, so a batch on a PublishStream gets its own answer."""
    p = CURRENT.get()
    if p is not None and not p.allows(PUBLISH, topic):
        raise PairqError(p.denial(PUBLISH, topic), code=pb.ERROR_CODE_PERMISSION_DENIED)


# A rule: (request) -> (permission, topic, channel) to check, or None: authentication only.
Rule = Callable[[Any], "tuple[str, str, str] | None"]
OPEN = "open"  # no authentication at all


def _topic(perm: str) -> Rule:
    return lambda r: (perm, r.topic, "")


def _channel(perm: str) -> Rule:
    return lambda r: (perm, r.topic, r.channel)


def _authenticated(_: Any) -> None:
    return None


BROKER_RULES: dict[str, Rule | str] = {
    **{
        f"/pairq.v1.BrokerService/{m}": _authenticated
        for m in ("Publish", "PublishBatch", "PublishStream")
    },
    **{
        f"/pairq.v1.BrokerService/{m}": _topic(ADMIN)
        for m in (
            "CreateTopic",
            "DeleteTopic",
            "EmptyTopic",
            "PauseTopic",
            "UnpauseTopic",
            "GetStats",
        )
    },
    **{
        f"/pairq.v1.BrokerService/{m}": _channel(ADMIN)
        for m in (
            "CreateChannel",
            "DeleteChannel",
            "EmptyChannel",
            "PauseChannel",
            "UnpauseChannel",
            "ListDeadLetters",
            "ReplayDeadLetters",
        )
    },
    "/pairq.v1.BrokerService/Scrub": lambda r: (ADMIN, "", ""),
    "/pairq.v1.ReplicationService/Replicate": OPEN,  # the pair secret's business
    "/pairq.v1.ReplicationService/Repair": OPEN,  # likewise (a proof in its metadata)
    "/grpc.health.v1.Health/Check": OPEN,
    "/grpc.health.v1.Health/Watch": OPEN,
}

LOOKUP_RULES: dict[str, Rule | str] = {
    "/pairq.v1.LookupService/Register": lambda r: (ADMIN, "", ""),
    "/pairq.v1.LookupService/LookupTopic": lambda r: ("publish|subscribe", r.topic, ANY_CHANNEL),
    "/pairq.v1.LookupService/ListTopics": _authenticated,
    "/pairq.v1.LookupService/ListChannels": lambda r: ("publish|subscribe", r.topic, ANY_CHANNEL),
    "/pairq.v1.LookupService/ListNodes": _authenticated,
    "/pairq.v1.LookupService/CreateTopicRegistration": _topic(ADMIN),
    "/pairq.v1.LookupService/DeleteTopicRegistration": _topic(ADMIN),
    "/pairq.v1.LookupService/CreateChannelRegistration": _channel(ADMIN),
    "/pairq.v1.LookupService/DeleteChannelRegistration": _channel(ADMIN),
    "/pairq.v1.LookupService/TombstoneTopic": _topic(ADMIN),
    "/grpc.health.v1.Health/Check": OPEN,
    "/grpc.health.v1.Health/Watch": OPEN,
}


def _denied(p: Principal, need: tuple[str, str, str]) -> str | None:
    perm, topic, channel = need
    perms = perm.split("|")
    if any(p.allows(x, topic, channel) for x in perms):
        return None
    return (
        p.denial(perms[0], topic, channel)
        if len(perms) == 1
        else (f"{p.name!r} lacks {' or '.join(perms)} permission on topic {topic[:80]!r}")
    )


class _CheckedContext:
    """A servicer context whose first ``read()`` is checked (Subscribe: its identify)."""

    def __init__(self, context: Any, check: Callable[[Any], str | None]) -> None:
        self._ctx = context
        self._check: Callable[[Any], str | None] | None = check

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    async def read(self) -> Any:
        msg = await self._ctx.read()
        check, self._check = self._check, None
        if check is not None and msg is not grpc.aio.EOF:
            problem = check(msg)
            if problem:
                await PairqError(problem, code=pb.ERROR_CODE_PERMISSION_DENIED).abort(self._ctx)
        return msg


def _subscribe_check(p: Principal) -> Callable[[Any], str | None]:
    def check(msg: Any) -> str | None:
        if msg.WhichOneof("command") != "identify":
            return None  # the service refuses it itself
        i = msg.identify
        return _denied(p, (SUBSCRIBE, i.topic, i.channel))

    return check


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Enforces an ``Authenticator``'s table on every RPC of a server (``rules``:
    full method name -> what it needs; a method not listed needs authentication)."""

    def __init__(self, auth: Authenticator, rules: dict[str, Rule | str]) -> None:
        self.auth = auth
        self.rules = rules

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        rule = self.rules.get(details.method, _authenticated)
        if handler is None or rule == OPEN:
            return handler
        assert not isinstance(rule, str)
        auth = self.auth
        subscribe = details.method == "/pairq.v1.BrokerService/Subscribe"

        async def who(context: Any, stream: bool = False) -> Principal:
            p = auth.identify(context)
            if isinstance(p, str):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, p)
            assert isinstance(p, Principal)
            if stream and rule is not _authenticated:
                # A stream's rule names no request field (Register: admin on '*').
                need = rule(None)
                problem = _denied(p, need) if need is not None else None
                if problem:
                    await PairqError(problem, code=pb.ERROR_CODE_PERMISSION_DENIED).abort(context)
            return p

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                p = await who(context)
                need = rule(request)
                problem = _denied(p, need) if need is not None else None
                if problem:
                    await PairqError(problem, code=pb.ERROR_CODE_PERMISSION_DENIED).abort(context)
                CURRENT.set(p)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            inner_s = handler.stream_stream
            if inspect.isasyncgenfunction(inner_s):

                async def stream_gen(request_iterator: Any, context: Any) -> Any:
                    p = await who(context, stream=True)
                    ctx = _CheckedContext(context, _subscribe_check(p)) if subscribe else context
                    CURRENT.set(p)
                    async for item in inner_s(request_iterator, ctx):
                        yield item

                behavior: Any = stream_gen
            else:

                async def stream_co(request_iterator: Any, context: Any) -> Any:
                    p = await who(context, stream=True)
                    ctx = _CheckedContext(context, _subscribe_check(p)) if subscribe else context
                    CURRENT.set(p)
                    return await inner_s(request_iterator, ctx)

                behavior = stream_co
            return grpc.stream_stream_rpc_method_handler(
                behavior,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> Any:
                await who(context)
                async for item in inner_us(request, context):
                    yield item

            if not inspect.isasyncgenfunction(inner_us):

                async def unary_stream_co(request: Any, context: Any) -> Any:
                    await who(context)
                    return await inner_us(request, context)

                return grpc.unary_stream_rpc_method_handler(
                    unary_stream_co,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # stream-unary: pairq serves none


def main() -> None:
    """``python -m pairq.security.auth [NAME]``: a new random token and its auth-file entry."""
    import sys

    name = sys.argv[1] if len(sys.argv) > 1 else "client"
    token = secrets.token_urlsafe(32)
    print(f"# token (give it to the client; it is not stored anywhere): {token}")
    print("[[principal]]")
    print(f'name = "{name}"')
    print(f'token_sha256 = "{hash_token(token)}"')
    print("publish = []\nsubscribe = []\nadmin = []")


if __name__ == "__main__":
    main()
