"""The nemesis: fault kinds, scenarios, and a fault schedule drawn from a seed.

``schedule(scenario, seed)`` is pure: the same (scenario, seed) always gives the
same list of ``Fault`` (kind, target, duration, gap before it). The runner takes
faults from it in order, one at a time, each after the cluster healed from the
previous one plus the fault's ``gap``, until the run's duration is spent; so a
run's fault sequence is a prefix of its schedule, reproducible from the seed.

Fault kinds (``KINDS``), each a single failure of one broker of one pair unless
the name says otherwise:

- ``kill``: kill -9, down for ``duration``, restart.
- ``pause-short`` / ``pause-long``: SIGSTOP for 0.3 s / 10 s, SIGCONT.
- ``pause-pair``: both brokers of a pair SIGSTOPped together (2 s); its messages wait.
- ``wipe``: kill -9, the data dir emptied (disk loss), restart: re-filled by the partner.
- ``resilver-loss``: ``wipe``, then kill -9 the partner while it re-fills, restart both.
- ``partition-pair``: the pair's own link cut both ways (the lookups see both).
- ``isolate-broker``: one broker cut off from everyone (partner, lookups, clients).
- ``isolate-lookup``: one lookup cut off from everyone.
- ``asymmetric``: only the packets of one broker to its partner dropped.
- ``netem``: 50 ms delay and 5 % loss on the pair link (needs ``sch_netem``).
- ``disk-full``: the broker's data-dir filesystem filled to ENOSPC, then freed.
- ``rolling-restart``: SIGTERM and restart of every broker in turn, healthy in between.
- ``power-loss``: kill -9, then half the unsynced pages written back (each in any of
  its states) and the rest dropped (``storage="lazyfs"``, ``power_cut(keep=0.5)``).
- ``power-loss-pair``: the same for both brokers of a pair at once.
- ``bitflip-live``: both channels paused for ``duration`` (a backlog), then one bit
  flipped in each of 50 bodies acked meanwhile, under the running broker (where its
  reads meet them), channels unpaused: never delivered, repaired from the partner.
- ``bitflip``: the same with the broker kill -9'd first and 16 more bits flipped
  anywhere in its data file (records, keys, B-tree pages), then restarted: records
  are repaired; a B-tree LMDB finds broken is a disk loss (re-silver).
- ``truncate``: kill -9, the data file cut to 30-90 % of its size, restart: re-silver.
- ``corrupt-meta``: kill -9, both LMDB meta pages overwritten, restart: re-silver.
"""

from __future__ import annotations

import dataclasses
import random

__all__ = ["KINDS", "SCENARIOS", "Fault", "Scenario", "schedule"]

# kind -> (min, max) duration in seconds
KINDS: dict[str, tuple[float, float]] = {
    "kill": (0.5, 3.0),
    "pause-short": (0.3, 0.3),
    "pause-long": (10.0, 10.0),
    "pause-pair": (2.0, 2.0),
    "wipe": (0.5, 2.0),
    "resilver-loss": (1.0, 3.0),
    "partition-pair": (3.0, 6.0),
    "isolate-broker": (3.0, 6.0),
    "isolate-lookup": (3.0, 6.0),
    "asymmetric": (3.0, 6.0),
    "netem": (8.0, 12.0),
    "disk-full": (3.0, 5.0),
    "rolling-restart": (0.0, 0.0),
    "power-loss": (0.5, 2.0),
    "power-loss-pair": (0.5, 2.0),
    "bitflip": (2.0, 4.0),
    "bitflip-live": (2.0, 4.0),
    "truncate": (0.5, 2.0),
    "corrupt-meta": (0.5, 2.0),
}
INTEGRITY_KINDS = ("bitflip", "bitflip-live", "truncate", "corrupt-meta")
LOOKUP_KINDS = {"isolate-lookup"}
PAIR_KINDS = {"pause-pair", "power-loss-pair"}
CLUSTER_KINDS = {"rolling-restart"}


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    target: str  # a broker (p0a...), a pair (p0, p1), a lookup (lk1, lk2) or "all"
    duration: float
    gap: float

    def describe(self) -> str:
        d = f" {self.duration:.1f}s" if self.duration else ""
        return f"{self.kind} {self.target}{d}"


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    kinds: tuple[str, ...]
    about: str
    storage: str = "tmpfs"  # "lazyfs": data dirs on the power-loss filesystem
    broker_args: tuple[str, ...] = ()
    dedupe: bool = True
    consume_late: bool = False  # consumers start after the last fault (a backlog at every fault)
    expect_fail: bool = False  # a self-test: the checker must report a violation
    # A broker dying by itself is a violation, except where the faults can cause it: a
    # corrupt LMDB page can crash a reader (SIGSEGV/SIGBUS); the crash record makes the
    # restart re-silver instead (pairq.broker.store.CrashRecord). Crashes are reported.
    crashes_expected: bool = False


def _one(kind: str) -> Scenario:
    storage = "lazyfs" if kind.startswith("power-loss") else "tmpfs"
    # A bad disk may make a broker stop itself (exit 3: a store found corrupt while
    # running, re-silvered at the restart) or crash on a corrupt page: reported, not a
    # violation (the supervisor restarts it, as systemd does).
    return Scenario(
        kind, (kind,), f"only {kind} faults", storage, crashes_expected=kind in INTEGRITY_KINDS
    )


SCENARIOS: dict[str, Scenario] = {k: _one(k) for k in KINDS}
SCENARIOS.update(
    {
        "mixed": Scenario(
            "mixed",
            tuple(
                k
                for k in KINDS
                if not k.startswith("power-loss") and k != "netem" and k not in INTEGRITY_KINDS
            ),
            "every kind on tmpfs storage, drawn at random",
        ),
        "integrity": Scenario(
            "integrity",
            INTEGRITY_KINDS,
            "bad disks on one broker at a time: flipped bits (stopped and running), a "
            "truncated data file, overwritten meta pages; nothing acked lost, no corrupted "
            "body delivered (--max-backlog 100: a backlog is read back from disk)",
            broker_args=("--max-backlog", "100"),
            crashes_expected=True,
        ),
        "power-loss-backlog": Scenario(
            "power-loss-backlog",
            ("power-loss-pair",),
            "power loss of both brokers of a pair (--sync=always) with every message still "
            "unconsumed (consumers start after the faults): nothing acked may be lost",
            "lazyfs",
            consume_late=True,
        ),
        "smoke": Scenario(
            "smoke",
            ("kill", "pause-short", "partition-pair", "isolate-lookup", "wipe"),
            "a short mix for make chaos-smoke",
        ),
        "selftest-weak": Scenario(
            "selftest-weak",
            ("power-loss-pair",),
            "SELF-TEST: --min-copies=1 --sync=periodic and power loss of a whole pair: "
            "the checker must report lost messages",
            "lazyfs",
            ("--min-copies", "1", "--sync", "periodic", "--sync-interval-ms", "5000"),
            consume_late=True,
            expect_fail=True,
        ),
        "selftest-nodedupe": Scenario(
            "selftest-nodedupe",
            ("kill",),
            "SELF-TEST: consumers with de-duplication off: the checker must report handler re-runs",
            dedupe=False,
            expect_fail=True,
        ),
    }
)


def schedule(scenario: str, seed: int, n: int = 500) -> list[Fault]:
    """The first ``n`` faults of ``scenario`` for ``seed`` (pure, deterministic)."""
    sc = SCENARIOS[scenario]
    rng = random.Random(f"{scenario}:{seed}")
    out = []
    for _ in range(n):
        kind = rng.choice(sc.kinds)
        lo, hi = KINDS[kind]
        duration = round(rng.uniform(lo, hi), 2)
        pair = rng.choice(["p0", "p1"])
        if kind in LOOKUP_KINDS:
            target = rng.choice(["lk1", "lk2"])
        elif kind in PAIR_KINDS:
            target = pair
        elif kind in CLUSTER_KINDS:
            target = "all"
        else:
            target = pair + rng.choice("ab")
        out.append(Fault(kind, target, duration, round(rng.uniform(0.5, 2.0), 2)))
    return out
