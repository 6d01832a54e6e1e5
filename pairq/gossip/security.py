"""Packet and stream protection: cluster label, AES-GCM keyring, replay protection.

Wire envelope (every UDP packet and every TCP frame)::

    version (1 byte: 1 = plain, 2 = AES-GCM) | label length (1) | label
    plain:     body
    AES-GCM:   nonce (12) | AESGCM(key).encrypt(nonce, send_time_ms (8) + body, aad=header)

The header (version + label) is the associated data, so a packet of another
cluster (another label) fails authentication even with the same key, and the
label cannot be stripped. Decryption tries every installed key, primary first,
which is what makes rotation safe: install the new key everywhere, make it
primary everywhere, then remove the old one; at no step does a member drop
another's packets, so rotation causes no false suspicion.

Replay protection (encrypted mode only; without a key anyone can forge
anyway): the authenticated send time must be within ``replay_window`` of our
wall clock, and a nonce seen within the window is rejected. Clocks must agree
to within the window (default 60 s).
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pairq.gossip.errors import DecodeError, SecurityError

__all__ = ["Envelope", "Keyring", "KeyringError"]

PLAIN = 1
ENCRYPTED = 2
NONCE_SIZE = 12
TAG_SIZE = 16
_TS = struct.Struct(">Q")
MAX_REPLAY_ENTRIES = 500_000


class KeyringError(ValueError):
    """An illegal keyring operation by the caller (bad key size, removing the primary...)."""


class Keyring:
    """AES keys; the first (primary) encrypts, all decrypt. Mutated only via its methods."""

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        self._keys: list[bytes] = []
        self._ciphers: dict[bytes, AESGCM] = {}
        for k in keys:
            self.install(k)

    @staticmethod
    def _check(key: bytes) -> None:
        if len(key) not in (16, 24, 32):
            raise KeyringError(f"AES keys must be 16, 24 or 32 bytes, got {len(key)}")

    def install(self, key: bytes) -> None:
        """Add a key for decryption (the first key installed also becomes primary)."""
        self._check(key)
        if key not in self._ciphers:
            self._keys.append(key)
            self._ciphers[key] = AESGCM(key)

    def use(self, key: bytes) -> None:
        """Make an installed key the primary (encrypting) key."""
        if key not in self._ciphers:
            raise KeyringError("install a key before using it as primary")
        self._keys.remove(key)
        self._keys.insert(0, key)

    def remove(self, key: bytes) -> None:
        """Stop accepting a key; the primary cannot be removed."""
        if self._keys and self._keys[0] == key:
            raise KeyringError("cannot remove the primary key; use() another one first")
        if key in self._ciphers:
            self._keys.remove(key)
            del self._ciphers[key]

    @property
    def keys(self) -> list[bytes]:
        return list(self._keys)

    @property
    def primary(self) -> AESGCM | None:
        return self._ciphers[self._keys[0]] if self._keys else None

    def ciphers(self) -> list[AESGCM]:
        return [self._ciphers[k] for k in self._keys]

    def __bool__(self) -> bool:
        return bool(self._keys)


class Envelope:
    """Seals outgoing bytes and opens incoming ones for one member."""

    def __init__(
        self, keyring: Keyring | None, label: str = "", replay_window: float = 60.0
    ) -> None:
        self.keyring = keyring if keyring is not None else Keyring()
        raw = label.encode("utf-8")
        if len(raw) > 255:
            raise ValueError("label must be at most 255 bytes")
        self.label = raw
        self.replay_window = replay_window
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def _header(self, version: int) -> bytes:
        return bytes([version, len(self.label)]) + self.label

    def overhead(self) -> int:
        """Bytes added to every body (so the core can size packets)."""
        base = 2 + len(self.label)
        return base + (NONCE_SIZE + 8 + TAG_SIZE if self.keyring else 0)

    def seal(self, body: bytes, now: float) -> bytes:
        """Wrap ``body``; ``now`` is wall-clock seconds (time.time())."""
        cipher = self.keyring.primary
        if cipher is None:
            return self._header(PLAIN) + body
        header = self._header(ENCRYPTED)
        nonce = os.urandom(NONCE_SIZE)
        plaintext = _TS.pack(int(now * 1000)) + body
        return header + nonce + cipher.encrypt(nonce, plaintext, header)

    def open(self, data: bytes, now: float) -> bytes:
        """Unwrap a sealed packet; raises :class:`SecurityError`/:class:`DecodeError` otherwise."""
        data = bytes(data)
        if len(data) < 2:
            raise DecodeError("packet shorter than its envelope header", 0)
        version, label_len = data[0], data[1]
        if version not in (PLAIN, ENCRYPTED):
            raise DecodeError(f"unknown envelope version {version}", 0)
        if len(data) < 2 + label_len:
            raise DecodeError("truncated label", 1)
        label = data[2 : 2 + label_len]
        if label != self.label:
            raise SecurityError("cluster label mismatch", 2)
        header = data[: 2 + label_len]
        rest = data[2 + label_len :]
        if version == PLAIN:
            if self.keyring:
                raise SecurityError("plaintext packet but encryption is required", 0)
            return rest
        if not self.keyring:
            raise SecurityError("encrypted packet but no keyring is configured", 0)
        if len(rest) < NONCE_SIZE + TAG_SIZE + 8:
            raise DecodeError("encrypted packet too short", len(header))
        nonce, ciphertext = rest[:NONCE_SIZE], rest[NONCE_SIZE:]
        plaintext: bytes | None = None
        for cipher in self.keyring.ciphers():
            try:
                plaintext = cipher.decrypt(nonce, ciphertext, header)
                break
            except InvalidTag:
                continue
        if plaintext is None:
            raise SecurityError("no installed key authenticates this packet", len(header))
        sent = _TS.unpack(plaintext[:8])[0] / 1000.0
        if abs(now - sent) > self.replay_window:
            raise SecurityError(
                f"packet time is {now - sent:.1f}s off (replay window)", len(header)
            )
        self._expire(now)
        if nonce in self._seen:
            raise SecurityError("replayed packet", len(header))
        self._seen[nonce] = now + 2 * self.replay_window
        return plaintext[8:]

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            _, expiry = next(iter(seen.items()))
            if expiry > now and len(seen) < MAX_REPLAY_ENTRIES:
                break
            seen.popitem(last=False)
