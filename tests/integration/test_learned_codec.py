"""The learned codec end to end on tiny real parts: train → checkpoint → resume →
export → ONNX Runtime encode on the edge path → cloud decode, bit-exact."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from cloud.detector_tail import DetectorTail
from cloud.frame_decoder import FrameDecoder
from codec.bundle import Bundle
from codec.feature_codec import GainedFeatureCodec
from edge.frame_encoder import FrameEncoder
from edge.preprocess import letterbox
from model.learned_export import LearnedExportConfig, export_learned_bundle
from model.train import load_checkpoint
from tests.conftest import sample_images, train_tiny_bottleneck
from tests.integration.test_codec_bit_exact import frames_of_a_real_video


def test_training_is_seeded_checkpointed_and_resumable(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    a = train_tiny_bottleneck(tiny_checkpoint, tmp_path / "a.pt", steps=2)
    b = train_tiny_bottleneck(tiny_checkpoint, tmp_path / "b.pt", steps=2)
    sa, sb = load_checkpoint(a.checkpoint), load_checkpoint(b.checkpoint)
    assert sa["step"] == 2 and all(np.isfinite(v) for v in a.last.values())
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), f"{key} differs between seeded runs"
    resumed = train_tiny_bottleneck(tiny_checkpoint, tmp_path / "a.pt", steps=3, resume=True)
    assert resumed.steps == 3 and load_checkpoint(a.checkpoint)["step"] == 3
    with pytest.raises(ValueError, match="crop must be a multiple of 32"):
        train_tiny_bottleneck(tiny_checkpoint, tmp_path / "c.pt", crop=50)


def test_distilled_training_moves_gains_and_transforms(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """--learn-gains --nonlinear: the teacher/student distillation path trains what the
    default (entropy model only) leaves frozen."""
    frozen = train_tiny_bottleneck(tiny_checkpoint, tmp_path / "f.pt", steps=2)
    taught = train_tiny_bottleneck(
        tiny_checkpoint, tmp_path / "t.pt", steps=2, learn_gains=True, nonlinear=True
    )
    assert set(frozen.last) == {"loss", "bpp"}
    assert {"feature", "neck", "detection"} <= set(taught.last)
    assert all(np.isfinite(v) for v in taught.last.values())
    state = load_checkpoint(taught.checkpoint)["model"]
    start = load_checkpoint(frozen.checkpoint)["model"]  # same seed: same PCA start
    for key in ("log_gains", "analysis.project.weight", "synthesis.unproject.weight"):
        assert not torch.equal(state[key], start[key]), f"{key} did not train"


def test_learned_bundle_layout(tiny_learned_bundle: Bundle) -> None:
    m = tiny_learned_bundle.manifest
    assert m.codec == "learned" and m.num_levels == 19  # 10 anchors + 9 interpolated
    assert set(m.files) == {"encoder", "tail", "codec", "preview"}  # no plain detector
    tail = onnx.load(str(tiny_learned_bundle.file("tail"))).graph
    assert any(i.data_type == onnx.TensorProto.INT8 for i in tail.initializer), "int8 weights"
    assert m.detector.stride == 16 and m.detector.channels == 128  # the latent, 2x2 patches
    codec = tiny_learned_bundle.load_codec()
    assert isinstance(codec, GainedFeatureCodec)
    expected = [codec.expected_bytes(lv, (128, 20, 20)) for lv in range(codec.num_levels)]
    assert expected == sorted(expected), "finer levels cost more"


def test_export_refuses_a_checkpoint_of_other_weights(
    tiny_learned_bundle: Bundle, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from tests.conftest import build_tiny_checkpoint

    other = build_tiny_checkpoint(tmp_path / "other.pt", class_bias=-2.0)
    checkpoint = tmp_path / "c.pt"
    train_tiny_bottleneck(tiny_checkpoint, checkpoint, steps=1)
    with pytest.raises(ValueError, match="other detector weights"):
        export_learned_bundle(LearnedExportConfig(checkpoint, other, tmp_path / "out"))


def test_ort_encode_cloud_decode_bit_exact_on_1000_frames(tiny_learned_bundle: Bundle) -> None:
    encoder = FrameEncoder(tiny_learned_bundle)
    decoder = FrameDecoder(tiny_learned_bundle)
    tail = DetectorTail(tiny_learned_bundle, threads=1)
    codec = decoder.codec
    assert isinstance(codec, GainedFeatureCodec)
    info = tiny_learned_bundle.manifest.detector
    frames = mismatches = 0
    for i, frame in enumerate(frames_of_a_real_video(1000, fps=1000.0)):
        level = i % codec.num_levels
        encoded = encoder.encode(frame, level)
        image, _ = letterbox(frame.image, info.input_size, info.pad_multiple)
        sent = codec.quantize(encoder.backend(image), level)  # what the edge coded
        decoded = decoder.decode(encoded.bitstream)
        received = codec.tables.decode(
            decoded.bitstream.payload, level, decoded.bitstream.latent_shape
        )
        mismatches += int(np.count_nonzero(sent != received))
        np.testing.assert_array_equal(decoded.features, codec.dequantize(received, level))
        if i % 100 == 0:  # the cloud's tail (synthesis + detector) runs on what it decoded
            (pred,) = tail.session.run(None, {"features": decoded.features[None]})
            w, h = decoded.geometry.input_size
            anchors = sum((w // s) * (h // s) for s in (8, 16, 32))
            assert pred.shape == (1, 4 + len(tiny_learned_bundle.class_names), anchors)
            assert np.isfinite(pred).all()
        frames += 1
    assert frames == 1000
    assert mismatches == 0


def test_preview_runs_on_the_decoded_latent(tiny_learned_bundle: Bundle) -> None:
    import cv2

    from cloud.restorers import RESTORERS

    decoder = FrameDecoder(tiny_learned_bundle)
    encoder = FrameEncoder(tiny_learned_bundle)
    from edge.sources import CapturedFrame

    original = cv2.imread(str(sample_images()[0]))
    decoded = decoder.decode(encoder.encode(CapturedFrame(0, 0, original), 7).bitstream)
    image = RESTORERS["preview"](tiny_learned_bundle)(decoded, decoded.geometry.image_size)
    assert image.shape == original.shape and image.dtype == np.uint8


def test_plain_reference_detector_is_rebuilt_from_the_pinned_weights(
    tiny_learned_bundle: Bundle, tiny_bundle: Bundle, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The learned bundle does not carry the plain detector; evaluation exports it from
    the weights whose sha256 the manifest pins, and refuses other weights."""
    from cloud.onnx_sessions import open_session
    from codec.bundle import file_sha256
    from model.detector_split import load_detector
    from model.reference_detector import reference_detector
    from tests.conftest import build_tiny_checkpoint

    assert tiny_learned_bundle.manifest.detector.weights_sha256 == file_sha256(tiny_checkpoint)
    assert reference_detector(tiny_bundle, tiny_checkpoint, tmp_path) is None  # encoder→tail
    path = reference_detector(tiny_learned_bundle, tiny_checkpoint, tmp_path / "cache")
    assert path is not None and path.parent == tmp_path / "cache"
    x = letterbox(sample_images_array(), 320, 32)[0]
    (got,) = open_session(path).run(None, {"image": x})
    with torch.no_grad():
        want = load_detector(tiny_checkpoint)(torch.from_numpy(x))[0].numpy()
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-3, rtol=1e-3)
    stamp = path.stat().st_mtime_ns
    assert reference_detector(tiny_learned_bundle, tiny_checkpoint, tmp_path / "cache") == path
    assert path.stat().st_mtime_ns == stamp, "the cached export is reused"
    other = build_tiny_checkpoint(tmp_path / "other.pt", class_bias=-2.0)
    with pytest.raises(ValueError, match="--weights: .* is not the checkpoint"):
        reference_detector(tiny_learned_bundle, other, tmp_path / "cache")


def sample_images_array() -> np.ndarray:
    import cv2

    from tests.conftest import sample_images

    image = cv2.imread(str(sample_images()[0]))
    assert image is not None
    return image
