"""The frame container: what one camera frame becomes on the wire.

Layout (little-endian, 34 bytes of framing around the payload)::

    magic "FCHM" | version u8 | codec_id u8 | rate_level u8 | flags u8
    bundle_tag 8B | image w u16 | image h u16 | latent c u16 | h u16 | w u16
    payload_len u32 | payload | crc32 u32 (over everything before it)

The bundle tag is the first 8 bytes of the bundle hash: a frame encoded with one
bundle is never decoded with another.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"FCHM"
VERSION = 1
_HEADER = struct.Struct("<4sBBBB8sHHHHHI")
_CRC = struct.Struct("<I")
OVERHEAD_BYTES = _HEADER.size + _CRC.size


def stored_checksum(data: bytes) -> int:
    """The container's CRC-32 of its body: a cheap fingerprint of a whole bitstream.

    (A CRC over the whole bytes would not do: a CRC over data that ends in its own CRC
    is the same constant for every container.)
    """
    return int(_CRC.unpack_from(data, len(data) - _CRC.size)[0]) if len(data) >= 4 else 0


class BitstreamError(ValueError):
    """A bitstream that cannot be parsed; the message names what is wrong."""


@dataclass(frozen=True)
class FrameBitstream:
    codec_id: int
    rate_level: int
    bundle_tag: bytes
    image_size: tuple[int, int]
    """(width, height) of the frame before the edge resized it."""
    latent_shape: tuple[int, int, int]
    """(channels, height, width) of the coded tensor."""
    payload: bytes

    def to_bytes(self) -> bytes:
        if len(self.bundle_tag) != 8:
            raise BitstreamError(f"bundle_tag must be 8 bytes, got {len(self.bundle_tag)}")
        header = _HEADER.pack(
            MAGIC,
            VERSION,
            self.codec_id,
            self.rate_level,
            0,
            self.bundle_tag,
            *self.image_size,
            *self.latent_shape,
            len(self.payload),
        )
        body = header + self.payload
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> FrameBitstream:
        if len(data) < OVERHEAD_BYTES:
            raise BitstreamError(
                f"bitstream is {len(data)} bytes, shorter than the {OVERHEAD_BYTES}-byte framing"
            )
        magic, version, codec_id, level, _flags, tag, iw, ih, c, h, w, n = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise BitstreamError(f"bad magic {magic!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise BitstreamError(f"unsupported container version {version}, expected {VERSION}")
        expected = OVERHEAD_BYTES + n
        if len(data) != expected:
            raise BitstreamError(
                f"payload length field says {n} bytes, so the bitstream should be {expected} "
                f"bytes, but it is {len(data)}"
            )
        (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
        if zlib.crc32(data[: -_CRC.size]) != crc:
            raise BitstreamError("checksum mismatch: the bitstream is corrupted")
        if min(iw, ih, c, h, w) == 0:
            raise BitstreamError(f"zero dimension in image {iw}x{ih} or latent {c}x{h}x{w}")
        payload = bytes(data[_HEADER.size : _HEADER.size + n])
        return cls(codec_id, level, tag, (iw, ih), (c, h, w), payload)
