"""The pair's challenge-response: both brokers prove they hold the pair secret.

Pure functions (no I/O). The rules:

- The secrets come from ``--pair-secret-file`` (``load_secret``): one per
  non-empty line, surrounding whitespace stripped, each at least
  ``MIN_SECRET_BYTES`` long. The first proves (``PairSecret.current``); a proof
  made with any of them is accepted (``PairSecret.accepted``), so a pair rotates
  its secret without a moment in which its brokers refuse each other: both get
  ``OLD`` then ``NEW``, then ``NEW`` then ``OLD``, then ``NEW`` alone, a broker at
  a time. A secret is never sent; only HMAC-SHA256 proofs over fresh nonces are.
- Each side contributes a fresh ``NONCE_BYTES`` random nonce per session
  (``new_nonce``): the sender ``Ns`` in its hello, the receiver ``Nr`` in its
  challenge. A proof covers both, so a recorded proof is worthless in any
  other session, and a role label, so one side's proof is never valid as the
  other's (no reflection).
- Transcripts (``proof``): ``ROLE \\0 pair \\0 node_id \\0 Ns Nr`` with ROLE
  ``receiver`` (the receiver's answer to a hello) or ``sender`` (the sender's
  answer to the challenge), and ``link \\0 pair \\0 token \\0 Nl`` for the TCP
  link, where ``Nl`` is the receiver's nonce for that connection and ``token``
  the one-time session token the welcome gave.
- ``ReplicationService.Repair`` is one unary call, so it has no challenge: the
  asker sends ``pairq-pair-proof: TS_MS.HEX`` metadata, the proof of
  ``repair \0 pair \0 TS_MS \0 sha256(request)`` (``repair_proof``),
  and the answerer accepts it within ``REPAIR_WINDOW_MS`` of its own clock
  (``check_repair``). A replay inside the window only reads the same records
  again (Repair changes nothing); the request hash binds the proof to its seqs.
- ``verify`` compares in constant time, and refuses a proof of the wrong length
  or made with an empty nonce.

``proto/pairq/v1/replication.proto`` describes the message flow.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LINK",
    "MIN_SECRET_BYTES",
    "NONCE_BYTES",
    "PROOF_BYTES",
    "RECEIVER",
    "REPAIR",
    "REPAIR_METADATA",
    "REPAIR_WINDOW_MS",
    "SENDER",
    "PairSecret",
    "check_repair",
    "load_secret",
    "new_nonce",
    "proof",
    "repair_proof",
    "verify",
]

NONCE_BYTES = 32
PROOF_BYTES = 32
MIN_SECRET_BYTES = 16
SENDER = "sender"
RECEIVER = "receiver"
LINK = "link"
REPAIR = "repair"
REPAIR_METADATA = "pairq-pair-proof"
# How far the asker's clock (in the proof) may be from the answerer's.
REPAIR_WINDOW_MS = 120_000


@dataclass(frozen=True)
class PairSecret:
    """The pair's secrets: ``current`` proves, any of ``accepted`` (``current``
    first) verifies."""

    current: bytes
    accepted: tuple[bytes, ...]

    @classmethod
    def of(cls, *secrets: bytes) -> PairSecret:
        return cls(secrets[0], tuple(secrets))


def load_secret(path: str) -> PairSecret:
    """The pair secrets in ``path``; ``ValueError`` saying what is wrong with them."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"--pair-secret-file {path}: {exc.strerror or exc}") from None
    secrets = [line.strip() for line in data.splitlines() if line.strip()]
    if not secrets:
        raise ValueError(
            f"--pair-secret-file {path}: the file holds no secret (at least "
            f"{MIN_SECRET_BYTES} bytes are needed, e.g. `head -c 32 /dev/urandom | base64`)"
        )
    for n, secret in enumerate(secrets, 1):
        if len(secret) < MIN_SECRET_BYTES:
            which = (
                "the secret" if len(secrets) == 1 else f"secret {n} (line {n} of those not empty)"
            )
            raise ValueError(
                f"--pair-secret-file {path}: {which} is {len(secret)} bytes, at least "
                f"{MIN_SECRET_BYTES} are needed (e.g. `head -c 32 /dev/urandom | base64`)"
            )
    return PairSecret.of(*secrets)


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def proof(secret: bytes, role: str, pair: str, ident: bytes | str, *nonces: bytes) -> bytes:
    """HMAC-SHA256 over ``role \\0 pair \\0 ident \\0 nonces...``."""
    ident_b = ident.encode() if isinstance(ident, str) else ident
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    mac.update(b"pairq-pair-v1\0" + role.encode() + b"\0" + pair.encode() + b"\0")
    mac.update(ident_b + b"\0")
    for n in nonces:
        mac.update(n)
    return mac.digest()


def verify(
    secret: PairSecret, got: bytes, role: str, pair: str, ident: bytes | str, *nonces: bytes
) -> bool:
    """Whether ``got`` is the proof for this transcript with one of the accepted
    secrets (constant-time: every one is compared)."""
    if len(got) != PROOF_BYTES or any(len(n) != NONCE_BYTES for n in nonces):
        return False
    good = False
    for key in secret.accepted:
        good |= hmac.compare_digest(got, proof(key, role, pair, ident, *nonces))
    return good


def repair_proof(secret: bytes, pair: str, ts_ms: int, request: bytes) -> str:
    """The ``pairq-pair-proof`` metadata value for a Repair request's bytes."""
    digest = hashlib.sha256(request).digest()
    mac = proof(secret, REPAIR, pair, str(ts_ms), digest)
    return f"{ts_ms}.{mac.hex()}"


def check_repair(secret: PairSecret, pair: str, value: str, request: bytes, now_ms: int) -> str:
    """Why a Repair's proof is refused ("" when it is good)."""
    ts, sep, mac_hex = value.partition(".")
    if not sep or not ts.isdigit():
        return "no pairq-pair-proof metadata (TS_MS.HEX) on the Repair call"
    if abs(now_ms - int(ts)) > REPAIR_WINDOW_MS:
        return (
            f"the Repair proof's time is {abs(now_ms - int(ts)) // 1000} s from this clock "
            f"(at most {REPAIR_WINDOW_MS // 1000} s: are both hosts' clocks synchronised?)"
        )
    try:
        got = bytes.fromhex(mac_hex)
    except ValueError:
        return "the Repair proof is not hex"
    digest = hashlib.sha256(request).digest()
    if not verify(secret, got, REPAIR, pair, ts, digest):
        return "the Repair proof does not match (not made with this pair's secret)"
    return ""
