"""TensorRT encoder backend with an on-disk engine cache that refuses stale engines.

    encoder.onnx ─► build_engine (OnnxParser, one optimization profile at (1,3,H,W))
                      │ once per EngineKey: GPU model + compute capability,
                      │ TensorRT version, input (H, W), bundle hash
                      ▼
    engine_cache/encoder-<bundle>-<H>x<W>-sm<cc>-trt<ver>-<gpu>-<digest>.engine
                 ...same name.json  (sidecar: the key + the engine's sha256)
                      │ stale_reason() is None ─► deserialize ─► execute_async_v3
                      └ anything else (no sidecar, corrupt, another key, altered) ─► rebuild

A serialized engine only runs on the GPU model and TensorRT version it was built
with, and only for the shapes of its profile; loading a foreign one fails at best
and misbehaves at worst. The key is in the file name, so engines for several
GPUs and shapes can share one cache directory, and in the sidecar, which is
checked on every load, so a copied, renamed, truncated or half-written engine is
rebuilt, never loaded.

The key and staleness logic is plain Python (tests/unit/test_tensorrt_engines.py);
TensorRT and CUDA (cuda-python or pycuda) are imported only by TensorRTEncoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from codec.bundle import file_sha256
from edge.backend_errors import BackendUnavailable
from edge.cuda_memory import CudaMemory, open_cuda_memory
from infra.atomic_file import write_atomically

log = logging.getLogger(__name__)

SIDECAR_FORMAT = 1
WORKSPACE_BYTES = 1 << 30  # builder scratch memory; small boxes (Jetson) share it with the OS
INSTALL_HINT = "install the 'gpu' extra (tensorrt, and pycuda or cuda-python)"


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on; any difference means rebuild."""

    gpu_name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str
    input_hw: tuple[int, int]
    bundle_hash: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["compute_capability"] = list(self.compute_capability)
        data["input_hw"] = list(self.input_hw)
        return data

    @classmethod
    def from_json(cls, data: Any) -> EngineKey:
        """Parse a sidecar's key; ValueError if any field is missing or mistyped."""
        if not isinstance(data, dict) or set(data) != {f.name for f in fields(cls)}:
            raise ValueError(f"expected the fields of {cls.__name__}, got {data!r}")
        pairs = {k: data[k] for k in ("compute_capability", "input_hw")}
        for name, pair in pairs.items():
            two_ints = isinstance(pair, list) and len(pair) == 2
            if not (two_ints and all(type(v) is int for v in pair)):
                raise ValueError(f"{name}: expected two integers, got {pair!r}")
        for name in ("gpu_name", "tensorrt_version", "bundle_hash"):
            if not isinstance(data[name], str):
                raise ValueError(f"{name}: expected a string, got {data[name]!r}")
        return cls(
            data["gpu_name"],
            (pairs["compute_capability"][0], pairs["compute_capability"][1]),
            data["tensorrt_version"],
            (pairs["input_hw"][0], pairs["input_hw"][1]),
            data["bundle_hash"],
        )

    def digest(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def file_stem(self) -> str:
        # Readable parts for people listing the cache, the digest for uniqueness
        # (the GPU name is shortened to file-name-safe characters).
        gpu = re.sub(r"[^A-Za-z0-9.]+", "_", self.gpu_name).strip("_")[:40] or "gpu"
        major, minor = self.compute_capability
        h, w = self.input_hw
        return (
            f"encoder-{self.bundle_hash[:12]}-{h}x{w}-sm{major}{minor}"
            f"-trt{self.tensorrt_version}-{gpu}-{self.digest()}"
        )


def engine_paths(cache_dir: Path, key: EngineKey) -> tuple[Path, Path]:
    """(engine file, JSON sidecar) for ``key`` in ``cache_dir``."""
    stem = cache_dir / key.file_stem
    return stem.with_name(stem.name + ".engine"), stem.with_name(stem.name + ".json")


def key_differences(ours: EngineKey, theirs: EngineKey) -> list[str]:
    """Fields where a cached engine's key differs from the one we need."""
    mine, other = ours.to_json(), theirs.to_json()
    return [f"{k}: cached {other[k]!r}, need {mine[k]!r}" for k in mine if mine[k] != other[k]]


def stale_reason(cache_dir: Path, key: EngineKey) -> str | None:
    """Why the cached engine for ``key`` must not be loaded; None if it is good to load."""
    engine, sidecar = engine_paths(cache_dir, key)
    if not engine.is_file():
        return f"no cached engine {engine.name}"
    if not sidecar.is_file():
        return f"sidecar {sidecar.name} is missing"
    try:
        meta = json.loads(sidecar.read_text())
        if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"not a format-{SIDECAR_FORMAT} sidecar")
        cached_key = EngineKey.from_json(meta.get("key"))
        cached_sha = meta["engine_sha256"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError) as exc:
        return f"sidecar {sidecar.name} is corrupt: {exc}"
    differences = key_differences(key, cached_key)
    if differences:
        return "engine was built for another setup: " + "; ".join(differences)
    if file_sha256(engine) != cached_sha:
        return f"{engine.name} does not match its sidecar's sha256 (truncated or replaced)"
    return None


def store_engine(cache_dir: Path, key: EngineKey, engine: bytes) -> Path:
    """Write the engine, then its sidecar (last: a sidecar means a complete engine)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    engine_path, sidecar = engine_paths(cache_dir, key)
    sidecar.unlink(missing_ok=True)
    write_atomically(engine_path, engine)
    meta = {
        "format": SIDECAR_FORMAT,
        "key": key.to_json(),
        "engine_sha256": hashlib.sha256(engine).hexdigest(),
        "engine_bytes": len(engine),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_atomically(sidecar, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return engine_path


def cached_engine(
    cache_dir: Path, key: EngineKey, build: Callable[[], bytes], rebuild: bool = False
) -> tuple[bytes, bool]:
    """(serialized engine, whether it was just built): loaded if fresh, else built and stored."""
    engine_path, _ = engine_paths(cache_dir, key)
    reason = "rebuild requested" if rebuild else stale_reason(cache_dir, key)
    if reason is None:
        log.info("loading TensorRT engine %s", engine_path)
        return engine_path.read_bytes(), False
    log.info("building TensorRT engine %s (%s); this takes a while", engine_path.name, reason)
    engine = build()
    store_engine(cache_dir, key, engine)
    return engine, True


# ── the parts that need TensorRT and a GPU (tests/integration/test_tensorrt_gpu.py) ──


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable(f"backend 'tensorrt' needs TensorRT: {INSTALL_HINT}") from exc
    return tensorrt


def build_engine(trt: ModuleType, logger: Any, onnx_path: Path, input_hw: tuple[int, int]) -> bytes:
    """Serialize an engine for ``onnx_path`` at input (1, 3, H, W) with TensorRT 10."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10 networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    if network.num_inputs != 1:
        raise RuntimeError(f"{onnx_path} has {network.num_inputs} inputs, expected one image")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    # encoder.onnx has dynamic H and W; one profile pinned to this shape (min = opt =
    # max) lets TensorRT pick the fastest kernels for exactly what this camera sends.
    shape = (1, 3, *input_hw)
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, shape, shape, shape)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT could not build an engine for {onnx_path} at {shape}")
    return bytes(plan)


class EngineLoadError(RuntimeError):
    """TensorRT refused a serialized engine."""


class _EngineRunner:
    """One deserialized engine, its context and device buffers, for one input shape."""

    def __init__(
        self, trt: ModuleType, runtime: Any, plan: bytes, cuda: CudaMemory, hw: tuple[int, int]
    ) -> None:
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineLoadError("TensorRT could not deserialize the engine")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        inputs = [n for n in names if is_input[n]]
        outputs = [n for n in names if not is_input[n]]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineLoadError(f"expected one input and one output, got {inputs}, {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        if self.engine.get_tensor_dtype(self.input_name) != trt.DataType.FLOAT:
            raise EngineLoadError("expected a float32 image input")
        self.cuda = cuda
        self.context = self.engine.create_execution_context()
        self.input_shape = (1, 3, *hw)
        if not self.context.set_input_shape(self.input_name, self.input_shape):
            raise EngineLoadError(f"engine does not accept input shape {self.input_shape}")
        out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        self.output = np.empty(out_shape, dtype=out_dtype)
        self.d_input = cuda.alloc(int(np.prod(self.input_shape)) * 4)
        self.d_output = cuda.alloc(self.output.nbytes)
        self.context.set_tensor_address(self.input_name, self.d_input)
        self.context.set_tensor_address(self.output_name, self.d_output)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.shape != self.input_shape:
            raise ValueError(f"engine input is {self.input_shape}, got {image.shape}")
        self.cuda.to_device(self.d_input, np.ascontiguousarray(image, dtype=np.float32))
        if not self.context.execute_async_v3(self.cuda.stream_handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.cuda.synchronize()
        self.cuda.to_host(self.output, self.d_output)
        return self.output[0].astype(np.float32, copy=True)

    def close(self) -> None:
        self.cuda.free(self.d_input)
        self.cuda.free(self.d_output)


class TensorRTEncoder:
    """EncoderBackend on TensorRT; builds or loads one engine per input shape, lazily."""

    name = "tensorrt"

    def __init__(
        self, model: Path, engine_cache: Path, bundle_hash: str | None = None, device: int = 0
    ) -> None:
        self.trt = import_tensorrt()
        self.cuda = open_cuda_memory(device, INSTALL_HINT)
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        self.model = model
        self.engine_cache = engine_cache
        self.bundle_hash = bundle_hash or file_sha256(model)
        self.engines_built = 0
        self._runners: dict[tuple[int, int], _EngineRunner] = {}

    def engine_key(self, input_hw: tuple[int, int]) -> EngineKey:
        return EngineKey(
            self.cuda.gpu_name,
            self.cuda.compute_capability,
            str(self.trt.__version__),
            input_hw,
            self.bundle_hash,
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        hw = (int(image.shape[2]), int(image.shape[3]))
        runner = self._runners.get(hw)
        if runner is None:
            runner = self._runners[hw] = self._open(hw)
        return runner(image)

    def _open(self, hw: tuple[int, int]) -> _EngineRunner:
        key = self.engine_key(hw)

        def build() -> bytes:
            self.engines_built += 1
            return build_engine(self.trt, self.logger, self.model, hw)

        plan, built = cached_engine(self.engine_cache, key, build)
        try:
            return _EngineRunner(self.trt, self.runtime, plan, self.cuda, hw)
        except EngineLoadError:
            if built:
                raise
            # The sidecar matched but TensorRT still refused the plan (a driver
            # update, say): rebuild rather than give up.
            log.warning("cached TensorRT engine for %s refused; rebuilding", hw)
            plan, _ = cached_engine(self.engine_cache, key, build, rebuild=True)
            return _EngineRunner(self.trt, self.runtime, plan, self.cuda, hw)

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()
