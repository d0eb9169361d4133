"""Encoder backends: run encoder.onnx (detector layers 0..split) on one frame.

BACKENDS is the explicit registry. TensorRT arrives as another entry; optional
backends fail with a message saying which extra to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class EncoderBackend(Protocol):
    name: str

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(1,3,H,W) float32 in [0,1] → split features (C,h,w) float32."""
        ...


class OnnxRuntimeEncoder:
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    name = "onnxruntime-cpu"

    def __init__(self, model: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            raise RuntimeError(
                f"backend {self.name} needs {missing}; install the 'gpu' extra (onnxruntime-gpu)"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(model), options, providers=list(self.providers))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        (features,) = self.session.run(None, {"image": image})
        return np.asarray(features[0], dtype=np.float32)


class OnnxRuntimeCudaEncoder(OnnxRuntimeEncoder):
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
    name = "onnxruntime-cuda"


BACKENDS: dict[str, type[OnnxRuntimeEncoder]] = {
    OnnxRuntimeEncoder.name: OnnxRuntimeEncoder,
    OnnxRuntimeCudaEncoder.name: OnnxRuntimeCudaEncoder,
}


def open_backend(name: str, model: Path, threads: int = 0) -> EncoderBackend:
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"backend: unknown encoder backend {name!r}, known: {sorted(BACKENDS)}"
        ) from None
    return cls(model, threads)
