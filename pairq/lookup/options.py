"""Every lookup option and its default, in one place.

``pairq lookup --help`` is generated from the field metadata below (flags,
then ``PAIRQ_LOOKUP_*`` environment variables, then a TOML file; see ``pairq.options``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pairq.gossip.config import GossipOptions
from pairq.options import OptionsError, check_fields, hostport, optional_hostport
from pairq.security.options import SecurityOptions

__all__ = ["LookupOptions"]


def _o(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class LookupOptions(GossipOptions, SecurityOptions):
    # Environment: PAIRQ_LOOKUP_<FIELD> (not PAIRQ_<FIELD>: that is the broker's).
    ENV_PREFIX: ClassVar[str] = "PAIRQ_LOOKUP_"

    # --- where ---
    address: str = _o(
        "127.0.0.1:4160",
        "gRPC listen address HOST:PORT (port 0 picks a free port)",
        check=hostport,
        metavar="HOST:PORT",
    )
    node_name: str = _o("", "this lookup's id in gossip and answers (default: lookup-HOST-PORT)")
    metrics_address: str = _o(
        "",
        "HOST:PORT to serve Prometheus /metrics on (empty: off)",
        check=optional_hostport,
        metavar="HOST:PORT",
    )

    http_address: str = _o(
        "",
        "HOST:PORT to serve nsqlookupd's HTTP API on (/lookup, /topics, /channels, /nodes), so NSQ clients given lookupd_http_addresses find pairq brokers; empty: off",
        check=optional_hostport,
        metavar="HOST:PORT",
    )

    # --- registrations ---
    heartbeat_interval_ms: int = _o(
        1000,
        "brokers are told to heartbeat this often; a registration silent (or a stream closed) for 3 intervals is answered suspect, then dead without gossip",
        min=10,
    )
    inactivity_timeout_s: float = _o(
        30.0, "a registration silent this long is dropped from every answer"
    )
    tombstone_lifetime_s: float = _o(
        45.0,
        "how long a tombstoned topic stays tombstoned on its node (NSQ: 45 s)",
        min=0.001,
    )

    # --- gossip: the fields of GossipOptions (pairq.gossip.config), shared with the broker ---

    # --- process ---
    shutdown_grace_s: float = _o(2.0, "on SIGTERM: time to let open RPCs finish", min=0.0)
    log_level: str = _o(
        "info", "debug, info, warning or error", choices=["debug", "info", "warning", "error"]
    )
    log_format: str = _o(
        "text",
        "text (one line per record) or json (one JSON object per line: time, level, logger, message)",
        choices=["text", "json"],
    )

    def validate(self) -> LookupOptions:
        """Raise ValueError (:class:`~pairq.options.OptionsError`) with an actionable
        message; called before any socket opens. Every field's own rules are in its
        metadata; the rules below relate several fields."""
        check_fields(self)
        self.check_gossip_rules()
        errors = self.check_security_rules()
        if errors:
            raise OptionsError(errors)
        if self.inactivity_timeout_s * 1000 < 3 * self.heartbeat_interval_ms:
            raise OptionsError(["--inactivity-timeout-s must be at least 3 heartbeat intervals"])
        return self

    def replace(self, **changes: object) -> LookupOptions:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
