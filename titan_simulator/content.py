"""Deterministic media bytes: the same (seed, size) always streams the same file, cheaply."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from functools import lru_cache

SEGMENT = 1024 * 1024
CHUNK = 256 * 1024


@lru_cache(maxsize=32)
def _base(seed: str) -> bytes:
    return random.Random(seed).randbytes(SEGMENT)


def chunks(seed: str, size: int, *, chunk: int = CHUNK) -> Iterator[bytes]:
    """Yield ``size`` bytes in chunks; each 1 MiB segment is a different rotation of the base."""
    base = _base(seed)
    sent = 0
    segment = 0
    while sent < size:
        k = (segment * 7919) % SEGMENT
        block = base[k:] + base[:k]
        for start in range(0, SEGMENT, chunk):
            if sent >= size:
                return
            piece = block[start : start + min(chunk, size - sent)]
            sent += len(piece)
            yield piece
        segment += 1


def sha256(seed: str, size: int) -> str:
    digest = hashlib.sha256()
    for piece in chunks(seed, size):
        digest.update(piece)
    return digest.hexdigest()
