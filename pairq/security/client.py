"""``ClientSecurity``: a client's token and TLS files (``token=``, ``tls_cert=``,
``tls_key=``, ``tls_ca=`` on Producer and Consumer, ``--token`` / ``--tls-*`` on
client commands), and the gRPC channels made with them.

The rules: TLS is on when ``tls_ca`` or ``tls_cert`` is given (``tls_ca``: the
CA that signed the servers' certificates; without it the system's roots);
``tls_cert`` with ``tls_key`` is the client certificate for mTLS. The token
goes as ``authorization: Bearer TOKEN`` metadata on every call (also over
plaintext, where anyone on the path can read it: use TLS). The channel's
multicallables add it, so no call site passes metadata and a call pays
nothing per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = ["ClientSecurity"]


@dataclass(frozen=True)
class ClientSecurity:
    token: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(p: str) -> bytes | None:
            return Path(p).read_bytes() if p else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.tls_ca),
            private_key=read(self.tls_key),
            certificate_chain=read(self.tls_cert),
        )

    def channel(self, address: str, options: Any = None) -> Any:
        """A ``grpc.aio`` channel to ``address`` with this TLS and token."""
        ch = (
            grpc.aio.secure_channel(address, self.credentials(), options=options)
            if self.tls
            else grpc.aio.insecure_channel(address, options=options)
        )
        return _TokenChannel(ch, self.token) if self.token else ch


NONE = ClientSecurity()


class _Call:
    """A multicallable that adds the token to every call's metadata."""

    __slots__ = ("_inner", "_md")

    def __init__(self, inner: Any, md: tuple[str, str]) -> None:
        self._inner = inner
        self._md = md

    def __call__(self, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
        md = (*tuple(metadata or ()), self._md)
        return self._inner(*args, metadata=md, **kwargs)


class _TokenChannel:
    """A ``grpc.aio.Channel`` whose calls carry ``authorization: Bearer TOKEN``."""

    def __init__(self, channel: Any, token: str) -> None:
        self._ch = channel
        self._md = ("authorization", f"Bearer {token}")

    def unary_unary(self, *a: Any, **k: Any) -> Any:
        return _Call(self._ch.unary_unary(*a, **k), self._md)

    def unary_stream(self, *a: Any, **k: Any) -> Any:
        return _Call(self._ch.unary_stream(*a, **k), self._md)

    def stream_unary(self, *a: Any, **k: Any) -> Any:
        return _Call(self._ch.stream_unary(*a, **k), self._md)

    def stream_stream(self, *a: Any, **k: Any) -> Any:
        return _Call(self._ch.stream_stream(*a, **k), self._md)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ch, name)

    async def __aenter__(self) -> _TokenChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._ch.close()
