"""Takeover: the partner is gone, its standby copies become ours.

When the lease lapsed and the partner stays silent (a kill, a pause, a
partition), the core decides to take over (``core.py``: TAKE_OVER); a
partner that returns with a new identity (its disk was wiped) is taken over
too (``receiver.py``). ``Takeover.take_over`` fences the partner's inbound
sessions (``SessionFence``), appends every unfinished standby message to our
own log (per topic, one transaction that also records ``taken_upto`` and
drops the standby copies) and delivers alone (``solo``) until the partner is
back and acknowledging again. The partner learns what was taken over from
the welcome of its next session (``sender.py`` on its side) and never
delivers it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from pairq.broker.pair import catalog
from pairq.broker.pair import core as pc
from pairq.broker.pair.link import FramedLink
from pairq.broker.pair.standby import StandbyStore, StandbyTopic

if TYPE_CHECKING:
    from pairq.broker.pair.state import PairHost, PairState

log = logging.getLogger("pairq.pair")


class SessionFence:
    """What a takeover does to the partner's inbound sessions (the receiver obeys).

    While a takeover runs (``held``) nothing from the partner is applied or
    acknowledged; once it is done, every session begun before it is over
    (``generation`` moved: the partner must reconnect and learn what was taken
    over before it may deliver again) and their TCP links are closed (a partner
    silent long enough to be taken over may be gone without a reset; its
    session must not linger).
    """

    def __init__(self) -> None:
        self.held = False  # set during a takeover: apply/ack nothing from the partner
        self.generation = 0  # bumped by every takeover: the inbound sessions before it are over
        self.links: set[FramedLink] = set()  # the inbound sessions' TCP links

    def fenced(self, generation: int) -> bool:
        """A takeover happened (or is running) since the session of ``generation`` began."""
        return self.generation != generation or self.held

    def end_sessions(self) -> None:
        """The takeover is done: end every session begun before it."""
        self.generation += 1
        for link in list(self.links):
            link.close()


class Takeover:
    """Runs the takeovers the core decides (one at a time)."""

    def __init__(self, state: PairState) -> None:
        self._s = state
        self.sessions = SessionFence()
        self.task: asyncio.Task[None] | None = None  # the takeover now running
        self.took_over_at = 0.0

    async def run(self, reason: str) -> None:
        """Take over now; a failure is logged and the core told (it retries)."""
        self.task = asyncio.create_task(self.take_over(reason))
        try:
            await self.task
        except Exception:
            log.exception("takeover failed; will retry")
            self._s.core.on_takeover_failed(time.monotonic())
        finally:
            self.task = None

    async def wait(self) -> None:
        """Wait for the takeover now running, if any."""
        if self.task is not None:
            await asyncio.shield(self.task)

    async def take_over(self, reason: str) -> None:
        """Promote every unfinished standby copy to owned and deliver alone (the core
        decided; see core.py)."""
        s = self._s
        t0 = time.monotonic()
        moved = 0
        # Stop applying and acknowledging the partner's batches, and let every
        # standby write already queued commit, so what we read is all we hold.
        self.sessions.held = True
        try:
            await s.broker.store.barrier()
            for sb in list(s.standby.topics.values()):
                moved += await _take_over_topic(s.broker, s.standby, sb)
            self.sessions.end_sessions()
        finally:
            self.sessions.held = False
        self.took_over_at = time.monotonic()
        for action in s.core.on_takeover_done(self.took_over_at):
            if action.kind == pc.EPOCH:
                s.new_epoch()
        s.broker.on_lease_renewed()
        log.warning(
            "took over %d message(s) from partner %s in %.3f s: %s",
            moved,
            s.standby.partner_id or s.partner_address,
            time.monotonic() - t0,
            reason,
        )


async def _take_over_topic(broker: PairHost, standby: StandbyStore, sb: StandbyTopic) -> int:
    """Append the unfinished standby copies of one topic to our log; how many."""
    start = max(sb.first_seq, sb.taken_upto)
    end = sb.next_seq
    if end <= start and not sb.channels:
        return 0
    topic = await broker.get_topic(sb.name, from_partner=True)
    tombstones = broker.ctx.tombstones if broker.ctx is not None else {}
    for ch_name in sb.channels:
        # Deleted here since (pair/catalog.py): the deletion is newer than anything
        # we know of the partner's channel, so it is not brought back.
        if catalog.adopt(0, tombstones.get((sb.name, ch_name))):
            await topic.get_channel(ch_name, from_partner=True)
    got = broker.store.standby.read(sb.name, start, end)
    rows = got.rows
    records: list[bytes] = []
    finished_for: dict[str, list[int]] = {}
    states_for: dict[str, dict[int, tuple[int, int]]] = {}
    names = list(topic.channels)

    def finished(name: str, seq: int) -> bool:
        c = sb.channels.get(name)
        if c is None:
            # A channel the partner never had (made here while apart) starts at
            # the head, so it was never given the partner's messages; with no
            # channel at all there, every message waited for the first channel.
            return bool(sb.channels)
        return seq < c.floor or seq in c.fins

    crcs: list[int] = []
    for (seq, rec), crc in zip(rows, got.crcs, strict=True):
        done = [n for n in names if finished(n, seq)]
        if names and len(done) == len(names):
            continue
        idx = len(records)
        records.append(rec)
        crcs.append(crc)
        for n in done:
            finished_for.setdefault(n, []).append(idx)
        for n, c in sb.channels.items():
            state = c.states.get(seq)
            if state is not None and n not in done:
                states_for.setdefault(n, {})[idx] = state
    copies = broker.store.standby
    # A copy failing its checksum has no good copy left (its owner is gone): set it
    # aside, unless every channel had finished it anyway.
    extra = [
        copies.quarantine(sb.name, seq)
        for seq in got.corrupt
        if not (names and all(finished(n, seq) for n in names))
    ]
    extra += [copies.set_taken(sb.name, end), copies.drop_topic(sb.name)]
    await topic.append_owned(
        records, crcs, extra=extra, finished_for=finished_for, states_for=states_for
    )
    standby.forget_unconfirmed(sb.name, taken_over=True)  # owned (and indexed) here now
    sb.taken_upto = end
    sb.first_seq = end
    sb.next_seq = end  # the partner resends anything above from its log
    sb.channels.clear()
    return len(records)
