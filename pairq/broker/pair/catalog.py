"""Channel deletions as pair state: the rules that decide between a channel and a
tombstone when the two brokers' catalogs meet.

A channel is pair state (``topic.py``: a new durable channel reaches the partner
before ``CreateChannel`` returns), and so is its deletion. While the pair is
apart a deletion cannot be sent, and each session starts with the sender's
whole catalog, so without a record of the deletion the returning partner's
catalog would bring the channel back. Each broker therefore keeps a
*tombstone* per deleted durable channel: when it was deleted (ns since the
epoch, ``Context.tombstones``, persisted in the store's meta db). A channel
carries the time it was first created, on whichever broker created it; the
partner that adopts it keeps that time.

Rules (pure: times are passed in; the receiver applies them, ``receiver.py``,
and so does a takeover, for the partner's channels it would create here):

1. The partner reports a live channel we do not have: create it here unless we
   hold a tombstone for it that is not older than its creation
   (``adopt``). Then the deletion wins, and our catalog, which carries our
   tombstones, makes the partner delete its copy.
2. The partner reports a deleted channel: delete ours if it was created no
   later than that deletion (``delete``); a channel created after the deletion
   (created again while the partner was away) stays. Either way we keep the
   later of the two tombstones (``keep``), so the deletion outlives a restart
   and reaches the other broker's catalog in later sessions.
3. A tombstone stays when the channel is created again, and a catalog sends
   its tombstones before its live channels: a partner still holding the old
   channel deletes it (rule 2) and then adopts the new one (rule 1), so both
   brokers start it afresh. A time of 0 means "not known" (an entry from an
   older broker): a known deletion beats an unknown creation, and a deletion
   of unknown time deletes (as before tombstones existed).

Wall clocks order the two events, so a delete and a re-create of the same
channel on the two brokers within the clock skew between their hosts may be
ordered either way. Tombstones are a few bytes each and are kept (one per
deleted channel name). A deleted *topic* is not tombstoned: its channels on a
returning partner come back with the partner's catalog (known limitation).
"""

from __future__ import annotations

__all__ = ["adopt", "delete", "keep"]


def adopt(created_ns: int, tombstone_ns: int | None) -> bool:
    """Create the partner's live channel (created at ``created_ns``) here, given
    our tombstone for it (None: none)?"""
    return tombstone_ns is None or (created_ns != 0 and created_ns > tombstone_ns)


def delete(ours_created_ns: int, deleted_ns: int) -> bool:
    """Delete our channel (created at ``ours_created_ns``) for the partner's
    deletion at ``deleted_ns``?"""
    return deleted_ns == 0 or ours_created_ns <= deleted_ns


def keep(tombstone_ns: int | None, deleted_ns: int) -> int | None:
    """The tombstone to hold after hearing of a deletion at ``deleted_ns`` (None:
    nothing to record)."""
    if deleted_ns == 0:
        return tombstone_ns
    return deleted_ns if tombstone_ns is None else max(tombstone_ns, deleted_ns)
