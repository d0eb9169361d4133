"""The frame container: what one camera frame becomes on the wire.

Layout, version 5 (what the edge writes; little-endian)::

    keyframe (34 bytes of framing):
        magic "FCHM" | version u8 | kind u8 = 0 | codec_id u8 | rate_level u8
        bundle_tag 8B | image w u16 | image h u16 | latent c u16 | h u16 | w u16
        symbol_crc u32 | payload | crc32 u32 (over everything before it)
    P-frame (20 bytes of framing):
        magic "FCHM" | version u8 | kind u8 = 1 | rate_level u8 | ref_offset u8
        ref_crc u32 | symbol_crc u32 | payload | crc32 u32

A version-5 P-frame inherits the codec, the bundle tag and the image and latent sizes from
its reference (``StreamHeader``: the chain's keyframe's), so it is parsed with the
reference's header (``from_bytes(data, inherited)``); ``peek_reference`` reads what it
references first. The payload's length is what is left between the header and the CRC.
Why: at the fixed-camera operating point a P-frame is ~300 bytes, and 24 of the 44 bytes
of version-4 framing restated what the keyframe already said.

``ref_offset`` says what the frame references: 0 (versions 3, 4), nothing (a keyframe,
intra coded); n > 0, a P-frame predicted from the same camera's frame ``sequence − n``
(the edge always uses 1, its previous frame), whose decoded symbols must have CRC-32
``ref_crc``. The cloud refuses a P-frame whose reference it does not hold, or holds with
other symbols, instead of decoding it against the wrong latent.

``symbol_crc`` is the CRC-32 of the quantized symbols the encoder coded (the int32
(C, H, W) tensor, little-endian, C order; ``codec.entropy_tables.symbol_crc``). The
container CRC only says the bytes arrived as sent; the symbol CRC says the payload
decodes to what was coded: a payload that was corrupted and then re-framed with a
fresh container CRC still fails it (an entropy decoder accepts ~1% of such payloads).

Older versions still parse, so bitstreams stored before each change can be viewed:

- versions 3 and 4 (44 bytes of framing, every field in every frame)::

      magic "FCHM" | version u8 | codec_id u8 | rate_level u8 | flags u8 (reserved, 0)
      bundle_tag 8B | image w u16 | image h u16 | latent c u16 | h u16 | w u16
      payload_len u32 | symbol_crc u32 | ref_offset u16 | ref_crc u32 | payload | crc32 u32

- version 2, the same without the reference fields (38 bytes; always a keyframe), and
  version 1 also without ``symbol_crc`` (34 bytes; ``symbol_crc`` is None).

The version also says how a P-frame's payload is coded (``p_format``, codec/inter_frames.py):
format 1 in version 3, format 2 in version 4, format 3 in version 5. ``to_bytes`` writes a
frame in the version it carries where that is 3, 4 or 5 (an edge agent that predates a
format sends it so), and any other as version 5.
Ingest accepts versions 2 to 5: a version-2 frame is a keyframe with the symbol check, so
an edge agent that predates P-frames keeps working, and one that predates each format too.

The bundle tag is the first 8 bytes of the bundle hash: a frame encoded with one
bundle is never decoded with another (a version-5 P-frame: its keyframe's tag, which the
reference CRCs tie it to).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

MAGIC = b"FCHM"
VERSION = 5
CHECKED_VERSIONS = (2, 3, 4, 5)
"""Versions that carry the symbol check: what ingest accepts."""
_PREFIX = struct.Struct("<4sB")
_HEADERS = {
    1: struct.Struct("<4sBBBB8sHHHHHI"),
    2: struct.Struct("<4sBBBB8sHHHHHII"),
    3: struct.Struct("<4sBBBB8sHHHHHIIHI"),
    4: struct.Struct("<4sBBBB8sHHHHHIIHI"),
}
_KEY_V5 = struct.Struct("<4sBBBB8sHHHHHI")
"""magic | version | kind 0 | codec_id | rate_level | tag | image w, h | latent c, h, w |
symbol_crc"""
_P_V5 = struct.Struct("<4sBBBBII")
"""magic | version | kind 1 | rate_level | ref_offset | ref_crc | symbol_crc"""
_KINDS = {0: _KEY_V5, 1: _P_V5}
WRITTEN_VERSIONS = (3, 4, 5)
P_FORMATS = {3: 1, 4: 2, 5: 3}
"""container version → how its P-frames' payloads are coded (codec/inter_frames.py)"""
_CRC = struct.Struct("<I")
OVERHEAD_BYTES = _P_V5.size + _CRC.size
"""Bytes of framing of a P-frame (20), the frames a camera sends most: counted in every
frame's rate (the edge's rate control adds them to each size it predicts)."""
KEYFRAME_OVERHEAD_BYTES = _KEY_V5.size + _CRC.size
"""Bytes of framing of a keyframe (34)."""
MAX_CHAIN = 10_000
"""Longest P-frame chain the cloud follows back to its keyframe, to decode a stored frame
or to keep it decodable under retention (the edge keys every 50 frames by default)."""
MAX_SHORT_OFFSET = 255
"""The furthest a version-5 P-frame can reference (the edge references its last frame)."""


@dataclass(frozen=True)
class StreamHeader:
    """What a keyframe states and the P-frames that follow it inherit."""

    codec_id: int
    bundle_tag: bytes
    image_size: tuple[int, int]
    """(width, height) of the frame before the edge resized it."""
    latent_shape: tuple[int, int, int]
    """(channels, height, width) of the coded tensor."""


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


class NeedsHeader(BitstreamError):
    """A well-formed version-5 P-frame parsed without its reference's header."""

    def __init__(self, reference: FrameReference) -> None:
        super().__init__(
            "a version-5 P-frame takes its codec, bundle tag, image and latent sizes from "
            "its reference: parse it with the reference's header"
        )
        self.reference = reference


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
    """the container version it was parsed from; to_bytes writes 3, 4 and 5 as they are
    (3: a P-frame of format 1, 4: of format 2), and any other as VERSION"""

    @property
    def is_keyframe(self) -> bool:
        return self.reference is None

    @property
    def p_format(self) -> int:
        """How a P-frame's payload is coded: 1 (version 3), 2 (version 4), 3 (version 5)."""
        return P_FORMATS.get(self.version, 1)

    @property
    def header(self) -> StreamHeader:
        """What a version-5 P-frame that references this frame inherits."""
        return StreamHeader(self.codec_id, self.bundle_tag, self.image_size, self.latent_shape)

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
        if version == 5 and ref is None:
            header = _KEY_V5.pack(
                MAGIC, 5, 0, self.codec_id, self.rate_level, self.bundle_tag,
                *self.image_size, *self.latent_shape, self.symbol_crc,
            )  # fmt: skip
        elif version == 5 and ref is not None:
            if ref.offset > MAX_SHORT_OFFSET:
                raise BitstreamError(
                    f"reference offset {ref.offset}: a version-5 P-frame references at most "
                    f"{MAX_SHORT_OFFSET} frames back"
                )
            header = _P_V5.pack(
                MAGIC, 5, 1, self.rate_level, ref.offset, ref.symbol_crc, self.symbol_crc
            )
        else:
            header = _HEADERS[version].pack(
                MAGIC, version, self.codec_id, self.rate_level, 0, self.bundle_tag,
                *self.image_size, *self.latent_shape, len(self.payload), self.symbol_crc,
                0 if ref is None else ref.offset, 0 if ref is None else ref.symbol_crc,
            )  # fmt: skip
        body = header + self.payload
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes, inherited: StreamHeader | None = None) -> FrameBitstream:
        """Parse and check a container; ``inherited``: the reference's header, which a
        version-5 P-frame needs (and any other frame ignores)."""
        version, fields, payload = _split(data)
        if version == 5:
            return _short(fields, payload, inherited)
        _magic, _version, codec_id, level, flags, tag, iw, ih, c, h, w, _n = fields[:12]
        symbol_crc = int(fields[12]) if version >= 2 else None
        reference = None
        if version >= 3 and fields[13]:
            reference = FrameReference(int(fields[13]), int(fields[14]))
        elif version >= 3 and fields[14]:
            raise BitstreamError(f"ref_crc {fields[14]:08x} set on a keyframe (ref_offset 0)")
        if flags:
            # Reserved: a frame that sets them means something this decoder does not know.
            raise BitstreamError(f"flags 0x{flags:02x} set; none are defined in version {version}")
        _check_sizes((iw, ih), (c, h, w))
        return cls(
            codec_id, level, tag, (iw, ih), (c, h, w), payload, symbol_crc, reference, version
        )

    @staticmethod
    def peek_reference(data: bytes) -> FrameReference | None:
        """What a well-formed container references (None: a keyframe), checked as
        ``from_bytes`` checks it, without the reference's header."""
        version, fields, _payload = _split(data)
        if version == 5:
            return None if fields[2] == 0 else FrameReference(int(fields[4]), int(fields[5]))
        if version >= 3 and fields[13]:
            return FrameReference(int(fields[13]), int(fields[14]))
        return None


def _split(data: bytes) -> tuple[int, tuple[Any, ...], bytes]:
    """(version, header fields, payload) of a container whose framing and CRC check out."""
    if len(data) < _PREFIX.size:
        raise BitstreamError(f"bitstream is {len(data)} bytes, too short for a header")
    magic, version = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise BitstreamError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version == 5:
        kind = data[_PREFIX.size] if len(data) > _PREFIX.size else None
        header = None if kind is None else _KINDS.get(kind)
        if header is None:
            what = "missing" if kind is None else f"{kind}"
            raise BitstreamError(f"frame kind {what} in version 5: 0 (keyframe) or 1 (P-frame)")
    elif (header := _HEADERS.get(version)) is None:
        raise BitstreamError(f"unsupported container version {version}, expected {VERSION}")
    overhead = header.size + _CRC.size
    if len(data) < overhead:
        raise BitstreamError(
            f"bitstream is {len(data)} bytes, shorter than the {overhead}-byte framing "
            f"of version {version}"
        )
    fields = header.unpack_from(data)
    if version != 5:
        expected = overhead + fields[11]
        if len(data) != expected:
            raise BitstreamError(
                f"payload length field says {fields[11]} bytes, so the bitstream should be "
                f"{expected} bytes, but it is {len(data)}"
            )
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise BitstreamError("checksum mismatch: the bitstream is corrupted")
    if version == 5 and fields[2] == 1 and fields[4] == 0:
        raise BitstreamError("ref_offset 0 in a version-5 P-frame: it must reference a frame")
    return version, fields, bytes(data[header.size : len(data) - _CRC.size])


def _short(
    fields: tuple[Any, ...], payload: bytes, inherited: StreamHeader | None
) -> FrameBitstream:
    """A version-5 frame from its fields: a keyframe states its header, a P-frame
    takes ``inherited``."""
    if fields[2] == 0:
        _m, _v, _k, codec_id, level, tag, iw, ih, c, h, w, symbol_crc = fields
        _check_sizes((iw, ih), (c, h, w))
        return FrameBitstream(
            codec_id, level, tag, (iw, ih), (c, h, w), payload, symbol_crc, None, 5
        )
    _m, _v, _k, level, offset, ref_crc, symbol_crc = fields
    if inherited is None:
        raise NeedsHeader(FrameReference(offset, ref_crc))
    return FrameBitstream(
        inherited.codec_id, level, inherited.bundle_tag, inherited.image_size,
        inherited.latent_shape, payload, symbol_crc, FrameReference(offset, ref_crc), 5,
    )  # fmt: skip


def _check_sizes(image: tuple[int, int], latent: tuple[int, int, int]) -> None:
    if min(*image, *latent) == 0:
        w, h = image
        raise BitstreamError(
            f"zero dimension in image {w}x{h} or latent {'x'.join(map(str, latent))}"
        )


def payload_start(data: bytes) -> int:
    """Where a well-formed container's payload begins (its header's size)."""
    _version, _fields, payload = _split(data)
    return len(data) - _CRC.size - len(payload)


def is_keyframe(data: bytes) -> bool:
    """Whether ``data`` is a well-formed keyframe (a P-frame or garbage is not)."""
    try:
        return FrameBitstream.peek_reference(data) is None
    except BitstreamError:
        return False
