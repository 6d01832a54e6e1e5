"""The log lines of a re-fill: a catch-up of the partner from this broker's log
(``sender.py``), or of this broker from the partner's (``receiver.py``)."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("pairq.pair")

REFILL_LOG_EVERY = 2.0  # seconds between re-fill progress lines ...
REFILL_LOG_MSGS = 100_000  # ... or messages, whichever comes first


class RefillLog:
    """Start, progress (every REFILL_LOG_EVERY s or REFILL_LOG_MSGS messages) and end
    of a re-fill, in the log."""

    def __init__(self, what: str, total: int, topics: int) -> None:
        self.what = what
        self.t0 = self.last = time.monotonic()
        self.msgs = self.bytes = 0
        self.logged_msgs = 0
        self.remaining = total
        log.info("%s: %d seq(s) to go%s", what, total, f" in {topics} topic(s)" if topics else "")

    def add(self, msgs: int, nbytes: int, remaining: int) -> None:
        self.msgs += msgs
        self.bytes += nbytes
        self.remaining = remaining
        now = time.monotonic()
        if remaining and (
            now - self.last >= REFILL_LOG_EVERY or self.msgs - self.logged_msgs >= REFILL_LOG_MSGS
        ):
            self.last, self.logged_msgs = now, self.msgs
            log.info(
                "%s: %d message(s), %.1f MB so far (%.0f msg/s), %d seq(s) to go",
                self.what,
                self.msgs,
                self.bytes / 1e6,
                self.msgs / max(1e-6, now - self.t0),
                remaining,
            )

    def done(self) -> None:
        dt = max(1e-6, time.monotonic() - self.t0)
        log.info(
            "%s: done, %d message(s), %.1f MB in %.2f s (%.0f msg/s)",
            self.what,
            self.msgs,
            self.bytes / 1e6,
            dt,
            self.msgs / dt,
        )

    def stopped(self, why: str) -> None:
        log.warning(
            "%s: stopped after %d message(s) with %d seq(s) to go: %s",
            self.what,
            self.msgs,
            self.remaining,
            why,
        )
