"""The exported halves reproduce the detector; the bundle guards its own integrity."""

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from codec.bundle import Bundle, BundleError
from edge.preprocess import letterbox
from model.detector_split import load_detector, valid_split_layers
from tests.conftest import sample_images


def test_split_halves_in_onnx_runtime_match_the_whole_torch_model(
    tiny_bundle: Bundle, tiny_checkpoint: Path
) -> None:
    import torch

    detector = load_detector(tiny_checkpoint)
    encoder = ort.InferenceSession(str(tiny_bundle.file("encoder")))
    tail = ort.InferenceSession(str(tiny_bundle.file("tail")))
    for path in sample_images():
        x, _ = letterbox(cv2.imread(str(path)), 320, tiny_bundle.manifest.detector.pad_multiple)
        (features,) = encoder.run(None, {"image": x})
        (split,) = tail.run(None, {"features": features})
        with torch.no_grad():
            whole = detector(torch.from_numpy(x))[0].numpy()
        assert split.shape == whole.shape
        np.testing.assert_allclose(split, whole, rtol=1e-3, atol=1e-3)


def test_valid_cuts_of_a_yolov8_are_the_backbone_prefix(tiny_checkpoint: Path) -> None:
    assert valid_split_layers(load_detector(tiny_checkpoint)) == [0, 1, 2, 3, 4]


def test_invalid_split_layer_is_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from model.bundle_export import ExportConfig, export_bundle

    with pytest.raises(ValueError, match=r"split_layer=6 .* valid: \[0, 1, 2, 3, 4\]"):
        export_bundle(
            ExportConfig(weights=tiny_checkpoint, out=tmp_path, split_layer=6, input_size=320,
                         fit_images=sample_images()[:1])
        )  # fmt: skip


def test_manifest_pins_files_and_class_names(tiny_bundle: Bundle, tmp_path: Path) -> None:
    assert tiny_bundle.class_names == ["person", "fall"]
    assert tiny_bundle.manifest.detector.stride == 8
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for f in tiny_bundle.path.iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    (tampered / "codec.npz").write_bytes(b"not the fitted tables")
    with pytest.raises(BundleError, match="codec.npz does not match"):
        Bundle.load(tampered)
    with pytest.raises(BundleError, match="no manifest.json"):
        Bundle.load(tmp_path)
