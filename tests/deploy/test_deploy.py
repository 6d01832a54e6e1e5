"""deploy/ansible, really run (``make deploy-test``; marker ``deploy``, not in the default run).

In order, against one local deployment (see deployharness.py): site.yml deploys a lookup, two
pairs and the console from a wheel of the base
commit; messages go through the deployed lookups; a second site.yml changes nothing;
rolling-restart.yml and upgrade.yml (to a wheel of this tree) run under a live publish +
consume load with no acknowledged message lost and each handled once, and the upgraded
console runs from its checked TOML file (``pairq admin --config``); a pair whose partner
is stopped makes the rolling restart stop before it touches that pair's broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from deployharness import (
    ADMINS,
    ALL,
    BROKERS,
    LOOKUPS,
    PAIRS,
    REPO,
    Deployment,
    base_revision,
    build_wheel,
    export_tree,
    recap,
    wheelhouse,
)

from pairq.client import Consumer, Producer
from pairq.errors import PairqError
from pairq.testing import eventually

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("deploy")
    base_rev = base_revision()
    base_src = export_tree(base_rev, root / "base-src")
    if "check-config" not in "".join(p.read_text() for p in (base_src / "pairq").rglob("*.py")):
        # An older pairq cannot validate a rendered file: upgrade from this tree's own
        # source instead (a separate build, so the upgrade still swaps the wheel).
        print(f"base {base_rev} has no --check-config; upgrading from a build of this tree")
        base_src = REPO
    base = build_wheel(base_src, root / "wheel-base")
    head = build_wheel(REPO, root / "wheel-head")
    wheels = wheelhouse(head, REPO / "build" / "deploy-wheelhouse")
    d = Deployment(root=root, wheel=base, wheels=wheels)
    d.head_wheel = head
    d.make_tls()
    d.write_inventory()
    try:
        yield d
    finally:
        d.stop_all()


class Load:
    """A producer and a consumer through the lookups; records what was acked and handled."""

    def __init__(self, lookups: list[str], topic: str, tls_ca: str) -> None:
        self.lookups = lookups
        self.tls_ca = tls_ca
        self.topic = topic
        self.acked: set[bytes] = set()
        self.handled: dict[bytes, int] = {}
        self.failures = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.consumer = Consumer(
            topic,
            "deploy",
            lookups=lookups,
            tls_ca=tls_ca,
            handler=self._handle,
            lookup_poll_interval=0.5,
            reconnect_backoff=0.05,
            reconnect_backoff_max=0.5,
        )

    def _handle(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.handled[msg.id] = self.handled.get(msg.id, 0) + 1

    async def _produce(self) -> None:
        async with Producer(
            lookups=self.lookups, tls_ca=self.tls_ca, retry_timeout=60, lookup_poll_interval=0.5
        ) as p:
            n = 0
            while not self._stop.is_set():
                try:
                    acks = await p.publish_batch(
                        self.topic, [f"m{n}-{i}".encode() for i in range(10)]
                    )
                    self.acked.update(a.id for a in acks)
                except PairqError:
                    self.failures += 1
                    await asyncio.sleep(0.05)
                n += 1
                await asyncio.sleep(0.02)

    async def __aenter__(self) -> Load:
        await self.consumer.start()
        self._task = asyncio.create_task(self._produce())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        with contextlib.suppress(AssertionError):  # check() says what is missing
            await eventually(lambda: self.acked <= set(self.handled), timeout=90, interval=0.2)
        await self.consumer.stop()

    async def flowing(self, more: int = 100) -> None:
        """Wait until `more` further messages are acknowledged and handled."""
        a, h = len(self.acked), len(self.handled)
        await eventually(
            lambda: len(self.acked) >= a + more and len(self.handled) >= h + more, timeout=60
        )

    def check(self, at_least: int) -> None:
        lost = self.acked - set(self.handled)
        twice = [i for i, n in self.handled.items() if n > 1]
        assert len(self.acked) >= at_least, f"only {len(self.acked)} acknowledged"
        assert not lost, f"{len(lost)} of {len(self.acked)} acknowledged messages lost"
        assert not twice, f"{len(twice)} messages handled more than once"


async def run_playbook(d: Deployment, name: str, *extra: str, check: bool = True):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(d.playbook, name, *extra, check=check)


def console_serves(d: Deployment) -> None:
    """The deployed console answers /api/nodes listing every deployed broker (seen through
    the lookup), within 60 s."""
    admin = d.addr("admin-1/http")
    wanted = [d.addr(f"{h}/grpc") for h in BROKERS]
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://{admin}/api/nodes", timeout=2) as r:
                body = r.read().decode()
            if all(a in body for a in wanted):
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, f"the console at {admin} does not list every broker"
        time.sleep(0.2)  # polling a condition with a deadline


def roundtrip(deployment: Deployment, topic: str, n: int) -> None:
    """At least ``n`` messages published and consumed through the deployed lookups,
    every acknowledged one handled once."""

    async def run() -> None:
        async with Load(deployment.lookup_addresses, tls_ca=deployment.tls_ca, topic=topic) as load:
            await load.flowing(n)
        load.check(at_least=n)

    asyncio.run(run())


def test_site_deploys_a_cluster_that_serves(deployment: Deployment) -> None:
    out = deployment.playbook("site.yml")
    assert "pairq_admin : Wait for the console to listen" in out.stdout
    # The console's file holds pairq admin's keys: its address, the lookups (a list), the
    # audit log and pairq_admin_options.
    (host,) = ADMINS
    text = deployment.config(host).read_text()
    lookups = ", ".join(f'"{a}"' for a in deployment.lookup_addresses)
    assert f"lookup = [{lookups}]" in text and "poll_interval = 0.5" in text, text
    assert f'audit_log = "{deployment.host_root(host)}/log/pairq-admin-{host}-audit.log"' in text
    console_serves(deployment)
    for h in BROKERS:
        assert deployment.service_pid(h) > 0, f"{h} not running"
        text = (deployment.host_root(h) / "etc" / f"pairq-broker-{h}.toml").read_text()
        assert "partner = " in text and "min_copies = 2" in text

    roundtrip(deployment, "deploy-smoke", 200)


def test_second_site_run_changes_nothing(deployment: Deployment) -> None:
    out = deployment.playbook("site.yml")
    changed = {h: r["changed"] for h, r in recap(out.stdout).items()}
    assert changed and all(n == 0 for n in changed.values()), changed


def test_every_service_runs_with_tls_and_each_pair_with_its_secret(deployment: Deployment) -> None:
    import grpc

    from pairq.v1 import broker_pb2, broker_pb2_grpc

    for h in LOOKUPS + BROKERS:
        text = deployment.config(h).read_text()
        assert f'tls_cert = "{deployment.host_root(h) / "etc" / "tls" / "server.crt"}"' in text
        assert "tls_ca = " in text, text
    for pair, members in PAIRS.items():
        for h in members:
            secret = deployment.host_root(h) / "etc" / "pair.secret"
            assert secret.read_text().strip() == deployment.pair_secret(pair)
            assert f'pair_secret_file = "{secret}"' in deployment.config(h).read_text()
    (admin,) = ADMINS
    assert "tls_ca = " in deployment.config(admin).read_text()
    # A plaintext client gets nowhere; the pairs replicate (site.yml's health gate passed
    # over TLS, with both brokers proving their pair's secret).
    with grpc.insecure_channel(deployment.broker_address(BROKERS[0])) as ch:
        with pytest.raises(grpc.RpcError):
            broker_pb2_grpc.BrokerServiceStub(ch).GetStats(
                broker_pb2.GetStatsRequest(no_clients=True), timeout=3
            )


def test_new_tls_files_are_reloaded_without_a_restart(deployment: Deployment) -> None:
    before = {h: deployment.starts(h) for h in ALL}
    served = {h: deployment.served_serial(deployment.addr(f"{h}/grpc")) for h in LOOKUPS + BROKERS}
    deployment.renew_tls()
    deployment.write_inventory()
    out = deployment.playbook("site.yml")
    assert (
        "Reload the broker (process)" in out.stdout and "Reload the lookup (process)" in out.stdout
    )
    deadline = time.monotonic() + 30
    for h in LOOKUPS + BROKERS:
        while deployment.served_serial(deployment.addr(f"{h}/grpc")) == served[h]:
            assert time.monotonic() < deadline, f"{h} still serves its old certificate"
            time.sleep(0.2)  # polling a condition with a deadline
    assert {h: deployment.starts(h) for h in ALL} == before, "a TLS reload restarted a service"

    roundtrip(deployment, "deploy-tls", 100)


def test_rolling_restart_under_load_loses_nothing(deployment: Deployment) -> None:
    before = {h: deployment.starts(h) for h in BROKERS}

    async def scenario() -> Load:
        async with Load(
            deployment.lookup_addresses, tls_ca=deployment.tls_ca, topic="deploy-rolling"
        ) as load:
            await load.flowing()
            await run_playbook(deployment, "rolling-restart.yml")
            await load.flowing()
        return load

    load = asyncio.run(scenario())
    load.check(at_least=500)
    after = {h: deployment.starts(h) for h in BROKERS}
    assert all(after[h] == before[h] + 1 for h in BROKERS), (before, after)


def test_upgrade_under_load_loses_nothing(deployment: Deployment) -> None:
    head = deployment.head_wheel
    assert head is not None
    before = {h: deployment.starts(h) for h in BROKERS + ADMINS}

    async def scenario() -> Load:
        async with Load(
            deployment.lookup_addresses, tls_ca=deployment.tls_ca, topic="deploy-upgrade"
        ) as load:
            await load.flowing()
            await run_playbook(deployment, "upgrade.yml", "-e", f"pairq_common_wheel={head}")
            await load.flowing()
        return load

    load = asyncio.run(scenario())
    load.check(at_least=500)
    after = {h: deployment.starts(h) for h in BROKERS}
    assert all(after[h] == before[h] + 1 for h in BROKERS), (before, after)
    for h in BROKERS + ADMINS:
        installed = (deployment.host_root(h) / "opt" / "installed").read_text()
        assert head.name in installed
    # The console was restarted once for the new wheel, now runs from its file (whatever the
    # old one ran with), and that file passes the new pairq's own check.
    (host,) = ADMINS
    assert deployment.starts(host) == before[host] + 1
    argv = deployment.cmdline(host)
    assert argv[-3:] == ["admin", "--config", str(deployment.config(host))], argv
    venv = deployment.host_root(host) / "opt" / "venv"
    check = subprocess.run(
        [str(venv / "bin" / "pairq"), "admin", "--check-config", str(deployment.config(host))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert f"poll_interval = 0.5  # from {deployment.config(host)}" in check.stdout
    console_serves(deployment)
    # An action through the upgraded console lands in the audit log its file names.
    audit = deployment.host_root(host) / "log" / f"pairq-admin-{host}-audit.log"
    req = urllib.request.Request(
        f"http://{deployment.addr(f'{host}/http')}/api/actions/pause-topic",
        data=json.dumps({"topic": "deploy-upgrade", "confirm": True}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        urllib.request.urlopen(req, timeout=30).close()
    except urllib.error.HTTPError:
        pass  # refused by a broker: audit-logged all the same
    assert json.loads(audit.read_text().splitlines()[-1])["action"] == "pause-topic"
    deployment.wheel = head  # later runs keep this version
    deployment.write_inventory()


def test_broken_pair_stops_the_rolling_restart(deployment: Deployment) -> None:
    victim, partner = "broker-2b", "broker-2a"
    assert deployment.supervise(victim, "stop").returncode == 0
    before = {h: deployment.starts(h) for h in BROKERS}
    pid_before = deployment.service_pid(partner)
    try:
        out = deployment.playbook(
            "rolling-restart.yml", "-e", "pairq_broker_precheck_timeout_s=5", check=False
        )
        assert out.returncode != 0, "rolling restart went on with a broken pair"
        assert "not healthy" in out.stdout
        after = {h: deployment.starts(h) for h in BROKERS}
        assert after["broker-1a"] == before["broker-1a"] + 1
        assert after["broker-1b"] == before["broker-1b"] + 1
        assert after[partner] == before[partner], "the broken pair's broker was restarted"
        assert deployment.service_pid(partner) == pid_before
    finally:
        with contextlib.suppress(Exception):
            deployment.supervise(victim, "start")


def test_preflight_refuses_a_pair_of_three(deployment: Deployment, tmp_path: Path) -> None:
    import json

    inv = json.loads((deployment.root / "inventory.json").read_text())
    p2 = inv["all"]["children"]["pairq_brokers"]["children"]["pair_p2"]["hosts"]
    p2["broker-2b"]["pairq_broker_pair"] = "p1"
    bad = tmp_path / "inventory.json"
    bad.write_text(json.dumps(inv))
    out = deployment.playbook("site.yml", check=False, inventory=bad)
    assert out.returncode != 0
    assert "pair p1 has 3 brokers" in out.stdout
