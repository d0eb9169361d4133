"""Encoder backends: run encoder.onnx (detector layers 0..split) on one frame.

    (1,3,H,W) float32 ─► BACKENDS[name] ─► split features (C,h,w) float32
                          onnxruntime-cpu   ONNX Runtime, CPU threads
                          onnxruntime-cuda  ONNX Runtime, CUDA provider ('gpu' extra)
                          tensorrt          TensorRT engine per GPU/version/shape/bundle,
                                            cached on disk (edge/tensorrt_engines.py)

BACKENDS is the explicit registry. Optional backends import their packages only
when opened, and fail with a message naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge.backend_errors import BackendUnavailable

DEFAULT_ENGINE_CACHE = Path("var/edge/engines")


class EncoderBackend(Protocol):
    name: str

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(1,3,H,W) float32 in [0,1] → split features (C,h,w) float32."""
        ...


@dataclass(frozen=True)
class BackendOptions:
    threads: int = 0
    """ONNX Runtime intra-op threads (0: ONNX Runtime decides)"""
    engine_cache: Path = DEFAULT_ENGINE_CACHE
    """where TensorRT engines are cached"""
    bundle_hash: str | None = None
    """the bundle's hash, part of a TensorRT engine's cache key (None: hash the ONNX file)"""


class OnnxRuntimeEncoder:
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    name = "onnxruntime-cpu"

    def __init__(self, model: Path, threads: int = 0, spinning: bool = False) -> None:
        import onnxruntime as ort

        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailable(
                f"backend {self.name} needs {missing}; install the 'gpu' extra (onnxruntime-gpu)"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        # ONNX Runtime's workers spin after each run by default. On a 2-core camera box
        # they then steal the cores that stream decoding, entropy coding and the uplink
        # need. bench/edge_throughput.py, 2 threads: spinning wins by 6 % on an idle
        # machine (19.8 vs 18.6 fps) and loses by 27 % with one core decoding (7.4 vs 10.2).
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if spinning else "0"
        )
        self.session = ort.InferenceSession(str(model), options, providers=list(self.providers))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        (features,) = self.session.run(None, {"image": image})
        return np.asarray(features[0], dtype=np.float32)


class OnnxRuntimeCudaEncoder(OnnxRuntimeEncoder):
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
    name = "onnxruntime-cuda"


def _onnxruntime_cpu(model: Path, options: BackendOptions) -> EncoderBackend:
    return OnnxRuntimeEncoder(model, options.threads)


def _onnxruntime_cuda(model: Path, options: BackendOptions) -> EncoderBackend:
    return OnnxRuntimeCudaEncoder(model, options.threads)


def _tensorrt(model: Path, options: BackendOptions) -> EncoderBackend:
    # Imported here: the module is light, but it is the TensorRT path, and the
    # registry should not pay for it on a CPU-only camera.
    from edge.tensorrt_engines import TensorRTEncoder

    return TensorRTEncoder(model, options.engine_cache, options.bundle_hash)


BackendFactory = Callable[[Path, BackendOptions], EncoderBackend]

BACKENDS: dict[str, BackendFactory] = {
    OnnxRuntimeEncoder.name: _onnxruntime_cpu,
    OnnxRuntimeCudaEncoder.name: _onnxruntime_cuda,
    "tensorrt": _tensorrt,
}


def open_backend(
    name: str,
    model: Path,
    threads: int = 0,
    *,
    engine_cache: Path | None = None,
    bundle_hash: str | None = None,
) -> EncoderBackend:
    """Open backend ``name`` on ``model`` (encoder.onnx); BackendUnavailable if it cannot run."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"backend: unknown encoder backend {name!r}, known: {sorted(BACKENDS)}"
        ) from None
    options = BackendOptions(threads, engine_cache or DEFAULT_ENGINE_CACHE, bundle_hash)
    return factory(model, options)
