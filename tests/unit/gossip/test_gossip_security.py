from __future__ import annotations

import pytest

from pairq.gossip.errors import DecodeError, SecurityError
from pairq.gossip.fuzz import run_fuzz
from pairq.gossip.security import Envelope, Keyring, KeyringError

K1, K2, K3 = bytes(16), bytes(range(24)), bytes(range(32))
NOW = 1_800_000_000.0


def test_plain_roundtrip_and_label_checked() -> None:
    a, b = Envelope(None, "prod"), Envelope(None, "prod")
    assert b.open(a.seal(b"hello", NOW), NOW) == b"hello"
    with pytest.raises(SecurityError, match="label"):
        Envelope(None, "staging").open(a.seal(b"x", NOW), NOW)


def test_encrypted_roundtrip_and_plaintext_refused() -> None:
    a, b = Envelope(Keyring([K1]), "c"), Envelope(Keyring([K1]), "c")
    sealed = a.seal(b"secret", NOW)
    assert b"secret" not in sealed
    assert b.open(sealed, NOW) == b"secret"
    with pytest.raises(SecurityError, match="plaintext"):
        b.open(Envelope(None, "c").seal(b"x", NOW), NOW)
    with pytest.raises(SecurityError, match="no keyring"):
        Envelope(None, "c").open(sealed, NOW)


def test_label_is_authenticated_even_if_rewritten() -> None:
    a = Envelope(Keyring([K1]), "aa")
    sealed = bytearray(a.seal(b"x", NOW))
    sealed[2:4] = b"bb"
    with pytest.raises(SecurityError):
        Envelope(Keyring([K1]), "bb").open(bytes(sealed), NOW)


def test_tampering_and_wrong_key_rejected() -> None:
    a, b = Envelope(Keyring([K1]), ""), Envelope(Keyring([K2]), "")
    sealed = a.seal(b"payload", NOW)
    with pytest.raises(SecurityError, match="no installed key"):
        b.open(sealed, NOW)
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(SecurityError):
        Envelope(Keyring([K1]), "").open(bytes(flipped), NOW)


def test_replay_and_stale_packets_rejected() -> None:
    a, b = Envelope(Keyring([K1]), ""), Envelope(Keyring([K1]), "", replay_window=30)
    sealed = a.seal(b"once", NOW)
    assert b.open(sealed, NOW) == b"once"
    with pytest.raises(SecurityError, match="replayed"):
        b.open(sealed, NOW + 1)
    with pytest.raises(SecurityError, match="replay window"):
        b.open(a.seal(b"old", NOW - 31), NOW)


def test_rotation_every_step_interoperates() -> None:
    ring_a, ring_b = Keyring([K1]), Keyring([K1])
    a, b = Envelope(ring_a, ""), Envelope(ring_b, "")
    t = NOW
    ring_a.install(K3)
    ring_b.install(K3)
    ring_a.use(K3)  # a already on the new key, b not yet
    t += 1
    assert b.open(a.seal(b"1", t), t) == b"1" and a.open(b.seal(b"2", t), t) == b"2"
    ring_b.use(K3)
    ring_a.remove(K1)
    ring_b.remove(K1)
    t += 1
    assert b.open(a.seal(b"3", t), t) == b"3"
    assert ring_a.keys == [K3]


def test_keyring_misuse_is_a_caller_error() -> None:
    ring = Keyring([K1])
    with pytest.raises(KeyringError):
        ring.install(b"short")
    with pytest.raises(KeyringError):
        ring.use(K2)
    with pytest.raises(KeyringError):
        ring.remove(K1)


@pytest.mark.parametrize(
    "data", [b"", b"\x02", b"\x09\x00", b"\x02\x05ab", b"\x02\x00" + bytes(20)]
)
def test_malformed_envelopes_are_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Envelope(Keyring([K1]), "").open(data, NOW)


@pytest.mark.slow
def test_fuzz_one_million() -> None:
    """The full acceptance run (opt-in: pytest -m slow); also `python -m pairq.gossip.fuzz`."""
    stats = run_fuzz(1_000_000, seed=99)
    assert stats["accepted"] + stats["rejected"] == 1_000_000
