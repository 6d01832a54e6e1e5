"""Decoder fuzzer: ``python -m pairq.gossip.fuzz [COUNT]`` (default 1,000,000).

Feeds random and mutated packets through every decoder (packet, message,
metadata, and the encrypted envelope); anything but DecodeError is a crash.
"""

from __future__ import annotations

import random
import sys
import time

from pairq.gossip.codec import decode_message, decode_packet, encode_packet
from pairq.gossip.errors import DecodeError
from pairq.gossip.messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    MemberState,
    Message,
    Nack,
    PairHeartbeat,
    Ping,
    PushPull,
    PushPullEntry,
    Suspect,
)
from pairq.gossip.meta import NodeMeta

META = NodeMeta("broker", "id-1", "p1", "127.0.0.1:4150", 1_700_000_000_000, (("k", "v"),))
SEEDS: list[list[Message]] = [
    [Ping(1, "a", "b", ("127.0.0.1", 7946))],
    [IndirectPing(2, "a", ("127.0.0.1", 1), True, "b", ("10.0.0.1", 2))],
    [Ack(3, "a"), Nack(4, "b")],
    [Suspect(5, "a", "b"), Dead(6, "c", "c")],
    [Alive(7, "a", ("127.0.0.1", 7946), META)],
    [PairHeartbeat(8, "a", 9)],
    [PushPull(True, (PushPullEntry("a", ("h", 1), 3, MemberState.SUSPECT, META),))],
]
SEED_BYTES = [encode_packet(m) for m in SEEDS]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        if op == 0 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2 and buf:
            del buf[rng.randrange(len(buf)) :]
        elif op == 3:
            buf.insert(rng.randrange(len(buf) + 1), rng.randrange(256))
        else:
            buf += rng.randbytes(rng.randrange(8))
    return bytes(buf)


def run_fuzz(count: int, seed: int = 0) -> dict[str, int]:
    """Return counts of accepted/rejected inputs; raises on any other exception."""
    from pairq.gossip.security import Envelope, Keyring

    rng = random.Random(seed)
    ring = Keyring([bytes(range(16))])
    env = Envelope(ring, label="fuzz", replay_window=60.0)
    sealed = [env.seal(b, now=1000.0) for b in SEED_BYTES]
    accepted = rejected = 0
    for i in range(count):
        kind = i % 10
        if kind == 0:
            data = rng.randbytes(rng.randrange(64))
        elif kind == 1:
            data = _mutate(rng, rng.choice(sealed))
        else:
            data = _mutate(rng, rng.choice(SEED_BYTES))
        try:
            if kind == 1:
                env.open(data, now=1000.0)
            elif kind == 2:
                NodeMeta.decode(data[1:])
            elif kind == 3:
                decode_message(data)
            else:
                decode_packet(data)
            accepted += 1
        except DecodeError:
            rejected += 1
    return {"total": count, "accepted": accepted, "rejected": rejected}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    start = time.monotonic()
    stats = run_fuzz(count, seed=int(time.time()))
    print(f"{stats} in {time.monotonic() - start:.1f}s: no crash")


if __name__ == "__main__":
    main()
