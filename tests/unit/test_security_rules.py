"""The pure security rules: the pair's proofs, permission patterns, the auth file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pairq.security import pairauth as pa
from pairq.security.auth import AuthTable, Principal, hash_token


def test_a_proof_holds_only_for_its_secret_role_pair_ident_and_nonces() -> None:
    key, ns, nr = os.urandom(32), pa.new_nonce(), pa.new_nonce()
    s = pa.PairSecret.of(key)
    good = pa.proof(key, pa.SENDER, "p1", "node", ns, nr)
    assert pa.verify(s, good, pa.SENDER, "p1", "node", ns, nr)
    assert not pa.verify(pa.PairSecret.of(os.urandom(32)), good, pa.SENDER, "p1", "node", ns, nr)
    assert not pa.verify(s, good, pa.RECEIVER, "p1", "node", ns, nr)  # no reflection
    assert not pa.verify(s, good, pa.SENDER, "p2", "node", ns, nr)
    assert not pa.verify(s, good, pa.SENDER, "p1", "other", ns, nr)
    assert not pa.verify(s, good, pa.SENDER, "p1", "node", pa.new_nonce(), nr)  # no replay
    assert not pa.verify(s, good[:-1], pa.SENDER, "p1", "node", ns, nr)
    assert not pa.verify(s, pa.proof(key, pa.LINK, "p1", "t", b""), pa.LINK, "p1", "t", b"")


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("  short \n")
    with pytest.raises(ValueError, match="at least 16"):
        pa.load_secret(str(tmp_path / "s"))
    (tmp_path / "s").write_text("x" * 16 + "\n")
    assert pa.load_secret(str(tmp_path / "s")) == pa.PairSecret(b"x" * 16, (b"x" * 16,))
    (tmp_path / "s").write_text("\n")
    with pytest.raises(ValueError, match="holds no secret"):
        pa.load_secret(str(tmp_path / "s"))
    (tmp_path / "s").write_text("n" * 16 + "\n" + "short\n")
    with pytest.raises(ValueError, match=r"secret 2 .* is 5 bytes"):
        pa.load_secret(str(tmp_path / "s"))


def test_rotation_every_step_proves_to_the_other_side() -> None:
    """The rotation of pairauth's docstring: OLD alone, (OLD, NEW), (NEW, OLD), NEW
    alone, a broker at a time: at each step the two brokers' files differ by one step
    at most, and each side's proof verifies on the other."""
    old, new = b"o" * 32, b"n" * 32
    steps = [(old,), (old, new), (new, old), (new,)]
    ns, nr = pa.new_nonce(), pa.new_nonce()
    for i in range(len(steps) - 1):
        for a, b in ((steps[i], steps[i + 1]), (steps[i + 1], steps[i])):
            sa, sb = pa.PairSecret.of(*a), pa.PairSecret.of(*b)
            assert pa.verify(
                sb, pa.proof(sa.current, pa.SENDER, "p", "n", ns, nr), pa.SENDER, "p", "n", ns, nr
            )
            assert pa.verify(
                sa,
                pa.proof(sb.current, pa.RECEIVER, "p", "n", ns, nr),
                pa.RECEIVER,
                "p",
                "n",
                ns,
                nr,
            )
    # Two steps apart (a broker skipped one) they refuse each other.
    assert not pa.verify(
        pa.PairSecret.of(new),
        pa.proof(old, pa.SENDER, "p", "n", ns, nr),
        pa.SENDER,
        "p",
        "n",
        ns,
        nr,
    )


def test_patterns_match_topics_and_channels() -> None:
    p = Principal(
        name="n",
        token_sha256="0" * 64,
        publish=("orders", "audit.*"),
        subscribe=("orders:billing", "logs"),
        admin=("*",),
    )
    assert p.allows("publish", "orders") and p.allows("publish", "audit.eu")
    assert not p.allows("publish", "orders2") and not p.allows("publish", "audit")
    assert p.allows("subscribe", "orders", "billing") and not p.allows("subscribe", "orders", "x")
    assert p.allows("subscribe", "logs", "anything")
    assert p.allows("admin", "") and not Principal("m", admin=("o*",)).allows("admin", "")
    assert "'n' lacks publish permission on topic 'x'" in p.denial("publish", "x")


def test_the_auth_file_stores_hashes_and_refuses_mistakes(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text(
        f'[[principal]]\nname = "a"\ntoken_sha256 = "{hash_token("t1")}"\npublish = ["x"]\n'
        '[[principal]]\nname = "b"\ncert_cn = "b.example"\nadmin = ["*"]\n'
    )
    t = AuthTable.load(str(f))
    assert t.by_token[hash_token("t1")].name == "a" and t.by_cn["b.example"].name == "b"
    bad = {
        'name = "a"\ntoken_sha256 = "t1"\n': "64 hex digits",
        'name = "a"\n': "exactly one of",
        'name = "a"\ncert_cn = "c"\npublish = "x"\n': "list of patterns",
        'name = "a"\ncert_cn = "c"\nwrite = ["x"]\n': "unknown key",
    }
    for body, words in bad.items():
        f.write_text("[[principal]]\n" + body)
        with pytest.raises(ValueError, match=words):
            AuthTable.load(str(f))


def test_a_channel_permission_lets_its_consumer_find_the_topic() -> None:
    """auth.py: subscribe on ``t:c`` allows lookups of ``t`` (a consumer must find the
    brokers of its topic); it was denied because the lookup checked channel ""."""
    from pairq.security.auth import ANY_CHANNEL, LOOKUP_RULES, Principal, _denied
    from pairq.v1 import lookup_pb2 as lpb

    p = Principal(name="billing", subscribe=("orders:billing",))
    for method in ("LookupTopic", "ListChannels"):
        rule = LOOKUP_RULES[f"/pairq.v1.LookupService/{method}"]
        assert callable(rule)
        req = getattr(lpb, f"{method}Request")(topic="orders")
        assert _denied(p, rule(req)) is None
        assert _denied(p, rule(getattr(lpb, f"{method}Request")(topic="audit"))) is not None
    assert not p.allows("subscribe", "orders", "other")  # a channel is still a channel
    assert p.allows("subscribe", "orders", ANY_CHANNEL)
