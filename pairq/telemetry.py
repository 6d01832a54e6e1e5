"""OpenTelemetry setup shared by every pairq process: metrics and traces.

Metrics are served on a Prometheus endpoint (``--metrics-address``) and, when
the standard ``OTEL_EXPORTER_OTLP_*`` variables are set, exported by OTLP.
Instruments are created through the global API
(``opentelemetry.metrics.get_meter("pairq.<part>")``) so library code never
depends on how (or whether) the SDK was configured.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource

from pairq.options import parse_hostport

log = logging.getLogger("pairq.telemetry")

_provider: MeterProvider | None = None
_tracing = False


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

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
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


def setup(service_name: str, metrics_address: str = "") -> tuple[MeterProvider, Any]:
    """Install a MeterProvider with Prometheus (and OTLP if configured) readers, once."""
    global _provider
    readers: list[Any] = []
    server = None
    if metrics_address:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        host, port = parse_hostport(metrics_address, what="--metrics-address")
        readers.append(PrometheusMetricReader())
        server, _thread = start_http_server(port, addr=host)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if _provider is None:
        _provider = MeterProvider(
            metric_readers=readers, resource=Resource.create({"service.name": service_name})
        )
        metrics.set_meter_provider(_provider)
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
    return MetricsHandle(provider, server)
