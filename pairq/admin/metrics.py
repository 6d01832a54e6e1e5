"""``pairq admin``'s own metrics, served on its ``/metrics`` (Prometheus text).

The page carries what ``prometheus_client`` collects of the process itself
(``process_*``: CPU, memory, open files; ``python_*``: the interpreter and its
GC) and the console's own counters, read at scrape time from ``AdminCounters``:

- ``pairq_admin_polls_total``: polls of the cluster completed;
- ``pairq_admin_poll_errors_total`` (``kind``): ``lookup`` / ``broker``: a lookup or a
  broker that did not answer in a poll (one per target per poll); ``poll``: a
  poll that failed as a whole;
- ``pairq_admin_actions_total`` (``verb``, ``result`` ``ok`` / ``error``): actions
  carried out (or refused by the cluster), as the audit log records them.

With the standard ``OTEL_EXPORTER_OTLP_*`` variables set they are exported by
OTLP too (``pairq.telemetry.setup``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AdminCounters", "render", "start_admin_metrics"]


@dataclass
class AdminCounters:
    """What the console counts (plain integers: the instruments read them)."""

    polls: int = 0
    poll_errors: Counter[str] = field(default_factory=Counter)  # kind -> count
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (verb, result)

    def polled(self, snapshot: Any) -> None:
        """A poll completed with ``snapshot`` (``cluster.Snapshot``)."""
        self.polls += 1
        self.poll_errors["lookup"] += sum(1 for lk in snapshot.lookups if not lk.get("ok"))
        self.poll_errors["broker"] += sum(1 for n in snapshot.nodes if n.get("error"))

    def poll_failed(self) -> None:
        self.poll_errors["poll"] += 1

    def acted(self, verb: str, ok: bool) -> None:
        self.actions[(verb, "ok" if ok else "error")] += 1


_current: list[AdminCounters] = []  # the instruments read the latest console's counters


def start_admin_metrics(counters: AdminCounters) -> None:
    """Install the meter provider (a Prometheus reader, no server of its own) and the
    console's instruments, once per process; later calls switch them to ``counters``."""
    if _current:
        _current[0] = counters
        return
    _current.append(counters)
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation

    from pairq.telemetry import setup

    setup("pairq-admin", prometheus=True)
    meter = metrics.get_meter("pairq.admin")

    def polls(_: CallbackOptions) -> list[Observation]:
        return [Observation(_current[0].polls)]

    def poll_errors(_: CallbackOptions) -> list[Observation]:
        c = _current[0].poll_errors
        return [Observation(c[k], {"kind": k}) for k in ("lookup", "broker", "poll")]

    def actions(_: CallbackOptions) -> list[Observation]:
        return [
            Observation(n, {"verb": verb, "result": result})
            for (verb, result), n in sorted(_current[0].actions.items())
        ]

    meter.create_observable_counter(
        "pairq_admin_polls", [polls], description="polls of the cluster completed"
    )
    meter.create_observable_counter(
        "pairq_admin_poll_errors",
        [poll_errors],
        description="lookups or brokers that did not answer a poll (kind lookup, broker), "
        "polls that failed (kind poll)",
    )
    meter.create_observable_counter(
        "pairq_admin_actions",
        [actions],
        description="console actions carried out (result ok) or refused (result error)",
    )


def render() -> tuple[bytes, str]:
    """(body, content type) of the ``/metrics`` page."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
