"""glibc malloc tuning for the broker process: keep big buffers on the heap.

A 1 MiB message body is copied several times on its way through a broker
(gRPC's receive buffer, the parsed request, the stored record, the partner's
frame). glibc serves every allocation above its mmap threshold (128 KiB at
first, raised on the fly up to 32 MiB) with a fresh ``mmap`` and returns it on
``free``, so each copy also pays a page fault per 4 KiB touched. Measured on
this project's 2-core VM (``benchmarks/malloc_copy.py``): copying 60 MiB in
1 MiB pieces takes 42-48 ms with glibc's defaults and 9-11 ms tuned on a quiet
machine, 140-180 ms against 12-19 ms on a loaded one. Those stretches run on
the event loop, and a loop stalled for a lease silences the pair's heartbeats.

``tune()`` sets a fixed mmap threshold above the largest body a broker holds in
one piece (so such buffers come from the heap and are reused) and a trim
threshold that keeps up to 256 MiB of freed heap for reuse instead of handing
it back at once. RSS after a burst of big batches stays higher by at most that
much. Not glibc (musl, macOS): nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("pairq.broker")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = (
    32 * 1024 * 1024
)  # glibc's own ceiling for the threshold (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 256 * 1024 * 1024


def tune() -> bool:
    """Apply the thresholds; True if this is glibc and both were accepted."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not ok:
        log.debug("mallopt refused the thresholds; keeping glibc's defaults")
    return ok
