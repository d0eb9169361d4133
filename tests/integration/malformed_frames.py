"""A seeded corpus of malformed frame bitstreams, built from real encoded frames.

Each entry is (kind, bytes). Kinds: random bytes, truncations, bit flips with the
container CRC left stale, bit flips in the payload or the symbol CRC with the
container CRC recomputed (what an entropy decoder alone often accepts), absurd
shapes and image sizes, wrong payload-length fields, out-of-range header fields.
Offsets follow the version-2 layout in codec/bitstream.py.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_IMAGE, _LATENT, _LENGTH, _SYMBOL_CRC, _PAYLOAD = 16, 20, 26, 30, 40  # container v3


def reframe(body: bytes) -> bytes:
    """``body`` (a container without its CRC) with a fresh, valid container CRC."""
    return body + struct.pack("<I", zlib.crc32(body))


def _flip(data: bytes, lo: int, hi: int, rng: np.random.Generator, bits: int = 1) -> bytearray:
    out = bytearray(data)
    for _ in range(bits):
        i = int(rng.integers(lo, hi))
        out[i] ^= 1 << int(rng.integers(8))
    return out


def _put(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    body = bytearray(data[:-4])
    struct.pack_into(fmt, body, offset, *values)
    return reframe(bytes(body))


def malformed(good: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One malformed variant of the valid bitstream ``good``."""
    end = len(good) - 4
    kind = str(
        rng.choice(
            ["random", "truncated", "flip_stale_crc", "flip_payload", "flip_symbol_crc",
             "absurd_shape", "absurd_image", "payload_length", "header_field"]
        )
    )  # fmt: skip
    if kind == "random":
        n = int(rng.integers(0, 2 * len(good)))
        data = rng.bytes(n)
        if rng.random() < 0.5:  # past the magic and version checks
            data = b"FCHM\x02" + data
        return kind, data
    if kind == "truncated":
        return kind, good[: int(rng.integers(0, len(good)))]
    if kind == "flip_stale_crc":
        return kind, bytes(_flip(good, 0, len(good), rng, int(rng.integers(1, 4))))
    if kind == "flip_payload":
        body = _flip(good[:end], _PAYLOAD, end, rng, int(rng.integers(1, 4)))
        return kind, reframe(bytes(body))
    if kind == "flip_symbol_crc":
        return kind, reframe(bytes(_flip(good[:end], _SYMBOL_CRC, _PAYLOAD, rng)))
    if kind == "absurd_shape":
        shape = [int(v) for v in rng.choice([0, 1, 7, 4096, 65535], size=3)]
        return kind, _put(good, _LATENT, "<HHH", *shape)
    if kind == "absurd_image":
        size = [int(v) for v in rng.choice([0, 1, 3, 65535], size=2)]
        return kind, _put(good, _IMAGE, "<HH", *size)
    if kind == "payload_length":
        n = end - _PAYLOAD
        wrong = int(rng.choice([0, n - 1, n + 1, n * 2, 2**32 - 1]))
        return kind, _put(good, _LENGTH, "<I", wrong)
    # One header field out of range: codec id, rate level, flags, or the bundle tag.
    field = int(rng.integers(4))
    offset, fmt, value = [
        (5, "<B", int(rng.integers(2, 256))),
        (6, "<B", int(rng.integers(64, 256))),
        (7, "<B", int(rng.integers(1, 256))),
        (8, "<Q", int(rng.integers(0, 2**63))),
    ][field]
    return kind, _put(good, offset, fmt, value)
