"""The frame container: what one camera frame becomes on the wire.

Layout, versions 3 and 4 (little-endian, 44 bytes of framing around the payload)::

    magic "FCHM" | version u8 | codec_id u8 | rate_level u8 | flags u8 (reserved, 0)
    bundle_tag 8B | image w u16 | image h u16 | latent c u16 | h u16 | w u16
    payload_len u32 | symbol_crc u32 | ref_offset u16 | ref_crc u32
    payload | crc32 u32 (over everything before it)

``ref_offset`` says what the frame references: 0, nothing (a keyframe, intra coded);
n > 0, a P-frame predicted from the same camera's frame ``sequence − n`` (the edge
always uses 1, its previous frame), whose decoded symbols must have CRC-32 ``ref_crc``.
The cloud refuses a P-frame whose reference it does not hold, or holds with other
symbols, instead of decoding it against the wrong latent.

``symbol_crc`` is the CRC-32 of the quantized symbols the encoder coded (the int32
(C, H, W) tensor, little-endian, C order; ``codec.entropy_tables.symbol_crc``). The
container CRC only says the bytes arrived as sent; the symbol CRC says the payload
decodes to what was coded: a payload that was corrupted and then re-framed with a
fresh container CRC still fails it (an entropy decoder accepts ~1% of such payloads).

Versions 3 and 4 differ in how a P-frame's payload is coded (``p_format``): format 1
in version 3 (residuals of every replenished cell, codec/inter_frames.py
``encode_residual``), format 2 in version 4 (context-coded skip flags, each replenished
cell a residual or intra: ``encode_cells``). Keyframes are the same in both.

Version 2 is the same without the reference fields (38 bytes; always a keyframe) and
version 1 also without ``symbol_crc`` (34 bytes). Both still parse (``symbol_crc`` is
None in version 1) so bitstreams stored before the changes can be viewed; ``to_bytes``
writes version 4 (3 for a frame that says so: P-frames of format 1, as an edge agent
that predates format 2 sends them).
Ingest accepts versions 2 to 4: a version-2 frame is a keyframe with the symbol check, so
an edge agent that predates P-frames keeps working, and one that predates format 2 too.

The bundle tag is the first 8 bytes of the bundle hash: a frame encoded with one
bundle is never decoded with another.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"FCHM"
VERSION = 4
CHECKED_VERSIONS = (2, 3, 4)
"""Versions that carry the symbol check: what ingest accepts."""
_PREFIX = struct.Struct("<4sB")
_HEADERS = {
    1: struct.Struct("<4sBBBB8sHHHHHI"),
    2: struct.Struct("<4sBBBB8sHHHHHII"),
    3: struct.Struct("<4sBBBB8sHHHHHIIHI"),
    4: struct.Struct("<4sBBBB8sHHHHHIIHI"),
}
WRITTEN_VERSIONS = (3, 4)
P_FORMATS = {3: 1, 4: 2}
"""container version → how its P-frames' payloads are coded (codec/inter_frames.py)"""
_CRC = struct.Struct("<I")
OVERHEAD_BYTES = _HEADERS[VERSION].size + _CRC.size
"""Bytes of framing per frame (44): counted in every frame's rate."""


@dataclass(frozen=True)
class FrameReference:
    """What a P-frame is predicted from."""

    offset: int
    """sequences back, within the same camera (≥ 1)"""
    symbol_crc: int
    """CRC-32 of the referenced frame's decoded symbols"""


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
    reference: FrameReference | None = None
    """None: a keyframe"""
    version: int = VERSION
    """the container version it was parsed from; to_bytes writes 3 or 4 as they are
    (3: a P-frame of format 1), and any other as VERSION"""

    @property
    def is_keyframe(self) -> bool:
        return self.reference is None

    @property
    def p_format(self) -> int:
        """How a P-frame's payload is coded: 1 (version 3) or 2 (version 4)."""
        return P_FORMATS.get(self.version, 1)

    def to_bytes(self) -> bytes:
        if len(self.bundle_tag) != 8:
            raise BitstreamError(f"bundle_tag must be 8 bytes, got {len(self.bundle_tag)}")
        if self.symbol_crc is None or not 0 <= self.symbol_crc < 2**32:
            raise BitstreamError(
                f"symbol_crc must be the CRC-32 of the coded symbols, got {self.symbol_crc}"
            )
        ref = self.reference
        if ref is not None and not (1 <= ref.offset < 2**16 and 0 <= ref.symbol_crc < 2**32):
            raise BitstreamError(f"reference {ref} needs 1 ≤ offset < 65536 and a CRC-32")
        # Versions 1 and 2 held keyframes only: they are re-written as the current one.
        version = self.version if self.version in WRITTEN_VERSIONS else VERSION
        header = _HEADERS[version].pack(
            MAGIC,
            version,
            self.codec_id,
            self.rate_level,
            0,
            self.bundle_tag,
            *self.image_size,
            *self.latent_shape,
            len(self.payload),
            self.symbol_crc,
            0 if ref is None else ref.offset,
            0 if ref is None else ref.symbol_crc,
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
        reference = None
        if version >= 3 and fields[13]:
            reference = FrameReference(int(fields[13]), int(fields[14]))
        elif version >= 3 and fields[14]:
            raise BitstreamError(f"ref_crc {fields[14]:08x} set on a keyframe (ref_offset 0)")
        if flags:
            # Reserved: a frame that sets them means something this decoder does not know.
            raise BitstreamError(f"flags 0x{flags:02x} set; none are defined in version {version}")
        if min(iw, ih, c, h, w) == 0:
            raise BitstreamError(f"zero dimension in image {iw}x{ih} or latent {c}x{h}x{w}")
        payload = bytes(data[header.size : header.size + n])
        return cls(
            codec_id, level, tag, (iw, ih), (c, h, w), payload, symbol_crc, reference, version
        )


def is_keyframe(data: bytes) -> bool:
    """Whether ``data`` is a well-formed keyframe (a P-frame or garbage is not)."""
    try:
        return FrameBitstream.from_bytes(data).is_keyframe
    except BitstreamError:
        return False
