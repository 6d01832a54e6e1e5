"""Every broker option and its default, in one place (NSQ's ``NewOptions``).

``pairq broker --help`` is generated from the field metadata below; a
commented example file is ``deploy/broker.example.toml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pairq.gossip.config import GossipOptions
from pairq.grpcopts import DEFAULT_MAX_BATCH, DEFAULT_MAX_MESSAGE_BYTES
from pairq.options import OptionsError, check_fields, hostport, optional_hostport
from pairq.options import example_toml as generic_example_toml
from pairq.security.options import SecurityOptions


def _o(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


def _nonempty(value: str) -> None:
    if not value:
        raise ValueError("must not be empty")


def _commit_log_bytes(value: int) -> None:
    if 0 < value < 65536:
        raise ValueError("must be 0 (no commit log) or at least 65536")


def _replication_address(value: str) -> None:
    if value not in ("auto", "off"):
        try:
            hostport(value)
        except ValueError:
            raise ValueError("must be auto, off or HOST:PORT") from None


@dataclass(frozen=True)
class BrokerOptions(GossipOptions, SecurityOptions):
    # --- where ---
    address: str = _o(
        "127.0.0.1:4150",
        "gRPC listen address HOST:PORT (port 0 picks a free port)",
        check=hostport,
        metavar="HOST:PORT",
    )
    data_dir: str = _o(
        "./pairq-data", "data directory (LMDB store and node id)", metavar="DIR", check=_nonempty
    )
    metrics_address: str = _o(
        "",
        "HOST:PORT to serve Prometheus /metrics on (empty: off)",
        check=optional_hostport,
        metavar="HOST:PORT",
    )
    nsq_tcp_address: str = _o(
        "",
        "HOST:PORT to serve NSQ's TCP protocol V2 on, for unchanged NSQ clients (pynsq, nsqjs, go-nsq); empty: off",
        check=optional_hostport,
        metavar="HOST:PORT",
    )
    http_address: str = _o(
        "",
        "HOST:PORT to serve NSQ's HTTP API on (/pub, /mpub, /stats, topic and channel actions, as nsqd does); empty: off",
        check=optional_hostport,
        metavar="HOST:PORT",
    )
    node_name: str = _o("", "human-readable node name shown in stats (default: the node id)")

    # --- durability ---
    sync: str = _o(
        "always",
        "'always': fsync every group commit before any ack; 'periodic': fsync every --sync-interval-ms (NSQ-like, weaker: a power loss can lose acknowledged messages)",
        choices=["always", "periodic"],
    )
    sync_interval_ms: int = _o(100, "fsync interval with --sync=periodic", min=1)
    commit_log_bytes: int = _o(
        4 * 1024**2,
        "with --sync=always, each commit is made durable by one O_DSYNC write to a commit log "
        "beside the store, and LMDB is synced at a checkpoint once this many bytes were logged "
        "(or --checkpoint-interval-ms passed); 0: no log, LMDB flushes twice per commit",
        min=0,
        check=_commit_log_bytes,
    )
    checkpoint_interval_ms: int = _o(
        50,
        "longest time between checkpoints of the store while commits are logged (a short one keeps "
        "each checkpoint's flush small, so the log's writes never wait long behind it)",
        min=10,
    )
    inline_commit_us: int = _o(
        20000,
        "with a commit log, a loop turn's small writes (the partner's copies, progress; not the "
        "owner's own appends) that find the store's writer thread idle are committed on the event "
        "loop (no thread hand-offs); one such commit slower than this (a slow disk) sends every "
        "commit to the writer thread for a second; 0: always the thread",
        min=0,
    )
    max_store_bytes: int = _o(
        64 * 1024**3,
        "cap on the LMDB store size; publishes get RESOURCE_EXHAUSTED beyond it (deliveries continue)",
        min=16 * 1024 * 1024,
    )
    store_reserve_bytes: int = _o(
        64 * 1024**2,
        "headroom kept free for FINs and cleanup when the store is near its cap or the disk is near full",
        min=0,
    )
    scrub_interval: float = _o(
        86400.0,
        "seconds between background scrubs (every stored record checked against its crc32c, "
        "bad ones repaired from the partner); 0: no background scrub",
        min=0,
    )
    scrub_bytes_per_s: int = _o(
        32 * 1024 * 1024,
        "most bytes a scrub reads per second (background and `pairq scrub`)",
        min=1,
    )
    on_corruption: str = _o(
        "resilver",
        "when LMDB finds its own structure corrupt: 'resilver' moves the data dir's store aside "
        "(kept for forensics) and starts empty, to be re-filled by the partner; 'exit' refuses to "
        "start (a single broker always exits: it has no partner to re-fill it)",
        choices=["resilver", "exit"],
    )
    max_commit_batch: int = _o(20000, "most writes applied in one group commit", min=1)

    # --- messages ---
    max_msg_size: int = _o(
        DEFAULT_MAX_MESSAGE_BYTES, "largest message body in bytes", min=1, max=64 * 1024 * 1024
    )
    max_batch: int = _o(DEFAULT_MAX_BATCH, "most messages in one PublishBatch", min=1)
    max_batch_bytes: int = _o(
        64 * 1024 * 1024,
        "most body bytes in one PublishBatch or PublishStream request (at least --max-msg-size; the default is gRPC's smallest frame limit here, so it refuses nothing that could arrive before)",
        min=1,
    )
    max_publish_rate: int = _o(
        0,
        "most messages per second one client connection may publish (0: no limit; else at least --max-batch); beyond it publishes get RESOURCE_EXHAUSTED",
        min=0,
    )
    max_topics: int = _o(10000, "most topics on this broker", min=1)
    max_channels: int = _o(1000, "most channels per topic", min=1)
    max_defer_ms: int = _o(3600_000, "longest DPUB / REQ delay in ms", min=0)
    idempotency_window_s: int = _o(
        300,
        "a producer-supplied message id published again within this many seconds (up to twice as long) is stored only once (0: off)",
        min=0,
    )

    # --- delivery ---
    msg_timeout_ms: int = _o(
        60_000,
        "default time a consumer has to FIN/REQ/TOUCH a message before it is requeued",
        min=10,
    )
    max_msg_timeout_ms: int = _o(
        15 * 60_000, "largest per-subscription message timeout a client may ask for"
    )
    max_rdy_count: int = _o(2500, "largest RDY count a consumer may grant", min=1)
    max_rdy_total: int = _o(
        1_000_000,
        "most RDY credit all consumers of this broker together may hold; a grant beyond it is cut to what is left and the consumer told so",
        min=1,
    )
    max_clients: int = _o(
        10_000,
        "most Subscribe streams open at once on this broker; more get RESOURCE_EXHAUSTED",
        min=1,
    )
    max_attempts: int = _o(
        0,
        "deliveries after which a message goes to the channel's dead-letter list (0: never)",
        min=0,
    )
    heartbeat_interval_ms: int = _o(
        30_000,
        "default interval between heartbeats to consumers; a consumer silent for two intervals is disconnected",
        min=100,
    )
    max_backlog: int = _o(
        10_000,
        "messages per channel buffered in memory ahead of delivery (the rest stay on disk)",
        min=10,
    )
    max_subscriber_buffer_bytes: int = _o(
        8 * 1024 * 1024,
        "bytes of deliveries queued for one Subscribe stream the client has not read yet; beyond it the broker delivers nothing more to that stream until it drains (memory per subscription is bounded)",
        min=64 * 1024,
    )

    # --- pair ---
    pair: str = _o("", "pair name; with --partner this broker is one half of a redundant pair")
    partner: str = _o(
        "",
        "gRPC address HOST:PORT of the other broker of the pair (empty: single broker)",
        check=optional_hostport,
        metavar="HOST:PORT",
    )
    min_copies: int = _o(
        2,
        "durable copies needed to acknowledge a publish in a pair: 2 = both brokers (partner down: UNAVAILABLE), 1 = accept alone and catch the partner up later",
        choices=[1, 2],
    )
    lease_ms: int = _o(
        800,
        "delivery lease: an owner delivers only while its partner acknowledged it this recently; the partner takes over after the lease lapses",
        min=100,
    )
    heartbeat_ms: int = _o(100, "replication heartbeat interval inside a pair (renews the lease)")
    replication_address: str = _o(
        "auto",
        "where this broker takes its partner's plain TCP replication link (offered during the gRPC handshake; much cheaper than the gRPC stream): auto = the --address host on a free port, HOST:PORT (e.g. for a firewall rule), or off = replicate over the gRPC stream only",
        check=_replication_address,
    )
    pair_secret_file: str = _o(
        "",
        "file holding the pair's shared secret (the same on both brokers, at least 16 bytes): each broker proves it with an HMAC over fresh nonces on the replication handshake and the TCP link, and refuses a peer that cannot (empty: any peer that reaches the port is taken for the partner)",
        metavar="FILE",
    )

    # --- lookup ---
    lookup: tuple[str, ...] = _o(
        (),
        "gRPC address HOST:PORT of a lookup to register with (empty: none)",
        kind="tuple",
        metavar="HOST:PORT",
        check=hostport,
    )

    lookup_token_file: str = _o(
        "",
        "file holding the bearer token this broker presents to the lookups (when they have an --auth-file; the token needs admin on '*' there)",
        metavar="FILE",
    )

    # --- gossip: the fields of GossipOptions (pairq.gossip.config), shared with the lookup ---
    # --- security: the fields of SecurityOptions (pairq.security.options), shared with the lookup ---

    # --- process ---
    event_loop: str = _o(
        "uvloop",
        "the asyncio event loop: uvloop (libuv: about 10 percent less CPU per publish) or asyncio (the standard library's)",
        choices=["uvloop", "asyncio"],
    )
    shutdown_grace_s: float = _o(
        10.0, "on SIGTERM: time to let in-flight work finish before exiting", min=0.0
    )
    log_level: str = _o(
        "info", "debug, info, warning or error", choices=["debug", "info", "warning", "error"]
    )
    log_format: str = _o(
        "text",
        "text (one line per record) or json (one JSON object per line: time, level, logger, message)",
        choices=["text", "json"],
    )

    def validate(self) -> BrokerOptions:
        """Raise ValueError (:class:`~pairq.options.OptionsError`) with an actionable
        message; called before any socket opens. Every field's own rules are in its
        metadata (checked by ``check_fields``, as ``resolve`` checks each source);
        the rules below relate several fields."""
        check_fields(self)
        self.check_gossip_rules()
        checks = [
            (
                self.max_msg_timeout_ms >= self.msg_timeout_ms,
                "--max-msg-timeout-ms must be >= --msg-timeout-ms",
            ),
            (
                self.store_reserve_bytes < self.max_store_bytes // 2,
                "--store-reserve-bytes must be < half of --max-store-bytes",
            ),
            (
                10 <= self.heartbeat_ms <= self.lease_ms // 3,
                "--heartbeat-ms must be 10 to a third of --lease-ms",
            ),
            (not self.partner or bool(self.pair), "--partner needs --pair NAME"),
            (
                self.max_batch_bytes >= self.max_msg_size,
                "--max-batch-bytes must be >= --max-msg-size",
            ),
            (
                self.max_publish_rate == 0 or self.max_publish_rate >= self.max_batch,
                "--max-publish-rate must be 0 (off) or >= --max-batch",
            ),
        ]
        errors = [message for ok, message in checks if not ok]
        errors += self.check_security_rules()
        if self.auth_file and self.partner and not self.pair_secret_file:
            errors.append(
                "--auth-file with --partner needs --pair-secret-file: otherwise anyone who reaches the port can act as the partner"
            )
        if self.lookup_token_file:
            try:
                read_token_file(self.lookup_token_file)
            except ValueError as exc:
                errors.append(str(exc))
        if self.pair_secret_file:
            from pairq.security.pairauth import load_secret

            try:
                load_secret(self.pair_secret_file)
            except ValueError as exc:
                errors.append(str(exc))
        if errors:
            raise OptionsError(errors)
        return self

    def replace(self, **changes: object) -> BrokerOptions:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def read_token_file(path: str) -> str:
    """The token in ``path`` (whitespace stripped); ValueError if unreadable or empty."""
    try:
        token = open(path, encoding="utf-8").read().strip()
    except OSError as exc:
        raise ValueError(f"--lookup-token-file {path}: {exc.strerror or exc}") from None
    if not token:
        raise ValueError(f"--lookup-token-file {path}: empty")
    return token


def example_toml() -> str:
    """The commented example config (``deploy/broker.example.toml``), generated from the fields."""
    return generic_example_toml(BrokerOptions, "pairq broker")


if __name__ == "__main__":
    print(example_toml(), end="")
