"""A minimal raw-stub subscriber for broker tests (independent of pairq.client)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from pairq.v1 import broker_pb2 as pb
from pairq.v1 import broker_pb2_grpc as pbg


class RawSub:
    """Subscribe stream driven by hand: send commands, collect deliveries and errors."""

    def __init__(
        self, stub: pbg.BrokerServiceStub, topic: str, channel: str, **identify: Any
    ) -> None:
        self.stub = stub
        self.q: asyncio.Queue[pb.SubscribeRequest | None] = asyncio.Queue()
        self.messages: list[pb.Message] = []
        self.errors: list[pb.SubscribeError] = []
        self.accepted: pb.SubscribeAccepted | None = None
        self.heartbeats = 0
        self.status: grpc.StatusCode | None = None
        self.details = ""
        self.ended = asyncio.Event()
        self.auto_nop = True
        self.q.put_nowait(
            pb.SubscribeRequest(
                identify=pb.SubscribeIdentify(topic=topic, channel=channel, **identify)
            )
        )
        self.call = stub.Subscribe(self._requests())
        self.task = asyncio.create_task(self._read())

    async def _requests(self) -> Any:
        while True:
            item = await self.q.get()
            if item is None:
                return
            yield item

    async def _read(self) -> None:
        try:
            async for resp in self.call:
                kind = resp.WhichOneof("event")
                if kind == "deliveries":
                    self.messages.extend(resp.deliveries.messages)
                elif kind == "accepted":
                    self.accepted = resp.accepted
                elif kind == "error":
                    self.errors.append(resp.error)
                elif kind == "heartbeat":
                    self.heartbeats += 1
                    if self.auto_nop:
                        self.q.put_nowait(pb.SubscribeRequest(nop=True))
            self.status = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            self.status = exc.code()
            self.details = exc.details() or ""
        except asyncio.CancelledError:
            pass
        finally:
            self.ended.set()

    def rdy(self, n: int) -> None:
        self.q.put_nowait(pb.SubscribeRequest(ready=pb.SubscribeReady(count=n)))

    def fin(self, ids: list[bytes]) -> None:
        self.q.put_nowait(pb.SubscribeRequest(finish=pb.SubscribeFinish(ids=ids)))

    def req(self, ids: list[bytes], delay_ms: int = 0) -> None:
        self.q.put_nowait(
            pb.SubscribeRequest(requeue=pb.SubscribeRequeue(ids=ids, delay_ms=delay_ms))
        )

    def touch(self, ids: list[bytes]) -> None:
        self.q.put_nowait(pb.SubscribeRequest(touch=pb.SubscribeTouch(ids=ids)))

    def close(self) -> None:
        self.q.put_nowait(pb.SubscribeRequest(close=True))

    async def cancel(self) -> None:
        self.q.put_nowait(None)  # end the request generator cleanly first
        await asyncio.sleep(0)
        self.call.cancel()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def take(self) -> list[pb.Message]:
        out = self.messages
        self.messages = []
        return out
