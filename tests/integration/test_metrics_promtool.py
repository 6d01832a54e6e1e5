"""Every process's ``/metrics`` (both brokers of a pair and a lookup) passes ``promtool check metrics`` (Debian's
``prometheus``, installed by ``make ensure-debs``) and carries every name of the
README's metrics reference with live values: a real pair of broker processes."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from rawclient import RawSub

from pairq.testing import BrokerProcess, free_port, wait_for_port
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg

PROMTOOL = shutil.which("promtool")
# The README's metrics reference, every row (Prometheus names), but
# pairq_message_end_to_end_duration_seconds: only a broker that finished messages has
# samples of it (checked on the owner below); pairq_integrity_last_scrub_time_seconds:
# only after a complete scrub.
DOCUMENTED = (
    "pairq_topic_published_total",
    "pairq_topic_depth",
    "pairq_channel_depth",
    "pairq_channel_in_flight",
    "pairq_channel_deferred",
    "pairq_channel_delivered_total",
    "pairq_channel_finished_total",
    "pairq_channel_requeued_total",
    "pairq_channel_timed_out_total",
    "pairq_channel_dead_lettered_total",
    "pairq_channel_dead_letters",
    "pairq_channel_clients",
    "pairq_channel_paused",
    "pairq_publish_duration_seconds_bucket",
    "pairq_store_commit_duration_seconds_bucket",
    "pairq_store_commit_size_bucket",
    "pairq_replication_duration_seconds_bucket",
    "pairq_store_bytes",
    "pairq_store_commits_total",
    "pairq_store_inline_commits_total",
    "pairq_integrity_checksum_failures_total",
    "pairq_integrity_missing_records_total",
    "pairq_integrity_repairs_total",
    "pairq_integrity_quarantined_total",
    "pairq_integrity_scrub_checked",
    "pairq_pair_replication_lag",
    "pairq_pair_lease_remaining_seconds",
    "pairq_pair_standby_messages",
    "pairq_pair_takeovers_total",
)


LOOKUP_DOCUMENTED = (
    "pairq_lookup_brokers",
    "pairq_lookup_registration_streams",
    "pairq_lookup_topics",
    "pairq_lookup_tombstones",
)


def promtool(text: str) -> None:
    assert PROMTOOL is not None
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


async def traffic(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pbg.BrokerServiceStub(ch)
        await stub.CreateChannel(pb.CreateChannelRequest(topic="orders", channel="billing"))
        await stub.PublishBatch(
            pb.PublishBatchRequest(topic="orders", messages=[pb.PublishItem(body=b"x")] * 5),
            timeout=10,
        )
        sub = RawSub(stub, "orders", "billing")
        sub.rdy(2)
        deadline = time.monotonic() + 10
        while len(sub.messages) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        ms = sub.take()
        sub.fin([ms[0].id])
        sub.req([ms[1].id])
        while True:  # until the broker counted the FIN and the REQ
            st = await stub.GetStats(pb.GetStatsRequest(topic="orders", channel="billing"))
            c = st.topics[0].channels[0]
            if c.finished == 1 and c.requeued >= 1:
                break
            assert time.monotonic() < deadline, "FIN and REQ counted within 10 s"
            await asyncio.sleep(0.02)
        await sub.cancel()


async def publish_one(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        r = await pbg.BrokerServiceStub(ch).Publish(
            pb.PublishRequest(topic="orders", message=pb.PublishItem(body=b"y")), timeout=10
        )
        assert r.copies == 2


def test_every_broker_metrics_endpoint_passes_promtool(tmp_path: Path) -> None:
    if PROMTOOL is None:
        pytest.fail(
            "promtool is not installed: run `make ensure-debs` as root (Debian's prometheus)"
        )
    pa, pb_, ma, mb = free_port(), free_port(), free_port(), free_port()
    lk, ml = free_port(), free_port()
    with (tmp_path / "lookup.log").open("ab") as log:
        lookup = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pairq.cli",
                "lookup",
                "--address",
                f"127.0.0.1:{lk}",
                "--metrics-address",
                f"127.0.0.1:{ml}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(lk)

    def broker(name: str, me: int, partner: int, metrics: int) -> BrokerProcess:
        return BrokerProcess(
            tmp_path / name,
            port=me,
            args=[
                "--pair",
                "m",
                "--partner",
                f"127.0.0.1:{partner}",
                "--metrics-address",
                f"127.0.0.1:{metrics}",
                "--lookup",
                f"127.0.0.1:{lk}",
            ],
        )

    a = broker("a", pa, pb_, ma)
    b = broker("b", pb_, pa, mb)
    a.start()
    b.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                asyncio.run(traffic(a.address))
                break
            except grpc.aio.AioRpcError:
                assert time.monotonic() < deadline, "the pair accepts publishes within 30 s"
                time.sleep(0.2)
        asyncio.run(publish_one(b.address))  # so the partner has publish latencies too
        for port in (ma, mb):
            text = scrape(port)
            check = subprocess.run(
                [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True
            )
            assert check.returncode == 0, check.stdout + check.stderr
            names = {
                line.split("{")[0].split(" ")[0]
                for line in text.splitlines()
                if line and line[0] != "#"
            }
            missing = [n for n in DOCUMENTED if n not in names]
            assert not missing, f"undocumented or missing on :{port}: {missing}"
            assert "otel_scope_" not in text
        text = scrape(ma)
        live = {
            line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(
                (
                    "pairq_topic_published_total",
                    "pairq_channel_requeued_total",
                    "pairq_channel_finished_total",
                    "pairq_store_commits_total",
                    "pairq_store_inline_commits_total",
                )
            )
        }
        # An idle pair's commits mostly find the writer thread idle: made inline.
        commits = live["pairq_store_commits_total"]
        assert 0 < live["pairq_store_inline_commits_total"] <= commits
        assert live['pairq_topic_published_total{topic="orders"}'] == 5
        assert live['pairq_channel_finished_total{channel="billing",topic="orders"}'] == 1
        assert live['pairq_channel_requeued_total{channel="billing",topic="orders"}'] >= 1
        assert 'pairq_publish_duration_seconds_count{copies="2"} 1' in text
        # End-to-end latency: on the owner, the one message finished (FIN) so far; the
        # other broker finished none, so it has no samples of it.
        e2e = 'pairq_message_end_to_end_duration_seconds_count{channel="billing",topic="orders"}'
        assert f"{e2e} 1" in text, text
        assert 'pairq_message_end_to_end_duration_seconds_bucket{channel="billing"' in text
        # The lookup: both brokers registered, the topic known.
        deadline = time.monotonic() + 15
        while 'pairq_lookup_brokers{liveness="alive"} 2' not in (text := scrape(ml)):
            assert time.monotonic() < deadline, "the lookup counts 2 alive brokers within 15 s"
            time.sleep(0.1)
        promtool(text)
        served = {
            ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln[:1] not in ("#", "")
        }
        assert not [n for n in LOOKUP_DOCUMENTED if n not in served]
        assert "pairq_lookup_topics 1" in text and "otel_scope_" not in text
    finally:
        a.stop()
        b.stop()
        lookup.terminate()
        lookup.wait(15)


ADMIN_DOCUMENTED = (
    "pairq_admin_polls_total",
    "pairq_admin_poll_errors_total",
    "pairq_admin_actions_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
)


def _samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and line[0] != "#"
    }


def test_admin_metrics_endpoint_passes_promtool(tmp_path: Path) -> None:
    """``pairq admin`` (a real process) serves ``/metrics`` on its own address: its
    process metrics and its polls, poll errors and actions, with live values."""
    if PROMTOOL is None:
        pytest.fail(
            "promtool is not installed: run `make ensure-debs` as root (Debian's prometheus)"
        )
    import json

    port, lk, nobody = free_port(), free_port(), free_port()
    with (tmp_path / "procs.log").open("ab") as log:
        lookup = subprocess.Popen(
            [sys.executable, "-m", "pairq.cli", "lookup", "--address", f"127.0.0.1:{lk}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # The lookup listens first: polls before it did would count lookup errors.
        try:
            wait_for_port(lk)
        except BaseException:
            lookup.kill()
            lookup.wait()
            raise
        # --broker at a port nobody listens on: every poll counts one broker error.
        admin = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pairq.cli",
                "admin",
                "--address",
                f"127.0.0.1:{port}",
                "--lookup",
                f"127.0.0.1:{lk}",
                "--broker",
                f"127.0.0.1:{nobody}",
                "--poll-interval",
                "0.2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(lk)
        wait_for_port(port)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/actions/pause-topic",
            data=json.dumps({"topic": "t", "confirm": True}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError:
            pass  # refused by the (empty) cluster: counted with result="error"
        deadline = time.monotonic() + 15
        while True:
            text = scrape(port)
            live = _samples(text)
            if live.get("pairq_admin_polls_total", 0) >= 3:
                break
            assert time.monotonic() < deadline, "the console polls within 15 s\n" + text
            time.sleep(0.1)
        promtool(text)
        served = {k.split("{")[0] for k in live}
        assert not [n for n in ADMIN_DOCUMENTED if n not in served], served
        assert live['pairq_admin_poll_errors_total{kind="broker"}'] >= 2
        assert live['pairq_admin_poll_errors_total{kind="lookup"}'] == 0
        acted = {k: v for k, v in live.items() if k.startswith("pairq_admin_actions_total{")}
        assert sum(acted.values()) == 1 and all('verb="pause-topic"' in k for k in acted), acted
        assert live["process_resident_memory_bytes"] > 0 and "otel_scope_" not in text
    finally:
        admin.terminate()
        lookup.terminate()
        admin.wait(15)
        lookup.wait(15)
