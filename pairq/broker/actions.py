"""The admin verbs on topics and channels, in one place, whatever the front end.

The gRPC admin RPCs (``service.py``: CreateTopic … UnpauseChannel) and nsqd's
HTTP API (``nsq/http.py``: ``/topic/create`` … ``/channel/unpause``) both call
these, so a verb means the same thing on either:

- Names are checked first (``BAD_TOPIC`` / ``BAD_CHANNEL``), then existence:
  every verb but a create needs its topic (and channel) to exist (``NOT_FOUND``).
- Creating a channel creates its topic too (the gRPC contract); a front end
  that wants nsqd's "topic must exist" rule checks :meth:`Actions.topic` first.
- Deleting, emptying and pausing go through the broker (``delete_topic``,
  ``set_paused``) or the topic/channel, which replicate and persist what they
  must; nothing here touches the store.
"""

from __future__ import annotations

from typing import Protocol

from pairq.broker.channel import Channel
from pairq.broker.topic import Topic
from pairq.names import check_channel, check_topic

__all__ = ["ActionHost", "Actions"]


class ActionHost(Protocol):
    """What the verbs ask of the broker."""

    async def get_topic(self, name: str, *, create: bool = True) -> Topic: ...

    async def delete_topic(self, name: str) -> None: ...

    async def set_paused(self, topic: Topic, channel: Channel | None, paused: bool) -> None: ...


class Actions:
    """The topic and channel verbs over a broker (see the module docstring)."""

    def __init__(self, host: ActionHost) -> None:
        self.host = host

    async def topic(self, name: str, create: bool = False) -> Topic:
        """The topic ``name`` (checked), created when ``create``; else NOT_FOUND if absent."""
        check_topic(name)
        return await self.host.get_topic(name, create=create)

    async def channel(
        self, topic: str, channel: str, create: bool = False
    ) -> tuple[Topic, Channel]:
        """(topic, channel), both checked; created when ``create``, else NOT_FOUND if absent."""
        check_channel(channel)
        t = await self.topic(topic, create=create)
        return t, await t.get_channel(channel, create=create)

    # ------------------------------------------------------------ topics
    async def create_topic(self, name: str) -> Topic:
        return await self.topic(name, create=True)

    async def delete_topic(self, name: str) -> None:
        await self.topic(name)
        await self.host.delete_topic(name)

    async def empty_topic(self, name: str) -> None:
        (await self.topic(name)).empty()

    async def pause_topic(self, name: str, paused: bool) -> None:
        await self.host.set_paused(await self.topic(name), None, paused)

    # ------------------------------------------------------------ channels
    async def create_channel(self, topic: str, channel: str) -> Channel:
        return (await self.channel(topic, channel, create=True))[1]

    async def delete_channel(self, topic: str, channel: str) -> None:
        t, ch = await self.channel(topic, channel)
        t.delete_channel(ch.name)

    async def empty_channel(self, topic: str, channel: str) -> None:
        (await self.channel(topic, channel))[1].empty()

    async def pause_channel(self, topic: str, channel: str, paused: bool) -> None:
        t, ch = await self.channel(topic, channel)
        await self.host.set_paused(t, ch, paused)
