"""Media bytes: deterministic noise (the same (seed, size) always streams the same file,
cheaply, at any size), or a small real sample file a browser can show and play."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
# Real files per WhatsApp message type, with the MIME type WhatsApp gives them.
SAMPLES = {
    "image": ("image.jpg", "image/jpeg"),
    "video": ("video.mp4", "video/mp4"),
    "audio": ("audio.ogg", "audio/ogg"),
    "document": ("document.pdf", "application/pdf"),
    "sticker": ("sticker.webp", "image/webp"),
}

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


@lru_cache(maxsize=8)
def sample_bytes(kind: str) -> bytes:
    """The sample file for a message type (KeyError for an unknown one)."""
    return (SAMPLES_DIR / SAMPLES[kind][0]).read_bytes()


def media_chunks(
    seed: str, size: int, sample: str | None, *, chunk: int = CHUNK
) -> Iterator[bytes]:
    """A media record's bytes: its sample file, or ``size`` bytes of noise seeded by its id."""
    if sample is None:
        yield from chunks(seed, size, chunk=chunk)
        return
    data = sample_bytes(sample)[:size]
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


def media_sha256(seed: str, size: int, sample: str | None) -> str:
    if sample is not None:
        return hashlib.sha256(sample_bytes(sample)[:size]).hexdigest()
    return sha256(seed, size)
