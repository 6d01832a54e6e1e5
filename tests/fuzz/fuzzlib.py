"""Fuzzing every decoder and every RPC handler (issue 14 item 7).

Two parts, both seeded and counted:

* ``fuzz_decoders``, in process: the request deserializers of every broker and
  lookup RPC (``pairq.errors.decoder``: a message or ``Undecodable``, never an
  exception), the TCP replication link's framing (``FramedLink.read`` over random,
  mutated, truncated and oversized frames: a message, EOF or ``LinkError``), the
  hand-written wire encoders (what they write must parse back, field for field,
  with the generated protobuf code), and the gossip codec (``pairq.gossip.fuzz``).
* ``flood``, against real processes: a broker and a lookup, several client
  connections sending random bytes, mutated and truncated valid requests, valid
  requests with huge fields and invalid names, to every unary method and as
  frames of every stream (Subscribe, PublishStream, Register), while a real
  workload publishes and consumes on the same broker. No answer may be UNKNOWN or
  INTERNAL, neither process may die or log a traceback, the workload must get
  every message it was acknowledged, and the broker's store must reopen and read
  back whole afterwards.

``python tests/fuzz/run_fuzz.py`` (``make fuzz``) runs at least 1,000,000 inputs in
all; ``tests/fuzz/test_fuzz.py`` runs a small subset in the default suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory

from pairq.broker import wire
from pairq.broker.pair.link import FramedLink, LinkError
from pairq.errors import Undecodable, decoder
from pairq.testing import BrokerProcess, eventually, free_port, wait_for_port
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import lookup_pb2 as lpb
from pairq.v1 import replication_pb2 as rpb

BROKER_UNARY = [
    "Publish",
    "PublishBatch",
    "CreateTopic",
    "DeleteTopic",
    "EmptyTopic",
    "PauseTopic",
    "UnpauseTopic",
    "CreateChannel",
    "DeleteChannel",
    "EmptyChannel",
    "PauseChannel",
    "UnpauseChannel",
    "GetStats",
    "ListDeadLetters",
    "ReplayDeadLetters",
]
LOOKUP_UNARY = [
    "LookupTopic",
    "ListTopics",
    "ListChannels",
    "ListNodes",
    "CreateTopicRegistration",
    "DeleteTopicRegistration",
    "CreateChannelRegistration",
    "DeleteChannelRegistration",
    "TombstoneTopic",
]
BAD = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
HUGE = 100_000
# What grpc's client reports when it fails a call itself (a write after the server
# ended the call), as opposed to a status the server sent.
CLIENT_RACE = "Internal error from Core"
# Names the fuzzer uses; the workload's topic is never among them (or near them).
NAMES = ["t", "fz", "a.b_c-d", "fz#ephemeral", "", "x" * 65, "bad name", "é", "\x00", "n" * HUGE]


# ------------------------------------------------------------------ generators
def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if op == 0 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2 and buf:
            del buf[rng.randrange(len(buf)) :]  # truncated
        elif op == 3:
            buf.insert(rng.randrange(len(buf) + 1), rng.randrange(256))
        elif op == 4 and buf:
            i = rng.randrange(len(buf))
            buf[i:i] = buf[i : i + rng.randrange(1, 16)]  # a repeated run (duplicate fields)
        elif op == 5:
            buf += rng.randbytes(rng.randrange(8))
        else:
            # an overlong varint length
            buf[rng.randrange(len(buf) + 1) : 0] = b"\x0a\xff\xff\xff\xff\x0f"
    return bytes(buf)


def _name(rng: random.Random) -> str:
    return rng.choice(NAMES) if rng.random() < 0.8 else rng.randbytes(8).hex()


def _id(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice((0, 16, 16, 15, 17, 1000)))


def structured(rng: random.Random, cls: Any) -> Any:
    """A message of ``cls`` whose fields hold fuzzed values (huge, empty, invalid)."""
    msg = cls()
    for f in cls.DESCRIPTOR.fields:
        if rng.random() < 0.4:
            continue
        try:
            _fill(rng, msg, f, depth=0)
        except (ValueError, TypeError):
            pass
    return msg


def _value(rng: random.Random, f: Any) -> Any:
    t = f.type
    if t == f.TYPE_STRING:
        return _name(rng)
    if t == f.TYPE_BYTES:
        return rng.choice((_id(rng), rng.randbytes(rng.choice((1, 100, HUGE)))))
    if t == f.TYPE_BOOL:
        return rng.random() < 0.5
    if t in (f.TYPE_UINT32, f.TYPE_FIXED32):
        return rng.choice((0, 1, 100, 2**31, 2**32 - 1))
    if t in (f.TYPE_UINT64, f.TYPE_FIXED64):
        return rng.choice((0, 1, 2**32, 2**62, 2**64 - 1))
    if t in (f.TYPE_INT32, f.TYPE_SINT32, f.TYPE_SFIXED32):
        return rng.choice((0, -1, 1, 2**31 - 1, -(2**31)))
    if t in (f.TYPE_INT64, f.TYPE_SINT64, f.TYPE_SFIXED64):
        return rng.choice((0, -1, 1, 2**63 - 1, -(2**63)))
    if t == f.TYPE_ENUM:
        return rng.choice([v.number for v in f.enum_type.values])
    if t in (f.TYPE_DOUBLE, f.TYPE_FLOAT):
        return rng.choice((0.0, -1.0, 1e300))
    raise TypeError(t)


def _fill(rng: random.Random, msg: Any, f: Any, depth: int) -> None:
    repeated = f.is_repeated
    if f.message_type is not None:
        if f.message_type.GetOptions().map_entry:
            m = getattr(msg, f.name)
            for _ in range(rng.choice((1, 3, 300))):
                m[_name(rng)[:200]] = _name(rng)[:1000]
            return
        if depth > 2:
            return
        sub_cls = message_factory.GetMessageClass(f.message_type)
        for _ in range(rng.choice((1, 2, 50)) if repeated else 1):
            sub = structured(rng, sub_cls) if depth < 2 else sub_cls()
            if repeated:
                getattr(msg, f.name).append(sub)
            else:
                getattr(msg, f.name).CopyFrom(sub)
        return
    if repeated:
        getattr(msg, f.name).extend(_value(rng, f) for _ in range(rng.choice((1, 3, 100))))
    else:
        setattr(msg, f.name, _value(rng, f))


def request_bytes(rng: random.Random, cls: Any) -> bytes:
    """One fuzzed request of type ``cls``: random, mutated, truncated or structured."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(200))
    data = structured(rng, cls).SerializeToString()
    if kind == 1:
        return mutate(rng, data)
    if kind == 2:
        return data[: rng.randrange(len(data) + 1)]
    return data


# ------------------------------------------------------------------ decoders
def _all_request_classes() -> list[Any]:
    out = [getattr(pb, n + "Request") for n in BROKER_UNARY]
    out += [pb.PublishStreamRequest, pb.SubscribeRequest]
    out += [getattr(lpb, n + "Request") for n in LOOKUP_UNARY] + [lpb.RegisterRequest]
    out += [rpb.ReplicateRequest, rpb.ReplicateResponse]
    return out


def _fuzz_deserializers(rng: random.Random, n: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    classes = _all_request_classes()
    decoders = [(cls, decoder(cls)) for cls in classes]
    seeds = {cls: [structured(rng, cls).SerializeToString() for _ in range(8)] for cls in classes}
    for i in range(n):
        cls, decode = decoders[i % len(decoders)]
        data = mutate(rng, rng.choice(seeds[cls])) if i % 3 else rng.randbytes(rng.randrange(64))
        out = decode(data)
        if isinstance(out, Undecodable):
            assert out.message.startswith("undecodable request") and len(out.message) < 400
            counts["rejected"] += 1
        else:
            assert isinstance(out, cls)
            counts["accepted"] += 1
    return counts


async def _fuzz_link(rng: random.Random, n: int) -> Counter[str]:
    """``n`` frames through FramedLink.read, in streams of a few frames each."""
    counts: Counter[str] = Counter()
    seeds = [structured(rng, rpb.ReplicateRequest).SerializeToString() for _ in range(16)]
    done = 0
    while done < n:
        reader = asyncio.StreamReader()
        link = FramedLink(reader, None, rpb.ReplicateRequest.FromString, 4096)  # type: ignore[arg-type]
        stream = bytearray()
        frames = rng.randint(1, 8)
        for _ in range(frames):
            body = mutate(rng, rng.choice(seeds)) if rng.random() < 0.7 else rng.randbytes(30)
            size = len(body)
            r = rng.random()
            if r < 0.05:
                size = rng.choice((4097, 2**32 - 1))  # oversized
            elif r < 0.1:
                size = size + rng.randint(1, 10)  # says more than follows: truncated
            stream += size.to_bytes(4, "big") + body
        if rng.random() < 0.2:
            del stream[rng.randrange(len(stream)) :]
        reader.feed_data(bytes(stream))
        reader.feed_eof()
        for _ in range(frames + 1):
            try:
                msg = await link.read()
            except LinkError:
                counts["rejected"] += 1
                break
            if msg is grpc.aio.EOF:
                counts["eof"] += 1
                break
            assert isinstance(msg, rpb.ReplicateRequest)
            counts["accepted"] += 1
        done += frames
    return counts


def _fuzz_wire(rng: random.Random, n: int) -> Counter[str]:
    """The hand-written encoders against the generated parser."""
    counts: Counter[str] = Counter()
    for _ in range(n):
        msg_id = rng.randbytes(16)
        body = rng.randbytes(rng.choice((1, 10, 200, 70_000)))
        ts = rng.randrange(2**63)
        due = rng.choice((0, rng.randrange(2**63)))
        headers = {rng.randbytes(3).hex(): rng.randbytes(rng.randrange(20)).hex()}
        rec = wire.encode_record(msg_id, body, ts, due, wire.encode_headers(headers))
        assert wire.record_id(rec) == msg_id and wire.record_due_ns(rec) == due
        m = pb.Message.FromString(wire.record_message(rec))
        assert (m.id, m.body, dict(m.headers)) == (msg_id, body, headers)
        attempts = rng.randrange(2**31)
        broker, epoch = rng.randbytes(4).hex(), rng.randrange(2**40)
        out = pb.SubscribeResponse.FromString(
            wire.encode_deliveries(
                [(wire.record_message(rec), attempts)], wire.broker_fields(broker, epoch)
            )
        )
        (d,) = out.deliveries.messages
        assert (d.id, d.body, d.attempts, d.broker_id, d.epoch) == (
            msg_id,
            body,
            attempts,
            broker,
            epoch,
        )
        counts["roundtrips"] += 1
    return counts


def fuzz_decoders(count: int, seed: int) -> dict[str, int]:
    """``count`` inputs over every decoder; raises on the first one that misbehaves."""
    from pairq.gossip.fuzz import run_fuzz

    rng = random.Random(seed)
    gossip = count // 2
    protos = count * 3 // 10
    link = count // 10
    wires = count - gossip - protos - link
    totals: dict[str, int] = {}
    g = run_fuzz(gossip, seed=seed)
    totals["gossip codec"] = g["total"]
    totals["rpc deserializers"] = sum(_fuzz_deserializers(rng, protos).values())
    totals["link frames"] = link
    asyncio.run(_fuzz_link(rng, link))
    totals["wire encoders"] = sum(_fuzz_wire(rng, wires).values())
    return totals


# ------------------------------------------------------------------ flood
@dataclass
class FloodReport:
    rpcs: Counter[str] = field(default_factory=Counter)  # status code name -> count
    bad: list[str] = field(default_factory=list)  # UNKNOWN / INTERNAL answers
    published: int = 0
    received: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.rpcs.values())


def _channel(address: str) -> grpc.aio.Channel:
    opts = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    return grpc.aio.insecure_channel(address, options=opts)


def _identity(b: bytes) -> bytes:
    return b


def _note(report: FloodReport, what: str, code: grpc.StatusCode, details: str) -> None:
    report.rpcs[code.name] += 1
    if code in BAD:
        report.bad.append(f"{what}: {code.name} {details[:200]}")


async def _one_unary(
    ch: grpc.aio.Channel, service: str, method: str, data: bytes, report: FloodReport
) -> None:
    call = ch.unary_unary(
        f"/{service}/{method}", request_serializer=_identity, response_deserializer=_identity
    )
    try:
        await call(data, timeout=20)
        _note(report, method, grpc.StatusCode.OK, "")
    except grpc.aio.AioRpcError as exc:
        _note(report, method, exc.code(), exc.details() or "")


async def _one_stream(
    ch: grpc.aio.Channel, service: str, method: str, frames: list[bytes], report: FloodReport
) -> None:
    """Write ``frames`` one at a time (stopping once the server ended the call: writes
    after that fail on the client's side, which is no answer of the server's), then
    read to the end; the status is the server's."""
    call = ch.stream_stream(
        f"/{service}/{method}", request_serializer=_identity, response_deserializer=_identity
    )(timeout=5)
    write_failed = False
    try:
        for f in frames:
            if call.done():
                break
            try:
                await call.write(f)
            except Exception:
                write_failed = True
                raise
        if not call.done():
            await call.done_writing()
        while await call.read() is not grpc.aio.EOF:
            pass
    except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
        pass
    code = await call.code()
    details = await call.details() or ""
    if write_failed and code == grpc.StatusCode.INTERNAL and details == CLIENT_RACE:
        # Our write raced the server ending the call (it had refused an earlier frame):
        # grpc's client fails the call itself, with no answer of the server's in it.
        report.rpcs["CLIENT_WRITE_AFTER_END"] += 1
        return
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and method == "Subscribe":
        code = grpc.StatusCode.OK  # a valid identify, then silence: our own timeout
    _note(report, method, code, details)


def _stream_frames(rng: random.Random, method: str) -> list[bytes]:
    cls = {
        "Subscribe": pb.SubscribeRequest,
        "PublishStream": pb.PublishStreamRequest,
        "Register": lpb.RegisterRequest,
    }[method]
    frames = [request_bytes(rng, cls) for _ in range(rng.randint(1, 5))]
    if method == "Subscribe" and rng.random() < 0.5:
        ident = pb.SubscribeRequest(
            identify=pb.SubscribeIdentify(topic=_name(rng), channel=_name(rng))
        )
        frames.insert(0, ident.SerializeToString())
    return frames


async def _fuzz_client(
    address: str,
    lookup: str,
    rng: random.Random,
    n: int,
    report: FloodReport,
    concurrency: int = 8,
) -> None:
    bch, lch = _channel(address), _channel(lookup)
    sem = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    try:
        for i in range(n):
            await sem.acquire()
            r = rng.random()
            if r < 0.55:
                m = rng.choice(BROKER_UNARY)
                data = request_bytes(rng, getattr(pb, m + "Request"))
                coro: Any = _one_unary(bch, "pairq.v1.BrokerService", m, data, report)
            elif r < 0.8:
                m = rng.choice(LOOKUP_UNARY)
                data = request_bytes(rng, getattr(lpb, m + "Request"))
                coro = _one_unary(lch, "pairq.v1.LookupService", m, data, report)
            elif r < 0.95:
                m = rng.choice(("Subscribe", "PublishStream"))
                coro = _one_stream(bch, "pairq.v1.BrokerService", m, _stream_frames(rng, m), report)
            else:
                coro = _one_stream(
                    lch,
                    "pairq.v1.LookupService",
                    "Register",
                    _stream_frames(rng, "Register"),
                    report,
                )
            task = asyncio.ensure_future(coro)
            tasks.add(task)
            task.add_done_callback(lambda t: (tasks.discard(t), sem.release()))
            if i % 500 == 0:
                await asyncio.sleep(0)
        while tasks:
            await asyncio.wait(list(tasks))
    finally:
        await bch.close()
        await lch.close()


class Workload:
    """A real producer and consumer on the broker under fuzz: every acknowledged
    message must arrive."""

    def __init__(self, address: str, topic: str) -> None:
        self.address = address
        self.topic = topic
        self.acked: set[bytes] = set()
        self.received: set[bytes] = set()
        self.stop = asyncio.Event()
        self._ch = _channel(address)
        from pairq.v1 import broker_pb2_grpc as pbg

        self.stub = pbg.BrokerServiceStub(self._ch)

    async def produce(self) -> None:
        n = 0
        while not self.stop.is_set():
            bodies = [b"w-%d" % (n + i) for i in range(20)]
            n += 20
            for _attempt in range(50):
                try:
                    await self.stub.PublishBatch(
                        pb.PublishBatchRequest(
                            topic=self.topic, messages=[pb.PublishItem(body=b) for b in bodies]
                        ),
                        timeout=10,
                    )
                    self.acked.update(bodies)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.02)

    async def consume(self) -> None:
        q: asyncio.Queue[pb.SubscribeRequest] = asyncio.Queue()
        q.put_nowait(
            pb.SubscribeRequest(
                identify=pb.SubscribeIdentify(topic=self.topic, channel="c", client_id="workload")
            )
        )
        q.put_nowait(pb.SubscribeRequest(ready=pb.SubscribeReady(count=500)))

        async def reqs() -> AsyncIterator[pb.SubscribeRequest]:
            while True:
                yield await q.get()

        async for resp in self.stub.Subscribe(reqs()):
            kind = resp.WhichOneof("event")
            if kind == "deliveries":
                msgs = list(resp.deliveries.messages)
                self.received.update(m.body for m in msgs)
                q.put_nowait(
                    pb.SubscribeRequest(finish=pb.SubscribeFinish(ids=[m.id for m in msgs]))
                )
            elif kind == "heartbeat":
                q.put_nowait(pb.SubscribeRequest(nop=True))

    async def close(self) -> None:
        await self._ch.close()


def _start_lookup(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pairq.cli", "lookup", "--address", address],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(port)
    return proc, address


def verify_store(data_dir: Path) -> int:
    """Open the broker's store and read every key of every database back; the count."""
    from pairq.broker.store import Store

    store = Store(data_dir / "store")
    store.open()
    n = 0
    try:
        with store.env.begin(buffers=False) as txn:
            for db in store.dbs:
                for _k, _v in txn.cursor(db=db):
                    n += 1
    finally:
        store.close()
    return n


async def flood(
    tmp: Path,
    *,
    rpcs: int,
    clients: int = 4,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> FloodReport:
    """``rpcs`` fuzzed requests from ``clients`` connections against a real broker
    and lookup while a workload runs; asserts the acceptance rules (see the module
    docstring) and returns the counts."""
    report = FloodReport()
    broker = BrokerProcess(tmp / "broker", log_path=str(tmp / "broker.log"))
    broker.start()
    lookup_proc, lookup = _start_lookup(tmp / "lookup.log")
    start = time.monotonic()
    try:
        work = Workload(broker.address, "workload-" + os.urandom(6).hex())
        await work.stub.CreateChannel(pb.CreateChannelRequest(topic=work.topic, channel="c"))
        consumer = asyncio.ensure_future(work.consume())
        producer = asyncio.ensure_future(work.produce())
        per = rpcs // clients
        fuzzers = [
            _fuzz_client(broker.address, lookup, random.Random(seed * 1000 + i), per, report)
            for i in range(clients)
        ]
        runner = asyncio.gather(*fuzzers)
        while not runner.done():
            await asyncio.wait([runner], timeout=10)
            if progress:
                progress(f"{report.total} fuzzed RPCs, {len(work.acked)} workload messages acked")
            assert broker.proc is not None and broker.proc.poll() is None, "the broker died"
            assert lookup_proc.poll() is None, "the lookup died"
        await runner
        work.stop.set()
        await producer
        with contextlib.suppress(AssertionError, TimeoutError):  # judged just below
            await eventually(lambda: work.acked <= work.received, timeout=60)
        report.published, report.received = len(work.acked), len(work.acked & work.received)
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await work.close()
        lost = len(work.acked - work.received)
        assert lost == 0, f"the workload lost {lost} of {len(work.acked)} acknowledged messages"
        assert report.published > 0
    finally:
        report.seconds = time.monotonic() - start
        if broker.proc is not None and broker.proc.poll() is None:
            broker.terminate()
        if lookup_proc.poll() is None:
            lookup_proc.send_signal(signal.SIGTERM)
            lookup_proc.wait(15)
    assert not report.bad, report.bad[:20]
    for name in ("broker.log", "lookup.log"):
        text = (tmp / name).read_text(errors="replace")
        assert "Traceback" not in text, f"{name}:\n{text[text.index('Traceback') - 500 :][:4000]}"
    verify_store(tmp / "broker")
    return report
