"""``pairq channel pause|unpause|empty|delete|create TOPIC CHANNEL`` (see ``topic.py``)."""

from __future__ import annotations

from typing import Any

from pairq.cli.topic import add_verbs

__all__ = ["register"]


def register(subparsers: Any) -> None:
    add_verbs(subparsers, "channel", True)
