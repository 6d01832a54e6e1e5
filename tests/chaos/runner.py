"""One chaos run: cluster up, workload on, faults from the schedule, drain, check, report.

Every wait is bounded: a fault lasts its ``duration``; healing is awaited at most
``HEAL_WAIT`` s (longer than the checked bound, so a slow heal is measured, not cut
off); the final drain waits at most ``DRAIN_WAIT`` s for the consumers to catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import zlib
from pathlib import Path
from typing import Any

from . import report
from .checker import FaultRecord, check
from .cluster import BROKERS, PAIRS, Cluster, partner_of
from .nemesis import SCENARIOS, Fault, schedule
from .workload import (
    CHANNELS,
    TOPIC,
    Clock,
    Consumers,
    Monitor,
    Producers,
    body_of,
    log_producers,
    probe_publish,
)

HEAL_BOUND = 20.0  # s from a fault's end to a healthy cluster (checked)
HEAL_WAIT = 45.0  # s the runner waits for healing before it gives up on a fault
DRAIN_WAIT = 60.0
SUPERVISE_EVERY = 0.5  # s between the supervisor's checks (systemd's RestartSec is 100 ms)


class Runner:
    def __init__(
        self, scenario: str, duration: float, seed: int, out: Path, *, log: Any = print
    ) -> None:
        self.sc = SCENARIOS[scenario]
        self.duration, self.seed = duration, seed
        self.run_dir = out / f"{scenario}-{seed}-{time.strftime('%Y%m%dT%H%M%S')}"
        self.log = log
        self.clock = Clock()
        self.cluster = Cluster(
            self.run_dir, broker_args=list(self.sc.broker_args), storage=self.sc.storage
        )
        self.faults: list[FaultRecord] = []
        self.problems: list[str] = []
        self.producers: Producers | None = None
        self.crashes: list[dict[str, Any]] = []
        self._supervising = asyncio.Lock()  # one supervise() at a time

    # ----------------------------------------------------------------- faults
    async def inject(self, f: Fault) -> FaultRecord:
        c, net = self.cluster, self.cluster.net
        rec = FaultRecord(f.kind, f.target, self.clock(), 0.0)
        k, t, d = f.kind, f.target, f.duration
        sleep = asyncio.sleep
        if k == "kill":
            rec.down = (t,)
            c.kill(t)
            await sleep(d)
            await asyncio.to_thread(c.start, t)
        elif k in ("pause-short", "pause-long"):
            rec.down = (t,) if d > 0.8 else ()
            c.pause(t)
            await sleep(d)
            c.resume(t)
        elif k == "pause-pair":
            rec.down = PAIRS[t]
            for n in PAIRS[t]:
                c.pause(n)
            await sleep(d)
            for n in PAIRS[t]:
                c.resume(n)
        elif k == "wipe":
            rec.down = (t,)
            c.kill(t)
            c.wipe(t)
            await sleep(d)
            await asyncio.to_thread(c.start, t)
        elif k == "resilver-loss":
            await self.resilver_loss(rec, t, d)
        elif k == "partition-pair":
            p = partner_of(t)
            rules = [net.drop(t, p), net.drop(p, t)]
            await sleep(d)
            for r in rules:
                net.undrop(r)
        elif k == "isolate-broker":
            rec.down = (t,)
            rules = net.isolate(t)
            await sleep(d)
            for r in rules:
                net.undrop(r)
        elif k == "isolate-lookup":
            rules = net.isolate(t)
            await sleep(d)
            for r in rules:
                net.undrop(r)
        elif k == "asymmetric":
            r = net.drop(t, partner_of(t))
            await sleep(d)
            net.undrop(r)
        elif k == "netem":
            if not net.netem_supported:
                rec.unsupported = "this kernel has no sch_netem"
            else:
                p = partner_of(t)
                spec = ["delay", "50ms", "loss", "5%"]
                rules = [net.netem(t, p, spec), net.netem(p, t, spec)]
                await sleep(d)
                for r in rules:
                    net.unnetem(r)
        elif k == "disk-full":
            filler = await asyncio.to_thread(c.fill_disk, t)
            await sleep(d)
            filler.unlink()
        elif k == "rolling-restart":
            rec.down = tuple(BROKERS)
            for n in BROKERS:
                rec.down_at[n] = self.clock()
                await asyncio.to_thread(c.terminate, n)
                await asyncio.to_thread(c.start, n)
                await self.wait_healthy(HEAL_WAIT)
        elif k in ("power-loss", "power-loss-pair"):
            victims = PAIRS[t] if k == "power-loss-pair" else (t,)
            rec.down = tuple(victims)
            dropped = []
            for n in victims:
                c.kill(n)
            for n in victims:
                # The kernel had written back some of the unsynced pages, each in any
                # of its states (lazyfs: power_cut(keep)): LMDB's data file may be
                # any mix of old and new pages; the commit log must make it whole.
                seed = zlib.crc32(f"{self.seed}:{len(self.faults)}:{n}".encode())
                dropped.append(f"{n}: {c.fs[n].power_cut(keep=0.5, seed=seed)}")
            rec.notes = "; ".join(dropped)
            await sleep(d)
            for n in victims:
                await asyncio.to_thread(c.start, n)
        elif k in ("truncate", "corrupt-meta"):
            rec.down = (t,)
            c.kill(t)
            rng = random.Random(f"{self.seed}:{len(self.faults)}")
            rec.notes = (c.truncate_store if k == "truncate" else c.corrupt_meta)(t, rng)
            await sleep(d)
            await asyncio.to_thread(c.start, t)
        elif k in ("bitflip", "bitflip-live"):
            # A backlog first (both channels paused everywhere for ``d`` s), so the
            # flipped bodies are still to be read when the channels go on. The topic
            # lives on one pair (placement): if ``t`` holds none of the bodies, the
            # same broker of the other pair is hit instead. ``bitflip`` stops the
            # broker first and also flips 16 bits anywhere in the file.
            await self.pause_channels(tuple(BROKERS), True)
            since = self.clock()
            await sleep(d)
            acks = self.producers.acks if self.producers is not None else {}
            bodies = [body_of(i) for i, (_c, at, _k) in acks.items() if at >= since]
            rng = random.Random(f"{self.seed}:{len(self.faults)}")
            victims = rng.sample(bodies, min(50, len(bodies)))
            other = next(n for n in BROKERS if n[-1] == t[-1] and n != t)
            node = t if c.holds_any(t, victims) else other
            rec.target = node
            if k == "bitflip":
                rec.down = (node,)
                rec.down_at[node] = self.clock()
                c.kill(node)
                rec.notes = c.flip_bits(node, rng) + "; "
            rec.notes += c.flip_bodies(node, victims, rng)
            if k == "bitflip":
                await asyncio.to_thread(c.start, node)
            rec.notes += await self.pause_channels(tuple(BROKERS), False)
            if k == "bitflip":
                # A disk known to have returned bad bytes is scrubbed before the fault
                # counts as over (an operator's `pairq scrub`): bits flipped anywhere
                # can break a B-tree page no read meets for a long time, and until it
                # is found the pair holds one good copy of that broker's records. A
                # broken page ends the scrub with DATA_LOSS: the broker re-silvers.
                rec.notes += "; scrub: " + await self.scrub_once(node)
        else:  # pragma: no cover
            raise ValueError(k)
        rec.end = self.clock()
        return rec

    async def resilver_loss(self, rec: FaultRecord, t: str, d: float) -> None:
        """Wipe ``t`` and lose its partner while it re-fills ``t``. So that there is a
        re-fill to interrupt, both channels are paused on the pair for ``d`` s first
        (a backlog of unfinished messages builds up); the partner is stopped (SIGSTOP,
        then kill -9) as soon as ``t``'s log says the re-fill began (polled every 2 ms,
        at most 10 s); the channels are unpaused when both are back."""
        c, p = self.cluster, partner_of(t)
        pair = (t, p)
        await self.pause_channels(pair, True)
        await asyncio.sleep(d)  # the backlog
        rec.down = (t, p)
        c.kill(t)
        c.wipe(t)
        offset = c.log_size(t)
        await asyncio.to_thread(c.start, t)
        deadline = time.monotonic() + 10.0
        began = False
        while time.monotonic() < deadline:
            if "being re-filled by partner" in c.log_since(t, offset):
                began = True
                break
            await asyncio.sleep(0.002)
        rec.down_at[p] = self.clock()
        c.pause(p)
        c.kill(p)
        await asyncio.sleep(0.5)
        log = c.log_since(t, offset)
        cut = [ln for ln in log.splitlines() if "stopped after" in ln]
        rec.notes = (
            "partner killed during the re-fill" if began else "no re-fill seen in 10 s"
        ) + (f": {cut[0].split('pairq.pair: ')[-1]}" if cut else "")
        await asyncio.sleep(d)
        await asyncio.to_thread(c.start, p)
        rec.notes += await self.pause_channels(pair, False)

    async def dump_stats(self, name: str) -> None:
        """Every broker's GetStats, as text, into the run dir (a loss's forensics)."""
        from google.protobuf import text_format

        parts = []
        for n in BROKERS:
            s = await self.cluster.stats(n, timeout=2.0)
            parts.append(
                f"===== {n}\n" + (text_format.MessageToString(s) if s else "(no answer)\n")
            )
        (self.run_dir / name).write_text("".join(parts))
        self.log(f"  not every acked message arrived: broker stats in {self.run_dir / name}")

    async def scrub_once(self, node: str) -> str:
        """One complete scrub of ``node``, retried while it does not answer (it may be
        starting); bounded (about 40 s)."""
        out = ""
        for _ in range(20):
            out = await self.cluster.scrub(node)
            if not out.startswith("UNAVAILABLE"):
                return out
            await asyncio.sleep(1.0)
        return out

    async def pause_channels(self, nodes: tuple[str, ...], pause: bool) -> str:
        """Pause or unpause both channels on ``nodes``; unpausing retries (bounded:
        20 s each; a paused channel left over would look like lost messages)."""
        c, missed = self.cluster, ""
        for n in nodes:
            for ch in CHANNELS:
                if pause:
                    await c.pause_channel(n, TOPIC, ch, True)
                    continue
                for _ in range(40):
                    if await c.pause_channel(n, TOPIC, ch, False):
                        break
                    await asyncio.sleep(0.5)
                else:
                    missed += f"; could not unpause {ch} on {n}"
        return missed

    async def supervise(self) -> None:
        """What systemd's Restart=on-failure does in production (the Ansible unit): a
        broker that died by itself (not stopped by the harness, ``Cluster.down``, which
        restarts its own victims) is recorded as a crash and started again. Runs every
        ``SUPERVISE_EVERY`` s for the whole run (``_supervisor``), also while a fault is
        being injected: a broker that a fault made crash (a corrupt page, a store
        found corrupt) must not stay down until the fault's own steps end."""
        c = self.cluster
        async with self._supervising:
            for n in BROKERS:
                proc = c.brokers[n].proc
                if n in c.paused or n in c.down or proc is None or proc.poll() is None:
                    continue
                self.crashes.append({"t": round(self.clock(), 3), "node": n, "rc": proc.returncode})
                self.log(f"  {n} crashed (exit {proc.returncode}); restarted, as systemd would")
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(c.start, n)

    async def _supervisor(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_EVERY)
            await self.supervise()

    async def revive(self) -> None:
        """Best effort after a failed fault: resume paused brokers, start dead ones, and
        unpause the channels (the backlog faults pause them everywhere first: make
        chaos, bitflip seed 2, a broker that would not start again ended such a fault
        half-way, the channels stayed paused for the rest of the run, and every message
        acked after that was reported lost although stored)."""
        c = self.cluster
        for n in BROKERS:
            with contextlib.suppress(Exception):
                c.resume(n)
                if not c.alive(n):
                    await asyncio.to_thread(c.start, n)
        with contextlib.suppress(Exception):
            missed = await self.pause_channels(tuple(BROKERS), False)
            if missed:
                self.problems.append(f"after a failed fault{missed}")

    async def bounded(self, what: str, aw: Any, limit: float) -> Any:
        """Await ``aw`` at most ``limit`` s; a hang is recorded (a violation) and every
        asyncio task's stack goes to logs/harness.log, so the hang can be located. The
        hung task is cancelled but not waited for (``wait_for`` would wait for its
        cancellation, forever if it ignores it), so the run always ends by itself."""
        task = asyncio.ensure_future(aw)
        done, _ = await asyncio.wait({task}, timeout=limit)
        if task in done:
            return task.result()
        self.problems.append(f"{what} did not finish within {limit:g} s")
        with (self.run_dir / "logs" / "harness.log").open("a") as f:
            f.write(f"--- {what} hung; tasks:\n")
            for t in asyncio.all_tasks():
                f.write(f"{t!r}\n")
                # the await chain, innermost last (print_stack shows the outer frame only,
                # and fails on a frame with no line number)
                aw: Any = t.get_coro()
                while aw is not None:
                    frame = getattr(aw, "cr_frame", None) or getattr(aw, "gi_frame", None)
                    if frame is None:
                        f.write(f"  awaiting {aw!r}\n")
                        break
                    code = frame.f_code
                    f.write(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}\n")
                    aw = getattr(aw, "cr_await", None) or getattr(aw, "gi_yieldfrom", None)
        task.cancel()
        await asyncio.wait({task}, timeout=5.0)
        return None

    async def wait_healthy(self, limit: float) -> float | None:
        """Bounded wait until every pair is healthy and takes a 2-copy probe publish."""
        deadline = time.monotonic() + limit
        self.why = ""
        while time.monotonic() < deadline:
            await self.supervise()
            await asyncio.gather(*(self.monitor.poll(n) for n in BROKERS))
            self.why = "; ".join(filter(None, map(self.monitor.unhealthy, PAIRS.values())))
            if not self.why:
                probes = await asyncio.gather(
                    *(probe_publish(self.cluster, p) for p in PAIRS.values())
                )
                if all(probes):
                    return self.clock()
                self.why = f"probe publishes {probes}"
            await asyncio.sleep(0.1)
        return None

    # ----------------------------------------------------------------- run
    async def run(self) -> dict[str, Any]:
        c = self.cluster
        self.run_dir.mkdir(parents=True, exist_ok=True)
        plan = schedule(self.sc.name, self.seed)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        handler = logging.FileHandler(self.run_dir / "logs" / "harness.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        logging.getLogger("pairq").addHandler(handler)
        logging.getLogger("pairq").setLevel(logging.INFO)
        logging.getLogger("pairq").propagate = False
        producer_log = log_producers(self.run_dir / "logs" / "producers.log", self.clock)
        try:
            await asyncio.to_thread(c.setup)
            self.monitor = Monitor(c, self.clock)
            if await self.wait_healthy(60) is None:
                raise RuntimeError(f"the cluster did not become healthy within 60 s: {self.why}")
            for pair in PAIRS.values():  # both channels exist pair-wide before any publish
                for ch in CHANNELS:
                    await c.create_channel(pair[0], TOPIC, ch)
            consumers = Consumers(c.lookup_addresses, self.clock, dedupe=self.sc.dedupe)
            if not self.sc.consume_late:
                await consumers.start()
            producers = self.producers = Producers(c.lookup_addresses, self.clock)
            producers.start()
            self.monitor.start()
            supervisor = asyncio.ensure_future(self._supervisor())
            self.log(f"run dir {self.run_dir}; cluster up ({c.net.method})")
            t_end = time.monotonic() + self.duration
            unsupported: set[str] = set()
            for f in plan:
                if time.monotonic() + f.gap >= t_end:
                    break
                if f.kind in unsupported:
                    continue  # reported once; the rest of the schedule still runs
                await asyncio.sleep(f.gap)
                try:
                    rec = await self.inject(f)
                except Exception as exc:  # e.g. a broker that will not start again
                    rec = FaultRecord(f.kind, f.target, self.clock(), self.clock())
                    rec.notes = f"the fault could not be completed: {exc!r}"[:300]
                    self.problems.append(f"{f.describe()}: {rec.notes}")
                    await self.revive()
                if rec.unsupported:
                    unsupported.add(f.kind)
                    self.faults.append(rec)
                    self.log(report.fault_line(rec))
                    continue
                rec.healed_at = await self.wait_healthy(HEAL_WAIT)
                if rec.healed_at is None:
                    rec.notes += f" still unhealthy: {self.why}"
                self.faults.append(rec)
                self.log(report.fault_line(rec))
            # the workload runs the whole duration (also when no fault fitted or could run)
            await asyncio.sleep(max(0.0, t_end - time.monotonic()) + 1.0)
            supervisor.cancel()
            await asyncio.wait({supervisor}, timeout=35)  # a restart in progress finishes
            await self.bounded("stopping the producers", producers.stop(), 30)
            if self.sc.consume_late:
                await consumers.start()
            acked = set(producers.acks)
            deadline = time.monotonic() + DRAIN_WAIT
            while time.monotonic() < deadline:  # bounded drain: every acked id on every channel
                seen = {ch: {r.id for r in consumers.runs if r.channel == ch} for ch in CHANNELS}
                if all(acked <= s for s in seen.values()):
                    break
                await asyncio.sleep(0.2)
            else:
                # Not every acked id arrived: keep what each broker says now (channels'
                # depth, in flight, paused; the pair) for the post-mortem.
                await self.dump_stats("final-stats.txt")
            await asyncio.sleep(0.5)  # late duplicates still count as re-runs
            await self.bounded("stopping the monitor", self.monitor.stop(), 10)
            await self.bounded("stopping the consumers", consumers.stop(), 60)
            result = check(
                acks=producers.acks,
                runs=consumers.runs,
                channels=CHANNELS,
                raw_duplicates=consumers.raw_duplicates,
                faults=self.faults,
                samples=self.monitor.samples,
                latencies=producers.latencies,
                partner={b: partner_of(b) for b in BROKERS},
                heal_bound=HEAL_BOUND,
                producers=producers.n,
                crashes=self.crashes,
            )
            if self.problems:
                result["violations"] += self.problems
                result["ok"] = False
            if self.crashes and not self.sc.crashes_expected:
                result["violations"].append(f"{len(self.crashes)} broker crashes")
                result["ok"] = False
            result.update(
                crashes=self.crashes,
                problems=self.problems,
                scenario=self.sc.name,
                seed=self.seed,
                duration_s=self.duration,
                expect_fail=self.sc.expect_fail,
                publish_failures=len(producers.failures),
                publish_failure_sample=[f[2] for f in producers.failures[:10]],
                deliveries_received=consumers.received,
                fault_log=[report.fault_dict(f) for f in self.faults],
                schedule_head=[f.describe() for f in plan[:10]],
                net_method=c.net.method,
                stale_removed=c.stale,
            )
            report.write(self.run_dir, result, producers, consumers, self.faults)
            return result
        finally:
            logging.getLogger("pairq").removeHandler(handler)
            logging.getLogger("pairq.client.producer").removeHandler(producer_log)
            producer_log.close()
            with contextlib.suppress(Exception):
                await c.close_channels()
            await asyncio.to_thread(c.close)


def passed(result: dict[str, Any]) -> bool:
    """A normal scenario passes when the checker found nothing; a self-test when it did."""
    return bool(result["ok"]) != bool(result["expect_fail"])


def dumps(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, default=str)
