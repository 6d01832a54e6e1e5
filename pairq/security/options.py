"""``SecurityOptions``: the TLS and token settings every pairq server takes.

``BrokerOptions`` and ``LookupOptions`` inherit these fields, so both get the
same flags (``--tls-cert``, ``--tls-key``, ``--tls-ca``,
``--tls-require-client-cert``, ``--auth-file``), env vars and TOML keys.
The rules that relate them are in :meth:`SecurityOptions.check_security_rules`:
a certificate needs its key and the other way round, requiring client
certificates needs a certificate and a CA to check them with, and every named
file must load (``pairq.security.tls.check_files``, ``pairq.security.auth``),
so a bad file is refused at start-up, not at the first connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SecurityOptions"]

GROUP = "security (TLS, mTLS, tokens)"


def _s(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, "group": GROUP, **meta})


@dataclass(frozen=True)
class SecurityOptions:
    """TLS credentials and the token file of a server process (re-read on SIGHUP)."""

    tls_cert: str = _s(
        "",
        "PEM certificate chain this process presents (empty: plaintext); re-read on SIGHUP",
        metavar="FILE",
    )
    tls_key: str = _s("", "PEM private key of --tls-cert; re-read on SIGHUP", metavar="FILE")
    tls_ca: str = _s(
        "",
        "PEM CA bundle that signs the certificates of peers and clients (the partner, lookups, mTLS clients)",
        metavar="FILE",
    )
    tls_require_client_cert: bool = _s(
        False, "mTLS: refuse clients without a certificate signed by --tls-ca"
    )
    auth_file: str = _s(
        "",
        "TOML file of tokens (stored hashed) and their publish/subscribe/admin permissions per topic/channel pattern (empty: no authentication); re-read on SIGHUP",
        metavar="FILE",
    )

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def check_security_rules(self) -> list[str]:
        """The problems with these settings, one line each (empty: none)."""
        from pairq.security.auth import AuthTable
        from pairq.security.tls import check_files

        errors: list[str] = []
        if bool(self.tls_cert) != bool(self.tls_key):
            errors.append("--tls-cert and --tls-key go together")
        if self.tls_require_client_cert and not (self.tls_cert and self.tls_ca):
            errors.append("--tls-require-client-cert needs --tls-cert, --tls-key and --tls-ca")
        if self.tls_ca and not self.tls_cert:
            errors.append("--tls-ca needs --tls-cert and --tls-key (TLS on this process)")
        if not errors and self.tls_cert:
            try:
                check_files(self.tls_cert, self.tls_key, self.tls_ca)
            except ValueError as exc:
                errors.append(str(exc))
        if self.auth_file:
            try:
                AuthTable.load(self.auth_file)
            except ValueError as exc:
                errors.append(str(exc))
        return errors
