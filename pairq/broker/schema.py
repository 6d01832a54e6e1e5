"""The on-disk format of a broker's store: every named database, its keys and values.

This module is the only place that knows how a key or a value is laid out;
``store.py`` applies writes and runs reads in these terms, and nothing else
builds a key. Keys are big-endian so LMDB's byte order is numeric order.

==========  ==============================  ==========================================
db          key                             value
==========  ==============================  ==========================================
meta        b"node_id"                      this data dir's id (16 hex chars)
meta        b"format"                       ``FORMAT_VERSION``
meta        b"ids_gen"                      current idempotency generation (1 byte)
meta        b"ids"                          >II next topic id, next channel id
meta        b"epoch"                        >Q current ownership epoch
meta        b"catalog"                      b"1" once the store has the pair's catalog
meta        b"hwm:" + >I topic id           >Q every seq ever sent to the partner is below
meta        b"tomb:" + topic + 0 + channel  >Q when the channel was deleted (ns; a tombstone)
catalog     b"T" + topic name               >IB topic id, paused
catalog     b"C" + >I topic id + name       >IBQ channel id, paused, created (ns; 0: not
                                            known: >IB, as an older broker wrote it)
msgs        >I topic id + >Q seq            >I check + message record (``wire.encode_record``)
floors      >I channel id                   >Q floor: every seq below it is finished
fins        >I channel id + >Q seq          b"" (finished, above the floor)
states      >I channel id + >Q seq          >Iq attempts, due_ns (requeued/deferred)
dlq         >I channel id + >Q seq          >I attempts + >I check + record (dead letters)
sb_msgs     topic + 0 + >Q origin seq       >I check + the partner's record (standby copy)
sb_floors   topic + 0 + channel             >Q the partner channel's floor
sb_fins     topic+0+channel+0+>Q seq        b"" (finished on the partner, above its floor)
sb_states   topic+0+channel+0+>Q seq        >Iq attempts, due_ns (partner's requeue state)
sb_meta     b"partner"                      the partner's store id
sb_meta     b"taken:" + topic               >Q the partner's seqs below it were taken over
ids_0/1     message id (16 bytes)           b"" (idempotency window, two generations)
quarantine  kind + topic + 0 + >Q seq       a record that failed its checksum with no good
                                            copy anywhere (kind b"o" owned, b"s" standby)
==========  ==============================  ==========================================

A record's check (``keyed``) is the CRC32C of its bytes (``checksum.py``: the
value computed when the owner accepted the message and carried through
replication) XOR the CRC32C of its key, so a flipped bit in the key fails the
check as one in the value does: a record never passes for one at another seq
(make chaos, bitflip: a seq whose top bit flipped became the log's last record
and every later seq sorted below it). Reads hand the record's own CRC32C on
(``unkeyed``), which is what replication and repair carry.

Format 2 added the CRC32C of every record; format 3 keys it. Older stores are
upgraded in place when they are opened (format 1: every record gets its check;
format 2: every check is keyed; a record that failed its checksum still fails).

Names cannot contain a NUL byte (``pairq.names``), which is what makes the
standby keys unambiguous.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pairq.broker.checksum import crc as _crc32c

FORMAT_VERSION = b"3"  # 2: every record carries its crc32c; 3: keyed (see above)

DB_NAMES = (
    "meta",
    "catalog",
    "msgs",
    "floors",
    "fins",
    "states",
    "dlq",
    "sb_msgs",
    "sb_floors",
    "sb_fins",
    "sb_meta",
    "ids_0",
    "ids_1",
    "sb_states",
    "quarantine",
)
(
    META,
    CATALOG,
    MSGS,
    FLOORS,
    FINS,
    STATES,
    DLQ,
    SB_MSGS,
    SB_FLOORS,
    SB_FINS,
    SB_META,
    IDS0,
    IDS1,
    SB_STATES,
    QUARANTINE,
) = range(len(DB_NAMES))

_I = struct.Struct(">I")
_Q = struct.Struct(">Q")
_IQ = struct.Struct(">IQ")
_IB = struct.Struct(">IB")
_IBQ = struct.Struct(">IBQ")
_II = struct.Struct(">II")
_STATE = struct.Struct(">Iq")

# meta keys
NODE_ID = b"node_id"
FORMAT = b"format"
IDS_GEN = b"ids_gen"
NEXT_IDS = b"ids"
EPOCH = b"epoch"
CATALOG_READY = b"catalog"
TOMB = b"tomb:"
# sb_meta keys
PARTNER = b"partner"
TAKEN = b"taken:"

ID_SIZE = 16  # a record starts with its 16-byte message id


@dataclass
class ChannelMeta:
    """A durable channel as the catalog records it (``floor`` from ``floors``)."""

    id: int
    name: str
    paused: bool = False
    floor: int = 0
    created_ns: int = 0  # when first created, on whichever broker of the pair (0: not known)


@dataclass
class TopicMeta:
    """A durable topic as the catalog records it, with what the log holds."""

    id: int
    name: str
    paused: bool = False
    next_seq: int = 0
    first_seq: int = 0  # lowest retained seq
    hwm: int = 0  # every seq ever sent to the partner is below this (see pair/sender.py)
    channels: dict[str, ChannelMeta] = field(default_factory=dict)


# ------------------------------------------------------------ ints
def pack_q(value: int) -> bytes:
    return _Q.pack(value)


def unpack_q(value: bytes) -> int:
    return int(_Q.unpack(value)[0])


def pack_ids(next_topic: int, next_channel: int) -> bytes:
    return _II.pack(next_topic, next_channel)


def unpack_ids(value: bytes) -> tuple[int, int]:
    t, c = _II.unpack(value)
    return int(t), int(c)


# ------------------------------------------------------------ owned data
def seq_key(prefix_id: int, seq: int) -> bytes:
    """``msgs`` (topic id) and ``fins``/``states``/``dlq`` (channel id) keys."""
    return _IQ.pack(prefix_id, seq)


def unpack_seq_key(key: bytes) -> tuple[int, int]:
    a, b = _IQ.unpack(key)
    return int(a), int(b)


def id_prefix(ident: int) -> bytes:
    """Every key of one topic (``msgs``) or one channel (``fins``/``states``/``dlq``)."""
    return _I.pack(ident)


def hwm_key(topic_id: int) -> bytes:
    return b"hwm:" + _I.pack(topic_id)


def catalog_topic_key(name: str) -> bytes:
    return b"T" + name.encode()


def catalog_channel_key(topic_id: int, name: str) -> bytes:
    return b"C" + _I.pack(topic_id) + name.encode()


def split_catalog_channel_key(key: bytes) -> tuple[int, str]:
    return int(_I.unpack_from(key, 1)[0]), key[5:].decode()


def catalog_channels_prefix(topic_id: int) -> bytes:
    return b"C" + _I.pack(topic_id)


def pack_catalog(ident: int, paused: bool) -> bytes:
    return _IB.pack(ident, 1 if paused else 0)


def unpack_catalog(value: bytes) -> tuple[int, bool]:
    ident, paused = _IB.unpack_from(value)
    return int(ident), bool(paused)


def pack_channel(ident: int, paused: bool, created_ns: int) -> bytes:
    return _IBQ.pack(ident, 1 if paused else 0, created_ns)


def unpack_channel(value: bytes) -> tuple[int, bool, int]:
    """(channel id, paused, created ns; 0 for an entry without it)."""
    if len(value) >= _IBQ.size:
        ident, paused, created = _IBQ.unpack_from(value)
        return int(ident), bool(paused), int(created)
    ident, paused = _IB.unpack_from(value)
    return int(ident), bool(paused), 0


def tomb_key(topic: str, channel: str) -> bytes:
    return TOMB + topic.encode() + b"\0" + channel.encode()


def split_tomb_key(key: bytes) -> tuple[str, str]:
    topic, _, channel = key[len(TOMB) :].partition(b"\0")
    return topic.decode(), channel.decode()


def floor_key(channel_id: int) -> bytes:
    return _I.pack(channel_id)


def pack_state(attempts: int, due_ns: int) -> bytes:
    return _STATE.pack(attempts, due_ns)


def unpack_state(value: bytes) -> tuple[int, int]:
    a, d = _STATE.unpack(value)
    return int(a), int(d)


# The stored check prefix (``pack_record`` inlined on the hot paths: one call less
# per record).
crc_prefix = _I.pack
crc_of_value = _I.unpack_from


def keyed(crc: int, key: bytes) -> int:
    """The stored check of a record whose CRC32C is ``crc``, stored at ``key``; also
    the inverse (``keyed(stored, key)`` is the record's CRC32C again)."""
    return int(crc ^ _crc32c(key))


def pack_record(key: bytes, crc: int, record: bytes) -> bytes:
    """A stored record (``msgs``, ``sb_msgs``) at ``key``: its check, then the record."""
    return _I.pack(crc ^ _crc32c(key)) + record


def split_record(value: bytes) -> tuple[int, bytes]:
    return int(_I.unpack_from(value)[0]), bytes(value[4:])


def pack_dlq(key: bytes, attempts: int, crc: int, record: bytes) -> bytes:
    return _II.pack(attempts, crc ^ _crc32c(key)) + record


def unpack_dlq(value: bytes) -> tuple[int, int, bytes]:
    attempts, crc = _II.unpack_from(value)
    return int(attempts), int(crc), bytes(value[8:])


def quarantine_key(owned: bool, topic: str, seq: int) -> bytes:
    return (b"o" if owned else b"s") + topic.encode() + b"\0" + _Q.pack(seq)


# ------------------------------------------------------------ standby (partner) data
def sb_topic_prefix(topic: str) -> bytes:
    return topic.encode() + b"\0"


def sb_msg_key(topic: str, seq: int) -> bytes:
    return topic.encode() + b"\0" + _Q.pack(seq)


def sb_channel_key(topic: str, channel: str) -> bytes:
    return topic.encode() + b"\0" + channel.encode()


def sb_fin_key(topic: str, channel: str, seq: int) -> bytes:
    """``sb_fins`` and ``sb_states`` keys."""
    return topic.encode() + b"\0" + channel.encode() + b"\0" + _Q.pack(seq)


def split_sb_msg_key(key: bytes) -> tuple[str, int]:
    return key[:-9].decode(), unpack_q(key[-8:])


def split_sb_channel_key(key: bytes) -> tuple[str, str]:
    t, _, c = key.partition(b"\0")
    return t.decode(), c.decode()


def split_sb_fin_key(key: bytes) -> tuple[str, str, int]:
    t, _, c = key[:-9].partition(b"\0")
    return t.decode(), c.decode(), unpack_q(key[-8:])


def taken_key(topic: str) -> bytes:
    return TAKEN + topic.encode()
