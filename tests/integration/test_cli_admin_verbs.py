"""``pairq topic|channel|peek|dlq purge|stat`` against real brokers, and every
command ending quietly on a closed pipe."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import grpc
import pytest
from rawclient import RawSub

from pairq import cli
from pairq.client import Producer
from pairq.testing import eventually, free_port, run_broker, run_pair
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


async def test_topic_and_channel_verbs_reach_both_brokers_of_a_pair(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with run_pair() as (a, b):
        async with Producer([a.address, b.address]) as p:
            await p.publish("t", b"x")
        both = ["--broker", a.address, "--broker", b.address]
        assert await run_cli("channel", "create", "t", "c", *both) == 0
        assert await run_cli("topic", "pause", "t", *both) == 0
        assert a.topics["t"].paused and b.topics["t"].paused
        assert await run_cli("channel", "pause", "t", "c", *both) == 0
        assert a.topics["t"].channels["c"].core.paused and b.topics["t"].channels["c"].core.paused
        assert await run_cli("channel", "unpause", "t", "c", *both) == 0
        assert await run_cli("topic", "unpause", "t", *both) == 0
        assert not a.topics["t"].paused and not a.topics["t"].channels["c"].core.paused
        out = capsys.readouterr().out
        assert f"paused topic t on {a.address}, {b.address}" in out
        # Destructive verbs need --yes.
        assert await run_cli("topic", "delete", "t", *both) == 1
        assert "add --yes" in capsys.readouterr().err and "t" in a.topics
        assert await run_cli("topic", "delete", "t", "--yes", *both) == 0
        await eventually(lambda: "t" not in a.topics and "t" not in b.topics)


async def test_peek_shows_messages_and_consumes_nothing(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with run_broker(tmp_path) as b:
        stub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(b.address))
        await stub.CreateChannel(pb.CreateChannelRequest(topic="t", channel="c"))
        async with Producer([b.address]) as p:
            acks = await p.publish_batch("t", [b"one", b"two", b"three"])
        assert await run_cli("peek", "t", "c", "-n", "2", "--json", "--broker", b.address) == 0
        objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [o["body"] for o in objs] == ["one", "two"]
        assert [o["id"] for o in objs] == [a.id.hex() for a in acks[:2]]
        assert b.topics["t"].channels["c"].depth == 3
        assert await run_cli("peek", "t", "c", "--broker", b.address) == 0
        assert capsys.readouterr().out.count("attempts=0") == 3


async def test_dlq_purge(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    async with run_broker(tmp_path, max_attempts=1) as b:
        stub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(b.address))
        async with Producer([b.address]) as p:
            await p.publish_batch("t", [b"a", b"b"])
        sub = RawSub(stub, "t", "c")
        sub.rdy(10)
        await eventually(lambda: len(sub.messages) == 2)
        sub.req([m.id for m in sub.take()])
        ch = b.topics["t"].channels["c"]
        await eventually(lambda: ch.dlq_count == 2)
        assert await run_cli("dlq", "purge", "t", "c", "--broker", b.address) == 1
        assert "add --yes" in capsys.readouterr().err and ch.dlq_count == 2
        assert await run_cli("dlq", "purge", "t", "c", "--yes", "--broker", b.address) == 0
        assert "purged 2 dead letters" in capsys.readouterr().out
        assert ch.dlq_count == 0
        await sub.cancel()


async def test_stat_keeps_running_with_a_broker_down_and_prints_json(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with run_broker(tmp_path) as b:
        async with Producer([b.address]) as p:
            await p.publish("t", b"x")
        args = ["--count", "2", "--interval", "0.05", "--timeout", "0.5"]
        assert await run_cli("stat", *args, "--broker", b.address, "--broker", dead) == 0
        out = capsys.readouterr().out
        assert out.count(f"broker {dead} is DOWN") == 2 and out.count("--- ") == 2
        assert "t " in out
        assert await run_cli("stat", *args, "--json", "--broker", b.address, "--broker", dead) == 0
        polls = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(polls) == 2
        up = {x["address"]: x["up"] for x in polls[0]["brokers"]}
        assert up == {b.address: True, dead: False}
        assert any(r["topic"] == "t" for r in polls[0]["rows"])


def test_commands_end_quietly_on_a_closed_pipe(tmp_path) -> None:
    """`pairq stat | head -1`: the reader goes away; stat ends with 0, no traceback."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pairq.cli",
            "stat",
            "--interval",
            "0.05",
            "--timeout",
            "0.2",
            "--broker",
            f"127.0.0.1:{free_port()}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"--- ")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
