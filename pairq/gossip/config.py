"""Gossip configuration: one frozen dataclass and the named profiles.

Every default lives in this file, each with a one-line rationale and, where it
has one, its formula. The profiles mirror memberlist's ``DefaultLANConfig``,
``DefaultWANConfig`` and ``DefaultLocalConfig``; where pairq departs from
memberlist the comment says so and why.

The LAN profile is pairq's production default. Compared with memberlist it
probes twice as often (0.5 s vs 1 s) and with a tighter timeout (0.2 s vs
0.5 s) because a broker's loss must be caught within seconds, and adds the
pair fast path (``pair_*``), which catches a dead pair partner in well under a
second without making the rest of the cluster chattier.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pairq.options import check_fields, hostport, optional_hostport, parse_hostport

__all__ = [
    "PROFILES",
    "ConfigError",
    "GossipConfig",
    "GossipOptions",
    "decode_key",
    "lan",
    "local",
    "wan",
]


class ConfigError(ValueError):
    """A configuration value is out of range; raised by :meth:`GossipConfig.validate`."""


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """All knobs of one gossip member. Build with :func:`lan`, :func:`wan` or :func:`local`."""

    # --- identity and addresses --------------------------------------------------
    # Unique member name; empty means "use the metadata's node_id" (Gossip does that).
    name: str = ""
    # UDP and TCP listen on the same port; 127.0.0.1 by default so nothing is
    # exposed by accident, port 0 picks a free one (tests).
    bind_host: str = "127.0.0.1"
    bind_port: int = 7946
    # What other members use to reach us; empty means "the bound address".
    advertise_host: str = ""
    advertise_port: int = 0

    # --- SWIM failure detection --------------------------------------------------
    # Period of the round-robin probe; one member probed per interval. Stretched by
    # the local health score: interval * (health + 1).
    probe_interval: float = 0.5
    # Wait this long for a direct ack before asking others (scaled like the interval).
    probe_timeout: float = 0.2
    # How many members are asked to ping an unresponsive target (memberlist: 3).
    indirect_checks: int = 3
    # Also try a TCP ping when UDP fails: catches UDP-only loss and misconfigured firewalls.
    tcp_fallback: bool = True
    # Suspicion minimum = suspicion_mult * max(1, log10(N)) * probe_interval.
    suspicion_mult: int = 4
    # Suspicion maximum = suspicion_max_timeout_mult * minimum; Lifeguard shrinks it
    # from max to min as independent confirmations arrive (k = suspicion_mult - 2).
    suspicion_max_timeout_mult: int = 6
    # Lifeguard local health: probe timeouts and interval scale by (health + 1),
    # health in [0, awareness_max_multiplier - 1].
    awareness_max_multiplier: int = 8
    # Turn Lifeguard off (plain SWIM): fixed timeouts, no health, no stall
    # compensation, suspicion timeout fixed at its minimum. For comparison only.
    lifeguard: bool = True
    # Event-loop stall: a gap between ticks above this counts as local sickness;
    # timers that ran out during the stall are pushed back by the stall.
    stall_threshold: float = 0.15
    # Tick resolution expected from the transport (it calls Core.tick at least this often).
    tick_interval: float = 0.05

    # --- dissemination ---------------------------------------------------------------
    # Gossip period and fanout for piggybacked broadcasts (memberlist: 200 ms, 3).
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    # Keep gossiping to dead members this long so they can learn of their death and refute.
    gossip_to_the_dead_time: float = 30.0
    # Each broadcast is sent retransmit_mult * ceil(log10(N + 1)) times.
    retransmit_mult: int = 4
    # Full state exchange over TCP; stretched above 32 members (push_pull_scale).
    push_pull_interval: float = 30.0
    # A dead/left member may come back with a new address only after this long
    # (memberlist LAN: 0, i.e. at once).
    dead_node_reclaim_time: float = 0.0
    # Forget dead/left members after this long (they stay listed as dead until then,
    # and reconnect is attempted with the dead ones, so a partition healing within
    # this window always merges back).
    reap_after: float = 3600.0
    # Push-pull with one random dead member this often, to merge healed partitions
    # (Serf's reconnect; memberlist has none). Also retries join seeds while alone.
    reconnect_interval: float = 5.0
    # Re-send our alive to an accuser holding a stale accusation at most this often.
    stale_refute_interval: float = 1.0

    # --- pair fast path (pairq) ----------------------------------------------------
    # Members with the same non-empty metadata `pair` heartbeat each other this often.
    pair_heartbeat_interval: float = 0.1
    # Silence after which the partner is probed directly (UDP + TCP) and through helpers.
    pair_suspect_after: float = 0.35
    # Silence after which, if no probe got an ack, the partner is declared dead.
    # Must exceed the longest pause tolerated (0.5 s) plus one heartbeat interval.
    pair_dead_after: float = 0.75
    # How many other members are asked to probe the partner (at least 2 where the
    # cluster has them; with fewer, whoever exists plus a direct TCP attempt).
    pair_probe_helpers: int = 3
    # While the partner is silent, probes are re-sent this often (tolerates loss).
    pair_probe_interval: float = 0.1
    # Members without a pair (lookups) heartbeat this many watchers (chosen on a
    # hash ring), who catch their death like a partner would. 0 turns it off.
    watchers: int = 2
    # Half the pair rate: a lookup's loss matters less than a broker's, and this
    # keeps its own traffic (2 watchers) under 0.5 KB/s.
    watch_heartbeat_interval: float = 0.2
    # pair_suspect_after / pair_dead_after plus the longer heartbeat gap (0.1 s).
    watch_suspect_after: float = 0.45
    watch_dead_after: float = 0.85
    # A watch is dropped when the watched member stops heartbeating us for this
    # long yet still answers probes (it picked other watchers).
    watch_expire: float = 3.0

    # --- sizes, streams, security -------------------------------------------------
    # Largest UDP payload we build; fits a 1500-byte Ethernet MTU with headers to spare.
    udp_buffer_size: int = 1400
    # Node metadata limit (memberlist: 512 bytes).
    max_meta_size: int = 512
    # Largest push-pull stream accepted, so a peer cannot make us allocate without bound.
    max_stream_size: int = 4 * 1024 * 1024
    # TCP connect + exchange timeout for push-pull and the fallback ping.
    tcp_timeout: float = 2.0
    # Cluster label: bound into every packet (AAD when encrypted); other labels are dropped.
    label: str = ""
    # AES-GCM keys (16, 24 or 32 bytes); the first encrypts, all decrypt. Empty: no encryption.
    keys: tuple[bytes, ...] = field(default=())
    # Encrypted packets older (or newer) than this are rejected; bounds the replay cache.
    replay_window: float = 60.0

    def validate(self) -> GossipConfig:
        """Check ranges before any socket opens; returns self for chaining."""
        positive = {
            "probe_interval": self.probe_interval,
            "probe_timeout": self.probe_timeout,
            "gossip_interval": self.gossip_interval,
            "push_pull_interval": self.push_pull_interval,
            "pair_heartbeat_interval": self.pair_heartbeat_interval,
            "pair_probe_interval": self.pair_probe_interval,
            "tcp_timeout": self.tcp_timeout,
            "tick_interval": self.tick_interval,
            "replay_window": self.replay_window,
            "reconnect_interval": self.reconnect_interval,
        }
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{key} must be > 0, got {value!r}")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError("probe_timeout must be shorter than probe_interval")
        if not 0 < self.pair_suspect_after < self.pair_dead_after:
            raise ConfigError("need 0 < pair_suspect_after < pair_dead_after")
        if self.pair_heartbeat_interval >= self.pair_suspect_after:
            raise ConfigError("pair_heartbeat_interval must be shorter than pair_suspect_after")
        if not 0 < self.watch_heartbeat_interval < self.watch_suspect_after < self.watch_dead_after:
            raise ConfigError(
                "need 0 < watch_heartbeat_interval < watch_suspect_after < watch_dead_after"
            )
        if self.watch_expire <= self.watch_dead_after or self.watchers < 0:
            raise ConfigError("watch_expire must exceed watch_dead_after; watchers >= 0")
        if self.suspicion_mult < 1 or self.suspicion_max_timeout_mult < 1:
            raise ConfigError("suspicion multipliers must be >= 1")
        if self.awareness_max_multiplier < 1:
            raise ConfigError("awareness_max_multiplier must be >= 1")
        if self.indirect_checks < 0 or self.gossip_nodes < 1 or self.retransmit_mult < 1:
            raise ConfigError("indirect_checks >= 0, gossip_nodes >= 1, retransmit_mult >= 1")
        if not 0 <= self.bind_port <= 65535 or not 0 <= self.advertise_port <= 65535:
            raise ConfigError("ports must be in 0..65535")
        if not 64 <= self.max_meta_size <= 4096:
            raise ConfigError("max_meta_size must be in 64..4096")
        if not 512 <= self.udp_buffer_size <= 65000:
            raise ConfigError("udp_buffer_size must be in 512..65000")
        if len(self.label.encode()) > 255:
            raise ConfigError("label must be at most 255 bytes")
        if len(self.name.encode()) > 255:
            raise ConfigError("name must be at most 255 bytes")
        for secret in self.keys:
            if len(secret) not in (16, 24, 32):
                raise ConfigError(f"AES keys must be 16, 24 or 32 bytes, got {len(secret)}")
        return self

    def replace(self, **changes: object) -> GossipConfig:
        """A copy with some fields changed (``dataclasses.replace``), validated."""
        return dataclasses.replace(self, **changes).validate()  # type: ignore[arg-type]


def lan(**overrides: object) -> GossipConfig:
    """pairq's default for one data centre: the values documented on the fields."""
    return GossipConfig().replace(**overrides)


def wan(**overrides: object) -> GossipConfig:
    """Across data centres: memberlist's DefaultWANConfig timings, slower pair path."""
    base = GossipConfig(
        tcp_timeout=30.0,  # WAN round trips and slow handshakes (memberlist: 30 s)
        suspicion_mult=6,  # more time for suspect messages to cross the WAN (memberlist: 6)
        push_pull_interval=60.0,  # push-pull is expensive across links (memberlist: 60 s)
        probe_timeout=3.0,  # WAN RTT up to hundreds of ms, plus loss (memberlist: 3 s)
        probe_interval=5.0,  # fewer probes across expensive links (memberlist: 5 s)
        gossip_nodes=4,  # more fanout makes up for the slower interval (memberlist: 4)
        gossip_interval=0.5,  # (memberlist: 500 ms)
        gossip_to_the_dead_time=60.0,  # (memberlist: 60 s)
        reconnect_interval=30.0,  # TCP attempts across a WAN are costly (Serf: 30 s)
        pair_heartbeat_interval=0.5,  # a pair split across a WAN: 2 heartbeats/s
        pair_suspect_after=2.0,  # 4 missed heartbeats
        pair_dead_after=4.0,  # tolerate ~3 s of WAN trouble before failing over
        pair_probe_interval=0.5,
        watch_heartbeat_interval=1.0,  # a lookup across a WAN: 1 heartbeat/s per watcher
        watch_suspect_after=3.0,
        watch_dead_after=5.0,
        watch_expire=15.0,
    )
    return base.replace(**overrides)


def local(**overrides: object) -> GossipConfig:
    """One machine (loopback, tests, ``pairq dev``): memberlist's DefaultLocalConfig shape."""
    base = GossipConfig(
        bind_port=0,  # a free port; several members per machine
        tcp_timeout=1.0,  # loopback: connect is instant (memberlist: 1 s)
        indirect_checks=1,  # few members locally (memberlist: 1)
        retransmit_mult=2,  # no loss on loopback (memberlist: 2)
        suspicion_mult=3,  # (memberlist: 3)
        push_pull_interval=15.0,  # (memberlist: 15 s)
        probe_timeout=0.2,  # (memberlist: 200 ms)
        probe_interval=0.5,  # (memberlist: 1 s; pairq probes faster)
        gossip_interval=0.1,  # (memberlist: 100 ms)
        gossip_to_the_dead_time=15.0,  # (memberlist: 15 s)
    )
    return base.replace(**overrides)


PROFILES = {"lan": lan, "wan": wan, "local": local}
"""The named profiles (``--gossip-profile``), each a function taking overrides."""


def decode_key(text: str) -> bytes:
    """A keyring key given as base64 (or hex) of 16, 24 or 32 bytes; ConfigError if not."""
    text = text.strip()
    for decoder in (base64.b64decode, bytes.fromhex):
        try:
            raw = decoder(text)
        except (binascii.Error, ValueError):
            continue
        if len(raw) in (16, 24, 32):
            return raw
    raise ConfigError("a gossip key is base64 or hex of 16, 24 or 32 bytes")


def _key_rule(text: str) -> None:
    decode_key(text)


def _g(default: Any, help: str, **meta: Any) -> Any:
    return field(
        default=default,
        metadata={"help": help, "group": "gossip (SWIM + Lifeguard membership)", **meta},
    )


@dataclass(frozen=True)
class GossipOptions:
    """The gossip settings an operator gives a process (a broker or a lookup).

    One type for both: ``BrokerOptions`` and ``LookupOptions`` inherit these
    fields, so both get the same flags (``--gossip-address``,
    ``--gossip-advertise``, ``--join``, ``--gossip-profile``, ``--gossip-key``,
    ``--gossip-label``), env vars and TOML keys from the same code
    (``pairq.options``), and :meth:`gossip_config` turns them into a
    :class:`GossipConfig` the same way. Each field's rules are in its metadata
    (see ``pairq.options``); :meth:`validate_gossip` adds the one that relates two
    fields.
    """

    gossip_address: str = _g(
        "",
        "UDP+TCP HOST:PORT for gossip (empty: gossip off; port 0 picks one)",
        check=optional_hostport,
        metavar="HOST:PORT",
    )
    gossip_advertise: str = _g(
        "",
        "address other members use to reach this one, if not --gossip-address",
        check=optional_hostport,
        metavar="HOST:PORT",
    )
    join: tuple[str, ...] = _g(
        (),
        "gossip address of a member (broker or lookup) to join through",
        kind="tuple",
        metavar="HOST:PORT",
        check=hostport,
    )
    gossip_profile: str = _g(
        "lan",
        "gossip timing profile: lan (one data centre), wan, local (one machine)",
        choices=["lan", "wan", "local"],
    )
    gossip_key: tuple[str, ...] = _g(
        (),
        "AES-GCM gossip key (base64 or hex of 16/24/32 bytes); the first encrypts, the others are accepted during rotation",
        kind="tuple",
        metavar="KEY",
        check=_key_rule,
    )
    gossip_label: str = _g(
        "", "cluster label bound into every gossip packet; members with another label are ignored"
    )

    def validate(self) -> GossipOptions:
        """Raise ValueError (``pairq.options.OptionsError``) naming the flag; no I/O."""
        check_fields(self)
        self.check_gossip_rules()
        return self

    def check_gossip_rules(self) -> None:
        """The rules that relate two gossip fields (the per-field ones are metadata)."""
        if self.join and not self.gossip_address:
            raise ValueError("--join needs --gossip-address")
        if self.gossip_advertise and not self.gossip_address:
            raise ValueError("--gossip-advertise needs --gossip-address")

    def gossip_config(self, **overrides: object) -> GossipConfig:
        """The validated :class:`GossipConfig` of the chosen profile, bound to
        ``gossip_address`` (which must be set) and advertising ``gossip_advertise``."""
        host, port = parse_hostport(self.gossip_address, what="--gossip-address")
        changes: dict[str, object] = {
            "bind_host": host,
            "bind_port": port,
            "label": self.gossip_label,
            "keys": tuple(decode_key(k) for k in self.gossip_key),
        }
        if self.gossip_advertise:
            ah, ap = parse_hostport(self.gossip_advertise, what="--gossip-advertise")
            changes.update(advertise_host=ah, advertise_port=ap)
        changes.update(overrides)
        return PROFILES[self.gossip_profile](**changes)
