"""Every lookup option and its default, in one place.

``pairq lookup --help`` is generated from the field metadata below (flags,
then ``PAIRQ_LOOKUP_*`` environment variables, then a TOML file; see ``pairq.options``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pairq.options import parse_hostport

__all__ = ["LookupOptions"]


def _o(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class LookupOptions:
    # Environment: PAIRQ_LOOKUP_<FIELD> (not PAIRQ_<FIELD>: that is the broker's).
    ENV_PREFIX: ClassVar[str] = "PAIRQ_LOOKUP_"

    # --- where ---
    address: str = _o("127.0.0.1:4160", "gRPC listen address HOST:PORT (port 0 picks a free port)")
    node_name: str = _o("", "this lookup's id in gossip and answers (default: lookup-HOST-PORT)")

    # --- registrations ---
    heartbeat_interval_ms: int = _o(
        1000,
        "brokers are told to heartbeat this often; a registration silent (or a stream closed) for 3 intervals is answered suspect, then dead without gossip",
    )
    inactivity_timeout_s: float = _o(
        30.0, "a registration silent this long is dropped from every answer"
    )
    tombstone_lifetime_s: float = _o(
        45.0, "how long a tombstoned topic stays tombstoned on its node (NSQ: 45 s)"
    )

    # --- gossip ---
    gossip_address: str = _o(
        "",
        "UDP+TCP HOST:PORT to run gossip on; liveness then comes from gossip (empty: gossip off, liveness from registrations only)",
    )
    join: tuple[str, ...] = _o(
        (), "gossip address of a member (broker or lookup) to join through", metavar="HOST:PORT"
    )
    gossip_profile: str = _o("lan", "gossip timing profile", choices=["lan", "wan", "local"])
    gossip_key: tuple[str, ...] = _o(
        (), "AES-GCM gossip key, base64 of 16/24/32 bytes; the first encrypts", metavar="KEY"
    )
    gossip_label: str = _o("", "gossip cluster label; members with another label are ignored")

    # --- process ---
    shutdown_grace_s: float = _o(2.0, "on SIGTERM: time to let open RPCs finish")
    log_level: str = _o(
        "info", "debug, info, warning or error", choices=["debug", "info", "warning", "error"]
    )

    def validate(self) -> LookupOptions:
        """Raise ValueError with an actionable message; called before any socket opens."""
        parse_hostport(self.address, what="--address")
        if self.gossip_address:
            parse_hostport(self.gossip_address, what="--gossip-address")
        for j in self.join:
            parse_hostport(j, what="--join")
        checks = [
            (self.heartbeat_interval_ms >= 10, "--heartbeat-interval-ms must be >= 10"),
            (
                self.inactivity_timeout_s * 1000 >= 3 * self.heartbeat_interval_ms,
                "--inactivity-timeout-s must be at least 3 heartbeat intervals",
            ),
            (self.tombstone_lifetime_s > 0, "--tombstone-lifetime-s must be > 0"),
            (self.shutdown_grace_s >= 0, "--shutdown-grace-s must be >= 0"),
            (not self.join or bool(self.gossip_address), "--join needs --gossip-address"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self

    def replace(self, **changes: object) -> LookupOptions:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
