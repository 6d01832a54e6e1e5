"""The rules of pair/catalog.py: a channel against a tombstone when catalogs meet."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pairq.broker import schema
from pairq.broker.pair import catalog


def test_a_live_channel_is_adopted_unless_deleted_here_since_it_was_created() -> None:
    assert catalog.adopt(100, None)  # no tombstone here
    assert not catalog.adopt(100, 200)  # deleted here after it was created: the deletion wins
    assert not catalog.adopt(200, 200)  # same instant: the deletion wins
    assert catalog.adopt(300, 200)  # created again after the deletion: adopted
    assert not catalog.adopt(0, 200)  # creation time unknown (older broker): deletion wins
    assert catalog.adopt(0, None)


def test_a_deletion_removes_only_a_channel_created_before_it() -> None:
    assert catalog.delete(100, 200)
    assert catalog.delete(200, 200)
    assert not catalog.delete(300, 200)  # created again since: it stays
    assert catalog.delete(0, 200)  # unknown creation
    assert catalog.delete(300, 0)  # a deletion of unknown time deletes (as before tombstones)


def test_the_later_tombstone_is_kept() -> None:
    assert catalog.keep(None, 5) == 5
    assert catalog.keep(7, 5) == 7
    assert catalog.keep(3, 5) == 5
    assert catalog.keep(None, 0) is None and catalog.keep(4, 0) == 4


@given(st.integers(1, 2**62), st.integers(1, 2**62))
def test_two_brokers_agree_whatever_the_order_of_delete_and_create(
    created: int, deleted: int
) -> None:
    """One broker deleted the channel at ``deleted``; the other holds it, created at
    ``created``. After both catalogs cross (tombstones first), either both have it
    (created after the deletion) or neither does."""
    # the holder hears the tombstone, the deleter hears the live channel
    holder_keeps = not catalog.delete(created, deleted)
    deleter_adopts = catalog.adopt(created, deleted)
    assert holder_keeps == deleter_adopts == (created > deleted)


def test_channel_catalog_entries_old_and_new() -> None:
    assert schema.unpack_channel(schema.pack_channel(7, True, 123)) == (7, True, 123)
    assert schema.unpack_channel(schema.pack_catalog(7, False)) == (7, False, 0)  # an older entry
    assert schema.unpack_catalog(schema.pack_channel(9, False, 5)) == (9, False)
    key = schema.tomb_key("topic.a", "ch#ephemeral")
    assert schema.split_tomb_key(key) == ("topic.a", "ch#ephemeral")
