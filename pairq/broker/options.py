"""Every broker option and its default, in one place (NSQ's ``NewOptions``).

``pairq broker --help`` is generated from the field metadata below; a
commented example file is ``deploy/broker.example.toml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pairq.grpcopts import DEFAULT_MAX_BATCH, DEFAULT_MAX_MESSAGE_BYTES
from pairq.options import parse_hostport


def _o(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class BrokerOptions:
    # --- where ---
    address: str = _o("127.0.0.1:4150", "gRPC listen address HOST:PORT (port 0 picks a free port)")
    data_dir: str = _o("./pairq-data", "data directory (LMDB store and node id)", metavar="DIR")
    metrics_address: str = _o("", "HOST:PORT to serve Prometheus /metrics on (empty: off)")
    node_name: str = _o("", "human-readable node name shown in stats (default: the node id)")

    # --- durability ---
    sync: str = _o(
        "always",
        "'always': fsync every group commit before any ack; 'periodic': fsync every --sync-interval-ms (NSQ-like, weaker: a power loss can lose acknowledged messages)",
        choices=["always", "periodic"],
    )
    sync_interval_ms: int = _o(100, "fsync interval with --sync=periodic")
    max_store_bytes: int = _o(
        64 * 1024**3,
        "cap on the LMDB store size; publishes get RESOURCE_EXHAUSTED beyond it (deliveries continue)",
    )
    store_reserve_bytes: int = _o(
        64 * 1024**2,
        "headroom kept free for FINs and cleanup when the store is near its cap or the disk is near full",
    )
    max_commit_batch: int = _o(20000, "most writes applied in one group commit")

    # --- messages ---
    max_msg_size: int = _o(DEFAULT_MAX_MESSAGE_BYTES, "largest message body in bytes")
    max_batch: int = _o(DEFAULT_MAX_BATCH, "most messages in one PublishBatch")
    max_topics: int = _o(10000, "most topics on this broker")
    max_channels: int = _o(1000, "most channels per topic")
    max_defer_ms: int = _o(3600_000, "longest DPUB / REQ delay in ms")
    idempotency_window_s: int = _o(
        300,
        "a producer-supplied message id published again within this many seconds (up to twice as long) is stored only once (0: off)",
    )

    # --- delivery ---
    msg_timeout_ms: int = _o(
        60_000, "default time a consumer has to FIN/REQ/TOUCH a message before it is requeued"
    )
    max_msg_timeout_ms: int = _o(
        15 * 60_000, "largest per-subscription message timeout a client may ask for"
    )
    max_rdy_count: int = _o(2500, "largest RDY count a consumer may grant")
    max_attempts: int = _o(
        0, "deliveries after which a message goes to the channel's dead-letter list (0: never)"
    )
    heartbeat_interval_ms: int = _o(
        30_000,
        "default interval between heartbeats to consumers; a consumer silent for two intervals is disconnected",
    )
    max_backlog: int = _o(
        10_000, "messages per channel buffered in memory ahead of delivery (the rest stay on disk)"
    )

    # --- pair ---
    pair: str = _o("", "pair name; with --partner this broker is one half of a redundant pair")
    partner: str = _o(
        "", "gRPC address HOST:PORT of the other broker of the pair (empty: single broker)"
    )
    min_copies: int = _o(
        2,
        "durable copies needed to acknowledge a publish in a pair: 2 = both brokers (partner down: UNAVAILABLE), 1 = accept alone and catch the partner up later",
    )
    lease_ms: int = _o(
        800,
        "delivery lease: an owner delivers only while its partner acknowledged it this recently; the partner takes over after the lease lapses",
    )
    heartbeat_ms: int = _o(100, "replication heartbeat interval inside a pair (renews the lease)")
    replication_address: str = _o(
        "auto",
        "where this broker takes its partner's plain TCP replication link (offered during the gRPC handshake; much cheaper than the gRPC stream): auto = the --address host on a free port, HOST:PORT (e.g. for a firewall rule), or off = replicate over the gRPC stream only",
    )

    # --- lookup ---
    lookup: tuple[str, ...] = _o(
        (),
        "gRPC address HOST:PORT of a lookup to register with (empty: none)",
        kind="tuple",
        metavar="HOST:PORT",
    )

    # --- gossip (SWIM + Lifeguard membership; see pairq/gossip) ---
    gossip_address: str = _o(
        "", "UDP+TCP HOST:PORT for gossip (empty: gossip off; port 0 picks one)"
    )
    gossip_advertise: str = _o(
        "", "address other members use to reach this one, if not --gossip-address"
    )
    join: tuple[str, ...] = _o(
        (), "gossip member HOST:PORT to join through", kind="tuple", metavar="HOST:PORT"
    )
    gossip_profile: str = _o("lan", "gossip timing profile", choices=["lan", "wan", "local"])
    gossip_key: tuple[str, ...] = _o(
        (),
        "AES-GCM gossip key (base64 of 16/24/32 bytes); the first encrypts, the others are accepted during rotation",
        kind="tuple",
        metavar="KEY",
    )
    gossip_label: str = _o("", "cluster label bound into every gossip packet")

    # --- process ---
    shutdown_grace_s: float = _o(
        10.0, "on SIGTERM: time to let in-flight work finish before exiting"
    )
    log_level: str = _o(
        "info", "debug, info, warning or error", choices=["debug", "info", "warning", "error"]
    )

    def validate(self) -> BrokerOptions:
        """Raise ValueError with an actionable message; called before any socket opens."""
        parse_hostport(self.address, what="--address")
        if self.metrics_address:
            parse_hostport(self.metrics_address, what="--metrics-address")
        if self.partner:
            parse_hostport(self.partner, what="--partner")
        if self.gossip_address:
            parse_hostport(self.gossip_address, what="--gossip-address")
        if self.replication_address not in ("auto", "off"):
            parse_hostport(self.replication_address, what="--replication-address (or auto, off)")
        for j in self.join:
            parse_hostport(j, what="--join")
        for lk in self.lookup:
            parse_hostport(lk, what="--lookup")
        if not self.data_dir:
            raise ValueError("--data-dir must not be empty")
        checks = [
            (self.max_msg_size >= 1, "--max-msg-size must be >= 1"),
            (self.max_msg_size <= 64 * 1024 * 1024, "--max-msg-size must be <= 64 MiB"),
            (self.max_batch >= 1, "--max-batch must be >= 1"),
            (self.msg_timeout_ms >= 10, "--msg-timeout-ms must be >= 10"),
            (
                self.max_msg_timeout_ms >= self.msg_timeout_ms,
                "--max-msg-timeout-ms must be >= --msg-timeout-ms",
            ),
            (self.max_rdy_count >= 1, "--max-rdy-count must be >= 1"),
            (self.max_attempts >= 0, "--max-attempts must be >= 0"),
            (self.heartbeat_interval_ms >= 100, "--heartbeat-interval-ms must be >= 100"),
            (self.max_store_bytes >= 16 * 1024 * 1024, "--max-store-bytes must be >= 16 MiB"),
            (
                self.store_reserve_bytes < self.max_store_bytes // 2,
                "--store-reserve-bytes must be < half of --max-store-bytes",
            ),
            (self.sync_interval_ms >= 1, "--sync-interval-ms must be >= 1"),
            (self.max_backlog >= 10, "--max-backlog must be >= 10"),
            (
                self.max_topics >= 1 and self.max_channels >= 1,
                "--max-topics and --max-channels must be >= 1",
            ),
            (self.min_copies in (1, 2), "--min-copies must be 1 or 2"),
            (self.lease_ms >= 100, "--lease-ms must be >= 100"),
            (
                10 <= self.heartbeat_ms <= self.lease_ms // 3,
                "--heartbeat-ms must be 10 to a third of --lease-ms",
            ),
            (not self.partner or bool(self.pair), "--partner needs --pair NAME"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self

    def replace(self, **changes: object) -> BrokerOptions:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def example_toml() -> str:
    """The commented example config (``deploy/broker.example.toml``), generated from the fields."""
    lines = [
        "# pairq broker configuration (TOML). Every key is also a flag (--key-name) and an",
        "# environment variable (PAIRQ_KEY_NAME); precedence: flag > env > this file > default.",
        "# Values shown are the defaults.",
        "",
    ]
    for f in dataclasses.fields(BrokerOptions):
        v: Any = f.default
        if isinstance(v, tuple):
            shown: Any = "[" + ", ".join(f'"{x}"' for x in v) + "]"
        elif isinstance(v, str):
            shown = f'"{v}"'
        elif isinstance(v, bool):
            shown = str(v).lower()
        else:
            shown = v
        lines += [f"# {f.metadata['help']}", f"# {f.name} = {shown}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(example_toml(), end="")
