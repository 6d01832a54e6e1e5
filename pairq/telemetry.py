"""OpenTelemetry setup shared by every pairq process: metrics and traces.

Metrics are served on a Prometheus endpoint (``--metrics-address``) and, when
the standard ``OTEL_EXPORTER_OTLP_*`` variables are set, exported by OTLP:
either, both, independently. Instruments are created through the global API
(``opentelemetry.metrics.get_meter("pairq.<part>")``) so library code never
depends on how (or whether) the SDK was configured.

Rules:
- every OTLP export (metrics and spans) has a 1 s deadline, and the providers
  are shut down at exit on a helper thread that the process waits for at most
  :data:`SHUTDOWN_TIMEOUT_S`: an unreachable collector never holds a stopping
  process longer than that (the SDK's own exit hook would retry for ~10 s);
- a unit is named once: instruments carry it as ``unit`` and the Prometheus
  exporter appends it (``pairq.publish.duration`` in s ->
  ``pairq_publish_duration_seconds``);
- samples carry no ``otel_scope_*`` labels (the Prometheus reader's scope info
  is off); the instrument names already say which part they belong to.

The names, units and labels are listed in the README's metrics reference.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import Link, SpanContext

from pairq.options import parse_hostport
from pairq.traceparent import parse_traceparent

log = logging.getLogger("pairq.telemetry")

_provider: MeterProvider | None = None
_tracing = False
_exit_hook = False
SHUTDOWN_TIMEOUT_S = 1.0
EXPORT_TIMEOUT_S = 1.0
# Seconds: a publish or a commit is a few ms when healthy, seconds when not.
LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def otlp_metrics_wanted() -> bool:
    """The standard variables ask for OTLP metrics export."""
    env = os.environ
    if env.get("OTEL_METRICS_EXPORTER", "otlp") == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    )


def _shutdown_at_exit() -> None:
    """Shut the providers down on a helper thread; wait for it at most
    SHUTDOWN_TIMEOUT_S (an unreachable collector must not hold the exit)."""
    import threading

    def run() -> None:
        from opentelemetry import trace

        with contextlib.suppress(Exception):
            if _provider is not None:
                _provider.shutdown(timeout_millis=SHUTDOWN_TIMEOUT_S * 1000)
        tp = trace.get_tracer_provider()
        with contextlib.suppress(Exception):
            shutdown = getattr(tp, "shutdown", None)
            if shutdown is not None:
                shutdown()

    t = threading.Thread(target=run, name="otel-shutdown", daemon=True)
    t.start()
    t.join(SHUTDOWN_TIMEOUT_S)
    if t.is_alive():
        log.warning(
            "telemetry: collector did not answer within %.0f s; not waiting", SHUTDOWN_TIMEOUT_S
        )


def _register_exit_hook() -> None:
    global _exit_hook
    if not _exit_hook:
        import atexit

        atexit.register(_shutdown_at_exit)
        _exit_hook = True


def setup_tracing(service_name: str) -> bool:
    """Install an SDK TracerProvider exporting by OTLP when the standard
    ``OTEL_EXPORTER_OTLP_*`` / ``OTEL_TRACES_EXPORTER`` variables ask for it."""
    global _tracing
    if _tracing:
        return True
    want = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "")
    if not want and exporter_name not in ("otlp", "console"):
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}), shutdown_on_exit=False
    )
    if exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from pairq.otlp_spans import otlp_span_exporter

        provider.add_span_processor(
            BatchSpanProcessor(
                otlp_span_exporter(timeout=EXPORT_TIMEOUT_S),
                export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000),
            )
        )
    trace.set_tracer_provider(provider)
    _register_exit_hook()
    _tracing = True
    return True


def tracing_active() -> bool:
    """Whether spans are recorded by a real SDK provider (else skip per-message work)."""
    from opentelemetry import trace

    return _tracing or type(trace.get_tracer_provider()).__name__ == "TracerProvider"


class MetricsHandle:
    def __init__(self, provider: MeterProvider, server: Any) -> None:
        self.provider = provider
        self.server = server

    def shutdown(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


def setup(
    service_name: str, metrics_address: str = "", *, prometheus: bool = False
) -> tuple[MeterProvider, Any]:
    """Install a MeterProvider with Prometheus (and OTLP if configured) readers, once.

    ``metrics_address``: serve ``/metrics`` there (prometheus_client's own server);
    ``prometheus``: the Prometheus reader without a server, for a process that
    serves ``prometheus_client``'s registry itself (``pairq admin``)."""
    global _provider
    readers: list[Any] = []
    server = None
    if metrics_address or prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader(scope_info_enabled=False))
    if metrics_address:
        from prometheus_client import start_http_server

        host, port = parse_hostport(metrics_address, what="--metrics-address")
        server, _thread = start_http_server(port, addr=host)
    if otlp_metrics_wanted():
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(timeout=EXPORT_TIMEOUT_S),
                export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
            )
        )
    if _provider is None:
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

        _provider = MeterProvider(
            metric_readers=readers,
            resource=Resource.create({"service.name": service_name}),
            shutdown_on_exit=False,
            views=[
                View(
                    instrument_name="pairq.*.duration",
                    aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_S),
                ),
                View(
                    instrument_name="pairq.*.size",
                    aggregation=ExplicitBucketHistogramAggregation(SIZE_BUCKETS),
                ),
            ],
        )
        metrics.set_meter_provider(_provider)
        _register_exit_hook()
    return _provider, server


def start_metrics(address: str, broker: Any) -> MetricsHandle:
    """Broker gauges (depth, in-flight, store use) read at scrape time."""
    provider, server = setup("pairq-broker", address)
    meter = metrics.get_meter("pairq.broker")

    def depth(_: CallbackOptions) -> list[Observation]:
        out = []
        for t in list(broker.topics.values()):
            for c in list(t.channels.values()):
                attrs = {"topic": t.name, "channel": c.name}
                out.append(Observation(c.depth, attrs))
        return out

    def in_flight(_: CallbackOptions) -> list[Observation]:
        return [
            Observation(c.core.in_flight, {"topic": t.name, "channel": c.name})
            for t in list(broker.topics.values())
            for c in list(t.channels.values())
        ]

    def delivered(_: CallbackOptions) -> list[Observation]:
        return [
            Observation(c.core.delivered, {"topic": t.name, "channel": c.name})
            for t in list(broker.topics.values())
            for c in list(t.channels.values())
        ]

    def published(_: CallbackOptions) -> list[Observation]:
        return [
            Observation(t.message_count, {"topic": t.name}) for t in list(broker.topics.values())
        ]

    def store_bytes(_: CallbackOptions) -> list[Observation]:
        return [Observation(broker.store.used_bytes)]

    def commits(_: CallbackOptions) -> list[Observation]:
        return [Observation(broker.store.commits)]

    def pair_lag(_: CallbackOptions) -> list[Observation]:
        pair = broker.pair
        return (
            [] if pair is None else [Observation(pair.stats().replication_lag, {"pair": pair.name})]
        )

    def pair_lease(_: CallbackOptions) -> list[Observation]:
        pair = broker.pair
        return [] if pair is None else [Observation(pair.lease_remaining(), {"pair": pair.name})]

    def pair_standby(_: CallbackOptions) -> list[Observation]:
        pair = broker.pair
        return [] if pair is None else [Observation(pair.standby.count(), {"pair": pair.name})]

    def pair_takeovers(_: CallbackOptions) -> list[Observation]:
        pair = broker.pair
        return [] if pair is None else [Observation(pair.takeovers, {"pair": pair.name})]

    meter.create_observable_gauge(
        "pairq_pair_replication_lag",
        [pair_lag],
        description="messages published here the partner has not acknowledged (1 copy)",
    )
    meter.create_observable_gauge(
        "pairq_pair_lease_remaining",
        [pair_lease],
        unit="s",
        description="delivery lease left (0: fenced)",
    )
    meter.create_observable_gauge(
        "pairq_pair_standby_messages",
        [pair_standby],
        description="standby copies held for the partner",
    )
    meter.create_observable_counter(
        "pairq_pair_takeovers", [pair_takeovers], description="takeovers of the partner's messages"
    )

    def pair_auth_failures(_: CallbackOptions) -> list[Observation]:
        pair = broker.pair
        return [] if pair is None else [Observation(pair.state.auth_failures, {"pair": pair.name})]

    meter.create_observable_counter(
        "pairq_pair_auth_failures",
        [pair_auth_failures],
        description="replication sessions refused: the peer failed the pair-secret proof",
    )

    _integrity_instruments(meter, broker)
    _channel_instruments(meter, broker)
    _histograms(meter, broker)
    meter.create_observable_gauge("pairq_channel_depth", [depth], description="messages waiting")
    meter.create_observable_gauge(
        "pairq_channel_in_flight", [in_flight], description="messages in flight"
    )
    meter.create_observable_counter(
        "pairq_channel_delivered", [delivered], description="deliveries"
    )
    meter.create_observable_counter(
        "pairq_topic_published", [published], description="messages published"
    )
    meter.create_observable_gauge(
        "pairq_store_bytes", [store_bytes], unit="By", description="store size"
    )
    meter.create_observable_counter("pairq_store_commits", [commits], description="group commits")

    def inline_commits(_: CallbackOptions) -> list[Observation]:
        return [Observation(broker.store.inline_commits)]

    meter.create_observable_counter(
        "pairq_store_inline_commits",
        [inline_commits],
        description="commits made on the event loop, the writer thread idle (--inline-commit-us)",
    )
    return MetricsHandle(provider, server)


def _channel_instruments(meter: Any, broker: Any) -> None:
    """Everything ``pairq stat`` shows per channel and topic, read at collection time."""

    def per_channel(read: Any) -> Any:
        def cb(_: CallbackOptions) -> list[Observation]:
            return [
                Observation(read(c), {"topic": t.name, "channel": c.name})
                for t in list(broker.topics.values())
                for c in list(t.channels.values())
            ]

        return cb

    counters = {
        "pairq_channel_requeued": ("requeues (REQ and timeouts)", lambda c: c.core.requeued),
        "pairq_channel_timed_out": ("in-flight timeouts", lambda c: c.core.timed_out),
        "pairq_channel_finished": ("messages finished (FIN)", lambda c: c.core.finished),
        "pairq_channel_dead_lettered": (
            "messages moved to the dead-letter list",
            lambda c: c.core.dead_lettered,
        ),
    }
    for name, (desc, read) in counters.items():
        meter.create_observable_counter(name, [per_channel(read)], description=desc)
    gauges = {
        "pairq_channel_deferred": ("messages deferred, not yet due", lambda c: c.core.deferred),
        "pairq_channel_dead_letters": (
            "messages now in the dead-letter list",
            lambda c: c.dlq_count,
        ),
        "pairq_channel_clients": ("connected consumers", lambda c: len(c.subscribers)),
        "pairq_channel_paused": ("1 while delivery is paused", lambda c: int(c.core.paused)),
    }
    for name, (desc, read) in gauges.items():
        meter.create_observable_gauge(name, [per_channel(read)], description=desc)

    def topic_depth(_: CallbackOptions) -> list[Observation]:
        return [Observation(t.depth, {"topic": t.name}) for t in list(broker.topics.values())]

    meter.create_observable_gauge(
        "pairq_topic_depth", [topic_depth], description="messages retained for the topic"
    )


def _histograms(meter: Any, broker: Any) -> None:
    """Publish latency (by copies), store commit latency and size, periodic fsync time,
    replication round trip, end-to-end processing latency."""
    publish = meter.create_histogram(
        "pairq.publish.duration",
        unit="s",
        description="publish request to durable answer, by the copies it got",
    )
    commit = meter.create_histogram(
        "pairq.store.commit.duration",
        unit="s",
        description="one group commit (with sync=always, its commit log write or fsync included)",
    )
    size = meter.create_histogram(
        "pairq.store.commit.size", unit="{write}", description="writes per group commit"
    )
    fsync = meter.create_histogram(
        "pairq.store.fsync.duration",
        unit="s",
        description="one fsync of the data file: a checkpoint (sync=always with a commit log) "
        "or a periodic fsync (sync=periodic)",
    )
    replicate = meter.create_histogram(
        "pairq.replication.duration",
        unit="s",
        description="records handed to the partner until its ack (its fsync included)",
    )
    attrs = {c: {"copies": str(c)} for c in range(3)}

    def on_published(seconds: float, copies: int, _n: int) -> None:
        publish.record(seconds, attrs.get(copies) or {"copies": str(copies)})

    def on_commit(seconds: float, writes: int) -> None:
        commit.record(seconds)
        size.record(writes)

    end_to_end = meter.create_histogram(
        "pairq.message.end_to_end.duration",
        unit="s",
        description="a message's publish accepted (its timestamp) to its FIN at the owner",
    )
    broker.ctx.telemetry.on_finished = end_to_end_hook(end_to_end.record)
    broker.publisher.on_published = on_published
    broker.publisher.on_replicated = replicate.record
    broker.store.on_commit = on_commit
    broker.store.on_fsync = fsync.record


def end_to_end_hook(record: Any, clock: Any = time.time_ns) -> Any:
    """The ``on_finished`` hook: for each finished message, the seconds from its
    ``timestamp_ns`` (set when the broker that took the publish accepted it) to now
    (``clock``, wall time in ns), labelled by topic and channel. Requeues and
    redeliveries are inside the figure; a message without a timestamp is skipped;
    clock skew between the brokers of a pair (a message finished after a takeover)
    is clamped at 0."""
    from pairq.broker.wire import message_timestamp_ns

    labels: dict[tuple[str, str], dict[str, str]] = {}

    def on_finished(topic: str, channel: str, entries: list[Any]) -> None:
        attrs = labels.get((topic, channel))
        if attrs is None:
            attrs = labels[(topic, channel)] = {"topic": topic, "channel": channel}
        now = clock()
        for e in entries:
            ts = message_timestamp_ns(e.payload)
            if ts:
                record(max(0, now - ts) / 1e9, attrs)

    return on_finished


def start_lookup_metrics(address: str, lookup: Any) -> MetricsHandle:
    """Lookup gauges read at collection time: registered brokers by liveness, open
    registration streams, known topics, live tombstones."""
    provider, server = setup("pairq-lookup", address)
    meter = metrics.get_meter("pairq.lookup")

    def nodes() -> list[Any]:
        return list(lookup.registry.nodes(lookup.clock()))

    def brokers(_: CallbackOptions) -> list[Observation]:
        counts = {"alive": 0, "suspect": 0, "dead": 0}
        for n in nodes():
            counts[n.status.liveness.name.lower()] += 1
        return [Observation(v, {"liveness": k}) for k, v in counts.items()]

    def streams(_: CallbackOptions) -> list[Observation]:
        return [Observation(sum(1 for n in nodes() if n.status.connected))]

    def topics(_: CallbackOptions) -> list[Observation]:
        return [Observation(len(lookup.registry.topics(lookup.clock())))]

    def tombstones(_: CallbackOptions) -> list[Observation]:
        return [Observation(sum(len(n.tombstones) for n in nodes()))]

    meter.create_observable_gauge(
        "pairq_lookup_brokers", [brokers], description="registered brokers, by liveness"
    )
    meter.create_observable_gauge(
        "pairq_lookup_registration_streams",
        [streams],
        description="brokers whose Register stream to this lookup is open",
    )
    meter.create_observable_gauge("pairq_lookup_topics", [topics], description="topics known")
    meter.create_observable_gauge(
        "pairq_lookup_tombstones", [tombstones], description="live topic tombstones"
    )
    return MetricsHandle(provider, server)


# ---------------------------------------------------------------- broker traces
DEFAULT_MAX_LINKS = 32


def _link_limit() -> int:
    """``OTEL_SPAN_LINK_COUNT_LIMIT`` when set (the SDK's own limit on links), else 32."""
    try:
        return max(0, int(os.environ.get("OTEL_SPAN_LINK_COUNT_LIMIT", DEFAULT_MAX_LINKS)))
    except ValueError:
        return DEFAULT_MAX_LINKS


MAX_LINKS = _link_limit()
"""Links a broker span carries at most: 32 unless the standard
``OTEL_SPAN_LINK_COUNT_LIMIT`` says otherwise (the SDK's default is 128; a link
costs the broker a few µs of CPU to parse, create and encode, 10-20 µs with the
SDK's own OTLP encoder, so with every message of a 1,000-message request in its
own sampled trace 128 links cost about 0.8x of untraced throughput then and 32
about 0.9x); further contexts are counted in the span's ``pairq.links_dropped``
attribute."""

_SAMPLED_DIGITS = frozenset("13579bdf")  # the low hex digit of flags with bit 0 set


def batch_contexts(
    traceparents: Sequence[str], max_links: int = MAX_LINKS
) -> tuple[SpanContext | None, list[Link], int]:
    """(parent, links, dropped) for ONE span over a batch of traced messages, as
    OpenTelemetry's messaging conventions do for batches.

    Rules, in the batch's order:
    - invalid values are ignored; a value seen before (one producer span on
      several messages) counts once;
    - the parent is the first sampled context; with none sampled, the first
      valid one (the span is then not sampled either, so it needs no links);
    - each other sampled context is a link, up to ``max_links``; ``dropped``
      counts the values after the one that reached the cap, unread (neither
      parsed nor deduplicated: reading 1,000 values to count the distinct sampled
      ones cost more than the whole span, about 50 us a request);
    - a context not sampled is never linked: nobody records its trace.
    Nothing valid: (None, [], 0). The sampled test reads the flags' low hex digit
    before any parse, so unsampled traffic costs no parse beyond the parent's."""
    seen: set[str] = set()
    sampled = _SAMPLED_DIGITS
    parent: SpanContext | None = None
    contexts: list[SpanContext] = []
    dropped = 0
    for i, tp in enumerate(traceparents):
        if len(tp) < 55 or tp[54] not in sampled or tp in seen:
            continue
        seen.add(tp)
        sc = parse_traceparent(tp)
        if sc is None:
            continue
        if parent is None:
            parent = sc
        else:
            contexts.append(sc)
        if len(contexts) >= max_links:  # at the cap: the rest is only counted
            dropped = len(traceparents) - i - 1
            break
    if parent is None:  # none sampled: the first valid one, unlinked
        for tp in traceparents:
            parent = parse_traceparent(tp)
            if parent is not None:
                break
        return parent, [], 0
    return parent, [Link(sc) for sc in contexts], dropped


def batch_span(
    tracer: Any, name: str, kind: Any, traceparents: Sequence[str], attributes: dict[str, Any]
) -> Any:
    """Start ONE span (the caller ends it) for a batch of traced messages: child of
    the first traced context, linked to the others (:func:`batch_contexts`), with
    ``attributes`` plus ``pairq.links_dropped`` when the cap was reached. A root
    span when no value is valid (as a single bad traceparent always gave)."""
    from opentelemetry.context import Context
    from opentelemetry.trace import NonRecordingSpan, set_span_in_context

    parent, links, dropped = batch_contexts(traceparents)
    if dropped:
        attributes["pairq.links_dropped"] = dropped
    ctx = set_span_in_context(NonRecordingSpan(parent)) if parent is not None else Context()
    return tracer.start_span(name, context=ctx, kind=kind, links=links, attributes=attributes)


def _integrity_instruments(meter: Any, broker: Any) -> None:
    """Record integrity (pairq/broker/integrity.py): what ``GetStats.integrity`` shows."""

    def counter(attr: str) -> Callable[[CallbackOptions], list[Observation]]:
        def observe(_: CallbackOptions) -> list[Observation]:
            return [Observation(getattr(broker.store.integrity, attr))]

        return observe

    for name, attr, what in (
        (
            "pairq_integrity_checksum_failures",
            "failures",
            "stored records that failed their checksum",
        ),
        (
            "pairq_integrity_missing_records",
            "missing",
            "records the log no longer returned, unexplained",
        ),
        (
            "pairq_integrity_repairs",
            "repairs",
            "bad records rewritten from the partner's good copy",
        ),
        (
            "pairq_integrity_quarantined",
            "quarantined",
            "records with no good copy anywhere, set aside",
        ),
    ):
        meter.create_observable_counter(name, [counter(attr)], description=what)

    def scrub_checked(_: CallbackOptions) -> list[Observation]:
        i = broker.integrity
        return [] if i is None else [Observation(i.scrub_checked)]

    def last_scrub(_: CallbackOptions) -> list[Observation]:
        i = broker.integrity
        return [] if i is None or not i.last_scrub_ns else [Observation(i.last_scrub_ns / 1e9)]

    meter.create_observable_gauge(
        "pairq_integrity_scrub_checked",
        [scrub_checked],
        description="records the running or last scrub checked",
    )
    meter.create_observable_gauge(
        "pairq_integrity_last_scrub_time",
        [last_scrub],
        unit="s",
        description="when the last complete scrub ended (Unix time)",
    )


def install_broker_tracing(broker: Any) -> None:
    """With a tracer on the broker, a ``pairq deliver`` span for each delivery batch
    with a traced message sent to a subscriber (``TelemetryHooks.on_delivered``);
    nothing otherwise."""
    tracer = broker.tracer
    if tracer is None:
        return
    broker.ctx.telemetry.on_delivered = deliver_spans(tracer, lambda: broker.node_id)


def deliver_spans(tracer: Any, node_id: Any) -> Any:
    """The ``on_delivered`` hook: for each batch of entries sent to one subscriber
    that holds a message carrying a traceparent (a cheap byte test first: messages
    without headers are skipped undecoded), ONE ``pairq deliver`` span marking the
    hand-off: child of the first traced message's producer span, linked to the
    others' (:func:`batch_span`); ``messaging.batch.message_count`` counts every
    entry of the batch. With one entry, also its id and this delivery's number
    (``pairq.attempts``)."""
    from opentelemetry.trace import SpanKind

    from pairq.broker import wire
    from pairq.v1 import broker_pb2 as pb

    def on_delivered(topic: str, channel: str, entries: list[Any]) -> None:
        traced: list[str] = []
        for e in entries:
            m = e.payload
            if not wire.has_headers(m) or b"traceparent" not in m:
                continue
            tp = pb.Message.FromString(m).headers.get("traceparent")
            if tp:
                traced.append(tp)
        if not traced:
            return
        attributes: dict[str, Any] = {
            "messaging.system": "pairq",
            "messaging.operation": "deliver",
            "messaging.destination.name": topic,
            "messaging.consumer.group.name": channel,
            "messaging.batch.message_count": len(entries),
            "pairq.broker_id": node_id(),
        }
        if len(entries) == 1:
            attributes["messaging.message.id"] = entries[0].id.hex()
            attributes["pairq.attempts"] = entries[0].attempts
        batch_span(tracer, "pairq deliver", SpanKind.PRODUCER, traced, attributes).end()

    return on_delivered


def replicate_span(tracer: Any, traces: Sequence[Any], records: int, broker_id: str) -> Any:
    """ONE ``pairq replicate`` span (SERVER) for a replicated batch carrying
    ``ReplicaTrace``s: child of the first one's ``pairq publish`` span on the
    owner, linked to the others' (:func:`batch_span`), from the batch's arrival to
    its commit here (the caller ends it). ``records``: the batch's appended records
    (``messaging.batch.message_count``); the topic is named when every trace has
    the same one, the message id when the batch holds one record (a trace names
    the first traced message of its publish request, which may hold more)."""
    from opentelemetry.trace import SpanKind

    attributes: dict[str, Any] = {
        "messaging.system": "pairq",
        "messaging.operation": "replicate",
        "messaging.batch.message_count": records,
        "pairq.broker_id": broker_id,
    }
    topics = {t.topic for t in traces}
    if len(topics) == 1:
        attributes["messaging.destination.name"] = traces[0].topic
    if len(traces) == 1 and records == 1:
        attributes["messaging.message.id"] = bytes(traces[0].message_id).hex()
    return batch_span(
        tracer, "pairq replicate", SpanKind.SERVER, [t.traceparent for t in traces], attributes
    )
