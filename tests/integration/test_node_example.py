"""examples/node/ against a real pair (issue 17, item 2): a Node.js producer and consumer
written from proto/ alone publish (Publish and PublishBatch) to both brokers, consume
from both with RDY/FIN/REQ/TOUCH, de-duplicate by id and decode ErrorInfo details.

The example is copied to a temporary directory and installed there with ``npm ci``
(its package-lock.json), so node_modules never appears in the repository. Needs
``node`` and ``npm`` (Debian: nodejs, npm); the test fails saying so without them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from pairq.testing import eventually, run_pair

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "node"
SOURCES = ("package.json", "package-lock.json", "pairq.js", "args.js", "producer.js", "consumer.js")
PER_BROKER = 25  # messages published to each broker: 5 with Publish, 20 in batches of 8


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "node and npm are needed for the Node.js example test (apt-get install nodejs npm)"
        )
    return node, npm


async def _run(*cmd: str, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    """Run ``cmd``; its stdout, or a failure with its output."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{cmd} did not finish within {timeout} s")
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{out.decode()}\n{err.decode()}"
    return out.decode()


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example, installed with ``npm ci`` in a temporary copy."""
    _, npm = _tools()
    work = tmp_path_factory.mktemp("node-example")
    for name in SOURCES:
        shutil.copy(EXAMPLE / name, work / name)
    asyncio.run(
        _run(npm, "ci", "--no-audit", "--no-fund", "--loglevel=error", cwd=work, timeout=120)
    )
    assert (work / "node_modules" / "@grpc" / "grpc-js").is_dir()
    return work


async def test_node_producer_and_consumer_on_a_pair(example: Path, tmp_path: Path) -> None:
    node, _ = _tools()
    env = {**os.environ, "PAIRQ_PROTO_DIR": str(ROOT / "proto")}

    async def js(script: str, *args: str) -> Any:
        out = await _run(node, script, *args, cwd=example, timeout=30, env=env)
        return json.loads(out.strip().splitlines()[-1])

    async with run_pair(tmp_path, max_batch=8) as (a, b):
        topic = "node-orders"
        # One producer per broker: each broker owns (and alone delivers) its half.
        pa, pb_ = await asyncio.gather(
            js("producer.js", "--broker", a.address, "--topic", topic, "--count",
               str(PER_BROKER), "--prefix", "a", "--demo-errors"),
            js("producer.js", "--broker", b.address, "--topic", topic, "--count",
               str(PER_BROKER), "--prefix", "b"),
        )  # fmt: skip
        published = set(pa["ids"]) | set(pb_["ids"])
        assert len(published) == 2 * PER_BROKER
        assert set(pa["copies"]) == {2} and set(pb_["copies"]) == {2}
        assert pa["limits"]["max_batch"] == 8
        # The refusals, decoded from grpc-status-details-bin by the Node client.
        empty, too_many = pa["errors"]
        assert empty["status"] == "INVALID_ARGUMENT"
        assert empty["reason"] == "ERROR_CODE_BAD_MESSAGE" and empty["domain"] == "pairq.dev"
        assert too_many["status"] == "RESOURCE_EXHAUSTED"
        assert too_many["reason"] == "ERROR_CODE_BAD_BATCH"
        assert too_many["metadata"] == {"limit": "max_batch", "max": "8"}

        # The consumer is given broker A only and finds B through GetStats.
        got = await js(
            "consumer.js", "--broker", a.address, "--topic", topic, "--channel", "billing",
            "--expect", str(2 * PER_BROKER), "--requeue", "1", "--touch", "3",
            "--timeout-ms", "20000",
        )  # fmt: skip
        assert got["ok"], got
        assert sorted(got["brokers"]) == sorted([a.address, b.address])
        handled = got["handled"]
        assert set(handled) == published  # every message, each handled once (keys unique)
        bodies = sorted(h["body"] for h in handled.values())
        assert bodies == sorted(
            [f"a-{i}" for i in range(PER_BROKER)] + [f"b-{i}" for i in range(PER_BROKER)]
        )
        # Each broker delivered the messages published to it.
        for h in handled.values():
            assert h["broker"] == (a.address if h["body"].startswith("a-") else b.address)
        # The REQ'd message came back, counted as a second attempt.
        [(req_id, first_attempts)] = got["requeued"].items()
        assert first_attempts == 1 and handled[req_id]["attempts"] == 2
        # No SubscribeError frame: every FIN, REQ and TOUCH named a message in flight.
        assert got["stream_errors"] == [] and got["frame_errors"] == []

        # Every FIN reached its broker: nothing left queued or in flight on either.
        def drained() -> bool:
            for br in (a, b):
                st = br.stats(topic, "billing", False)
                [ch] = st.topics[0].channels
                if ch.depth or ch.in_flight or ch.finished < PER_BROKER:
                    return False
            return True

        await eventually(drained, timeout=10)
