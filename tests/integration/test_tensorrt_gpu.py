"""TensorRT on a real GPU: build an engine from a real bundle, cache it, match ONNX Runtime.

Opt in with ``pytest -m gpu``; skipped where TensorRT (or a CUDA binding) is missing.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from codec.bundle import Bundle
from edge.encoder_backends import BackendUnavailable, open_backend
from edge.preprocess import letterbox
from edge.tensorrt_engines import TensorRTEncoder, engine_paths
from tests.conftest import sample_images

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        importlib.util.find_spec("tensorrt") is None,
        reason="TensorRT is not installed (the 'gpu' extra)",
    ),
]


def open_tensorrt(bundle: Bundle, cache: Path) -> TensorRTEncoder:
    try:
        backend = open_backend(
            "tensorrt", bundle.file("encoder"), engine_cache=cache, bundle_hash=bundle.hash
        )
    except BackendUnavailable as exc:  # TensorRT without cuda-python/pycuda
        pytest.skip(str(exc))
    assert isinstance(backend, TensorRTEncoder)
    return backend


def test_engine_matches_onnxruntime_and_is_built_once(tiny_bundle: Bundle, tmp_path: Path) -> None:
    image, _ = letterbox(cv2.imread(str(sample_images()[0])), 320, 32)
    reference = open_backend("onnxruntime-cpu", tiny_bundle.file("encoder"))(image)

    first = open_tensorrt(tiny_bundle, tmp_path)
    features = first(image)
    assert first.engines_built == 1
    assert features.shape == reference.shape and features.dtype == np.float32
    # TF32 convolutions on Ampere and later: close, not bit-identical (the edge
    # quantizes these features; the cloud's decoding stays bit-exact either way).
    assert np.abs(features - reference).max() <= 2e-2 * max(1.0, float(np.abs(reference).max()))

    # A second agent on this GPU loads the cached engine.
    second = open_tensorrt(tiny_bundle, tmp_path)
    np.testing.assert_allclose(second(image), features, rtol=1e-5, atol=1e-5)
    assert second.engines_built == 0

    # A sidecar that says "another GPU" makes the next agent rebuild.
    key = first.engine_key((image.shape[2], image.shape[3]))
    _, sidecar = engine_paths(tmp_path, key)
    meta = json.loads(sidecar.read_text())
    meta["key"]["gpu_name"] = "some other GPU"
    sidecar.write_text(json.dumps(meta))
    third = open_tensorrt(tiny_bundle, tmp_path)
    third(image)
    assert third.engines_built == 1
    for backend in (first, second, third):
        backend.close()
