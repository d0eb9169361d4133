import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest

from codec.bitstream import (
    CHECKED_VERSIONS,
    KEYFRAME_OVERHEAD_BYTES,
    OVERHEAD_BYTES,
    VERSION,
    BitstreamError,
    FrameBitstream,
    FrameReference,
    payload_start,
)
from codec.entropy_tables import EntropyCodingError, EntropyTables, symbol_crc
from codec.feature_codec import EncodedFeatures, UniformFeatureCodec


def recrc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def make(
    payload: bytes = b"\x01\x02\x03\x04", reference: FrameReference | None = None
) -> FrameBitstream:
    return FrameBitstream(
        codec_id=0,
        rate_level=3,
        bundle_tag=bytes(range(8)),
        image_size=(1920, 1080),
        latent_shape=(128, 48, 80),
        payload=payload,
        symbol_crc=0xDEADBEEF,
        reference=reference,
    )


@pytest.mark.parametrize(
    "reference", [None, FrameReference(1, 0x01234567), FrameReference(255, 0xFFFFFFFF)]
)
def test_round_trip_keeps_every_field(reference: FrameReference | None) -> None:
    frame = make(reference=reference)
    data = frame.to_bytes()
    framing = KEYFRAME_OVERHEAD_BYTES if reference is None else OVERHEAD_BYTES
    assert len(data) == framing + 4 == (38 if reference is None else 24)
    assert FrameBitstream.peek_reference(data) == reference
    parsed = FrameBitstream.from_bytes(data, make().header)
    assert parsed == frame
    assert parsed.version == frame.version == VERSION == 5 and parsed.p_format == 3
    assert parsed.reference == reference and parsed.is_keyframe == (reference is None)


def test_a_version_5_p_frame_inherits_its_references_header() -> None:
    """Codec, bundle tag and sizes are the keyframe's: a P-frame states none of them."""
    key = make()
    data = make(reference=FrameReference(1, 0x01234567)).to_bytes()
    other = replace(key, image_size=(640, 480), latent_shape=(128, 32, 40), codec_id=1)
    parsed = FrameBitstream.from_bytes(data, other.header)
    assert (parsed.image_size, parsed.latent_shape, parsed.codec_id) == (
        (640, 480), (128, 32, 40), 1,
    )  # fmt: skip
    with pytest.raises(BitstreamError, match="parse it with the reference's header"):
        FrameBitstream.from_bytes(data)
    # A keyframe ignores what it is given: it states its own.
    assert FrameBitstream.from_bytes(key.to_bytes(), other.header) == key


def test_version_5_layout_byte_for_byte() -> None:
    key = make().to_bytes()
    assert key[:6] == b"FCHM\x05\x00"
    assert struct.unpack_from("<BB8sHHHHHI", key, 6) == (
        0, 3, bytes(range(8)), 1920, 1080, 128, 48, 80, 0xDEADBEEF,
    )  # fmt: skip
    assert key[30:34] == b"\x01\x02\x03\x04" and payload_start(key) == 30
    assert struct.unpack_from("<I", key, 34)[0] == zlib.crc32(key[:34])
    p = make(reference=FrameReference(2, 0xCAFEF00D)).to_bytes()
    assert struct.unpack_from("<4sBBBBII", p) == (b"FCHM", 5, 1, 3, 2, 0xCAFEF00D, 0xDEADBEEF)
    assert p[16:20] == b"\x01\x02\x03\x04" and payload_start(p) == 16
    assert struct.unpack_from("<I", p, 20)[0] == zlib.crc32(p[:20])


def test_version_3_and_4_layout_byte_for_byte() -> None:
    """The reference fields sit after symbol_crc: ref_offset u16, ref_crc u32. Version 4
    is version 3's layout (only its P-frames' payloads are coded otherwise)."""
    v3 = replace(make(reference=FrameReference(2, 0xCAFEF00D)), version=3).to_bytes()
    assert v3[:8] == b"FCHM\x03\x00\x03\x00"
    assert FrameBitstream.from_bytes(v3).p_format == 1
    data = replace(make(reference=FrameReference(2, 0xCAFEF00D)), version=4).to_bytes()
    assert data[:8] == b"FCHM\x04\x00\x03\x00"
    assert FrameBitstream.from_bytes(data).p_format == 2
    assert FrameBitstream.peek_reference(data) == FrameReference(2, 0xCAFEF00D)
    assert data[8:-4] == v3[8:-4]
    assert struct.unpack_from("<IIHI", data, 26) == (4, 0xDEADBEEF, 2, 0xCAFEF00D)
    assert data[40:44] == b"\x01\x02\x03\x04"
    assert struct.unpack_from("<I", data, 44)[0] == zlib.crc32(data[:44])
    keyframe = replace(make(), version=4).to_bytes()
    assert len(keyframe) == 48 and struct.unpack_from("<HI", keyframe, 34) == (0, 0)
    assert FrameBitstream.from_bytes(keyframe) == replace(make(), version=4)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"JPEG" + d[4:], "bad magic"),
        (lambda d: d[:4] + b"\x09" + d[5:], "unsupported container version 9"),
        (lambda d: d[:-1], "checksum mismatch"),
        (lambda d: d[:-6] + bytes([d[-6] ^ 0xFF]) + d[-5:], "checksum mismatch"),
        (lambda d: d[:10], "shorter than the 34-byte framing of version 5"),
        (lambda d: d[:3], "too short"),
        (lambda d: d[:5], "frame kind missing in version 5"),
        (lambda d: recrc(d[:5] + b"\x07" + d[6:]), "frame kind 7 in version 5"),
        (lambda d: recrc(d[:18] + b"\x00\x00" + d[20:]), "zero dimension in image 1920x0"),
    ],
)
def test_malformed_bitstreams_name_the_problem(mutate, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BitstreamError, match=message):
        FrameBitstream.from_bytes(mutate(make().to_bytes()))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:-1], "checksum mismatch"),
        (lambda d: d[:10], "shorter than the 20-byte framing of version 5"),
        (lambda d: recrc(d[:7] + b"\x00" + d[8:]), "ref_offset 0 in a version-5 P-frame"),
    ],
)
def test_malformed_p_frames_name_the_problem(mutate, message) -> None:  # type: ignore[no-untyped-def]
    data = mutate(make(reference=FrameReference(1, 7)).to_bytes())
    with pytest.raises(BitstreamError, match=message):
        FrameBitstream.from_bytes(data, make().header)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:-1], "payload length field"),
        (lambda d: d[:10], "shorter than the 44-byte framing of version 4"),
        (lambda d: recrc(d[:7] + b"\x04" + d[8:]), "flags 0x04 set"),
    ],
)
def test_malformed_version_4_frames_name_the_problem(mutate, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BitstreamError, match=message):
        FrameBitstream.from_bytes(mutate(replace(make(), version=4).to_bytes()))


def test_bundle_tag_must_be_eight_bytes() -> None:
    frame = FrameBitstream(0, 0, b"short", (1, 1), (1, 1, 1), b"", 0)
    with pytest.raises(BitstreamError, match="bundle_tag"):
        frame.to_bytes()


def test_only_the_current_version_is_written() -> None:
    with pytest.raises(BitstreamError, match="symbol_crc must be"):
        FrameBitstream(0, 0, bytes(8), (1, 1), (1, 1, 1), b"", None).to_bytes()


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        (FrameReference(0, 0x1234), "reference .* needs 1 ≤ offset < 65536"),
        (FrameReference(65536, 0x1234), "reference .* needs 1 ≤ offset < 65536"),
        (FrameReference(-1, 0x1234), "reference .* needs 1 ≤ offset"),
        (FrameReference(1, 2**32), "and a CRC-32"),
        (FrameReference(1, -1), "and a CRC-32"),
        (FrameReference(256, 0x1234), "references at most 255 frames back"),
    ],
)
def test_bad_references_are_not_written(reference: FrameReference, message: str) -> None:
    with pytest.raises(BitstreamError, match=message):
        make(reference=reference).to_bytes()


def test_a_reference_crc_on_a_keyframe_is_refused_by_name() -> None:
    body = bytearray(replace(make(), version=4).to_bytes()[:-4])
    struct.pack_into("<HI", body, 34, 0, 0xBADC0DE)
    with pytest.raises(
        BitstreamError, match="ref_crc 0badc0de set on a keyframe \\(ref_offset 0\\)"
    ):
        FrameBitstream.from_bytes(recrc(bytes(body) + bytes(4)))
    # A P-frame may reference a frame whose symbols have CRC 0.
    struct.pack_into("<HI", body, 34, 1, 0)
    parsed = FrameBitstream.from_bytes(recrc(bytes(body) + bytes(4)))
    assert parsed.reference == FrameReference(1, 0) and not parsed.is_keyframe


def older_layout(frame: FrameBitstream, version: int) -> bytes:
    """Version 2 (symbol CRC, no reference, 38 bytes of framing) or version 1 (no symbol
    CRC either, 34 bytes), byte for byte."""
    fields = [len(frame.payload), frame.symbol_crc][:version]
    header = struct.pack(
        "<4sBBBB8sHHHHH" + "I" * version, b"FCHM", version, frame.codec_id, frame.rate_level,
        0, frame.bundle_tag, *frame.image_size, *frame.latent_shape, *fields,
    )  # fmt: skip
    body = header + frame.payload
    return body + struct.pack("<I", zlib.crc32(body))


def version_2(frame: FrameBitstream) -> bytes:
    return older_layout(frame, 2)


def test_version_2_bitstreams_still_parse_as_keyframes() -> None:
    data = version_2(make())
    assert len(data) == 38 + 4
    old = FrameBitstream.from_bytes(data)
    assert (old.version, old.symbol_crc, old.reference, old.is_keyframe) == (
        2, 0xDEADBEEF, None, True,
    )  # fmt: skip
    assert old.version in CHECKED_VERSIONS
    assert old.payload == make().payload and old.latent_shape == make().latent_shape
    assert old.image_size == make().image_size and old.bundle_tag == make().bundle_tag
    # Re-written, it becomes the current version with the same fields.
    again = FrameBitstream.from_bytes(old.to_bytes())
    assert again.version == VERSION and again == make()
    with pytest.raises(BitstreamError, match="shorter than the 38-byte framing of version 2"):
        FrameBitstream.from_bytes(data[:37])
    with pytest.raises(BitstreamError, match="payload length field"):
        FrameBitstream.from_bytes(data[:-1])
    with pytest.raises(BitstreamError, match="checksum mismatch"):
        FrameBitstream.from_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])


def version_1(frame: FrameBitstream) -> bytes:
    return older_layout(frame, 1)


def test_version_1_bitstreams_still_parse_without_a_symbol_check() -> None:
    old = FrameBitstream.from_bytes(version_1(make()))
    assert (old.version, old.symbol_crc, old.reference) == (1, None, None)
    assert old.version not in CHECKED_VERSIONS
    assert old.payload == make().payload and old.latent_shape == make().latent_shape


def test_symbol_crc_is_of_little_endian_int32() -> None:
    q = np.arange(-6, 6, dtype=np.int64).reshape(2, 2, 3)
    assert symbol_crc(q) == zlib.crc32(q.astype("<i4").tobytes())
    assert symbol_crc(q.astype(">i4")) == symbol_crc(q)


def tiny_codec() -> UniformFeatureCodec:
    freqs = np.full((2, 3, 4), 1 << 14, dtype=np.uint32)  # radius 1: -1, 0, 1, escape
    return UniformFeatureCodec(
        mean=np.zeros(3, np.float32),
        scale=np.ones(3, np.float32),
        steps=np.array([1.0, 0.5], np.float32),
        tables=EntropyTables(freqs, radius=1),
    )


def test_decompress_refuses_a_payload_that_decodes_to_other_symbols() -> None:
    codec = tiny_codec()
    features = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    encoded = codec.compress(features, 1)
    assert encoded.symbol_crc == symbol_crc(codec.quantize(features, 1))
    np.testing.assert_array_equal(
        codec.decompress(encoded), codec.dequantize(codec.quantize(features, 1), 1)
    )
    # Same payload, other symbols: what a corrupted payload that still decodes looks like.
    other = codec.compress(features + 3.0, 1)
    forged = EncodedFeatures(1, encoded.latent_shape, other.payload, encoded.symbol_crc)
    with pytest.raises(EntropyCodingError, match="does not decode to the symbols it was coded"):
        codec.decompress(forged)
    # Without a check (a version-1 bitstream) the decoder cannot tell.
    unchecked = EncodedFeatures(1, encoded.latent_shape, other.payload, None)
    assert codec.decompress(unchecked).shape == features.shape
