"""pairq.admin.login's pure parts: sessions (expiry, bound, drop) and the permission
each console action needs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pairq.admin.cluster import VERBS
from pairq.admin.login import Sessions, from_token, required
from pairq.security.auth import AuthTable, Principal, hash_token


def test_sessions_expire_and_are_dropped() -> None:
    s = Sessions(ttl=10.0, limit=3)
    sid = s.create("alice", now=100.0)
    assert s.get(sid, 109.9) == "alice"
    assert s.get(sid, 110.0) is None  # expired: gone for good
    assert s.get(sid, 100.0) is None
    sid = s.create("bob", now=0.0)
    s.drop(sid)
    assert s.get(sid, 1.0) is None
    assert s.get("not-a-session", 0.0) is None
    with pytest.raises(ValueError):
        Sessions(ttl=0)


@given(st.lists(st.sampled_from("abc"), min_size=1, max_size=40))
def test_sessions_are_bounded_and_the_oldest_go_first(names: list[str]) -> None:
    s = Sessions(ttl=1e9, limit=5)
    sids = [s.create(n, now=float(i)) for i, n in enumerate(names)]
    s.check_invariants()
    assert len(s) == min(5, len(names))
    for i, (sid, n) in enumerate(zip(sids, names, strict=True)):
        alive = i >= len(names) - 5
        assert s.get(sid, float(len(names))) == (n if alive else None)
    assert len(set(sids)) == len(sids)


def test_every_verb_needs_a_permission_on_its_target() -> None:
    for verb in VERBS:
        perm, topic, channel = required(verb, "t", "c")
        assert perm in ("admin", "publish") and topic == "t"
        if verb.endswith("-channel") or verb in ("redrive", "purge", "peek", "dead-letters"):
            assert channel == "c"
        else:
            assert channel == ""
    assert required("publish", "t", "c") == ("publish", "t", "")
    # A channel admin may act on its channel only; a topic admin on every channel.
    chan_admin = Principal(name="x", admin=("t:c",))
    assert chan_admin.allows(*required("pause-channel", "t", "c"))
    assert not chan_admin.allows(*required("pause-channel", "t", "d"))
    assert not chan_admin.allows(*required("delete-topic", "t", "c"))


def test_from_token_matches_the_hash_only() -> None:
    p = Principal(name="ops", token_sha256=hash_token("secret"))
    table = AuthTable(by_token={p.token_sha256: p})
    assert from_token(table, "secret") is p
    assert from_token(table, " secret ") is p
    assert from_token(table, "Secret") is None
    assert from_token(table, "") is None
    assert from_token(table, p.token_sha256) is None  # the hash is not the token
