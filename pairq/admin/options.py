"""Every ``pairq admin`` option and its default, in one place.

``pairq admin --help`` is generated from the field metadata below (flags, then
``PAIRQ_ADMIN_*`` environment variables, then a TOML file given by ``--config``;
see ``pairq.options``); a commented example file is ``deploy/admin.example.toml``
(``python -m pairq.admin.options``). Two older names keep working: the console's
lookups also come from ``PAIRQ_LOOKUP`` (comma-separated) and its token from
``PAIRQ_TOKEN``, as for the client commands.

The rules (:meth:`AdminOptions.validate`, also run by ``Admin(options)``):

- ``address`` is HOST:PORT with a host; every ``lookup`` and ``broker`` is
  HOST:PORT, and there is at least one of them;
- ``poll_interval`` is 0.05 s to 1 h, ``timeout`` 0.01 s to 5 min;
- a named ``auth_file`` loads (``pairq.security.auth.AuthTable``), a named TLS
  file is readable, ``tls_cert`` and ``tls_key`` go together and belong to each
  other, ``tls_ca`` holds a PEM certificate;
- ``audit_log`` is a file the console can append to, in a directory that exists
  (the console creates the file, never the directory).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pairq.options import OptionsError, check_fields, example_toml, hostport
from pairq.security.client import ClientSecurity

__all__ = ["AdminOptions"]

CLUSTER = "connections to the cluster (token, TLS)"


def _o(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


def _listen_address(value: str) -> None:
    """HOST:PORT with a host: the console binds exactly where it is told."""
    hostport(value)
    if not value.rpartition(":")[0].strip("[]"):
        raise ValueError("must be HOST:PORT with a host (0.0.0.0 for every interface)")


def _ca_bundle(path: str) -> None:
    """``path`` holds at least one PEM certificate (``--tls-ca``)."""
    from cryptography import x509

    try:
        x509.load_pem_x509_certificates(Path(path).read_bytes())
    except OSError as exc:
        raise ValueError(f"--tls-ca {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"--tls-ca {path}: no PEM certificate in it ({exc})") from None


def _readable(value: str) -> None:
    """Empty (off), or a file this process can read."""
    if not value:
        return
    try:
        with open(value, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None


def _auth_file(value: str) -> None:
    """Empty (no login), or an auth file that loads."""
    if not value:
        return
    from pairq.security.auth import AuthTable

    try:
        AuthTable.load(value)
    except ValueError as exc:  # "--auth-file PATH: problem": the source already names it
        raise ValueError(str(exc).removeprefix(f"--auth-file {value}: ")) from None


def _appendable(value: str) -> None:
    """Empty (stderr only), or a file that can be appended to in an existing directory."""
    if not value:
        return
    path = Path(value)
    if path.exists():
        if not path.is_file():
            raise ValueError("is not a regular file")
        if not os.access(path, os.W_OK):
            raise ValueError("cannot append: permission denied")
        return
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot create it in {str(parent)!r}: permission denied")


@dataclass(frozen=True)
class AdminOptions:
    """Settings of ``pairq admin``; every field is a flag, a ``PAIRQ_ADMIN_*`` variable
    and a TOML key (see the module docstring for the rules)."""

    # Environment: PAIRQ_ADMIN_<FIELD> (the broker's are PAIRQ_<FIELD>).
    ENV_PREFIX: ClassVar[str] = "PAIRQ_ADMIN_"

    # --- where ---
    address: str = _o(
        "127.0.0.1:4171",
        "HOST:PORT to serve the console (pages, /api/, /metrics) on; port 0 picks a free port; without --auth-file keep it on loopback or behind an authenticating proxy",
        check=_listen_address,
        metavar="HOST:PORT",
    )

    # --- what it watches ---
    lookup: tuple[str, ...] = _o(
        (),
        "gRPC address HOST:PORT of a lookup to poll; in an env var, comma-separated",
        kind="tuple",
        metavar="HOST:PORT",
        check=hostport,
        env=("PAIRQ_LOOKUP",),
    )
    broker: tuple[str, ...] = _o(
        (),
        "gRPC address HOST:PORT of a broker to watch besides those the lookups know",
        kind="tuple",
        metavar="HOST:PORT",
        check=hostport,
    )
    poll_interval: float = _o(
        1.0, "seconds between polls of every lookup and broker", min=0.05, max=3600.0
    )
    timeout: float = _o(
        1.0, "deadline of each request to a lookup or broker, seconds", min=0.01, max=300.0
    )

    # --- who may act, and the record of what they did ---
    audit_log: str = _o(
        "",
        "append audit lines (JSON) to this file, created if missing in an existing directory; they are logged to stderr either way (empty: stderr only)",
        check=_appendable,
        metavar="FILE",
    )
    auth_file: str = _o(
        "",
        "log console users in with the tokens of this auth file (the brokers' format) and allow each action only with the permission it needs; empty: no login (keep --address on loopback or behind a proxy)",
        check=_auth_file,
        metavar="FILE",
    )

    # --- the console's own connections to lookups and brokers ---
    token: str = _o(
        "",
        "bearer token for brokers and lookups with an --auth-file, a principal with admin on '*'; --check-config does not print it",
        group=CLUSTER,
        metavar="TOKEN",
        env=("PAIRQ_TOKEN",),
        secret=True,
    )
    tls_ca: str = _o(
        "",
        "PEM CA that signed the servers' certificates (TLS on)",
        group=CLUSTER,
        metavar="FILE",
        check=_readable,
    )
    tls_cert: str = _o(
        "",
        "PEM client certificate for mTLS (with --tls-key)",
        group=CLUSTER,
        metavar="FILE",
        check=_readable,
    )
    tls_key: str = _o(
        "", "PEM private key of --tls-cert", group=CLUSTER, metavar="FILE", check=_readable
    )

    # --- process ---
    log_level: str = _o(
        "info", "debug, info, warning or error", choices=["debug", "info", "warning", "error"]
    )
    log_format: str = _o(
        "text",
        "text (one line per record) or json (one JSON object per line: time, level, logger, message)",
        choices=["text", "json"],
    )

    @property
    def security(self) -> ClientSecurity:
        """The token and TLS files the console's gRPC channels use."""
        return ClientSecurity(self.token, self.tls_cert, self.tls_key, self.tls_ca)

    def validate(self) -> AdminOptions:
        """Raise ValueError (:class:`~pairq.options.OptionsError`) with an actionable
        message; called before any socket opens. Every field's own rules are in its
        metadata; the rules below relate several fields."""
        check_fields(self)
        errors = []
        if not self.lookup and not self.broker:
            errors.append(
                "needs at least one --lookup or --broker (TOML: lookup = [...], broker = [...])"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            errors.append("--tls-cert and --tls-key go together")
        elif self.tls_cert or self.tls_ca:
            from pairq.security.tls import check_files

            try:
                if self.tls_cert:
                    check_files(self.tls_cert, self.tls_key, self.tls_ca)
                else:
                    _ca_bundle(self.tls_ca)
            except ValueError as exc:
                errors.append(str(exc))
        if errors:
            raise OptionsError(errors)
        return self

    def replace(self, **changes: object) -> AdminOptions:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


if __name__ == "__main__":
    print(example_toml(AdminOptions, "pairq admin"), end="")
