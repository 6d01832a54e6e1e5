"""A Consumer with no ``dedupe`` argument de-duplicates: across repeated kill -9 of a
pair's owner, every acked message is handled exactly once (real processes)."""

from __future__ import annotations

from pathlib import Path

from test_pair import kill9_owner_cycles


async def test_default_consumer_handles_each_message_once_across_owner_kill9(
    tmp_path: Path,
) -> None:
    # No dedupe argument: the default in-memory window (105 ids ran twice with dedupe=False).
    acked, handled, absorbed = await kill9_owner_cycles(tmp_path, cycles=6, seed=9)
    twice = [i for i, n in handled.items() if n > 1]
    print(f"acked={len(acked)} handled={len(handled)} duplicates_absorbed={absorbed}")
    assert len(acked) > 300
    assert not acked - set(handled), "acknowledged messages never handled"
    assert not twice, f"{len(twice)} ids handled more than once with the default consumer"
