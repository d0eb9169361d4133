"""Encode with ONNX Runtime on the edge path, decode on the cloud path: the quantized
symbols the cloud recovers are exactly the ones the edge coded, frame after frame,
keyframes and P-frames alike."""

import struct
import time
import zlib
from dataclasses import dataclass, replace

import numpy as np
import pytest

from cloud.frame_decoder import FrameDecoder, InvalidFrame, MissingReference, ReferenceFrame
from codec.bitstream import P_FORMATS, VERSION, FrameBitstream, FrameReference
from codec.bundle import Bundle
from codec.entropy_tables import symbol_crc
from codec.feature_codec import DEFAULT_SKIP_THRESHOLD, EncodedFeatures, UniformFeatureCodec
from codec.inter_frames import LatentSymbols, encode_cells, encode_residual, skip_map
from edge.frame_encoder import FrameEncoder
from edge.sources import open_source
from tests.conftest import sample_images


def frames_of_a_real_video(n: int, fps: float = 5.0):  # type: ignore[no-untyped-def]
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("iscc_samples")
    assert spec is not None and spec.origin is not None
    video = Path(spec.origin).parent / "files" / "video" / "demo.mp4"
    return open_source(str(video), max_fps=fps, max_frames=n)


def test_edge_encode_cloud_decode_is_bit_exact(tiny_bundle: Bundle) -> None:
    encoder = FrameEncoder(tiny_bundle)
    decoder = FrameDecoder(tiny_bundle)
    codec = decoder.codec
    assert isinstance(codec, UniformFeatureCodec)
    mismatches = 0
    for i, frame in enumerate(frames_of_a_real_video(60)):
        level = i % codec.num_levels
        encoded = encoder.encode(frame, level)
        # What the edge quantized, recomputed from the same ORT features:
        from edge.preprocess import letterbox

        info = tiny_bundle.manifest.detector
        image, _ = letterbox(frame.image, info.input_size, info.pad_multiple)
        sent = codec.quantize(encoder.backend(image), level)
        decoded = decoder.decode(encoded.bitstream)
        received = codec.tables.decode(
            decoded.bitstream.payload, level, decoded.bitstream.latent_shape
        )
        mismatches += int(np.count_nonzero(sent != received))
        np.testing.assert_array_equal(decoded.features, codec.dequantize(received, level))
    assert mismatches == 0


def test_more_levels_cost_more_bytes(tiny_bundle: Bundle) -> None:
    import cv2

    from edge.sources import CapturedFrame

    encoder = FrameEncoder(tiny_bundle)
    frame = CapturedFrame(0, 0, cv2.imread(str(sample_images()[0])))
    sizes = [len(encoder.encode(frame, level).bitstream) for level in range(encoder.num_levels)]
    assert sizes == sorted(sizes)
    assert sizes[-1] > 2 * sizes[0]


KEYFRAME_EVERY = 25
FORMAT_VERSIONS = {p_format: version for version, p_format in P_FORMATS.items()}


def container(bundle: Bundle, codec_id: int, image_size, encoded: EncodedFeatures) -> bytes:  # type: ignore[no-untyped-def]
    """What the edge sends: the codec's output in a version-5 container, or the version
    that holds an older P-frame format (3: format 1, 4: format 2); the P-frame's reference
    is the camera's previous frame."""
    ref = encoded.reference_crc
    return FrameBitstream(
        version=VERSION if ref is None else FORMAT_VERSIONS[encoded.p_format],
        codec_id=codec_id,
        rate_level=encoded.rate_level,
        bundle_tag=bundle.tag,
        image_size=image_size,
        latent_shape=encoded.latent_shape,
        payload=encoded.payload,
        symbol_crc=encoded.symbol_crc,
        reference=None if ref is None else FrameReference(1, ref),
    ).to_bytes()


def test_p_frames_edge_to_cloud_are_bit_exact_over_1000_frames(tiny_bundle: Bundle) -> None:
    """1,000 frames: 200 real video frames, cycled five times with small perturbations
    (sensor noise, a brightness step), a keyframe every 25 frames, the level wandering.
    The edge codes against its own copy of the last decoded latent, the cloud decodes
    against the previous DecodedFrame's symbols: not one symbol differs."""
    from edge.preprocess import letterbox

    encoder = FrameEncoder(tiny_bundle)
    decoder = FrameDecoder(tiny_bundle)
    edge_codec, info = encoder.codec, tiny_bundle.manifest.detector
    assert isinstance(edge_codec, UniformFeatureCodec)
    assert edge_codec is not decoder.codec, "each end loads its own codec"
    assert edge_codec.supports_inter and decoder.codec.supports_inter
    video = [f.image for f in frames_of_a_real_video(200, fps=12.0)]
    assert len(video) == 200
    rng = np.random.default_rng(0)
    levels = edge_codec.num_levels
    level = levels // 2
    edge_ref: LatentSymbols | None = None
    cloud_ref: ReferenceFrame | None = None
    mismatches = p_frames = level_changes_in_p = 0
    sizes: dict[bool, list[int]] = {True: [], False: []}
    t0 = time.perf_counter()
    for i in range(1000):
        cycle = i // len(video)
        image = video[i % len(video)].astype(np.int16)
        if cycle:
            image = image + rng.normal(0, cycle, image.shape).round().astype(np.int16) + 2 * cycle
        image = np.clip(image, 0, 255).astype(np.uint8)
        if i % 7 == 0:
            level = int(np.clip(level + rng.choice([-2, -1, 1, 2]), 0, levels - 1))
        net_input, geometry = letterbox(image, info.input_size, info.pad_multiple)
        features = encoder.backend(net_input)
        reference = None if i % KEYFRAME_EVERY == 0 else edge_ref
        encoded = edge_codec.compress(features, level, reference=reference)
        assert encoded.symbols is not None
        is_p = encoded.reference_crc is not None
        # Keyframes on schedule; between them a P-frame, or a keyframe where that is
        # smaller (compress falls back when most cells changed).
        assert not (is_p and i % KEYFRAME_EVERY == 0), f"frame {i}"
        if not is_p:  # a keyframe carries exactly what the edge quantized
            np.testing.assert_array_equal(encoded.symbols.q, edge_codec.quantize(features, level))
        data = container(tiny_bundle, edge_codec.codec_id, geometry.image_size, encoded)

        decoded = decoder.decode(data, reference=cloud_ref)
        assert decoded.bitstream.is_keyframe == (not is_p)
        mismatches += int(np.count_nonzero(decoded.symbols.q != encoded.symbols.q))
        assert decoded.symbols.crc == encoded.symbols.crc, f"frame {i}"
        if is_p:  # the flags' temporal context of the next P-frame, at both ends
            assert np.array_equal(decoded.symbols.replenished, encoded.symbols.replenished)  # type: ignore[arg-type]
        np.testing.assert_array_equal(
            decoded.features, decoder.codec.dequantize(encoded.symbols.q, level)
        )
        p_frames += is_p
        level_changes_in_p += is_p and edge_ref is not None and edge_ref.rate_level != level
        sizes[is_p].append(len(data))
        edge_ref, cloud_ref = encoded.symbols, decoded.as_reference
    elapsed = time.perf_counter() - t0
    print(
        f"1000 frames in {elapsed:.1f} s: {p_frames} P-frames of {np.mean(sizes[True]):.0f} B, "
        f"{1000 - p_frames} keyframes of {np.mean(sizes[False]):.0f} B"
    )
    assert mismatches == 0
    assert p_frames >= 600, f"only {p_frames} P-frames"
    assert level_changes_in_p >= 50, "P-frames predicted across levels are exercised"
    assert np.mean(sizes[True]) < 0.8 * np.mean(sizes[False])


def test_the_cloud_refuses_a_p_frame_without_its_reference(tiny_bundle: Bundle) -> None:
    from edge.preprocess import letterbox

    encoder = FrameEncoder(tiny_bundle)
    decoder = FrameDecoder(tiny_bundle)
    info = tiny_bundle.manifest.detector
    images = [f.image for f in frames_of_a_real_video(3)]
    coded = []
    reference = None
    for image in images:
        net_input, geometry = letterbox(image, info.input_size, info.pad_multiple)
        encoded = encoder.codec.compress(encoder.backend(net_input), 2, reference=reference)
        coded.append(container(tiny_bundle, encoder.codec.codec_id, geometry.image_size, encoded))
        reference = encoded.symbols
    key = decoder.decode(coded[0])
    first = decoder.decode(coded[1], reference=key.as_reference)
    assert first.bitstream.reference == FrameReference(1, key.symbols.crc)
    with pytest.raises(MissingReference, match=f"symbol CRC {key.symbols.crc:08x}.*holds none"):
        decoder.decode(coded[1])
    # The frame before last instead of the last: refused, both CRCs named.
    with pytest.raises(
        MissingReference,
        match=f"{first.symbols.crc:08x}; the cloud holds symbol CRC {key.symbols.crc:08x}",
    ):
        decoder.decode(coded[2], reference=key.as_reference)
    assert decoder.decode(coded[2], reference=first.as_reference).bitstream.reference is not None


def test_a_version_2_keyframe_is_still_accepted_at_ingest(tiny_bundle: Bundle) -> None:
    """An edge agent from before P-frames sends version 2: a keyframe with the symbol CRC."""
    encoder = FrameEncoder(tiny_bundle)
    decoder = FrameDecoder(tiny_bundle)
    frame = next(iter(frames_of_a_real_video(1)))
    current = encoder.encode(frame, 3).bitstream
    k = FrameBitstream.from_bytes(current)
    assert k.version == 5 and k.is_keyframe
    body = struct.pack(
        "<4sBBBB8sHHHHHII", b"FCHM", 2, k.codec_id, k.rate_level, 0, k.bundle_tag,
        *k.image_size, *k.latent_shape, len(k.payload), k.symbol_crc,
    ) + k.payload  # fmt: skip
    v2 = body + struct.pack("<I", zlib.crc32(body))
    old = decoder.decode(v2)  # not stored: the ingest path
    assert old.bitstream.version == 2
    np.testing.assert_array_equal(old.symbols.q, decoder.decode(current).symbols.q)


@dataclass(frozen=True)
class OlderPFrame:
    """A real P-frame coded in an older payload format, framed as an older edge framed it."""

    decoder: FrameDecoder
    data: bytes
    payload: bytes
    expected: np.ndarray
    reference: ReferenceFrame
    """its keyframe as the cloud decoded it"""


def older_p_frame(bundle: Bundle, p_format: int) -> OlderPFrame:
    from edge.preprocess import letterbox

    encoder = FrameEncoder(bundle)
    decoder = FrameDecoder(bundle)
    codec = encoder.codec
    assert isinstance(codec, UniformFeatureCodec) and codec.inter is not None
    info = bundle.manifest.detector
    (x0, geometry), (x1, _) = (
        letterbox(f.image, info.input_size, info.pad_multiple) for f in frames_of_a_real_video(2)
    )
    key = codec.compress(encoder.backend(x0), 2)
    assert key.symbols is not None
    prediction = codec.predict(key.symbols, 2)
    q = codec.quantize(encoder.backend(x1), 2)
    skip = skip_map(q.astype(np.int64) - prediction, DEFAULT_SKIP_THRESHOLD)
    assert skip.any() and not skip.all()
    if p_format == 1:
        payload, coded = encode_residual(codec.inter, 2, q - prediction, skip)
        expected = prediction + coded
    else:
        payload, expected = encode_cells(codec.inter, codec.tables, 2, prediction, q, skip,
                                         p_format=p_format)  # fmt: skip
    old = EncodedFeatures(
        2, key.latent_shape, payload, symbol_crc(expected), key.symbols.crc, p_format=p_format
    )
    reference = decoder.decode(
        container(bundle, codec.codec_id, geometry.image_size, key)
    ).as_reference
    data = container(bundle, codec.codec_id, geometry.image_size, old)
    return OlderPFrame(decoder, data, payload, expected, reference)


@pytest.mark.parametrize(("p_format", "version"), [(1, 3), (2, 4)])
def test_an_older_p_frame_in_its_own_container_version_still_decodes(
    tiny_bundle: Bundle, p_format: int, version: int
) -> None:
    """What an edge agent from before each format sends, or the store holds from then: a
    version-3 P-frame whose payload is residuals only, a version-4 one with every field in
    its 44-B container and its flag probabilities in the payload (codec/inter_frames.py)."""
    old = older_p_frame(tiny_bundle, p_format)
    if version == 4:
        assert len(old.data) == len(old.payload) + 44
    got = old.decoder.decode(old.data, reference=old.reference)
    assert got.bitstream.version == version and got.bitstream.p_format == p_format
    np.testing.assert_array_equal(got.symbols.q, old.expected)
    stored = old.decoder.decode(old.data, stored=True, reference=old.reference)
    assert stored.symbols.crc == got.symbols.crc


def test_a_format_1_payload_relabelled_as_version_4_is_refused_by_name(
    tiny_bundle: Bundle,
) -> None:
    """Read as format 2 it does not parse: refused, not misread."""
    old = older_p_frame(tiny_bundle, 1)
    frame = FrameBitstream.from_bytes(old.data)
    relabelled = replace(frame, version=4).to_bytes()
    with pytest.raises(InvalidFrame, match="11-byte header"):
        old.decoder.decode(relabelled, reference=old.reference)
