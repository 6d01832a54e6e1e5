"""Transmit-limited broadcast queue (memberlist's ``TransmitLimitedQueue``).

A newer message about a member replaces any queued one about the same member.
Messages go out fewest-transmissions-first, newest first among equals, and are
dropped after ``retransmit_limit`` transmissions.
"""

from __future__ import annotations

from dataclasses import dataclass

from pairq.gossip.codec import encode_message
from pairq.gossip.messages import Message

__all__ = ["BroadcastQueue"]

# Bytes a compound packet spends per part (u16 length prefix).
PART_OVERHEAD = 2


@dataclass(slots=True)
class _Item:
    msg: Message
    size: int
    transmits: int
    order: int


class BroadcastQueue:
    def __init__(self) -> None:
        self._items: dict[str, _Item] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, key: str, msg: Message) -> None:
        self._order += 1
        self._items[key] = _Item(msg, len(encode_message(msg)), 0, self._order)

    def reset(self) -> None:
        self._items.clear()

    def get(self, budget: int, limit: int) -> list[Message]:
        """Messages fitting ``budget`` bytes (part overhead included); counts a transmission."""
        if not self._items or budget <= PART_OVERHEAD:
            return []
        picked: list[Message] = []
        used = 0
        for key, item in sorted(
            self._items.items(), key=lambda kv: (kv[1].transmits, -kv[1].order)
        ):
            cost = item.size + PART_OVERHEAD
            if used + cost > budget:
                continue
            used += cost
            picked.append(item.msg)
            item.transmits += 1
            if item.transmits >= limit:
                del self._items[key]
            if len(picked) >= 250:
                break
        return picked
