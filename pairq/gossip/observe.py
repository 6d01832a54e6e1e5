"""A one-shot view of a cluster from outside: :func:`fetch_members`.

Used by ``pairq members``; a library function so any tool (or test) can ask a
member for its view without joining the cluster as a live member.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from pairq.gossip.config import local
from pairq.gossip.events import MemberView
from pairq.gossip.meta import NodeMeta
from pairq.gossip.node import Gossip

__all__ = ["fetch_members"]


async def fetch_members(
    address: str, *, keys: Sequence[bytes] = (), label: str = "", within: float = 3.0
) -> list[MemberView]:
    """One push-pull with the member at ``address``, as a short-lived observer; its view.

    The observer answers as a LEFT member, so the cluster never lists it as alive
    and never suspects it. Raises ConnectionError when nobody answers in ``within`` s.
    """
    cfg = local(
        bind_host="127.0.0.1", bind_port=0, keys=tuple(keys), label=label, push_pull_interval=3600.0
    )
    name = f"pairq-members-{uuid.uuid4().hex[:8]}"
    g = Gossip(cfg, NodeMeta(role="cli", node_id=name))
    await g.start()
    try:
        g.core.leave(asyncio.get_running_loop().time())  # be seen as left, never as alive
        g.core.drain_actions()
        answered = await g.join([address], within=within)
        if not answered:
            raise ConnectionError(f"no gossip member answered at {address}")
        return [m for m in g.members() if m.name != name]
    finally:
        await g.stop(leave=False)
