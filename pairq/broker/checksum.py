"""Record checksums: CRC32C (Castagnoli), as iSCSI, ext4 and Kafka use it.

Every stored record (owned, standby copy, dead letter) carries a check made from
the CRC32C of its bytes, computed when the owner accepted the message and carried
through replication, so both brokers of a pair verify the same value; each stores
it keyed with the key it stores the record at (``schema.keyed``).
``google-crc32c`` supplies the C implementation (hardware CRC instructions
where the CPU has them) with a pure-Python fallback.
"""

from __future__ import annotations

import google_crc32c

ALGORITHM = "crc32c"


crc = google_crc32c.value  # (bytes) -> int; called once per record, so no wrapper


def crcs(records: list[bytes]) -> list[int]:
    return list(map(crc, records))
