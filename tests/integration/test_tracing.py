"""Publish, the broker's durable store and the consumer's handler form one trace."""

from __future__ import annotations

import json
import subprocess
import sys

_SCRIPT = r"""
import asyncio, json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pairq.client import Consumer, Producer
from pairq.testing import run_pair

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

async def main():
    async with run_pair() as (a, b):
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("request") as span:
            async with Producer([a.address]) as p:
                ack = await p.publish("t", b"traced")
            trace_id = span.get_span_context().trace_id
        async with Consumer("t", "c", [a.address, b.address], handler=lambda m: None) as c:
            await c.wait_idle(timeout=10)
    out = [[s.name, s.context.trace_id, s.kind.name, dict(s.attributes or {}).get("pairq.copies"),
            s.context.span_id, s.parent.span_id if s.parent else None]
           for s in exporter.get_finished_spans()]
    print(json.dumps({"trace_id": trace_id, "copies": ack.copies, "spans": out}))
asyncio.run(main())
"""


def test_publish_store_and_handler_share_one_trace() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    tid = out["trace_id"]
    by_name = {name: (t, kind, copies) for name, t, kind, copies, _, _ in out["spans"]}
    ids = {name: (sid, parent) for name, _, _, _, sid, parent in out["spans"]}
    assert by_name["t publish"] == (tid, "PRODUCER", 2), out["spans"]
    assert by_name["pairq publish"] == (tid, "SERVER", 2), out["spans"]
    assert by_name["t process"][:2] == (tid, "CONSUMER"), out["spans"]
    # producer span -> broker's publish span, and the handler's span under the producer's
    assert ids["pairq publish"][1] == ids["t publish"][0], out["spans"]
    assert ids["t process"][1] == ids["t publish"][0], out["spans"]
