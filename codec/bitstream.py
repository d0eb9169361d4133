"""The frame container: what one camera frame becomes on the wire.

Layout, version 2 (little-endian, 38 bytes of framing around the payload)::

    magic "FCHM" | version u8 | codec_id u8 | rate_level u8 | flags u8 (reserved, 0)
    bundle_tag 8B | image w u16 | image h u16 | latent c u16 | h u16 | w u16
    payload_len u32 | symbol_crc u32 | payload | crc32 u32 (over everything before it)

``symbol_crc`` is the CRC-32 of the quantized symbols the encoder coded (the int32
(C, H, W) tensor, little-endian, C order; ``codec.entropy_tables.symbol_crc``). The
container CRC only says the bytes arrived as sent; the symbol CRC says the payload
decodes to what was coded: a payload that was corrupted and then re-framed with a
fresh container CRC still fails it (an entropy decoder accepts ~1% of such payloads).

Version 1 is the same without ``symbol_crc`` (34 bytes of framing). It still parses
(``symbol_crc`` is None) so bitstreams stored before the change can be viewed, but
``to_bytes`` writes only version 2 and cloud ingest accepts only version 2.

The bundle tag is the first 8 bytes of the bundle hash: a frame encoded with one
bundle is never decoded with another.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"FCHM"
VERSION = 2
_PREFIX = struct.Struct("<4sB")
_HEADERS = {
    1: struct.Struct("<4sBBBB8sHHHHHI"),
    2: struct.Struct("<4sBBBB8sHHHHHII"),
}
_CRC = struct.Struct("<I")
OVERHEAD_BYTES = _HEADERS[VERSION].size + _CRC.size
"""Bytes of framing per frame (38): counted in every frame's rate."""


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
    symbol_crc: int | None
    """CRC-32 of the coded symbols (EncodedFeatures.symbol_crc); None in version 1."""

    @property
    def version(self) -> int:
        return 1 if self.symbol_crc is None else VERSION

    def to_bytes(self) -> bytes:
        if len(self.bundle_tag) != 8:
            raise BitstreamError(f"bundle_tag must be 8 bytes, got {len(self.bundle_tag)}")
        if self.symbol_crc is None or not 0 <= self.symbol_crc < 2**32:
            raise BitstreamError(
                f"symbol_crc must be the CRC-32 of the coded symbols, got {self.symbol_crc}"
            )
        header = _HEADERS[VERSION].pack(
            MAGIC,
            VERSION,
            self.codec_id,
            self.rate_level,
            0,
            self.bundle_tag,
            *self.image_size,
            *self.latent_shape,
            len(self.payload),
            self.symbol_crc,
        )
        body = header + self.payload
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> FrameBitstream:
        if len(data) < _PREFIX.size:
            raise BitstreamError(f"bitstream is {len(data)} bytes, too short for a header")
        magic, version = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            raise BitstreamError(f"bad magic {magic!r}, expected {MAGIC!r}")
        header = _HEADERS.get(version)
        if header is None:
            raise BitstreamError(f"unsupported container version {version}, expected {VERSION}")
        overhead = header.size + _CRC.size
        if len(data) < overhead:
            raise BitstreamError(
                f"bitstream is {len(data)} bytes, shorter than the {overhead}-byte framing "
                f"of version {version}"
            )
        fields = header.unpack_from(data)
        _magic, _version, codec_id, level, flags, tag, iw, ih, c, h, w, n = fields[:12]
        symbol_crc = int(fields[12]) if version >= 2 else None
        expected = overhead + n
        if len(data) != expected:
            raise BitstreamError(
                f"payload length field says {n} bytes, so the bitstream should be {expected} "
                f"bytes, but it is {len(data)}"
            )
        (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
        if zlib.crc32(data[: -_CRC.size]) != crc:
            raise BitstreamError("checksum mismatch: the bitstream is corrupted")
        if flags:
            # Reserved: a frame that sets them means something this decoder does not know.
            raise BitstreamError(f"flags 0x{flags:02x} set; none are defined in version {version}")
        if min(iw, ih, c, h, w) == 0:
            raise BitstreamError(f"zero dimension in image {iw}x{ih} or latent {c}x{h}x{w}")
        payload = bytes(data[header.size : header.size + n])
        return cls(codec_id, level, tag, (iw, ih), (c, h, w), payload, symbol_crc)
