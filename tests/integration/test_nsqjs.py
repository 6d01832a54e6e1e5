"""nsqjs (NSQ's Node.js client, from npm, unchanged) publishes to and consumes from a
real pairq pair over the NSQ TCP protocol: FIN, REQ and TOUCH, every message arrives.

The Node side is tests/nsqjs/pairq_nsqjs.js; its dependencies are pinned by
tests/nsqjs/package-lock.json and installed with ``npm ci``. The Writer is given a
broker's NSQ address (as NSQ producers are given an nsqd); the Reader only the lookup's
nsqlookupd HTTP API (``lookupdHTTPAddresses``), through which it finds both brokers of
the pair, as NSQ consumers run.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_nsq_tcp import lookup_lists, nsq_lookup

from pairq.testing import eventually, run_pair

NSQJS = Path(__file__).resolve().parents[1] / "nsqjs"
TOPIC = "nsqjs"
COUNT = 200
MSG_TIMEOUT_MS = 1000


@pytest.fixture(scope="module")
def nsqjs() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are not installed: install Debian's nodejs and npm")
    proc = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=NSQJS,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"npm ci failed:\n{proc.stdout}\n{proc.stderr}"
    return NSQJS / "pairq_nsqjs.js"


async def run_node(script: Path, config: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        json.dumps(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=script.parent,
    )
    out, err = await asyncio.wait_for(proc.communicate(), config["timeoutMs"] / 1000 + 20)
    lines = out.decode().strip().splitlines()
    result = json.loads(lines[-1]) if lines else {}
    return proc.returncode or 0, result, err.decode()


async def test_nsqjs_writer_and_reader_against_a_pair(nsqjs: Path, tmp_path: Path) -> None:
    lk = await nsq_lookup()
    try:
        await _writer_and_reader(nsqjs, tmp_path, lk)
    finally:
        await lk.stop()


async def _writer_and_reader(nsqjs: Path, tmp_path: Path, lk: Any) -> None:
    async with run_pair(tmp_path, nsq_tcp_address="127.0.0.1:0", lookup=(lk.address,)) as (a, b):
        addresses = [f"127.0.0.1:{x.nsq_tcp.port}" for x in (a, b)]
        for x in (a, b):
            await x.get_topic(TOPIC)  # registered: the Reader finds both brokers
        await lookup_lists(lk, 2, TOPIC)
        config = {
            "writer": addresses[0],
            "lookupd": [lk.http_address],
            "topic": TOPIC,
            "channel": "work",
            "count": COUNT,
            "msgTimeoutMs": MSG_TIMEOUT_MS,
            "timeoutMs": 60_000,
        }
        code, result, stderr = await run_node(nsqjs, config)
        print(stderr[-4000:], file=sys.stderr)
        assert code == 0, f"nsqjs did not finish every message: {result} {stderr[-2000:]}"
        published = set(result["published"])
        expected = {"req-0", "touch-0", "late", *(f"m-{i}" for i in range(COUNT))}
        assert published == expected, "every publish was acknowledged"
        received = result["received"]
        assert set(received) == expected, "every message arrived"
        # REQ: redelivered with attempts 2, the same id
        req = received["req-0"]
        assert [att for _, att in req] == [1, 2] and req[0][0] == req[1][0]
        # TOUCH kept it in flight past its 1 s msg timeout: delivered once
        assert [att for _, att in received["touch-0"]] == [1]
        ids = {deliveries[0][0] for deliveries in received.values()}
        assert len(ids) == len(expected), "distinct messages have distinct NSQ ids"
        assert all(len(i) == 16 for i in ids)
        assert result["errors"] == []
        # the pair holds nothing more for the channel, and saw no timeout

        def channel(broker: Any) -> Any:
            return broker.stats(TOPIC, "work").topics[0].channels[0]

        await eventually(lambda: channel(a).finished == len(expected), timeout=10)
        owner = channel(a)
        assert owner.timed_out == 0 and owner.requeued == 1
        for broker in (a, b):
            assert channel(broker).depth == 0 and channel(broker).in_flight == 0


@pytest.mark.timeout(180)
async def test_nsqjs_messages_survive_kill_9_of_the_owner(nsqjs: Path, tmp_path: Path) -> None:
    """nsqjs publishes to the owner of a real pair (processes); the owner is killed with
    SIGKILL; an nsqjs Reader given only the lookup finishes every acked message."""
    from test_nsq_tcp import make_pair, print_logs, wait_pair

    lk = await nsq_lookup()
    a, b, na, _ = make_pair(tmp_path, "--lookup", lk.address)
    a.start()
    b.start()
    try:
        await wait_pair(a, b)
        base = {
            "writer": f"127.0.0.1:{na}",
            "lookupd": [lk.http_address],
            "topic": TOPIC,
            "channel": "work",
            "count": COUNT,
            "msgTimeoutMs": MSG_TIMEOUT_MS,
            "timeoutMs": 60_000,
        }
        code, result, stderr = await run_node(nsqjs, {**base, "mode": "publish"})
        assert code == 0, f"{result} {stderr[-2000:]}"
        acked = result["published"]
        assert len(acked) == COUNT and result["errors"] == []
        await lookup_lists(lk, 2, TOPIC)  # both brokers hold the topic (the partner as standby)
        a.kill()
        code, result, stderr = await run_node(nsqjs, {**base, "mode": "consume", "expect": acked})
        assert code == 0, f"not every acked message arrived after the kill: {stderr[-2000:]}"
        assert set(result["received"]) == set(acked)
        # recovery: the owner restarts, the pair heals and takes nsqjs publishes again
        a.start()
        await wait_pair(a, b, timeout=30)
        code, result, stderr = await run_node(nsqjs, {**base, "mode": "publish"})
        assert code == 0 and len(result["published"]) == COUNT, stderr[-2000:]
    except BaseException:
        print_logs(tmp_path)
        raise
    finally:
        a.stop()
        b.stop()
        await lk.stop()
