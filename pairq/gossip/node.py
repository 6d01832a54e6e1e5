"""The embeddable gossip member: :class:`Gossip` drives a :class:`Core` over asyncio.

UDP carries probes, acks, gossip and the pair heartbeat; TCP (same port)
carries push-pull state exchange and the fallback ping. Every datagram and
every TCP frame goes through the :class:`~pairq.gossip.security.Envelope`
(label, optional AES-GCM, replay protection).

Threading and blocking contract
-------------------------------
- A :class:`Gossip` belongs to the event loop that ran :meth:`Gossip.start`.
  Call its methods only from that loop's thread (it is not thread-safe); from
  another thread use ``loop.call_soon_threadsafe``.
- Event callbacks registered with :meth:`Gossip.subscribe` run on the loop
  thread, synchronously, in event order, while gossip processing is paused:
  they must return quickly and must not block (no disk, no network waits, no
  sleep). An exception in a callback is logged and swallowed. For slow work use
  :meth:`Gossip.events` (an ``asyncio.Queue``) and consume it from a task. The
  full contract (ordering, re-entrancy, lifetime) is on :meth:`Gossip.subscribe`.
- :meth:`Gossip.members` and :attr:`Gossip.local_member` return immutable
  snapshots; they never block.
- The socket reader drains every queued datagram before timers run, so after
  the loop was stalled (GC, a slow callback) acks and refutations that arrived
  meanwhile are seen before any probe or suspicion times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import socket
import struct
import time
from collections.abc import Callable, Iterable

from pairq.gossip.codec import decode_message, decode_packet, encode_message, encode_packet
from pairq.gossip.config import GossipConfig
from pairq.gossip.core import Core
from pairq.gossip.errors import DecodeError
from pairq.gossip.events import MemberEvent, MemberView, PushPullRequest, SendPacket, Stats, TcpPing
from pairq.gossip.messages import Ack, Addr, Ping, PushPull
from pairq.gossip.meta import NodeMeta
from pairq.gossip.security import Envelope, Keyring

__all__ = ["Gossip", "parse_addr"]

log = logging.getLogger("pairq.gossip")
_LEN = struct.Struct(">I")
_MAX_DATAGRAMS_PER_WAKEUP = 512


def parse_addr(text: str | Addr, default_port: int = 7946, *, allow_zero: bool = False) -> Addr:
    """``"host:port"`` (or ``"[v6]:port"``, or a bare host) to ``(host, port)``.

    Port 0 ("pick a free port") is accepted only with ``allow_zero`` (bind addresses).
    """
    if isinstance(text, tuple):
        return (str(text[0]), int(text[1]))
    s = text.strip()
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        port = rest.lstrip(":") or str(default_port)
    elif s.count(":") == 1:
        host, port = s.split(":")
    else:
        host, port = s, str(default_port)
    if not host or not port.isdigit() or not (0 if allow_zero else 1) <= int(port) < 65536:
        raise ValueError(f"not a HOST:PORT address: {text!r}")
    return (host, int(port))


class Gossip:
    """One gossip member embedded in an asyncio process.

    ``Gossip(config, meta)``; ``await start()``; ``await join(["host:port"])``;
    ``members()``; ``subscribe(cb)`` / ``events()``; ``update_meta(meta)``;
    ``await stop(leave=True)``. See the module docstring for the threading contract.
    """

    def __init__(
        self,
        config: GossipConfig,
        meta: NodeMeta,
        *,
        name: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config.validate()
        self.name = name or config.name or meta.node_id
        if not self.name or len(self.name.encode("utf-8")) > 255:
            raise ValueError("gossip needs a name of 1..255 bytes: set config.name or meta.node_id")
        meta.encode(config.max_meta_size)  # MetaTooLargeError before any socket opens
        self._meta = meta
        self._rng = rng
        self.keyring = Keyring(config.keys)
        self._envelope = Envelope(self.keyring, config.label, config.replay_window)
        self._core: Core | None = None
        self._udp: socket.socket | None = None
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._callbacks: list[Callable[[MemberEvent], None]] = []
        self._queues: list[asyncio.Queue[MemberEvent]] = []
        self._stopping = False
        self.dropped_events = 0
        self.address: Addr = (config.bind_host, config.bind_port)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Bind UDP and TCP on the same port and start the protocol."""
        if self._core is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        for attempt in range(20):
            udp = socket.socket(
                socket.AF_INET6 if ":" in cfg.bind_host else socket.AF_INET, socket.SOCK_DGRAM
            )
            udp.setblocking(False)
            with contextlib.suppress(OSError):
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            try:
                udp.bind((cfg.bind_host, cfg.bind_port))
                port = int(udp.getsockname()[1])
                self._server = await asyncio.start_server(
                    self._on_stream, cfg.bind_host, port, reuse_address=True, backlog=256
                )
            except OSError:
                udp.close()
                if cfg.bind_port != 0 or attempt == 19:
                    raise
                continue
            self._udp = udp
            break
        assert self._udp is not None
        port = int(self._udp.getsockname()[1])
        self.address = (cfg.advertise_host or cfg.bind_host, cfg.advertise_port or port)
        now = self._loop.time()
        # The envelope (label, nonce, tag) rides on every packet: leave room for it
        # so a full packet still fits one Ethernet frame.
        core_cfg = dataclasses.replace(
            cfg, udp_buffer_size=cfg.udp_buffer_size - self._envelope.overhead()
        )
        self._core = Core(core_cfg, self.name, self.address, self._meta, now, self._rng)
        self._loop.add_reader(self._udp.fileno(), self._on_readable)
        self._core.start(now)
        self._flush()
        self._ticker = self._loop.create_task(self._tick_loop(), name=f"gossip-tick-{self.name}")
        from pairq.gossip.metrics import register

        register(self)

    async def join(self, addrs: Iterable[str | Addr], *, within: float | None = None) -> int:
        """Push-pull with each seed; returns how many answered. Never raises for a bad peer."""
        targets = [parse_addr(a) for a in addrs]
        targets = [a for a in targets if a != self.address]
        if not targets:
            return 0
        self.core.remember_seeds(targets)
        results = await asyncio.gather(
            *(self._push_pull(a, join=True, within=within) for a in targets), return_exceptions=True
        )
        return sum(1 for r in results if r is True)

    async def stop(self, leave: bool = True, *, drain: float = 1.0) -> None:
        """Leave gracefully (others see LEFT, not DEAD) and close the sockets.

        With ``leave``, keep gossiping for up to ``drain`` seconds until the leave
        message has been sent its full number of times.
        """
        if self._core is None or self._loop is None or self._stopping:
            return
        core = self._core
        if leave:
            core.leave(self._loop.time())
            self._flush()
            step = self.config.gossip_interval / 2
            for _ in range(max(1, int(drain / step))):
                if not core.pending_broadcasts():
                    break
                await asyncio.sleep(step)
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._udp is not None:
            self._loop.remove_reader(self._udp.fileno())
            self._udp.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    # ------------------------------------------------------------------ public view
    @property
    def core(self) -> Core:
        if self._core is None:
            raise RuntimeError("call start() first")
        return self._core

    def members(self) -> list[MemberView]:
        """Every member known, including self and dead/left ones not yet forgotten."""
        return self.core.members()

    @property
    def local_member(self) -> MemberView:
        me = self.core.member(self.name)
        assert me is not None
        return me

    @property
    def stats(self) -> Stats:
        return self.core.stats

    @property
    def health(self) -> int:
        """Lifeguard local health score: 0 is healthy; timeouts scale by (health + 1)."""
        return self.core.health

    def update_meta(self, meta: NodeMeta) -> None:
        """Publish new metadata (raises MetaTooLargeError if too big)."""
        self._meta = meta
        core = self.core
        core.update_meta(self._now(), meta)
        self._flush()

    def subscribe(self, callback: Callable[[MemberEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every later event; returns an unsubscribe function.

        The contract (memberlist's ``EventDelegate``, stated the same way):

        - **Which thread.** The callback runs on the event loop that started this
          member, in its thread, called directly from the code that handled a packet,
          a timer or an API call (never from another thread, never as a task).
        - **Blocking.** It must not block and should return in well under a
          millisecond: while it runs no packet is read, no probe answered and no timer
          fires, so a slow callback makes this member look dead to others (Lifeguard
          counts the stall against *our* health). No disk, no network waits, no
          ``time.sleep``; hand slow work to a task (``loop.create_task``) or use
          :meth:`events`, a queue consumed at the subscriber's pace.
        - **Ordering.** Events reach every subscriber in the order the core produced
          them, which for one member is the order of its state changes (a member's
          first event is its JOIN); each event goes to every subscriber, in the order
          they subscribed, before the next event goes to any; the queues of
          :meth:`events` get the same order, after the callbacks ran.
        - **Re-entrancy.** A callback may read (:meth:`members`) and may unsubscribe.
          A call that changes state (:meth:`update_meta`, :meth:`join`) from inside a
          callback delivers the events it causes at once, before the rest of the
          current batch; defer such calls with ``loop.call_soon`` to keep the order.
        - **Errors.** An exception in a callback is logged and swallowed; the other
          subscribers and gossip itself go on.
        - **Lifetime.** Events are delivered from :meth:`start` until :meth:`stop`
          closes the sockets and cancels the timers; after ``stop`` returns nothing
          from the network or a timer reaches a callback any more.
        """
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def events(self, maxsize: int = 0) -> asyncio.Queue[MemberEvent]:
        """A queue receiving every later event. When a bounded queue is full the
        oldest event is dropped (``dropped_events`` counts them) rather than
        blocking gossip."""
        q: asyncio.Queue[MemberEvent] = asyncio.Queue(maxsize)
        self._queues.append(q)
        return q

    def report_loop_lag(self, lag: float) -> None:
        """Feed an externally measured event-loop lag (seconds) into Lifeguard."""
        self.core.report_loop_lag(self._now(), lag)

    # ------------------------------------------------------------------ internals
    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def _tick_loop(self) -> None:
        core = self.core
        interval = self.config.tick_interval
        while not self._stopping:
            now = self._now()
            try:
                core.tick(now)
            except Exception:  # a bug must not take the member down silently
                log.exception("gossip tick failed")
            self._flush()
            deadline = core.next_deadline()
            delay = (
                interval if deadline is None else min(interval, max(0.0, deadline - self._now()))
            )
            await asyncio.sleep(delay)

    def _on_readable(self) -> None:
        core = self._core
        udp = self._udp
        if core is None or udp is None:
            return
        wall = time.time()
        now = self._now()
        for _ in range(_MAX_DATAGRAMS_PER_WAKEUP):
            try:
                data, src = udp.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # e.g. ICMP port unreachable reported on the socket: nothing to read.
                continue
            core.stats.bytes_received += len(data)
            try:
                msgs = decode_packet(self._envelope.open(data, wall))
            except DecodeError as exc:
                core.stats.decode_errors += 1
                log.debug("dropped packet from %s: %s", src, exc)
                continue
            try:
                core.receive(now, (str(src[0]), int(src[1])), msgs)
            except Exception:
                log.exception("gossip receive failed")
        self._flush()

    def _send(self, addr: Addr, data: bytes) -> None:
        if self._udp is None or self._stopping:
            return
        sealed = self._envelope.seal(data, time.time())
        try:
            self._udp.sendto(sealed, addr)
        except (OSError, UnicodeError) as exc:
            # UnicodeError: a host name the IDNA step refuses (the decoder drops such
            # addresses; one from local configuration could still get here)
            log.debug("send to %s failed: %s", addr, exc)
            return
        self.core.stats.bytes_sent += len(sealed)

    def _flush(self) -> None:
        core = self._core
        if core is None:
            return
        for action in core.drain_actions():
            if isinstance(action, SendPacket):
                try:
                    self._send(action.addr, encode_packet(action.msgs))
                except ValueError:
                    log.exception("could not encode %r", action)
            elif isinstance(action, TcpPing):
                self._spawn(self._tcp_ping(action))
            elif isinstance(action, PushPullRequest):
                self._spawn(self._push_pull_task(action))
        for event in core.drain_events():
            for cb in list(self._callbacks):
                try:
                    cb(event)
                except Exception:
                    log.exception("gossip event callback failed")
            for q in self._queues:
                if q.full():
                    with contextlib.suppress(asyncio.QueueEmpty):
                        q.get_nowait()
                    self.dropped_events += 1
                q.put_nowait(event)

    def _spawn(self, coro: object) -> None:
        if self._loop is None or self._stopping:
            if asyncio.iscoroutine(coro):
                coro.close()
            return
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ streams
    async def _write_frame(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        sealed = self._envelope.seal(body, time.time())
        writer.write(_LEN.pack(len(sealed)) + sealed)
        self.core.stats.bytes_sent += len(sealed) + 4
        await writer.drain()

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes:
        (size,) = _LEN.unpack(await reader.readexactly(4))
        if size > self.config.max_stream_size:
            raise DecodeError(f"stream frame of {size} bytes exceeds max_stream_size")
        data = await reader.readexactly(size)
        self.core.stats.bytes_received += size + 4
        return self._envelope.open(data, time.time())

    async def _on_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        core = self.core
        try:
            peer = writer.get_extra_info("peername")
            msg = decode_message(
                await asyncio.wait_for(self._read_frame(reader), self.config.tcp_timeout)
            )
            if isinstance(msg, PushPull):
                await self._write_frame(writer, encode_message(core.local_state(False)))
                core.merge_remote(self._now(), msg)
            elif isinstance(msg, Ping):
                if msg.target and msg.target != self.name:
                    return
                src = (str(peer[0]), int(peer[1])) if peer else msg.source_addr
                core.receive(self._now(), src, [msg])
                await self._write_frame(writer, encode_message(Ack(msg.seq, self.name)))
            self._flush()
        except (
            TimeoutError,
            DecodeError,
            OSError,
            UnicodeError,
            asyncio.IncompleteReadError,
        ) as exc:
            core.stats.decode_errors += isinstance(exc, DecodeError)
            log.debug("gossip stream failed: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _exchange(self, addr: Addr, body: bytes, limit: float) -> bytes:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(addr[0], addr[1]), limit)
        try:
            await self._write_frame(writer, body)
            return await asyncio.wait_for(self._read_frame(reader), limit)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _push_pull(self, addr: Addr, join: bool, within: float | None = None) -> bool:
        core = self.core
        try:
            raw = await self._exchange(
                addr, encode_message(core.local_state(join)), within or self.config.tcp_timeout
            )
            remote = decode_message(raw)
            if not isinstance(remote, PushPull):
                raise DecodeError("push-pull answered with another message")
        except (
            TimeoutError,
            DecodeError,
            OSError,
            UnicodeError,
            asyncio.IncompleteReadError,
        ) as exc:
            log.debug("push-pull with %s failed: %s", addr, exc)
            return False
        core.merge_remote(self._now(), remote)
        self._flush()
        return True

    async def _push_pull_task(self, action: PushPullRequest) -> None:
        await self._push_pull(action.addr, action.join)

    async def _tcp_ping(self, action: TcpPing) -> None:
        ok = refused = False
        try:
            raw = await self._exchange(
                action.addr, encode_message(action.ping), self.config.tcp_timeout
            )
            ack = decode_message(raw)
            ok = isinstance(ack, Ack) and ack.seq == action.ping.seq
        except ConnectionRefusedError:
            refused = True  # nobody listens there: the process is gone (a pause never refuses)
        except (
            TimeoutError,
            DecodeError,
            OSError,
            UnicodeError,
            asyncio.IncompleteReadError,
        ) as exc:
            log.debug("tcp ping to %s failed: %s", action.addr, exc)
        if not self._stopping:
            self.core.tcp_ping_result(self._now(), action.ping.seq, ok, refused=refused)
            self._flush()
