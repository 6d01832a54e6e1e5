"""``pairq admin`` in a real headless Chromium against a real cluster.

One lookup, two broker pairs and the console, each its own OS process on
loopback. Debian's ``chromium`` (``make ensure-debs``) is driven by playwright
through ``executable_path`` (playwright's own browser download is never used).
A screenshot of every page goes to ``build/admin-screenshots/``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from rawclient import RawSub

from pairq.testing import BrokerProcess, free_port, wait_for_port
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(__file__).resolve().parents[2] / "build" / "admin-screenshots"
T = TypeVar("T")
DEAD_WITHIN_S = 5.0  # a kill -9'd broker is shown dead within this


@dataclass
class Cluster:
    admin_url: str
    lookup: str
    pairs: list[tuple[BrokerProcess, BrokerProcess]]
    audit: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def node_ids(self) -> dict[str, str]:
        return {b.address: arun(stats(b.address)).broker_id for p in self.pairs for b in p}


def arun(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end on a thread of its own (playwright's sync API keeps
    an event loop running on this one)."""
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


async def stats(address: str, **kw: Any) -> pb.GetStatsResponse:
    async with grpc.aio.insecure_channel(address) as ch:
        return await pbg.BrokerServiceStub(ch).GetStats(pb.GetStatsRequest(**kw), timeout=3)


def api(c: Cluster, path: str) -> Any:
    with urllib.request.urlopen(c.admin_url + path, timeout=5) as r:
        return json.load(r)


def wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = cond()
        except OSError:
            got = None
        if got:
            return got
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.1)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "pairq.cli", *args], stdout=f, stderr=subprocess.STDOUT
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run `make ensure-debs` as root (Debian's chromium)")
    tmp = tmp_path_factory.mktemp("admin-browser")
    lk, lg = free_port(), free_port()
    procs = [
        _spawn(
            [
                "lookup",
                "--address",
                f"127.0.0.1:{lk}",
                "--gossip-address",
                f"127.0.0.1:{lg}",
                "--gossip-profile",
                "local",
            ],
            tmp / "lookup.log",
        )
    ]
    wait_for_port(lk)
    pairs = []
    try:
        for i in range(2):
            pa, pb_ = free_port(), free_port()
            made = []
            for name, me, partner in (("a", pa, pb_), ("b", pb_, pa)):
                b = BrokerProcess(
                    tmp / f"p{i}{name}",
                    port=me,
                    args=[
                        "--pair",
                        f"p{i}",
                        "--partner",
                        f"127.0.0.1:{partner}",
                        "--lookup",
                        f"127.0.0.1:{lk}",
                        "--join",
                        f"127.0.0.1:{lg}",
                        "--gossip-address",
                        f"127.0.0.1:{free_port()}",
                        "--gossip-profile",
                        "local",
                        "--max-attempts",
                        "1",
                    ],
                )
                b.start()
                made.append(b)
            pairs.append((made[0], made[1]))
        ap = free_port()
        audit = tmp / "audit.log"
        procs.append(
            _spawn(
                [
                    "admin",
                    "--address",
                    f"127.0.0.1:{ap}",
                    "--lookup",
                    f"127.0.0.1:{lk}",
                    "--poll-interval",
                    "0.5",
                    "--audit-log",
                    str(audit),
                ],
                tmp / "admin.log",
            )
        )
        c = Cluster(f"http://127.0.0.1:{ap}", f"127.0.0.1:{lk}", pairs, audit, procs)

        def all_healthy() -> bool:
            o = api(c, "/api/overview")
            return bool(o["nodes_alive"] == 4 and o["pairs_healthy"] == 2)

        wait(all_healthy, 60, "the console shows 4 alive brokers in 2 healthy pairs")
        yield c
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for pair in pairs:
            for b in pair:
                b.stop()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def browser(cluster: Cluster) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        yield pg
    finally:
        pg.close()


def shot(page: Any, name: str) -> None:
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000


async def publish(address: str, topic: str, bodies: list[bytes]) -> list[bytes]:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pbg.BrokerServiceStub(ch)
        r = await stub.PublishBatch(
            pb.PublishBatchRequest(topic=topic, messages=[pb.PublishItem(body=b) for b in bodies]),
            timeout=10,
        )
        return list(r.ids)


async def create_channel(address: str, topic: str, channel: str) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        await pbg.BrokerServiceStub(ch).CreateChannel(
            pb.CreateChannelRequest(topic=topic, channel=channel), timeout=10
        )


async def consume(address: str, topic: str, channel: str, n: int, *, requeue: bool) -> list[bytes]:
    """Take ``n`` messages; REQ them (with max attempts 1: dead letters) or FIN them."""
    async with grpc.aio.insecure_channel(address) as ch:
        sub = RawSub(pbg.BrokerServiceStub(ch), topic, channel)
        sub.rdy(100)
        deadline = time.monotonic() + 15
        while len(sub.messages) < n:
            assert time.monotonic() < deadline, f"{n} deliveries on {address} within 15 s"
            await asyncio.sleep(0.02)
        ids = [m.id for m in sub.take()]
        (sub.req if requeue else sub.fin)(ids)
        sub.close()  # the broker ends the stream once nothing is in flight
        await asyncio.wait_for(sub.ended.wait(), 10)
        await sub.cancel()
        return ids


def confirm(page: Any, button: str) -> str:
    """Click an action button, check the confirmation page, confirm; the result text."""
    page.click(f"button[data-verb='{button}']")
    page.wait_for_selector("#confirm-text")
    assert page.inner_text("#confirm-text").endswith("?")
    page.click("#confirm-yes")
    page.wait_for_selector("#result")
    return str(page.inner_text("#result"))


def test_pages_show_the_real_nodes_pairs_topics_and_channels(cluster: Cluster, page: Any) -> None:
    a0 = cluster.pairs[0][0].address
    arun(create_channel(a0, "orders", "billing"))
    arun(create_channel(a0, "orders", "audit"))
    arun(publish(a0, "orders", [b"o%d" % i for i in range(7)]))
    ids = cluster.node_ids()

    def topic_seen() -> bool:
        t = api(cluster, "/api/topics/orders")
        chans = t.get("channels", [])
        return len(chans) == 2 and all(c["depth"] == 7 for c in chans)

    wait(topic_seen, 10, "the console counts 7 messages in each of orders' 2 channels")

    page.goto(cluster.admin_url + "/")
    assert page.inner_text("#nodes-alive") == "4"
    assert page.inner_text("#pairs-healthy") == "2"
    assert page.inner_text("#channel-count") == "2"
    shot(page, "overview")

    page.goto(cluster.admin_url + "/nodes")
    rows = page.locator("table.nodes tbody tr")
    assert rows.count() == 4
    text = page.inner_text("table.nodes")
    for address, node_id in ids.items():
        assert node_id in text and address in text
    assert text.count("alive") >= 4
    shot(page, "nodes")

    page.goto(cluster.admin_url + "/pairs")
    assert page.locator("section.pair").count() == 2
    for name in ("p0", "p1"):
        assert "healthy" in page.inner_text(f"section[data-pair='{name}'] h2")
    shot(page, "pairs")

    page.goto(cluster.admin_url + "/topics")
    row = page.locator("table.topics tbody tr", has_text="orders")
    # The topic's depth as the brokers report it (messages retained, summed).
    depth = sum(t.depth for b in ids for t in arun(stats(b)).topics if t.name == "orders")
    assert depth >= 7
    assert row.locator("td").nth(1).inner_text() == str(depth)
    assert row.locator("td").nth(5).inner_text() == "2"
    shot(page, "topics")

    page.goto(cluster.admin_url + "/topics/orders")
    chans = page.inner_text("table.channels")
    assert "billing" in chans and "audit" in chans
    billing = page.locator("table.channels tbody tr", has_text="billing")
    assert billing.locator("td").nth(1).inner_text() == "7"
    shot(page, "topic")

    page.goto(cluster.admin_url + "/topics/orders/billing")
    assert page.inner_text("#ch-depth") == "7"
    shot(page, "channel")

    page.goto(cluster.admin_url + "/lookups")
    assert cluster.lookup in page.inner_text("table.lookups")
    for node_id in ids.values():
        assert node_id in page.inner_text("main")
    shot(page, "lookups")


def test_pausing_a_channel_from_the_page_pauses_it_on_the_brokers(
    cluster: Cluster, page: Any
) -> None:
    a0, b0 = (b.address for b in cluster.pairs[0])
    arun(create_channel(a0, "payments", "ledger"))
    arun(publish(a0, "payments", [b"p"]))
    wait(lambda: api(cluster, "/api/topics/payments/ledger"), 10, "the console sees the channel")
    page.goto(cluster.admin_url + "/topics/payments/ledger")
    assert page.inner_text("#ch-paused") == "delivering"
    result = confirm(page, "pause-channel")
    assert "pause-channel payments/ledger: done" in result

    def paused_on(address: str) -> bool:
        r = arun(stats(address, topic="payments", channel="ledger"))
        return bool(r.topics[0].channels[0].paused)

    assert paused_on(a0) and paused_on(b0)
    page.click("#back")
    page.wait_for_selector("#ch-paused")
    assert page.inner_text("#ch-paused") == "paused"
    shot(page, "channel-paused")
    audit = [json.loads(line) for line in cluster.audit.read_text().splitlines()]
    last = audit[-1]
    assert last["action"] == "pause-channel" and last["result"] == "ok"
    assert last["target"] == {"topic": "payments", "channel": "ledger"}
    assert last["who"].startswith("anonymous@127.0.0.1") and last["time"]
    assert confirm_and_back(page, "unpause-channel")
    assert not paused_on(a0) and not paused_on(b0)
    page.goto(cluster.admin_url + "/audit")
    assert "pause-channel" in page.inner_text("table.audit")
    shot(page, "audit")


def confirm_and_back(page: Any, button: str) -> bool:
    return "done" in confirm(page, button)


def test_redriving_dead_letters_from_the_page_delivers_them_again(
    cluster: Cluster, page: Any
) -> None:
    a1 = cluster.pairs[1][0].address
    arun(create_channel(a1, "jobs", "work"))
    ids = arun(publish(a1, "jobs", [b"poison-1", b"poison-2"]))
    dead = arun(consume(a1, "jobs", "work", 2, requeue=True))
    assert sorted(dead) == sorted(ids)
    wait(
        lambda: api(cluster, "/api/topics/jobs/work")["dead_lettered"] == 2,
        10,
        "the console shows 2 dead letters",
    )
    page.goto(cluster.admin_url + "/topics/jobs/work")
    assert page.inner_text("#dlq-total") == "2"
    assert page.locator("table.dead tbody tr").count() == 2
    shot(page, "dead-letters")
    # Redrive the selected one only: it is delivered again, the other stays dead.
    page.check(f"input[name=ids][value='{ids[0].hex()}']")
    assert "redrove 1 dead letter" in confirm(page, "redrive-selected")
    again = arun(consume(a1, "jobs", "work", 1, requeue=False))
    assert again == [ids[0]]
    wait(
        lambda: api(cluster, "/api/topics/jobs/work")["dead_lettered"] == 1,
        10,
        "one dead letter left",
    )
    # Then all of them.
    page.goto(cluster.admin_url + "/topics/jobs/work")
    assert "redrove 1 dead letter" in confirm(page, "redrive")
    assert arun(consume(a1, "jobs", "work", 1, requeue=False)) == [ids[1]]
    # Peek shows a message without consuming it.
    arun(publish(a1, "jobs", [b"look-at-me"]))
    page.goto(cluster.admin_url + "/topics/jobs/work")
    confirm(page, "peek")
    assert "look-at-me" in page.inner_text("table.peek")
    shot(page, "peek")
    assert arun(stats(a1, topic="jobs", channel="work")).topics[0].channels[0].depth == 1


def test_a_broker_killed_with_sigkill_is_shown_dead_within_seconds(
    cluster: Cluster, page: Any
) -> None:
    victim = cluster.pairs[1][1]
    node_id = arun(stats(victim.address)).broker_id
    page.goto(cluster.admin_url + "/nodes")
    row = page.locator("table.nodes tbody tr", has_text=node_id)
    assert row.locator("td").nth(3).inner_text() == "alive"
    os.kill(victim.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    victim.proc.wait()  # type: ignore[union-attr]
    t0 = time.monotonic()
    # No reload: the page refreshes itself.
    page.wait_for_function(
        """id => [...document.querySelectorAll('table.nodes tbody tr')]
              .some(tr => tr.innerText.includes(id) && tr.cells[3].innerText.trim() === 'dead')""",
        arg=node_id,
        timeout=DEAD_WITHIN_S * 1000,
    )
    assert time.monotonic() - t0 < DEAD_WITHIN_S
    shot(page, "nodes-one-dead")
    page.goto(cluster.admin_url + "/")
    assert page.inner_text("#nodes-alive") == "3"
    assert "degraded" in page.inner_text("table.pairs")
    shot(page, "overview-degraded")
