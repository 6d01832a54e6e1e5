"""Who may use the console when it runs with ``--auth-file`` (issue 14).

The console reads the same auth file as the brokers (``pairq.security.auth``:
principals with hashed tokens and publish / subscribe / admin patterns) and
applies it to its own users. The rules:

- Without ``--auth-file`` the console has no login: bind it to loopback (the
  default) or put it behind an authenticating proxy (see ``server.py``).
- With it, every page and ``/api/`` call needs a principal: a token in
  ``Authorization: Bearer TOKEN`` (scripts), or a session cookie made by
  ``POST /login`` with the token (browsers). ``/login``, ``/logout``,
  ``/static/`` and ``/metrics`` are open. Anonymous: pages redirect to
  ``/login``, the API answers 401. A token that is in no ``[[principal]]`` is
  anonymous (never a fallback identity); mTLS identities (``cert_cn``) cannot
  log in to the console, which speaks plain HTTP.
- Any principal may look. An action needs a permission on its target, checked
  before anything is sent to a broker: ``publish`` on the topic for a test
  publish; ``admin`` on the topic (``TOPIC``) or the channel (``TOPIC:CHANNEL``)
  for everything else, including peek and dead-letter listing, which show
  bodies. Refused: 403 with the principal, the permission and the target; the
  refusal is audit-logged like an action.
- Sessions live in this process only (a restart logs everyone out), expire
  after ``ttl`` seconds, at most ``limit`` at once (the oldest goes first).
  The cookie is ``HttpOnly`` and ``SameSite=Strict`` and holds only a random
  session id, never the token.

:class:`Sessions` is pure (time passed in); :func:`required` is the rule for
one verb.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass

from pairq.security.auth import ADMIN, PUBLISH, AuthTable, Principal, hash_token

__all__ = ["COOKIE", "Sessions", "from_token", "required"]

COOKIE = "pairq_session"


def from_token(table: AuthTable, token: str) -> Principal | None:
    """The principal whose ``token_sha256`` is the hash of ``token``; None if none."""
    token = token.strip()
    return table.by_token.get(hash_token(token)) if token else None


def required(verb: str, topic: str, channel: str) -> tuple[str, str, str]:
    """The (permission, topic, channel) an action needs (module docstring)."""
    if verb == "publish":
        return PUBLISH, topic, ""
    if verb.endswith("-topic") or verb == "tombstone":
        return ADMIN, topic, ""
    return ADMIN, topic, channel


@dataclass
class _Session:
    name: str
    expires: float


class Sessions:
    """Session ids → principal names, with expiry and a bound (module docstring)."""

    def __init__(self, ttl: float = 8 * 3600.0, limit: int = 10_000) -> None:
        if ttl <= 0 or limit < 1:
            raise ValueError("ttl must be > 0 and limit >= 1")
        self.ttl = ttl
        self.limit = limit
        self._by_id: OrderedDict[str, _Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, name: str, now: float) -> str:
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = _Session(name, now + self.ttl)
        while len(self._by_id) > self.limit:
            self._by_id.popitem(last=False)
        self.check_invariants()
        return sid

    def get(self, sid: str, now: float) -> str | None:
        """The principal's name for a live session id; an expired one is dropped."""
        s = self._by_id.get(sid)
        if s is None:
            return None
        if now >= s.expires:
            del self._by_id[sid]
            return None
        return s.name

    def drop(self, sid: str) -> None:
        self._by_id.pop(sid, None)

    def check_invariants(self) -> None:
        assert len(self._by_id) <= self.limit
