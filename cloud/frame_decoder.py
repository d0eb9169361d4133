"""Bitstream bytes → split features, checked against the cloud's bundle.

    bytes ─► FrameBitstream.from_bytes (magic, version, length, crc; a version-5
             P-frame with its reference's header, ReferenceFrame)
          ─► check bundle tag, codec, rate level, channels, geometry
          ─► FeatureCodec.decompress_symbols (integer tables, bit-exact; symbol CRC;
             a P-frame against the reference latent the caller resolved,
             cloud/latent_references.py) ─► DecodedFrame

Every failure raises InvalidFrame with a message that names the bad field; the
ingest servicer turns it into INVALID_ARGUMENT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codec.bitstream import (
    CHECKED_VERSIONS,
    BitstreamError,
    FrameBitstream,
    FrameReference,
    NeedsHeader,
    StreamHeader,
)
from codec.bundle import Bundle
from codec.entropy_tables import EntropyCodingError
from codec.feature_codec import EncodedFeatures
from codec.geometry import Letterbox
from codec.inter_frames import LatentSymbols
from codec.wire import MAX_IMAGE_SIDE


class InvalidFrame(ValueError):
    """A frame the cloud cannot decode; the message says why."""


def check_image_size(image_size: tuple[int, int]) -> None:
    """Refuse a declared size no edge could have sent: the views and boxes are sized by it."""
    w, h = image_size
    if max(w, h) > MAX_IMAGE_SIDE:
        raise InvalidFrame(
            f"image_size {w}x{h}: a side exceeds MAX_IMAGE_SIDE {MAX_IMAGE_SIDE} "
            "(codec/wire.py), larger than any frame an edge may send"
        )


class OutdatedBitstream(InvalidFrame):
    """A well-formed frame in a container version ingest no longer accepts.

    The frame is not at fault, the edge agent is: ingest refuses the stream with
    FAILED_PRECONDITION (the edge stops with its spool intact) instead of rejecting
    the frame (which makes the edge drop it).
    """


@dataclass(frozen=True)
class ReferenceFrame:
    """What a camera's next P-frame is predicted from (its symbols) and, in container
    version 5, inherits (its keyframe's header)."""

    header: StreamHeader
    symbols: LatentSymbols


@dataclass(frozen=True)
class DecodedFrame:
    bitstream: FrameBitstream
    features: np.ndarray
    """float32 (C, h, w), dequantized"""
    geometry: Letterbox
    symbols: LatentSymbols
    """what the camera's next P-frame is predicted from"""

    @property
    def as_reference(self) -> ReferenceFrame:
        return ReferenceFrame(self.bitstream.header, self.symbols)


class MissingReference(InvalidFrame):
    """A P-frame whose reference latent the cloud does not hold (or holds with other
    symbols): it cannot be decoded until the camera sends a keyframe."""


class FrameDecoder:
    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.codec = bundle.load_codec()
        self.codec.prepare()
        info = bundle.manifest.detector
        self.pad_multiple = info.pad_multiple
        self.stride, self.input_size, self.channels = info.stride, info.input_size, info.channels

    def peek_reference(self, data: bytes) -> FrameReference | None:
        """What a frame references (None: a keyframe), its container checked."""
        try:
            return FrameBitstream.peek_reference(data)
        except BitstreamError as exc:
            raise InvalidFrame(str(exc)) from exc

    def parse(self, data: bytes, inherited: StreamHeader | None = None) -> FrameBitstream:
        """``inherited``: the reference's header, which a version-5 P-frame takes."""
        try:
            frame = FrameBitstream.from_bytes(data, inherited)
        except NeedsHeader as exc:
            raise MissingReference(_missing(exc.reference, None)) from exc
        except BitstreamError as exc:
            raise InvalidFrame(str(exc)) from exc
        if frame.bundle_tag != self.bundle.tag:
            raise InvalidFrame(
                f"bitstream bundle tag {frame.bundle_tag.hex()} does not match the cloud's "
                f"bundle {self.bundle.tag.hex()}"
            )
        if frame.codec_id != self.codec.codec_id:
            raise InvalidFrame(
                f"codec id {frame.codec_id} is not the bundle's {self.codec.codec_id}"
            )
        if frame.rate_level >= self.codec.num_levels:
            raise InvalidFrame(
                f"rate_level {frame.rate_level} outside 0..{self.codec.num_levels - 1}"
            )
        check_image_size(frame.image_size)
        return frame

    def geometry(self, frame: FrameBitstream) -> Letterbox:
        geometry = Letterbox.fit(frame.image_size, self.input_size, self.pad_multiple)
        c, h, w = frame.latent_shape
        expected = (
            self.channels,
            geometry.input_size[1] // self.stride,
            geometry.input_size[0] // self.stride,
        )
        if (c, h, w) != expected:
            raise InvalidFrame(
                f"latent shape {frame.latent_shape} does not match image size "
                f"{frame.image_size} (expected {expected})"
            )
        return geometry

    def decode(
        self, data: bytes, stored: bool = False, reference: ReferenceFrame | None = None
    ) -> DecodedFrame:
        """Decode a frame; ``stored``: bytes from the cloud's own store, which may
        predate the symbol check (container version 1). Ingest takes only checked
        versions: a frame without the check could decode to garbage and be stored.
        A P-frame needs ``reference``, the decoded frame its container names."""
        inherited = None if reference is None else reference.header
        return self.decode_parsed(self.parse(data, inherited), stored, reference)

    def decode_parsed(
        self, frame: FrameBitstream, stored: bool = False, reference: ReferenceFrame | None = None
    ) -> DecodedFrame:
        if frame.version not in CHECKED_VERSIONS and not stored:
            raise OutdatedBitstream(
                f"container version {frame.version} (no symbol check) is not accepted for "
                f"ingest, only versions {list(CHECKED_VERSIONS)}: upgrade the edge agent"
            )
        geometry = self.geometry(frame)
        if frame.reference is not None:
            if not self.codec.supports_inter:
                raise InvalidFrame("P-frame, but the cloud's bundle has no P-frame tables")
            if reference is None or reference.symbols.crc != frame.reference.symbol_crc:
                raise MissingReference(_missing(frame.reference, reference))
        encoded = EncodedFeatures(
            frame.rate_level,
            frame.latent_shape,
            frame.payload,
            frame.symbol_crc,
            None if frame.reference is None else frame.reference.symbol_crc,
            p_format=frame.p_format,
        )
        try:
            symbols = self.codec.decompress_symbols(
                encoded, None if reference is None else reference.symbols
            )
        except EntropyCodingError as exc:
            raise InvalidFrame(f"payload: {exc}") from exc
        features = self.codec.dequantize(symbols.q, frame.rate_level)
        return DecodedFrame(frame, features, geometry, symbols)


def _missing(named: FrameReference, held: ReferenceFrame | None) -> str:
    what = "none" if held is None else f"symbol CRC {held.symbols.crc:08x}"
    return (
        f"P-frame references the frame {named.offset} back with symbol CRC "
        f"{named.symbol_crc:08x}; the cloud holds {what}: send a keyframe"
    )
