"""The fast subset of the fuzzing (``make fuzz`` runs at least 1,000,000 inputs)."""

from __future__ import annotations

import random
from pathlib import Path

from fuzzlib import flood, fuzz_decoders, mutate
from hypothesis import given, settings
from hypothesis import strategies as st

from pairq.errors import Undecodable, decoder
from pairq.v1 import broker_pb2 as pb


def test_every_decoder_survives_20000_fuzzed_inputs() -> None:
    totals = fuzz_decoders(20_000, seed=random.randrange(2**32))
    assert sum(totals.values()) == 20_000


@given(st.binary(max_size=300), st.integers(0, 2**32 - 1))
@settings(max_examples=300, deadline=None)
def test_deserializers_never_raise(data: bytes, seed: int) -> None:
    for cls in (pb.PublishBatchRequest, pb.SubscribeRequest, pb.ListDeadLettersRequest):
        for raw in (data, mutate(random.Random(seed), data)):
            out = decoder(cls)(raw)
            assert isinstance(out, cls | Undecodable)


async def test_flood_of_malformed_requests_while_a_workload_runs(tmp_path: Path) -> None:
    report = await flood(tmp_path, rpcs=600, clients=3, seed=random.randrange(2**16))
    assert report.total >= 600 and not report.bad
    assert report.received == report.published > 0
