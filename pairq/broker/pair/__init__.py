"""Redundant pairs: replication to the partner, standby copies, leases and takeover.

Each broker of a pair *owns* what is published to it and streams it to its
partner over one long-lived session (outbound: ``sender.py``); the partner
stores it as *standby* copies (``standby.py``, inbound: ``receiver.py``) and
acknowledges each batch once it is fsynced. A publish is acknowledged to the
producer only after both the local commit and the partner's acknowledgement
(``copies=2``), unless ``--min-copies=1`` lets it through alone.

Transport. The session starts as the ``Replicate`` gRPC stream (hello,
welcome); when the partner offers its plain TCP link (``link.py``,
``--replication-address``), both directions move there, carrying the same
messages at a fraction of gRPC's cost per message.

Parallel replication. A live publish is sent to the partner while the local
commit is still running, so the pair's latency is the slower of the two
fsyncs rather than their sum. Such copies are *unconfirmed* on the partner
until the owner confirms its commit (``StandbyStore`` explains why and what
that changes).

Leases fence delivery. Every partner acknowledgement renews the sender's
lease until ``sent_time + lease``; an owner delivers only while its lease
is live. The partner promises not to take over until ``ack_time + lease``
(``ack_time >= sent_time``), so the two never deliver the same message
under live leases. When the lease lapses and the partner stays silent (a
kill, a pause, a partition), the survivor *takes over*: it appends every
unfinished standby message to its own log (one transaction that also
records ``taken_upto`` and drops the standby copies) and delivers alone
(``solo``) until the partner is back and acknowledging again.

Reconcile: a returning broker says hello; the answer tells it, per topic,
what the partner already holds (replication resumes there, so publishes
accepted during the outage are replicated) and what was taken over (it
marks those finished and never delivers them again). A partner that
returns with an empty disk has a new node id: it holds nothing, so the
survivor re-fills it from its log (re-silvering).

The modules, and what each owns:

- ``core.py``: every decision about the partner (lease, silence, pauses,
  takeover, the catalog gate) as a pure state machine; the rest carries
  them out.
- ``state.py``: ``PairState``, what the parts share (settings, the core,
  the standby copies, the delivery fence and epochs).
- ``standby.py``: the partner's copies held here (``StandbyStore``) and the
  check of a replicated batch (``validate_batch``).
- ``link.py``: the TCP transport (``FramedLink``) and ``ReplicaLink``, the
  two calls the sender and the receiver make on either transport.
- ``sender.py``: the outbound session (handshake, reconcile, catalog,
  catch-up, live batches, acks and the lease they renew).
- ``receiver.py``: the partner's inbound sessions (the ``Replicate``
  handler, the TCP listener, acks and the lease they grant, the partner's
  channels).
- ``takeover.py``: promoting the standby copies, and fencing the partner's
  sessions meanwhile.
- ``refill.py``: the log lines of a re-fill.
- ``partner_view.py``: which gossip member is the partner and which of gossip's
  events are a verdict on it, pure (``pairq.broker.membership`` carries it out).
- here, ``Pair``: the parts put together, their lifecycle, the clock that
  drives the core (``_monitor``), and the interface the broker uses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from pairq.broker.pair import core as pc
from pairq.broker.pair.link import FramedLink
from pairq.broker.pair.receiver import Receiver
from pairq.broker.pair.sender import Sender
from pairq.broker.pair.standby import StandbyStore, validate_batch
from pairq.broker.pair.state import PairHost, PairState
from pairq.broker.pair.takeover import Takeover
from pairq.errors import PairqError, UnavailableError, Undecodable, decoder
from pairq.security import pairauth
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import replication_pb2 as rpb

__all__ = ["Pair", "StandbyStore", "validate_batch"]

log = logging.getLogger("pairq.pair")


class _Decoded:
    """The ``Replicate`` servicer context as the receiver sees it: a request that did
    not parse (an :class:`~pairq.errors.Undecodable` from the deserializer) ends the
    call with INVALID_ARGUMENT on ``read`` instead of reaching the receiver."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def read(self) -> Any:
        msg = await self._context.read()
        if isinstance(msg, Undecodable):
            await msg.error().abort(self._context)
        return msg


# Least time between two questions to the partner about its store (``partner_refusal``).
PARTNER_PROBE_INTERVAL = 0.5


class Pair:
    """Both directions of one broker's pair link, its lease and takeover."""

    def __init__(self, broker: PairHost) -> None:
        self.broker = broker
        self.state = s = PairState(broker)
        self.sender = Sender(s)
        self.takeover = Takeover(s)
        self.receiver = Receiver(s, self.takeover)
        self._tasks: list[asyncio.Task[Any]] = []
        self._repair_channel: Any = None

        # The partner's own word on why it refuses copies (its store is full), as its
        # GetStats health said at ``_partner_checked``; see ``partner_refusal``.
        self._partner_full = ""
        self._partner_checked = -1e9
        self._partner_probe: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ what the parts share
    @property
    def name(self) -> str:
        return self.state.name

    @property
    def partner_address(self) -> str:
        return self.state.partner_address

    @property
    def min_copies(self) -> int:
        return self.state.min_copies

    @property
    def lease(self) -> float:
        return self.state.lease

    @property
    def core(self) -> pc.PairCore:
        return self.state.core

    @property
    def standby(self) -> StandbyStore:
        return self.state.standby

    @property
    def catalog_event(self) -> asyncio.Event:
        """Set once this broker's store has the pair's catalog (``check_catalog``)."""
        return self.state.catalog_event

    @property
    def fence(self) -> int:
        """Moves whenever deliveries already queued became invalid (``PairState.fence``)."""
        return self.state.fence

    # ------------------------------------------------------------ lifecycle
    def load(self) -> None:
        self.standby.load()
        # A store that never had the pair's catalog (new, or wiped) waits for it.
        self.core.catalog_ready = self.broker.store.meta.catalog_ready()
        if self.core.catalog_ready:
            self.catalog_event.set()

    @property
    def connected(self) -> bool:
        """Whether our replication stream to the partner is up."""
        return self.sender.connected

    @property
    def partner_connected(self) -> bool:
        """Whether the partner's replication stream to this broker is up."""
        return self.receiver.live > 0

    @property
    def solo(self) -> bool:
        return self.core.mode == pc.SOLO

    @property
    def takeovers(self) -> int:
        return self.core.takeovers

    @property
    def lease_until(self) -> float:
        return self.core.lease_until

    @property
    def refill_sending(self) -> int:
        """Seqs of our log the running catch-up of the partner has still to send."""
        return self.sender.refill_sending

    @property
    def refill_receiving(self) -> int:
        """Seqs of the partner's log it says are still coming."""
        return self.receiver.refill_receiving

    async def start_tcp(self) -> None:
        """Listen for the partner's TCP replication link (``--replication-address``)."""
        await self.receiver.start_tcp()

    def start(self) -> None:
        s = self.state
        s.running = True
        old = s.core
        s.core = pc.PairCore(
            lease=s.lease,
            ack_timeout=old.ack_timeout,
            now=time.monotonic(),
            catalog_ready=old.catalog_ready,
            startup_grace=old.startup_grace,
        )
        s.core.witnesses_exist = old.witnesses_exist
        self._tasks = [
            asyncio.create_task(self.sender.run(), name="pair-outbound"),
            asyncio.create_task(self._monitor(), name="pair-monitor"),
        ]

    async def stop(self) -> None:
        """Stop both directions now (the partner's long-lived stream would otherwise
        hold the gRPC server open for the whole shutdown grace period)."""
        self.state.running = False
        self.receiver.close()
        if self._partner_probe is not None:
            self._partner_probe.cancel()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sender.fail_pending(UnavailableError("broker is shutting down"))
        self.receiver.stop_listening()
        if self._repair_channel is not None:
            await self._repair_channel.close()
            self._repair_channel = None

    # ------------------------------------------------------------ delivery fence
    def may_deliver(self) -> bool:
        return self.state.may_deliver()

    def lease_remaining(self) -> float:
        return self.core.lease_remaining(time.monotonic())

    async def fence_moved(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the next lease renewal or fence change."""
        await self.state.fence_moved(timeout)

    # ------------------------------------------------------------ publish side
    def check_catalog(self) -> None:
        """Refuse publishes and new channels until the pair's catalog is here (a new or
        wiped store would otherwise create topics without the pair's channels)."""
        if not self.core.catalog_ready:
            raise PairqError(
                f"this broker's store is new and it has not yet received the pair's topics and "
                f"channels from partner {self.partner_address}; retry shortly, or use the partner",
                code=pb.ERROR_CODE_UNAVAILABLE,
            )

    def copies(self) -> int:
        """Durable copies a publish gets now: 2 while our stream to the partner is up."""
        return 2 if self.connected else 1

    def check_publishable(self) -> None:
        """Refuse a durable publish that cannot get the copies it needs (a new store
        without the catalog; the partner unreachable under --min-copies=2)."""
        self.check_catalog()
        if self.min_copies >= 2 and not self.connected:
            refusal = self.partner_refusal()
            if refusal is not None:
                raise refusal
            raise PairqError(
                f"partner {self.partner_address} of pair {self.name!r} is unreachable and this broker "
                "requires 2 durable copies (--min-copies=2); publish to another pair, or retry later",
                code=pb.ERROR_CODE_UNAVAILABLE,
                partner=self.partner_address,  # the client skips this pair (broker.proto)
            )

    def partner_refusal(self) -> PairqError | None:
        """A publish failed for want of the partner's copy: if the partner said its store
        is full, the error to answer (RESOURCE_EXHAUSTED naming the partner's disk)
        instead of UNAVAILABLE.

        The partner ends the replication session when it cannot store a batch, so the
        owner only sees the stream drop; rather than change the replication protocol,
        the owner asks the partner's public ``GetStats`` (its ``health`` says "store
        full: <why>"), at most every ``PARTNER_PROBE_INTERVAL`` and only while
        publishes fail. The first failure after a change still answers UNAVAILABLE
        (retryable); later ones use the answer."""
        now = time.monotonic()
        if now - self._partner_checked >= PARTNER_PROBE_INTERVAL and (
            self._partner_probe is None or self._partner_probe.done()
        ):
            self._partner_checked = now
            self._partner_probe = asyncio.get_running_loop().create_task(self._probe_partner())
        if not self._partner_full:
            return None
        return PairqError(
            f"partner {self.partner_address} of pair {self.name!r} cannot store copies: its "
            f"store is full ({self._partner_full}); free room on the partner (finish messages, "
            "or its --max-store-bytes / --store-reserve-bytes / disk), or publish to another pair",
            code=pb.ERROR_CODE_STORE_FULL,
            partner=self.partner_address,
        )

    async def _probe_partner(self) -> None:
        resp = await self._repair_call(rpb.RepairRequest(), timeout=1.0)
        self._partner_full = resp.store_full if resp is not None else ""

    def replicate(
        self,
        topic: str,
        seq0: int,
        records: list[bytes],
        crcs: list[int],
        *,
        uncommitted: bool = False,
    ) -> asyncio.Future[None] | None:
        """Queue records for the partner; the future resolves on its acknowledgement
        (None while disconnected). See ``Sender.replicate``."""
        return self.sender.replicate(topic, seq0, records, crcs, uncommitted=uncommitted)

    def unconfirmed(self, ids: list[bytes]) -> list[bytes]:
        """Of ``ids``, those held only as the partner's unconfirmed copies (StandbyStore)."""
        pending = self.standby.unconfirmed_ids
        return [i for i in ids if i in pending] if pending else []

    async def wait_confirmed(self, ids: list[bytes], timeout: float) -> set[bytes]:
        return await self.standby.wait_confirmed(ids, timeout)

    def committed(self, topic: str, seq0: int, n: int) -> None:
        """Records sent ``uncommitted`` are now durable here (``Sender.committed``)."""
        self.sender.committed(topic, seq0, n)

    async def wait_replicated(self) -> None:
        """Wait (at most an ack timeout) until the partner acknowledged everything
        queued so far (``Sender.wait_replicated``)."""
        await self.sender.wait_replicated()

    def barrier(self) -> asyncio.Future[None] | None:
        """A future resolved once the partner acknowledged everything queued so far
        (catch-up included); None while disconnected."""
        return self.sender.barrier()

    def progress(
        self,
        topic: str,
        channel: str,
        floor: int,
        finished: list[int],
        states: dict[int, tuple[int, int] | None] | None = None,
    ) -> None:
        """A channel's progress, for the partner's standby copies."""
        self.sender.progress(topic, channel, floor, finished, states)

    def channel_created(self, topic: str, channel: str, floor: int, created_ns: int) -> None:
        self.sender.channel_created(topic, channel, floor, created_ns)

    def channel_deleted(self, topic: str, channel: str, deleted_ns: int) -> None:
        self.sender.channel_deleted(topic, channel, deleted_ns)

    def topic_deleted(self, topic: str) -> None:
        self.sender.topic_deleted(topic)

    # ------------------------------------------------------------ takeover
    def gossip_partner_dead(self, dead: bool, *, witnessed: bool = False) -> None:
        """Gossip's view of the partner (with other members, takeover needs a witnessed
        verdict on top of the lapsed lease, see core.py)."""
        self.core.on_gossip(dead, witnessed=witnessed, now=time.monotonic())

    def gossip_has_witnesses(self) -> None:
        """Gossip knows a member besides the pair: from now on takeover is witnessed."""
        if not self.core.witnesses_exist:
            log.info("gossip knows members besides the pair: takeover needs their witness")
        self.core.witnesses_exist = True

    async def _monitor(self) -> None:
        """Feed the core the clock and carry out what it decides."""
        s = self.state
        while s.running:
            await asyncio.sleep(min(0.02, s.heartbeat / 2))
            now = time.monotonic()
            for action in s.core.tick(now, unacked=bool(self.sender.in_flight)):
                if action.kind == pc.RESUMED:
                    log.log(
                        logging.WARNING if action.gap >= s.lease / 2 else logging.INFO,
                        "this broker was stopped for %.2f s (paused process, suspended host "
                        "or a stalled loop): not judging the partner's silence across the gap",
                        action.gap,
                    )
                elif action.kind == pc.RESET_LINK:
                    link = self.sender.link
                    if link is not None:
                        log.warning(
                            "partner %s: %s; dropping the replication session and reconnecting",
                            s.partner_address,
                            action.reason,
                        )
                        self.sender.reset_session()
                elif action.kind == pc.TAKE_OVER:
                    await self.takeover.run(action.reason)

    # ------------------------------------------------------------ stats
    def stats(self) -> pb.PairStats:
        link = self.sender.link
        return pb.PairStats(
            pair=self.name,
            partner_address=self.partner_address,
            partner_id=self.standby.partner_id,
            connected=self.connected,
            lease_remaining_ms=int(self.lease_remaining() * 1000),
            solo=self.solo,
            epoch=self.broker.epoch,
            replication_lag=self.sender.unacked_msgs,
            standby_messages=self.standby.count(),
            min_copies=self.min_copies,
            takeovers=self.takeovers,
            partner_connected=self.partner_connected,
            link=(
                ""
                if not self.connected or link is None
                else "tcp"
                if isinstance(link, FramedLink)
                else "grpc"
            ),
            refill_sending=self.refill_sending,
            refill_receiving=self.refill_receiving,
            auth_failures=self.state.auth_failures,
        )

    # ------------------------------------------------------------ repair (integrity.py)
    async def fetch(
        self, topic: str, seqs: list[int], *, owned: bool
    ) -> dict[int, tuple[bytes, int]] | None:
        """The partner's good copies of ``seqs`` (``integrity.RepairSource``); None when
        it cannot be asked."""
        resp = await self._repair_call(
            rpb.RepairRequest(topic=topic, seqs=seqs, owned=owned), timeout=2.0
        )
        if resp is None:
            return None
        return {q: (r, c) for q, r, c in zip(resp.seqs, resp.records, resp.crcs, strict=False)}

    async def _repair_call(
        self, request: rpb.RepairRequest, *, timeout: float
    ) -> rpb.RepairResponse | None:
        """``ReplicationService.Repair`` on the partner, over TLS when it is on, with
        the pair secret's proof; None (logged) when it cannot be asked."""
        if self._repair_channel is None:
            from pairq import grpcopts

            self._repair_channel = self.state.security.channel(
                self.partner_address, grpcopts.client_options(self.broker.options.max_msg_size)
            )
        call = self._repair_channel.unary_unary(
            "/pairq.v1.ReplicationService/Repair",
            request_serializer=rpb.RepairRequest.SerializeToString,
            response_deserializer=rpb.RepairResponse.FromString,
        )
        md: tuple[tuple[str, str], ...] = ()
        if self.state.secret is not None:
            value = pairauth.repair_proof(
                self.state.secret.current,
                self.name,
                time.time_ns() // 1_000_000,
                request.SerializeToString(),
            )
            md = ((pairauth.REPAIR_METADATA, value),)
        try:
            resp: rpb.RepairResponse = await call(request, timeout=timeout, metadata=md)
        except (grpc.aio.AioRpcError, OSError) as exc:
            log.warning("cannot ask partner %s (Repair): %s", self.partner_address, exc)
            return None
        return resp

    async def Repair(self, request: rpb.RepairRequest, context: Any) -> rpb.RepairResponse:
        """Our good copies of the asker's records: of what it owns, our standby copies;
        of its standby copies, our own records; and whether our store is full. With a
        pair secret, only for a caller that proves it holds it."""
        from pairq.names import is_valid_name

        if self.state.secret is not None:
            value = ""
            for k, v in context.invocation_metadata() or ():
                if k == pairauth.REPAIR_METADATA:
                    value = v.decode() if isinstance(v, bytes) else str(v)
            why = pairauth.check_repair(
                self.state.secret,
                self.name,
                value,
                request.SerializeToString(),
                time.time_ns() // 1_000_000,
            )
            if why:
                self.state.auth_failed(context.peer() or "?", f"Repair: {why}")
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"Repair refused: {why}")
        store = self.broker.store
        if not request.seqs:
            return rpb.RepairResponse(store_full=store.full_reason)
        if not is_valid_name(request.topic) or len(request.seqs) > 10_000:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "Repair: invalid topic or too many seqs"
            )
        out = rpb.RepairResponse(store_full=store.full_reason)
        if request.owned:
            found = [(q, store.standby.get(request.topic, q)) for q in request.seqs]
        else:
            topic = self.broker.topics.get(request.topic)
            if topic is None or topic.ephemeral:
                return out
            found = [(q, store.log.get(topic.meta.id, q)) for q in request.seqs]
        for q, got in found:
            if got is not None:
                out.seqs.append(q)
                out.records.append(got[0])
                out.crcs.append(got[1])
        return out

    async def _replicate(self, request_iterator: Any, context: Any) -> None:
        await self.receiver.Replicate(request_iterator, _Decoded(context))

    def generic_handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            "pairq.v1.ReplicationService",
            {
                "Replicate": grpc.stream_stream_rpc_method_handler(
                    self._replicate,
                    request_deserializer=decoder(rpb.ReplicateRequest),
                    response_serializer=rpb.ReplicateResponse.SerializeToString,
                ),
                "Repair": grpc.unary_unary_rpc_method_handler(
                    self.Repair,
                    request_deserializer=rpb.RepairRequest.FromString,
                    response_serializer=rpb.RepairResponse.SerializeToString,
                ),
            },
        )
