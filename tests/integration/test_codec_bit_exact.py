"""Encode with ONNX Runtime on the edge path, decode on the cloud path: the quantized
symbols the cloud recovers are exactly the ones the edge coded, frame after frame."""

import numpy as np

from cloud.frame_decoder import FrameDecoder
from codec.bundle import Bundle
from codec.feature_codec import UniformFeatureCodec
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
