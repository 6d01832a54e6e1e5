"""CPU a broker spends per traced message on its publish path, tracing off vs on.

    PYTHONPATH=. .venv/bin/python benchmarks/traced_publish_cpu.py [--rounds 30]

An in-process broker (``run_broker``, ``--sync=always``) takes 1,000-message
requests (``publish_messages`` with ``new_ids``, as a Producer's PublishStream
sends them; every message carries the traceparent of its own sampled trace, as
in ``run.py``'s traced measurement) with no tracer, then with an SDK tracer
whose BatchSpanProcessor encodes every batch for OTLP (pairq's encoder where
the tree has it, else the SDK's) and drops it; the two alternate, five requests
a turn, and the process CPU time (every thread: loop, store writer, span
exporter) per message is compared by median. No client, no gRPC, no disk wait
in the figure: the steady way to see what tracing costs the broker on a shared
machine, where ``telemetry_traced_on_vs_off_publish_ratio`` is noise-dominated.
Point ``PYTHONPATH`` at another checkout to measure another revision.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from pairq.testing import run_broker
from pairq.v1 import broker_pb2 as pb

encode: Callable[[Sequence[Any]], bytes]
try:
    from pairq.otlp_spans import encode_spans as _fast

    ENCODER = "pairq.otlp_spans"

    def encode(spans: Sequence[Any]) -> bytes:
        return ExportTraceServiceRequest.FromString(_fast(spans)).SerializeToString()

except ImportError:  # a revision without it: the SDK's encoder, as its exporter used
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as _sdk

    ENCODER = "the SDK's"

    def encode(spans: Sequence[Any]) -> bytes:
        return _sdk(spans).SerializeToString()  # type: ignore[no-any-return]


class EncodingExporter(SpanExporter):
    """Encodes each batch as the OTLP exporter would, then drops it."""

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        encode(spans)
        return SpanExportResult.SUCCESS


_rng = random.Random(16)
TRACEPARENTS = [
    f"00-{_rng.getrandbits(128) | 1:032x}-{_rng.getrandbits(64) | 1:016x}-01" for _ in range(4096)
]
BODY = bytes(range(200))
PER_REQUEST = 1000
REQUESTS_PER_TURN = 5


async def measure(rounds: int) -> dict[str, float]:
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(BatchSpanProcessor(EncodingExporter()))
    tracer = provider.get_tracer("pairq.broker")
    k = 0

    def request() -> list[pb.PublishItem]:
        nonlocal k
        items = [
            pb.PublishItem(
                id=os.urandom(16),
                body=BODY,
                headers={"traceparent": TRACEPARENTS[(k + i) % len(TRACEPARENTS)]},
            )
            for i in range(PER_REQUEST)
        ]
        k += PER_REQUEST
        return items

    per_msg: dict[bool, list[float]] = {False: [], True: []}
    async with run_broker(sync="always") as broker:
        for r in range(rounds):
            for on in (False, True) if r % 2 == 0 else (True, False):
                broker.tracer = tracer if on else None
                requests = [request() for _ in range(REQUESTS_PER_TURN)]
                t = time.process_time()
                for items in requests:
                    await broker.publisher.publish_messages("t", items, new_ids=True)
                spent = time.process_time() - t
                per_msg[on].append(spent / (REQUESTS_PER_TURN * PER_REQUEST) * 1e6)
    provider.shutdown()
    off, on = statistics.median(per_msg[False]), statistics.median(per_msg[True])
    return {"off_us": off, "on_us": on, "on_minus_off_us": on - off, "off_over_on": off / on}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30, help="turns of each (default 30)")
    args = ap.parse_args()
    r = asyncio.run(measure(args.rounds))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"broker publish path, CPU per traced message (median of {args.rounds} turns, "
        f"OTLP encoding: {ENCODER}; load {load}): off {r['off_us']:.2f} us, on "
        f"{r['on_us']:.2f} us, on - off {r['on_minus_off_us']:+.2f} us "
        f"(off / on {r['off_over_on']:.3f})"
    )


if __name__ == "__main__":
    main()
