import pytest

from codec.bitstream import OVERHEAD_BYTES, BitstreamError, FrameBitstream


def make(payload: bytes = b"\x01\x02\x03\x04") -> FrameBitstream:
    return FrameBitstream(
        codec_id=0,
        rate_level=3,
        bundle_tag=bytes(range(8)),
        image_size=(1920, 1080),
        latent_shape=(128, 48, 80),
        payload=payload,
    )


def test_round_trip_keeps_every_field() -> None:
    frame = make()
    data = frame.to_bytes()
    assert len(data) == OVERHEAD_BYTES + 4
    assert FrameBitstream.from_bytes(data) == frame


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"JPEG" + d[4:], "bad magic"),
        (lambda d: d[:4] + b"\x09" + d[5:], "unsupported container version 9"),
        (lambda d: d[:-1], "payload length field"),
        (lambda d: d[:-6] + bytes([d[-6] ^ 0xFF]) + d[-5:], "checksum mismatch"),
        (lambda d: d[:10], "shorter than"),
    ],
)
def test_malformed_bitstreams_name_the_problem(mutate, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BitstreamError, match=message):
        FrameBitstream.from_bytes(mutate(make().to_bytes()))


def test_bundle_tag_must_be_eight_bytes() -> None:
    frame = FrameBitstream(0, 0, b"short", (1, 1), (1, 1, 1), b"")
    with pytest.raises(BitstreamError, match="bundle_tag"):
        frame.to_bytes()
