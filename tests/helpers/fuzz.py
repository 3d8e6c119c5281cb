"""Seeded corruptions of a file's bytes for the reader fuzz tests (truncation, bit flips, a format-aware mutation,
random bytes in a region)."""

from __future__ import annotations

import random
from collections.abc import Callable


def corrupt(data: bytes, rng: random.Random, case: int, mutate: Callable[[bytes, random.Random], bytes],
            region: Callable[[bytes], tuple[int, int]]) -> bytes:
    """Case ``case % 4``: truncate; flip 1-8 bits; ``mutate`` (e.g. rewrite a header field); overwrite 1-4 bytes in
    the region ``(start, size) = region(data)`` (e.g. the header)."""
    out = bytearray(data)
    op = case % 4
    if op == 0:
        return bytes(out[:rng.randrange(len(out))])
    if op == 1:
        for _ in range(rng.randint(1, 8)):
            j = rng.randrange(len(out))
            out[j] ^= 1 << rng.randrange(8)
        return bytes(out)
    if op == 2:
        return mutate(bytes(out), rng)
    start, size = region(bytes(out))
    for _ in range(rng.randint(1, 4)):
        out[start + rng.randrange(size)] = rng.randrange(256)
    return bytes(out)
