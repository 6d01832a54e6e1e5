"""``ServerSecurity``: what a pairq server (broker, lookup) does with its
``SecurityOptions``: a TLS or plaintext port, the auth interceptor, and
``reload()`` on SIGHUP (certificates and the auth file, without dropping
established connections)."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from pairq.security.auth import Authenticator, AuthInterceptor, Rule
from pairq.security.client import _TokenChannel
from pairq.security.options import SecurityOptions
from pairq.security.tls import TLSFiles

__all__ = ["ServerSecurity"]

log = logging.getLogger("pairq.security")


class ServerSecurity:
    def __init__(self, options: SecurityOptions, rules: dict[str, Rule | str]) -> None:
        self.tls = (
            TLSFiles(
                options.tls_cert,
                options.tls_key,
                options.tls_ca,
                require_client_cert=options.tls_require_client_cert,
            )
            if options.tls_cert
            else None
        )
        self.auth = Authenticator(options.auth_file) if options.auth_file else None
        self._rules = rules

    def interceptors(self) -> list[Any]:
        return [] if self.auth is None else [AuthInterceptor(self.auth, self._rules)]

    def add_port(self, server: Any, address: str) -> int:
        """Listen on ``address`` (TLS when configured); the bound port, 0 if it failed."""
        try:
            if self.tls is not None:
                return int(server.add_secure_port(address, self.tls.server_credentials()))
            return int(server.add_insecure_port(address))
        except RuntimeError:  # grpcio >= 1.60 raises instead of returning 0
            return 0

    def channel(self, address: str, options: Any, *, token: str = "") -> Any:
        """A channel from this server to another (the partner, a lookup), with this
        server's certificate when TLS is on and ``token`` as its bearer token."""
        if self.tls is not None:
            ch = grpc.aio.secure_channel(address, self.tls.channel_credentials(), options=options)
        else:
            ch = grpc.aio.insecure_channel(address, options=options)
        return _TokenChannel(ch, token) if token else ch

    def reload(self) -> None:
        """SIGHUP: re-read the certificates and the auth file."""
        if self.tls is not None:
            self.tls.reload()
        if self.auth is not None:
            self.auth.reload()
