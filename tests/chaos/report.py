"""A run's report, under its run directory: ``report.json`` (everything the checker
said, the fault log, the figures), ``summary.txt`` (one line per fault, then the
verdict) and ``timeline.png`` (acked throughput, publish latency and unavailability
over time, every fault marked; needs matplotlib, the ``chaos`` extra)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .checker import FaultRecord

__all__ = ["fault_dict", "fault_line", "partner_lines", "summary", "write"]


def fault_dict(f: FaultRecord) -> dict[str, Any]:
    return {
        "kind": f.kind,
        "target": f.target,
        "start": round(f.start, 3),
        "end": round(f.end, 3),
        "heal_s": f.heal_s,
        "down": list(f.down),
        "notes": f.notes,
        "unsupported": f.unsupported,
    }


def fault_line(f: FaultRecord) -> str:
    if f.unsupported:
        return f"t={f.start:7.2f}s {f.kind:<16} {f.target:<4} SKIPPED: {f.unsupported}"
    heal = "NOT HEALED" if f.heal_s is None else f"healed in {f.heal_s:.2f}s"
    notes = f" ({f.notes})" if f.notes else ""
    return (
        f"t={f.start:7.2f}s {f.kind:<16} {f.target:<4} lasted {f.end - f.start:5.2f}s, "
        f"{heal}{notes}"
    )


# What a broker logs about its partner's fate: the lines that explain a takeover.
_PARTNER_LINES = ("took over", "is dead", "lease", "new identity", "resumed", "suspect")


def partner_lines(log: Path, limit: int = 40) -> list[str]:
    """The last ``limit`` lines of a broker's log that say why it took over."""
    try:
        text = log.read_text(errors="replace")
    except OSError as e:
        return [f"(no log: {e})"]
    return [ln for ln in text.splitlines() if any(k in ln for k in _PARTNER_LINES)][-limit:]


def summary(result: dict[str, Any], faults: list[FaultRecord]) -> str:
    lines = [
        f"pairq chaos: scenario {result['scenario']}, seed {result['seed']}, "
        f"{result['duration_s']:.0f} s",
        "",
        "faults:",
        *(f"  {fault_line(f)}" for f in faults),
        "",
        f"acked {result['acked']} (copies {result['acked_copies']}), handler runs "
        f"{result['handler_runs']}, raw duplicates absorbed {result['raw_duplicates']}",
        f"lost {result['lost']} {result['lost_per_channel']}, handler re-runs "
        f"{result['handler_reruns']}, lapsed-lease deliveries "
        f"{result['lapsed_lease_deliveries']}, corrupted bodies delivered "
        f"{result.get('corrupt_deliveries', 0)}",
        f"broker crashes (restarted as systemd would) {len(result.get('crashes', []))}"
        + "".join(f"; {c['node']} at {c['t']}s exit {c['rc']}" for c in result.get("crashes", [])),
        "integrity (summed over process lives): "
        + ", ".join(f"{k} {v}" for k, v in result.get("integrity", {}).items()),
        f"takeovers {len(result['takeovers'])} (false {result['false_takeovers']}), "
        f"takeover p50/p99 {result['takeover_p50_s']}/{result['takeover_p99_s']} s",
        f"healing p50/p99/max {result['heal_p50_s']}/{result['heal_p99_s']}/"
        f"{result['heal_max_s']} s (bound {result['heal_bound_s']} s)",
        f"longest publish unavailability {result['longest_unavailability_s']} s; windows "
        + ", ".join(f"P{k}: {len(w)}" for k, w in result["unavailability_windows"].items()),
        f"publish latency p50/p99 {result['publish_latency_p50_s']}/"
        f"{result['publish_latency_p99_s']} s, failed publish calls "
        f"{result['publish_failures']}",
    ]
    for tk in result["takeovers"]:
        lines.append(
            f"  t={tk['t']:7.2f}s {tk['by']} took over {tk['of']} ({tk['count']}), "
            f"fault {tk['fault']}, after {tk['takeover_s']} s"
            + (" FALSE: its partner was not down" if tk["false"] else "")
        )
    for node, why in result.get("false_takeover_logs", {}).items():
        lines.append(f"  {node}'s log on its partner (a false takeover):")
        lines.extend(f"    {line}" for line in why)
    if result["unsupported"]:
        lines.append(f"not run on this host: {'; '.join(result['unsupported'])}")
    verdict = "OK" if result["ok"] else "VIOLATIONS: " + "; ".join(result["violations"])
    if result["expect_fail"]:
        verdict += " (self-test: violations expected)"
    lines.append(verdict)
    return "\n".join(lines) + "\n"


def timeline(path: Path, result: dict[str, Any], latencies: Any, faults: list[FaultRecord]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    end = max([x[0] for x in latencies] + [f.end for f in faults] + [1.0])
    buckets = [0] * (int(end) + 1)
    for done, _lat, _k in latencies:
        buckets[int(done)] += 1
    fig, axes = plt.subplots(3, 1, figsize=(12, 7), sharex=True)
    ax1, ax2, ax3 = axes
    ax1.plot(range(len(buckets)), buckets, drawstyle="steps-post")
    ax1.set_ylabel("acked batches/s")
    ax2.scatter([x[0] for x in latencies], [x[1] for x in latencies], s=2)
    ax2.set_yscale("log")
    ax2.set_ylabel("publish latency s")
    for k, windows in result["unavailability_windows"].items():
        for a, b in windows:
            ax3.plot([a, b], [int(k), int(k)], linewidth=6)
    ax3.set_ylabel("unavailable (producer)")
    ax3.set_yticks(range(len(result["unavailability_windows"])))
    ax3.set_xlabel("run time s")
    for f in faults:
        for ax in axes:
            ax.axvspan(f.start, max(f.end, f.start + 0.2), color="red", alpha=0.15)
        ax1.text(f.start, max(buckets or [1]), f"{f.kind} {f.target}", rotation=90, fontsize=6,
                 va="top")  # fmt: skip
    fig.suptitle(
        f"pairq chaos {result['scenario']} seed {result['seed']}: acked {result['acked']}, "
        f"lost {result['lost']}, faults {result['faults']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write(
    run_dir: Path, result: dict[str, Any], producers: Any, consumers: Any, faults: list[FaultRecord]
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    result["false_takeover_logs"] = {
        node: partner_lines(run_dir / "logs" / f"{node}.log")
        for node in sorted({tk["by"] for tk in result["takeovers"] if tk["false"]})
    }
    result["timeline_png"] = (
        str(run_dir / "timeline.png")
        if timeline(run_dir / "timeline.png", result, producers.latencies, faults)
        else None
    )
    (run_dir / "report.json").write_text(json.dumps(result, indent=2, default=str))
    (run_dir / "summary.txt").write_text(summary(result, faults))
