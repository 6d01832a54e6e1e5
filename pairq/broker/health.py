"""The broker's gRPC health status, as a pure rule (``publish_health``) and its watcher.

Two service names are served by the standard ``grpc.health.v1.Health`` service:

- ``""`` (the server as a whole): SERVING from start until shutdown begins, then
  NOT_SERVING. It says "this process answers": consumers may still subscribe and
  drain, admin RPCs work. It is not changed by the conditions below.
- ``pairq.v1.BrokerService``: SERVING while a durable publish here can succeed,
  NOT_SERVING while publishes would be refused:

  * the store is full (``Store.full_reason``: the disk or the map is within the
    reserve; publishes answer RESOURCE_EXHAUSTED, delivery goes on), or
  * in a pair with ``--min-copies=2``, the partner cannot be reached (the
    replication stream is down: publishes answer UNAVAILABLE), or
  * a new (or wiped) store has not yet received the pair's topics and channels
    from its partner (``Pair.check_catalog``: publishes answer UNAVAILABLE);

  and SERVING again as soon as neither holds (consumers freed room; the partner
  is back). With ``--min-copies=1`` a partner that is gone leaves it SERVING
  (publishes are acknowledged with one copy). Shutdown turns it NOT_SERVING too.

Rules of ``publish_health`` (pure, no I/O): the first that holds is the reason
reported: store full, then the missing catalog, then the partner; the partner
counts only under ``min_copies >= 2``, the catalog and the partner only for a
broker with a partner.

``HealthWatcher`` re-evaluates the rule every ``HEALTH_INTERVAL_S`` and sets the
status only when it changes (each change is logged), so a change is visible to
health checkers within that interval of the store or the link noticing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("pairq.broker")

HEALTH_INTERVAL_S = 0.25


@dataclass(frozen=True)
class PublishHealth:
    serving: bool
    reason: str  # "" while serving


def publish_health(
    store_full: str,
    has_partner: bool,
    min_copies: int,
    connected: bool,
    catalog_ready: bool = True,
) -> PublishHealth:
    """Whether publishes can succeed here (see the module docstring for the rules).

    ``store_full``: ``Store.full_reason`` ("" when there is room); ``connected``:
    the replication stream to the partner is up; ``catalog_ready``: the pair's
    catalog is in this store."""
    if store_full:
        return PublishHealth(False, f"store full: {store_full}")
    if has_partner and not catalog_ready:
        return PublishHealth(False, "new store: waiting for the pair's catalog from the partner")
    if has_partner and min_copies >= 2 and not connected:
        return PublishHealth(False, "partner unreachable under --min-copies=2")
    return PublishHealth(True, "")


class HealthWatcher:
    """Polls ``read`` every ``interval`` and calls ``publish(serving)`` on each change
    (and once at start)."""

    def __init__(
        self,
        read: Callable[[], PublishHealth],
        publish: Callable[[bool], Awaitable[None]],
        interval: float = HEALTH_INTERVAL_S,
    ) -> None:
        self._read = read
        self._publish = publish
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.current: PublishHealth | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    async def check(self) -> None:
        now = self._read()
        if self.current is not None and now.serving == self.current.serving:
            self.current = now
            return
        if self.current is not None:
            if now.serving:
                log.info("health: publishing is possible again: SERVING")
            else:
                log.warning("health: publishes are refused (%s): NOT_SERVING", now.reason)
        self.current = now
        await self._publish(now.serving)

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # never let a health check end the watcher
                log.exception("health check failed")
            await asyncio.sleep(self._interval)
