"""The console's audit log: who did what, when, and how it went.

Every action the console or its JSON API carries out (pause, empty, delete,
tombstone, peek, redrive, purge, publish) is one line: a JSON object with
``time`` (UTC, ISO 8601), ``who`` (the user an authenticating proxy put in
``X-Forwarded-User`` / ``X-Remote-User``, else ``anonymous``, and the client's
address), ``action``, its ``target`` and ``result`` ("ok" or the error). Lines
go to the ``pairq.admin.audit`` logger and, with ``--audit-log PATH``, are
appended to that file (flushed at once); the newest are kept in memory for the
console's Audit page.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["AuditLog"]

log = logging.getLogger("pairq.admin.audit")


class AuditLog:
    def __init__(self, path: str | None = None, *, keep: int = 500) -> None:
        self.path = Path(path) if path else None
        self.entries: deque[dict[str, Any]] = deque(maxlen=keep)

    def write(self, who: str, action: str, target: dict[str, Any], result: str) -> dict[str, Any]:
        entry = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "who": who,
            "action": action,
            "target": target,
            "result": result,
        }
        line = json.dumps(entry, sort_keys=True)
        log.info("%s", line)
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        self.entries.append(entry)
        return entry

    def recent(self) -> list[dict[str, Any]]:
        """Newest first."""
        return list(reversed(self.entries))
