"""Integrity: repair from the partner what fails its checksum, quarantine what cannot be, scrub.

Every stored record carries its CRC32C (``checksum.py``), checked on every
read (``store.LogRead``): a record that fails is never delivered, replicated
or counted as a copy. The read reports it here, and ``Integrity``:

1. asks the partner for its copy (``ReplicationService.Repair``): of a record
   this broker owns, the partner's standby copy; of a standby copy, the
   partner's own record. A copy that verifies is written back in place,
   counted (``repairs``), logged, and the topic's channels read on.
2. If the partner answers that it has no good copy, the record is set aside
   in the store's quarantine (``quarantined``; visible in stats), never
   silently dropped, unless nothing needs it any more (every channel had
   finished it: then it is deleted, as cleanup would have done).
3. If the partner cannot be reached, it retries every ``RETRY_S`` for up to
   ``MAX_TRIES`` attempts before quarantining; a broker without a partner
   quarantines at once.

The scrub walks every record (owned, standby, dead letters) in chunks at
most ``bytes_per_s`` (``--scrub-bytes-per-s``), in the background every
``--scrub-interval`` seconds and on demand (``BrokerService.Scrub``,
``pairq scrub``); what it finds goes through the same repair.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from pairq.broker import schema as sc
from pairq.broker.checksum import crc as crc32c
from pairq.broker.store import MALFORMED, CorruptStoreError, Store
from pairq.v1 import broker_pb2 as pb

log = logging.getLogger("pairq.integrity")

RETRY_S = 0.5
MAX_TRIES = 20
SCRUB_CHUNK = 500


class RepairSource(Protocol):
    async def fetch(
        self, topic: str, seqs: list[int], *, owned: bool
    ) -> dict[int, tuple[bytes, int]] | None:
        """Good copies (record, crc32c) the partner holds of ``seqs``; None when the
        partner cannot be asked (unreachable, or none)."""
        ...


class Integrity:
    def __init__(
        self,
        store: Store,
        *,
        source: RepairSource | None,
        topic_name: Callable[[int], str | None],
        topic_id: Callable[[str], int | None],
        owned_needed: Callable[[str, int], bool],
        repaired: Callable[[str], None],
        hole: Callable[[str, int], None] | None = None,
        scrub_interval_s: float = 0.0,
        scrub_bytes_per_s: int = 32 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.source = source
        self._topic_name = topic_name
        self._topic_id = topic_id
        self._owned_needed = owned_needed
        self._repaired = repaired
        # An owned seq no broker has (it went missing from the log, or its record was
        # quarantined): the topic's channels take it for a gap (Channel.mark_hole).
        self._hole = hole
        self.scrub_interval_s = scrub_interval_s
        self.scrub_bytes_per_s = scrub_bytes_per_s
        self._queue: dict[tuple[str, bool], set[int]] = {}  # (topic, owned) -> seqs
        self._tries: dict[tuple[str, bool, int], int] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.scrub_running = False
        self.scrub_checked = 0
        self.last_scrub_ns = 0
        self.last_scrub_bad = 0
        self._scrub_lock = asyncio.Lock()

    # ------------------------------------------------------------ reports
    def report_owned(self, topic: str, topic_id: int, seq: int) -> None:
        self._report(topic, True, seq)

    def report_standby(self, topic: str, seq: int) -> None:
        self._report(topic, False, seq)

    def _report(self, topic: str, owned: bool, seq: int) -> None:
        seqs = self._queue.setdefault((topic, owned), set())
        if seq not in seqs:
            seqs.add(seq)
            self._wake.set()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._repair_loop(), name="integrity-repair"))
        if self.scrub_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._scrub_loop(), name="integrity-scrub"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # ------------------------------------------------------------ repair
    async def _repair_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                (topic, owned), seqs = self._queue.popitem()
                try:
                    retry = await self._repair(topic, owned, sorted(seqs))
                except Exception:  # a bug must not end repairs
                    log.exception("repair of %s failed", topic)
                    retry = sorted(seqs)
                if retry:
                    self._queue.setdefault((topic, owned), set()).update(retry)
                    await asyncio.sleep(RETRY_S)

    async def _repair(self, topic: str, owned: bool, seqs: list[int]) -> list[int]:
        """Repair or quarantine ``seqs``; return those to retry later."""
        store = self.store
        tid = self._topic_id(topic) if owned else None
        if owned and tid is None:
            return []  # the topic was deleted meanwhile
        # Still bad? (a retry may find it repaired, quarantined or cleaned up)
        bad = [q for q in seqs if self._still_bad(topic, tid, owned, q)]
        if not bad:
            return []
        got = await self.source.fetch(topic, bad, owned=owned) if self.source else None
        writes = []
        retry: list[int] = []
        holes: list[int] = []
        for q in bad:
            copy = got.get(q) if got is not None else None
            if copy is not None and crc32c(copy[0]) == copy[1]:
                rec, c = copy
                writes.append(
                    store.log.rewrite(tid, q, rec, c)
                    if tid is not None
                    else store.standby.rewrite(topic, q, rec, c)
                )
                store.integrity.repairs += 1
                store.integrity.bad.discard(
                    (sc.MSGS, sc.seq_key(tid, q))
                    if tid is not None
                    else (sc.SB_MSGS, sc.sb_msg_key(topic, q))
                )
                log.warning(
                    "repaired %s record %s/%d from the partner's copy",
                    "owned" if owned else "standby",
                    topic,
                    q,
                )
                continue
            key = (topic, owned, q)
            tries = self._tries.get(key, 0) + 1
            if got is None and self.source is not None and tries < MAX_TRIES:
                self._tries[key] = tries  # partner unreachable: ask again shortly
                retry.append(q)
                continue
            self._tries.pop(key, None)
            if tid is not None and not self._owned_needed(topic, q):
                # Every channel had finished it: cleanup would delete it anyway.
                writes.append(store.log.delete_range(tid, q, q + 1))
                store.log.forget_bad(tid, q)
                continue
            writes.append(
                store.log.quarantine(topic, tid, q)
                if tid is not None
                else store.standby.quarantine(topic, q)
            )
            if tid is not None:
                holes.append(q)
        if writes:
            await store.commit(*writes)
            for q in holes:  # quarantined, or missing and no copy anywhere
                assert tid is not None  # only owned records become holes
                store.log.forget_bad(tid, q)
                if self._hole is not None:
                    self._hole(topic, q)
            if owned:
                self._repaired(topic)
        return retry

    def _still_bad(self, topic: str, tid: int | None, owned: bool, seq: int) -> bool:
        if tid is not None:
            return (sc.MSGS, sc.seq_key(tid, seq)) in self.store.integrity.bad
        return (sc.SB_MSGS, sc.sb_msg_key(topic, seq)) in self.store.integrity.bad

    # ------------------------------------------------------------ scrub
    async def _scrub_loop(self) -> None:
        while True:
            await asyncio.sleep(self.scrub_interval_s)
            try:
                async for _ in self.scrub():
                    pass
            except CorruptStoreError:
                return  # the broker stops (Store.on_fatal): nothing more to scrub

    async def scrub(self) -> AsyncIterator[pb.ScrubProgress]:
        """Check every stored record once, at most ``scrub_bytes_per_s``; progress per chunk."""
        async with self._scrub_lock:
            self.scrub_running = True
            self.scrub_checked = 0
            bad_total = 0
            size_total = 0
            t0 = time.monotonic()
            try:
                # The records first, then every other database (walked only: a B-tree
                # page LMDB finds broken is the store's end, Store.scrub_chunk).
                order: tuple[int, ...] = (sc.MSGS, sc.SB_MSGS, sc.DLQ)
                order += tuple(i for i in range(len(sc.DB_NAMES)) if i not in order)
                for db in order:
                    after: bytes | None = None
                    while True:
                        checked, size, bad, after = await asyncio.to_thread(
                            self.store.scrub_chunk, db, after, SCRUB_CHUNK
                        )
                        self.scrub_checked += checked
                        size_total += size
                        bad_total += len(bad)
                        for key in bad:
                            self._route(db, key)
                        yield pb.ScrubProgress(
                            checked=self.scrub_checked, bytes=size_total, bad=bad_total
                        )
                        # Rate limit: never ahead of bytes_per_s.
                        ahead = size_total / max(1, self.scrub_bytes_per_s) - (
                            time.monotonic() - t0
                        )
                        if ahead > 0:
                            await asyncio.sleep(ahead)
                        if after is None:
                            break
                self.last_scrub_ns = time.time_ns()
                self.last_scrub_bad = bad_total
                log.info(
                    "scrub complete: %d record(s), %d byte(s) checked, %d bad",
                    self.scrub_checked,
                    size_total,
                    bad_total,
                )
                yield pb.ScrubProgress(
                    checked=self.scrub_checked, bytes=size_total, bad=bad_total, done=True
                )
            finally:
                self.scrub_running = False

    def _route(self, db: int, key: bytes) -> None:
        try:
            self._route_decoded(db, key)
        except MALFORMED:  # a key damaged past decoding: nothing to ask the partner for
            self.store.post(self.store.quarantine_raw(db, key))

    def _route_decoded(self, db: int, key: bytes) -> None:
        if db == sc.MSGS:
            tid, seq = sc.unpack_seq_key(key)
            name = self._topic_name(tid)
            if name is not None:
                self.report_owned(name, tid, seq)
        elif db == sc.SB_MSGS:
            topic, seq = sc.split_sb_msg_key(key)
            self.report_standby(topic, seq)
        else:  # a dead letter has no other copy
            cid, seq = sc.unpack_seq_key(key)
            self.store.post(self.store.dead.quarantine(cid, seq))

    # ------------------------------------------------------------ stats
    def stats(self) -> pb.IntegrityStats:
        i = self.store.integrity
        return pb.IntegrityStats(
            checksum_failures=i.failures,
            repairs=i.repairs,
            quarantined=i.quarantined,
            scrub_running=self.scrub_running,
            scrub_checked=self.scrub_checked,
            last_scrub_ns=self.last_scrub_ns,
            last_scrub_bad=self.last_scrub_bad,
            missing_records=i.missing,
        )
