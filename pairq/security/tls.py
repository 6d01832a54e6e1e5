"""TLS credentials from PEM files, checked at start-up and re-read on SIGHUP.

The rules:

- ``check_files`` refuses, with a message naming the file: a certificate or key
  that does not parse, a key that does not belong to the certificate
  (mismatched), a certificate that has expired or is not yet valid, and a CA
  file with no certificate in it.
- ``TLSFiles`` holds the bytes of one process's certificate, key and CA.
  ``reload()`` re-reads and re-checks them; a set that fails the checks
  leaves the old one in force (logged). New connections use the new set:
  gRPC servers through ``grpc.dynamic_ssl_server_credentials`` (asked at each
  handshake), the pair's TCP link through the same ``ssl.SSLContext``
  objects re-loaded in place, gRPC clients at their next channel. Established
  connections (the pair's link among them) are not dropped.
- A server with a CA verifies client certificates against it when they are
  offered; ``require_client_cert`` (mTLS) refuses clients without one. The
  pair's TCP link always requires the partner's certificate when there is a CA.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

import grpc

__all__ = ["TLSFiles", "check_files", "describe_failure"]

log = logging.getLogger("pairq.security")


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {path}: {exc.strerror or exc}") from None


def check_files(cert: str, key: str, ca: str = "") -> tuple[bytes, bytes, bytes]:
    """The PEM bytes of ``cert``, ``key`` and ``ca``, after the checks above."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_b = _read(cert, "--tls-cert")
    key_b = _read(key, "--tls-key")
    ca_b = _read(ca, "--tls-ca") if ca else b""
    try:
        chain = x509.load_pem_x509_certificates(cert_b)
    except ValueError as exc:
        raise ValueError(f"--tls-cert {cert}: not a PEM certificate ({exc})") from None
    try:
        pkey = serialization.load_pem_private_key(key_b, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--tls-key {key}: not an unencrypted PEM private key ({exc})") from None
    leaf = chain[0]
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if leaf.public_key().public_bytes(enc, pub) != pkey.public_key().public_bytes(enc, pub):
        raise ValueError(f"--tls-key {key} does not belong to the certificate in --tls-cert {cert}")
    now = datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc < now:
        raise ValueError(
            f"--tls-cert {cert}: the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if leaf.not_valid_before_utc > now:
        raise ValueError(
            f"--tls-cert {cert}: the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if ca:
        try:
            x509.load_pem_x509_certificates(ca_b)
        except ValueError as exc:
            raise ValueError(f"--tls-ca {ca}: no PEM certificate in it ({exc})") from None
    return cert_b, key_b, ca_b


def describe_failure(details: str) -> str:
    """A clearer line for a TLS failure gRPC reported in ``details`` ("" if none)."""
    d = details.lower()
    if "certificate_verify_failed" in d or "certificate verify failed" in d:
        return (
            "TLS: the server's certificate is not trusted (not signed by --tls-ca, "
            "expired, or not issued for this host name)"
        )
    if "wrong_version_number" in d or "handshake failed" in d or "ssl" in d:
        return "TLS handshake failed (plaintext to a TLS server, TLS to a plaintext one, or a refused client certificate)"
    if "socket closed" in d:
        return "the server closed the connection at once (a TLS server reached without --tls-ca, or a refused client certificate?)"
    return ""


class TLSFiles:
    """One process's certificate, key and CA (see the module rules)."""

    def __init__(
        self, cert: str, key: str, ca: str = "", *, require_client_cert: bool = False
    ) -> None:
        self.paths = (cert, key, ca)
        self.require_client_cert = require_client_cert
        self.cert, self.key, self.ca = check_files(cert, key, ca)
        self._fresh = False  # reloaded since the gRPC server last asked
        self._contexts: list[tuple[ssl.SSLContext, bool]] = []

    def reload(self) -> bool:
        try:
            self.cert, self.key, self.ca = check_files(*self.paths)
        except ValueError as exc:
            log.error("TLS files not reloaded, the previous ones stay in force: %s", exc)
            return False
        self._fresh = True
        for ctx, _server in self._contexts:
            self._load(ctx)
        log.info("TLS certificate %s reloaded", self.paths[0])
        return True

    # -- gRPC
    def _config(self) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.cert)], root_certificates=self.ca or None
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        def fetch() -> Any:
            if not self._fresh:
                return None
            self._fresh = False
            return self._config()

        return grpc.dynamic_ssl_server_credentials(
            self._config(), fetch, require_client_authentication=self.require_client_cert
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials of this process as a client (the partner, the lookups)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca or None, private_key=self.key, certificate_chain=self.cert
        )

    # -- the pair's TCP link (asyncio + ssl)
    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if self.ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
        self._load(ctx)
        self._contexts.append((ctx, True))
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._load(ctx)
        if not self.ca:
            ctx.load_default_certs()
        self._contexts.append((ctx, False))
        return ctx

    def _load(self, ctx: ssl.SSLContext) -> None:
        # ssl wants files: write the in-memory PEMs to a private temporary dir.
        with tempfile.TemporaryDirectory(prefix="pairq-tls-") as d:
            c, k = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
            fd = os.open(k, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self.key)
            Path(c).write_bytes(self.cert)
            ctx.load_cert_chain(c, k)
        if self.ca:
            ctx.load_verify_locations(cadata=self.ca.decode())
