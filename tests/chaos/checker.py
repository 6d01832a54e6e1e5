"""The checker: pure, over what the recorders saw (no process, no clock).

Rules (each a field of ``check()``'s answer; ``ok`` is all of them):

- **lost = 0**: every id acknowledged to a producer (any ``copies``) was handled on
  every channel. An acked id missing from a channel is lost.
- **handler re-runs = 0**: with de-duplication on, the handler ran once per
  (channel, id); every further run is a re-run.
- **raw duplicates** (deliveries de-duplication absorbed): counted, not a failure.
- **healing**: every fault has ``heal_s`` (from the fault's end until both brokers of
  every pair answer GetStats with both replication streams up, lag 0, no re-fill, no
  SOLO, a live lease, and a probe publish to every pair acked with copies=2) at most
  ``heal_bound`` s; a fault that never healed is a failure.
- **takeovers**: from the GetStats samples, a takeover is a rise of a broker's
  ``takeovers`` counter within one process life (same start time). A takeover is
  *false* when its partner was not down during the fault in progress (killed,
  paused longer than a lease, isolated, powered off); ``takeover_s`` is the time
  from the moment the partner went down (the fault's start, or the later moment a
  compound fault took it down) to the first sample showing it.
- **lapsed lease**: a handler run delivered by broker Y (its node id) with an epoch at
  or below Y's last epoch sampled before its partner took Y's messages over, handled
  more than ``LEASE_SLACK`` s after the sample that showed the takeover and before Y's
  process was restarted (a new life starts new epochs), is a delivery under a lapsed
  lease. Only handler runs carry (broker id, epoch): deliveries
  absorbed by de-duplication are not seen with them.
- **unavailability**: per producer, every gap between two successive acks longer
  than ``UNAVAILABLE_GAP`` s (the producer publishes continuously, so a gap is time
  it could not publish); a window longer than ``UNAVAILABLE_BOUND`` s is a failure
  (with 2 pairs and the lookups, any single fault should cost a producer at most its
  RPC timeout, 2 s in the harness, plus a failover).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

__all__ = ["FaultRecord", "check", "percentile"]

LEASE_SLACK = 0.1
UNAVAILABLE_GAP = 1.0
# longest publish unavailability a producer may see (2 pairs, lookups, rpc_timeout 2 s)
UNAVAILABLE_BOUND = 3.0
# fault kinds during which the target broker is down for a takeover's purposes
DOWN_KINDS = {
    "kill",
    "pause-long",
    "pause-pair",
    "wipe",
    "resilver-loss",
    "isolate-broker",
    "power-loss",
    "power-loss-pair",
    "rolling-restart",
}


@dataclasses.dataclass
class FaultRecord:
    kind: str
    target: str
    start: float
    end: float
    healed_at: float | None = None
    notes: str = ""
    down: tuple[str, ...] = ()  # brokers down (for a takeover's purposes) during it
    down_at: dict[str, float] = dataclasses.field(default_factory=dict)  # when, if not start
    unsupported: str = ""

    @property
    def heal_s(self) -> float | None:
        return None if self.healed_at is None else round(self.healed_at - self.end, 3)


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))], 3)


def takeovers(samples: list[Any]) -> list[tuple[float, str, int]]:
    """(t, broker, count) for every rise of a broker's takeover counter in one life."""
    out = []
    prev: dict[str, tuple[int, int]] = {}
    for s in samples:
        if not s.ok:
            continue
        p = prev.get(s.node)
        if p is not None and p[0] == s.start_ns and s.takeovers > p[1]:
            out.append((s.t, s.node, s.takeovers - p[1]))
        elif p is None and s.takeovers > 0:
            out.append((s.t, s.node, s.takeovers))
        prev[s.node] = (s.start_ns, s.takeovers)
    return out


# A takeover within this long after its victim crashed (died by itself, restarted by the
# supervisor) is the crash's, not a false one.
CRASH_TAKEOVER_S = 5.0


def check(
    *,
    acks: dict[bytes, tuple[int, float, int]],
    runs: list[Any],
    channels: tuple[str, ...],
    raw_duplicates: int,
    faults: list[FaultRecord],
    samples: list[Any],
    latencies: list[tuple[float, float, int]],
    partner: dict[str, str],
    heal_bound: float,
    producers: int,
    crashes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    handled: dict[str, Counter[bytes]] = {ch: Counter() for ch in channels}
    for r in runs:
        handled[r.channel][r.id] += 1
    lost = {ch: [i for i in acks if i not in handled[ch]] for ch in channels}
    n_lost = sum(len(v) for v in lost.values())
    reruns = sum(n - 1 for c in handled.values() for n in c.values() if n > 1)
    unacked_handled = sum(1 for c in handled.values() for i in c if i not in acks)
    corrupt = [r for r in runs if not getattr(r, "intact", True)]

    # takeovers and false takeovers
    tks = []
    false_tk = []
    for t, node, count in takeovers(samples):
        fault = next((f for f in faults if f.start <= t <= (f.healed_at or f.end) + 1.0), None)
        victim = partner[node]
        legit = fault is not None and victim in fault.down
        took = round(t - fault.down_at.get(victim, fault.start), 3) if fault else None
        # A broker that died by itself (it found its store corrupt and stopped, to
        # come back empty; a crash) is as down as a killed one.
        crash = next(
            (
                c
                for c in crashes or ()
                if c["node"] == victim and c["t"] <= t <= c["t"] + CRASH_TAKEOVER_S
            ),
            None,
        )
        if not legit and crash is not None:
            legit, took = True, round(t - crash["t"], 3)
        rec = {
            "t": round(t, 3),
            "by": node,
            "of": victim,
            "count": count,
            "fault": fault.kind if fault else ("crash" if crash else None),
            "takeover_s": took,
            "false": not legit,
        }
        tks.append(rec)
        if not legit:
            false_tk.append(rec)

    # lapsed lease: deliveries from the taken-over broker under an old epoch
    ids: dict[str, str] = {}
    lapsed = []
    for tk in tks:
        victim = str(tk["of"])
        before = [s for s in samples if s.ok and s.node == victim and s.t < float(tk["t"])]
        if not before:
            continue
        vid, vepoch, life = before[-1].broker_id, before[-1].epoch, before[-1].start_ns
        ids[victim] = vid
        # that process life ends at its restart (a new life starts new epochs)
        restart = next(
            (
                s.t
                for s in samples
                if s.ok and s.node == victim and s.t > float(tk["t"]) and s.start_ns != life
            ),
            float("inf"),
        )
        for r in runs:
            if (
                r.broker_id == vid
                and r.epoch <= vepoch
                and float(tk["t"]) + LEASE_SLACK < r.t < restart
            ):
                lapsed.append(
                    {"id": r.id.decode(errors="replace"), "broker": victim, "epoch": r.epoch}
                )

    # healing
    heal = [f.heal_s for f in faults if f.heal_s is not None and not f.unsupported]
    unhealed = [f"{f.kind} {f.target}" for f in faults if f.healed_at is None and not f.unsupported]
    slow = [
        f"{f.kind} {f.target} {f.heal_s}s"
        for f in faults
        if f.heal_s is not None and f.heal_s > heal_bound
    ]

    # unavailability windows per producer
    windows: dict[int, list[tuple[float, float]]] = {k: [] for k in range(producers)}
    last: dict[int, float] = {}
    for done, _lat, k in sorted(latencies):
        if k in last and done - last[k] > UNAVAILABLE_GAP:
            windows[k].append((round(last[k], 3), round(done, 3)))
        last[k] = done
    longest = max((b - a for w in windows.values() for a, b in w), default=0.0)

    # integrity counters: the last value of each process life, summed
    lives: dict[tuple[str, int], Any] = {}
    for smp in samples:
        if smp.ok:
            lives[(smp.node, smp.start_ns)] = smp
    integrity = {
        k: sum(getattr(v, k, 0) for v in lives.values())
        for k in ("checksum_failures", "repairs", "quarantined")
    }

    takeover_s = [float(t["takeover_s"]) for t in tks if not t["false"] and t["takeover_s"]]
    lat = [x[1] for x in latencies]
    result = {
        "acked": len(acks),
        "acked_copies": dict(Counter(str(c) for c, _t, _k in acks.values())),
        "handler_runs": len(runs),
        "lost": n_lost,
        "lost_per_channel": {ch: len(v) for ch, v in lost.items()},
        "lost_sample": {ch: [i.decode(errors="replace") for i in v[:20]] for ch, v in lost.items()},
        # when the lost ones were acknowledged (harness clock): to place them among the faults
        "lost_acked_at": {
            ch: [round(min(acks[i][1] for i in v), 3), round(max(acks[i][1] for i in v), 3)]
            for ch, v in lost.items()
            if v
        },
        "handler_reruns": reruns,
        "handled_not_acked": unacked_handled,
        "corrupt_deliveries": len(corrupt),
        "integrity": integrity,
        "corrupt_sample": [r.id.decode(errors="replace") for r in corrupt[:20]],
        "raw_duplicates": raw_duplicates,
        "faults": len(faults),
        "faults_per_kind": dict(Counter(f.kind for f in faults)),
        "unsupported": sorted({f"{f.kind}: {f.unsupported}" for f in faults if f.unsupported}),
        "takeovers": tks,
        "false_takeovers": len(false_tk),
        "takeover_p50_s": percentile(takeover_s, 50),
        "takeover_p99_s": percentile(takeover_s, 99),
        "heal_bound_s": heal_bound,
        "heal_p50_s": percentile(heal, 50),
        "heal_p99_s": percentile(heal, 99),
        "heal_max_s": max(heal) if heal else None,
        "unhealed": unhealed,
        "healed_late": slow,
        "lapsed_lease_deliveries": len(lapsed),
        "lapsed_sample": lapsed[:20],
        "unavailability_windows": {str(k): w for k, w in windows.items()},
        "longest_unavailability_s": round(longest, 3),
        "publish_latency_p50_s": percentile(lat, 50),
        "publish_latency_p99_s": percentile(lat, 99),
    }
    violations = []
    if n_lost:
        violations.append(f"lost {n_lost} acknowledged messages")
    if reruns:
        violations.append(f"{reruns} handler re-runs")
    if corrupt:
        violations.append(f"{len(corrupt)} deliveries with a corrupted body")
    if unhealed:
        violations.append(f"not healed: {', '.join(unhealed)}")
    if slow:
        violations.append(f"healed later than {heal_bound}s: {', '.join(slow)}")
    if false_tk:
        violations.append(f"{len(false_tk)} false takeovers")
    if lapsed:
        violations.append(f"{len(lapsed)} deliveries under a lapsed lease")
    if longest > UNAVAILABLE_BOUND:
        long_ = [w for ws in windows.values() for w in ws if w[1] - w[0] > UNAVAILABLE_BOUND]
        violations.append(
            f"{len(long_)} publish unavailability windows longer than {UNAVAILABLE_BOUND}s "
            f"(longest {longest:.2f}s)"
        )
    result["violations"] = violations
    result["ok"] = not violations
    return result
