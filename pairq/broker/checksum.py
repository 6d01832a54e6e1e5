"""Record checksums: CRC32C (Castagnoli), as iSCSI, ext4 and Kafka use it.

Every stored record (owned, standby copy, dead letter) carries a check made from
the CRC32C of its bytes, computed when the owner accepted the message and carried
through replication, so both brokers of a pair verify the same value; each stores
it keyed with the key it stores the record at (``schema.keyed``).

Three functions, each with the same results from either implementation:

- ``crc(data)``: the CRC32C of one record;
- ``crcs(records)``: of each record of a list, in one call;
- ``keyed_many(crcs, keys)``: ``crcs[i] ^ crc(keys[i])`` for each i, the stored checks
  of a batch (``schema.keyed`` for one).

``pairq.broker._crc32c``, pairq's one compiled module (setup.py builds it when a C
compiler is there), does a whole batch per call with the CPU's CRC instruction:
google-crc32c parses an argument tuple on every call, about 75 ns a record, which
was about 8 % of a pair's batch throughput at four calls per replicated message.
Without it, ``google-crc32c`` (C, with its own pure-Python fallback) does each
record in its own call. ``IMPLEMENTATION`` says which is in use.
"""

from __future__ import annotations

from collections.abc import Callable

import google_crc32c

ALGORITHM = "crc32c"

crc: Callable[[bytes], int]
crcs: Callable[[list[bytes]], list[int]]
keyed_many: Callable[[list[int], list[bytes]], list[int]]

try:
    from pairq.broker import _crc32c
except ImportError:  # not compiled here: one google-crc32c call per record
    crc = google_crc32c.value

    def crcs(records: list[bytes]) -> list[int]:
        return list(map(crc, records))

    def keyed_many(checks: list[int], keys: list[bytes]) -> list[int]:
        if len(checks) != len(keys):
            raise ValueError(f"keyed(): {len(checks)} crcs for {len(keys)} keys")
        return [c ^ crc(k) for c, k in zip(checks, keys, strict=True)]

    IMPLEMENTATION = f"google-crc32c ({google_crc32c.implementation})"
else:
    crc = _crc32c.value
    crcs = _crc32c.values
    keyed_many = _crc32c.keyed
    IMPLEMENTATION = f"pairq._crc32c ({_crc32c.implementation})"
