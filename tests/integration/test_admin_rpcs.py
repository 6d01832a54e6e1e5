"""PeekMessages and PurgeDeadLetters: the broker RPCs the admin console and
``pairq peek`` / ``pairq dlq purge`` use, over real gRPC with a real store."""

from __future__ import annotations

import grpc
from rawclient import RawSub

from pairq.testing import eventually, run_broker
from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg


async def test_peek_reads_unfinished_messages_without_consuming(tmp_path) -> None:
    async with run_broker(tmp_path) as b:
        stub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(b.address))
        await stub.CreateChannel(pb.CreateChannelRequest(topic="t", channel="c"))
        r = await stub.PublishBatch(
            pb.PublishBatchRequest(
                topic="t",
                messages=[
                    pb.PublishItem(body=f"m{i}".encode(), headers={"i": str(i)}) for i in range(5)
                ],
            )
        )
        peek = await stub.PeekMessages(pb.PeekMessagesRequest(topic="t", channel="c", limit=3))
        assert [m.body for m in peek.messages] == [b"m0", b"m1", b"m2"]
        assert [m.id for m in peek.messages] == list(r.ids[:3])
        assert dict(peek.messages[1].headers) == {"i": "1"} and peek.depth == 5
        # Peeking twice shows the same: nothing was consumed.
        again = await stub.PeekMessages(pb.PeekMessagesRequest(topic="t", channel="c", limit=3))
        assert [m.id for m in again.messages] == [m.id for m in peek.messages]
        # A consumer still receives all five, each on its first attempt.
        sub = RawSub(stub, "t", "c")
        sub.rdy(10)
        await eventually(lambda: len(sub.messages) == 5)
        msgs = sub.take()
        assert all(m.attempts == 1 for m in msgs)
        sub.fin([msgs[0].id, msgs[1].id])
        await eventually(lambda: b.topics["t"].channels["c"].core.finished == 2)
        after = await stub.PeekMessages(pb.PeekMessagesRequest(topic="t", channel="c"))
        assert [m.body for m in after.messages] == [b"m2", b"m3", b"m4"]
        await sub.cancel()


async def test_purge_dead_letters_all_or_selected(tmp_path) -> None:
    async with run_broker(tmp_path, max_attempts=1) as b:
        stub = pbg.BrokerServiceStub(grpc.aio.insecure_channel(b.address))
        r = await stub.PublishBatch(
            pb.PublishBatchRequest(
                topic="t", messages=[pb.PublishItem(body=b"x%d" % i) for i in range(3)]
            )
        )
        sub = RawSub(stub, "t", "c")
        sub.rdy(10)
        await eventually(lambda: len(sub.messages) == 3)
        sub.req([m.id for m in sub.take()])
        await eventually(lambda: b.topics["t"].channels["c"].dlq_count == 3)
        one = await stub.PurgeDeadLetters(
            pb.PurgeDeadLettersRequest(topic="t", channel="c", ids=[r.ids[1]])
        )
        assert one.purged == 1
        dl = await stub.ListDeadLetters(pb.ListDeadLettersRequest(topic="t", channel="c"))
        assert dl.total == 2 and {m.id for m in dl.messages} == {r.ids[0], r.ids[2]}
        rest = await stub.PurgeDeadLetters(pb.PurgeDeadLettersRequest(topic="t", channel="c"))
        assert rest.purged == 2
        dl = await stub.ListDeadLetters(pb.ListDeadLettersRequest(topic="t", channel="c"))
        assert dl.total == 0 and not dl.messages
        await sub.cancel()
