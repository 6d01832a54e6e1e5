"""FramedLink over a real loopback TCP connection."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from pairq.broker.pair.link import FramedLink, LinkError, read_token
from pairq.v1 import replication_pb2 as rpb


async def _pair(
    max_frame: int = 1 << 20,
) -> tuple[FramedLink, asyncio.StreamWriter, asyncio.StreamReader]:
    """(server-side link reading ReplicateRequests, the client's raw writer and reader)."""
    got: asyncio.Future[FramedLink] = asyncio.get_running_loop().create_future()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got.set_result(FramedLink(r, w, rpb.ReplicateRequest.FromString, max_frame))

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    link = await asyncio.wait_for(got, 5)
    server.close()
    return link, w, r


async def test_frames_round_trip_and_eof() -> None:
    link, w, r = await _pair()
    client = FramedLink(r, w, rpb.ReplicateResponse.FromString, 1 << 20)
    msgs = [
        rpb.ReplicateRequest(batch=rpb.ReplicaBatch(batch_id=i, deleted_topics=["x" * i]))
        for i in (1, 70_000)
    ]
    for m in msgs:
        await client.write(m)
    assert [await link.read() for _ in msgs] == msgs
    await link.write(rpb.ReplicateResponse(ack=rpb.ReplicaAck(batch_id=7)))
    assert (await client.read()).ack.batch_id == 7
    client.close()
    assert await link.read() is grpc.aio.EOF
    with pytest.raises(ConnectionError):
        await client.write(msgs[0])


async def test_oversized_undecodable_and_truncated_frames() -> None:
    link, w, _ = await _pair(max_frame=100)
    w.write((101).to_bytes(4, "big"))
    with pytest.raises(LinkError, match="exceeds"):
        await link.read()
    link, w, _ = await _pair()
    w.write((3).to_bytes(4, "big") + b"\xff\xff\xff")
    with pytest.raises(LinkError, match="undecodable"):
        await link.read()
    link, w, _ = await _pair()
    w.write((50).to_bytes(4, "big") + b"short")
    w.close()
    assert await link.read() is grpc.aio.EOF


async def test_read_token_accepts_only_a_16_byte_first_frame() -> None:
    for data, want in (
        (b"\x00\x00\x00\x10" + b"k" * 16, b"k" * 16),
        (b"\x00\x00\x00\x05hello", b""),
        (b"\x00", b""),
    ):
        link, w, _ = await _pair()
        w.write(data)
        w.write_eof()
        assert await read_token(link._r, timeout=5) == want


async def test_a_big_frame_reports_each_chunk_as_it_arrives() -> None:
    """The receiver counts the partner as heard while a big frame's bytes flow
    (receiver._heard_part): progress comes per chunk, before the frame is whole."""
    link, w, r = await _pair(max_frame=16 << 20)
    client = FramedLink(r, w, rpb.ReplicateResponse.FromString, 16 << 20)
    calls: list[int] = []
    two = asyncio.Event()

    def progress() -> None:
        calls.append(1)
        if len(calls) >= 2:
            two.set()

    link.on_progress = progress
    big = rpb.ReplicateRequest(batch=rpb.ReplicaBatch(deleted_topics=["x" * (5 << 20)]))
    data = big.SerializeToString()
    # Half the frame, then wait for progress to be reported before sending the rest.
    w.write(len(data).to_bytes(4, "big") + data[: len(data) // 2])
    reading = asyncio.ensure_future(link.read())
    await asyncio.wait_for(two.wait(), 5)
    assert not reading.done(), "the frame was whole before the rest was sent"
    w.write(data[len(data) // 2 :])
    assert await asyncio.wait_for(reading, 5) == big
    assert len(calls) >= 5  # one per 1 MiB chunk
    client.close()
