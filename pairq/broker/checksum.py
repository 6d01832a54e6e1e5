"""Record checksums: CRC32C (Castagnoli), as iSCSI, ext4 and Kafka use it.

Every stored record (owned, standby copy, dead letter) carries the CRC32C of its
bytes, computed when the owner accepted the message and carried through
replication, so both brokers of a pair store and verify the same value.
``google-crc32c`` supplies the C implementation (hardware CRC instructions
where the CPU has them) with a pure-Python fallback.
"""

from __future__ import annotations

import google_crc32c

ALGORITHM = "crc32c"


crc = google_crc32c.value  # (bytes) -> int; called once per record, so no wrapper


def crcs(records: list[bytes]) -> list[int]:
    return list(map(crc, records))
