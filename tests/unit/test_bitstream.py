import struct
import zlib

import numpy as np
import pytest

from codec.bitstream import OVERHEAD_BYTES, VERSION, BitstreamError, FrameBitstream
from codec.entropy_tables import EntropyCodingError, EntropyTables, symbol_crc
from codec.feature_codec import EncodedFeatures, UniformFeatureCodec


def recrc(data: bytes) -> bytes:
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def make(payload: bytes = b"\x01\x02\x03\x04") -> FrameBitstream:
    return FrameBitstream(
        codec_id=0,
        rate_level=3,
        bundle_tag=bytes(range(8)),
        image_size=(1920, 1080),
        latent_shape=(128, 48, 80),
        payload=payload,
        symbol_crc=0xDEADBEEF,
    )


def test_round_trip_keeps_every_field() -> None:
    frame = make()
    data = frame.to_bytes()
    assert len(data) == OVERHEAD_BYTES + 4 == 42
    assert FrameBitstream.from_bytes(data) == frame
    assert frame.version == VERSION == 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"JPEG" + d[4:], "bad magic"),
        (lambda d: d[:4] + b"\x09" + d[5:], "unsupported container version 9"),
        (lambda d: d[:-1], "payload length field"),
        (lambda d: d[:-6] + bytes([d[-6] ^ 0xFF]) + d[-5:], "checksum mismatch"),
        (lambda d: d[:10], "shorter than the 38-byte framing"),
        (lambda d: d[:3], "too short"),
        (lambda d: recrc(d[:7] + b"\x04" + d[8:]), "flags 0x04 set"),
    ],
)
def test_malformed_bitstreams_name_the_problem(mutate, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BitstreamError, match=message):
        FrameBitstream.from_bytes(mutate(make().to_bytes()))


def test_bundle_tag_must_be_eight_bytes() -> None:
    frame = FrameBitstream(0, 0, b"short", (1, 1), (1, 1, 1), b"", 0)
    with pytest.raises(BitstreamError, match="bundle_tag"):
        frame.to_bytes()


def test_only_the_current_version_is_written() -> None:
    with pytest.raises(BitstreamError, match="symbol_crc must be"):
        FrameBitstream(0, 0, bytes(8), (1, 1), (1, 1, 1), b"", None).to_bytes()


def version_1(frame: FrameBitstream) -> bytes:
    """The version-1 layout byte for byte: no symbol CRC, 34 bytes of framing."""
    header = struct.pack(
        "<4sBBBB8sHHHHHI", b"FCHM", 1, frame.codec_id, frame.rate_level, 0, frame.bundle_tag,
        *frame.image_size, *frame.latent_shape, len(frame.payload),
    )  # fmt: skip
    body = header + frame.payload
    return body + struct.pack("<I", zlib.crc32(body))


def test_version_1_bitstreams_still_parse_without_a_symbol_check() -> None:
    old = FrameBitstream.from_bytes(version_1(make()))
    assert (old.version, old.symbol_crc) == (1, None)
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
