"""``pairq pub/tail/stat/to-file/dlq`` against a real broker."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pairq import cli
from pairq.client import Consumer, Message, Producer
from pairq.testing import eventually, free_port, run_broker


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))


async def test_pub_body_and_stdin_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_broker(tmp_path) as b:
        got: list[Message] = []
        async with Consumer("t", "c", [b.address], handler=got.append) as c:
            await c.wait_idle(timeout=5)
            assert await run_cli("pub", "t", "hello", "--header", "k=v", "--broker", b.address) == 0
            assert "published 1 message" in capsys.readouterr().out
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a\nb\n\nc\n")))
            assert await run_cli("pub", "t", "--broker", b.address) == 0
            assert "published 3 messages" in capsys.readouterr().err
            await eventually(lambda: len(got) == 4)
        assert [m.body for m in got] == [b"hello", b"a", b"b", b"c"]
        assert got[0].headers == {"k": "v"}


async def test_tail_json_n(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with run_broker(tmp_path) as b:
        async with Producer([b.address]) as p:
            acks = await p.publish_batch("t", [b"one", b"\xff\xfe", b"three"])
        assert (
            await run_cli("tail", "t", "--json", "-n", "2", "--channel", "x", "--broker", b.address)
            == 0
        )
        lines = capsys.readouterr().out.splitlines()
        objs = [json.loads(x) for x in lines]
        assert [o["id"] for o in objs] == [a.id.hex() for a in acks[:2]]
        assert objs[0]["body"] == "one" and objs[1]["body_base64"] == "//4="
        assert objs[0]["attempts"] == 1 and objs[0]["headers"] == {}
        assert isinstance(objs[0]["timestamp"], float)
        # The third message is still there for the next reader of that channel.
        assert await run_cli("tail", "t", "-n", "1", "--channel", "x", "--broker", b.address) == 0
        assert capsys.readouterr().out == "three\n"


async def test_tail_uses_an_ephemeral_channel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with run_broker(tmp_path) as b:
        task = asyncio.ensure_future(run_cli("tail", "t", "-n", "1", "--broker", b.address))
        await eventually(lambda: "t" in b.topics and len(b.topics["t"].channels) == 1)
        (name,) = b.topics["t"].channels
        assert name.endswith("#ephemeral")
        async with Producer([b.address]) as p:
            await p.publish("t", b"live")
        assert await asyncio.wait_for(task, 10) == 0
        assert capsys.readouterr().out == "live\n"


async def test_stat_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with run_broker(tmp_path) as b:
        async with Producer([b.address]) as p:
            await p.publish_batch("orders", [b"1", b"2"])
        async with Consumer("orders", "billing", [b.address], handler=lambda m: None) as c:
            await c.wait_idle(timeout=5)
            assert (
                await run_cli("stat", "--count", "2", "--interval", "0.05", "--broker", b.address)
                == 0
            )
        out = capsys.readouterr().out
        assert out.count("--- ") == 2
        assert "orders" in out and "billing" in out and "finished" in out


async def test_to_file_writes_then_renames(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with run_broker(tmp_path / "b") as b:
        async with Producer([b.address]) as p:
            await p.publish_batch("logs", [b"line%d" % i for i in range(30)])
        out = tmp_path / "out"
        rc = await run_cli(
            "to-file",
            "logs",
            "--output-dir",
            str(out),
            "--rotate-bytes",
            "100",
            "-n",
            "30",
            "--max-in-flight",
            "8",
            "--broker",
            b.address,
        )
        assert rc == 0
        files = sorted(out.iterdir())
        assert files and all(f.name.startswith("logs.") and f.suffix == ".log" for f in files)
        assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]
        lines = b"".join(f.read_bytes() for f in files).splitlines()
        assert sorted(lines) == sorted(b"line%d" % i for i in range(30))
        assert len(files) >= 2  # rotated by size
        ch = b.topics["logs"].channels["pairq_to_file"]
        await eventually(lambda: ch.core.finished == 30)


async def test_dlq_list_and_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with run_broker(tmp_path, max_attempts=2) as b:
        async with Producer([b.address]) as p:
            acks = await p.publish_batch("t", [b"bad1", b"bad2"])

        def fail(msg: Message) -> None:
            raise RuntimeError("poison")

        async with Consumer("t", "c", [b.address], handler=fail, requeue_delay=0.01) as c:
            await eventually(lambda: c.stats.requeued == 4, timeout=10)
        assert await run_cli("dlq", "list", "t", "c", "--json", "--broker", b.address) == 0
        captured = capsys.readouterr()
        listed = [json.loads(x) for x in captured.out.splitlines()]
        assert sorted(o["id"] for o in listed) == sorted(a.id.hex() for a in acks)
        assert "2 dead-lettered" in captured.err
        rc = await run_cli(
            "dlq", "replay", "t", "c", "--id", acks[0].id.hex(), "--broker", b.address
        )
        assert rc == 0 and "replayed 1" in capsys.readouterr().out
        got: list[bytes] = []
        async with Consumer("t", "c", [b.address], handler=lambda m: got.append(m.body)) as c:
            await c.wait_idle(timeout=5)
        assert got == [b"bad1"]


async def test_errors_are_one_line_and_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    assert await run_cli("pub", "t", "x", "--timeout", "0.3", "--broker", dead) == 1
    assert await run_cli("tail", "t", "--timeout", "0.5", "--broker", dead) == 1
    assert await run_cli("dlq", "list", "t", "c", "--timeout", "0.5", "--broker", dead) == 1
    assert await run_cli("pub", "bad name", "x", "--broker", dead) == 1
    assert await run_cli("dlq", "replay", "t", "c", "--id", "zz", "--broker", dead) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5
    assert all(line.startswith("pairq ") and ": error: " in line for line in err)
    assert "Traceback" not in "".join(err)


def test_subprocess_exit_code_and_stderr() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pairq.cli",
            "pub",
            "t",
            "x",
            "--timeout",
            "0.2",
            "--broker",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "pairq pub: error:" in proc.stderr


async def test_stat_shows_pair_health(capsys: pytest.CaptureFixture[str]) -> None:
    from pairq.testing import run_pair

    async with run_pair() as (a, b):
        async with Producer([a.address, b.address]) as p:
            ack = await p.publish("t", b"x")
            assert ack.copies == 2
        assert (
            await run_cli("stat", "--count", "1", "--broker", a.address, "--broker", b.address) == 0
        )
    out = capsys.readouterr().out
    assert out.count("pair p1 ") == 1  # each pair once, not once per broker
    assert "replication up (tcp)/up" in out and "lease " in out
