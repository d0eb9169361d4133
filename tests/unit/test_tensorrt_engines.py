"""The TensorRT engine cache without TensorRT: keys, file names, sidecars, staleness."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from edge.encoder_backends import BACKENDS, BackendUnavailable, open_backend
from edge.tensorrt_engines import (
    EngineKey,
    cached_engine,
    engine_paths,
    stale_reason,
    store_engine,
)

KEY = EngineKey(
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability=(9, 0),
    tensorrt_version="10.3.0",
    input_hw=(512, 640),
    bundle_hash="ab" * 32,
)
OTHER_VALUES = {
    "gpu_name": "NVIDIA A100-SXM4-40GB",
    "compute_capability": (8, 0),
    "tensorrt_version": "10.4.0",
    "input_hw": (640, 640),
    "bundle_hash": "cd" * 32,
}


class Builder:
    """Stands in for TensorRT's builder: counts builds, returns distinct bytes."""

    def __init__(self) -> None:
        self.builds = 0

    def __call__(self) -> bytes:
        self.builds += 1
        return f"engine #{self.builds}".encode() * 100


def test_key_round_trips_through_json_and_names_its_file() -> None:
    assert EngineKey.from_json(json.loads(json.dumps(KEY.to_json()))) == KEY
    engine, sidecar = engine_paths(Path("/cache"), KEY)
    readable = "encoder-abababababab-512x640-sm90-trt10.3.0-NVIDIA_H100_80GB_HBM3-"
    assert engine.name.startswith(readable)
    assert engine.suffix == ".engine" and sidecar == engine.with_suffix(".json")
    # Every field changes the name: engines for several GPUs and shapes share a cache.
    names = {engine_paths(Path("/cache"), dataclasses.replace(KEY, **{f: v}))[0].name
             for f, v in OTHER_VALUES.items()}  # fmt: skip
    assert len(names | {engine.name}) == 1 + len(OTHER_VALUES)


@pytest.mark.parametrize(
    "bad",
    [None, [], {"gpu_name": "x"}, {**KEY.to_json(), "input_hw": [640]},
     {**KEY.to_json(), "compute_capability": ["9", "0"]}, {**KEY.to_json(), "gpu_name": 7},
     {**KEY.to_json(), "extra": 1}],
)  # fmt: skip
def test_malformed_keys_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        EngineKey.from_json(bad)


def test_built_once_then_loaded(tmp_path: Path) -> None:
    build = Builder()
    first, built = cached_engine(tmp_path, KEY, build)
    assert built and build.builds == 1
    again, built = cached_engine(tmp_path, KEY, build)
    assert not built and again == first and build.builds == 1
    sidecar = json.loads(engine_paths(tmp_path, KEY)[1].read_text())
    assert sidecar["key"] == KEY.to_json() and sidecar["engine_bytes"] == len(first)
    assert not list(tmp_path.glob(".*.tmp")), "no temporary files left behind"


@pytest.mark.parametrize("field", sorted(OTHER_VALUES))
def test_an_engine_for_another_setup_is_rebuilt_never_loaded(tmp_path: Path, field: str) -> None:
    # An engine built for another GPU/version/shape/bundle, copied under our name
    # (a cache copied between machines, a hand-renamed file).
    foreign = dataclasses.replace(KEY, **{field: OTHER_VALUES[field]})
    store_engine(tmp_path, foreign, b"foreign engine")
    for src, dst in zip(engine_paths(tmp_path, foreign), engine_paths(tmp_path, KEY), strict=True):
        shutil.copy(src, dst)
    reason = stale_reason(tmp_path, KEY)
    assert reason is not None and field in reason
    build = Builder()
    engine, built = cached_engine(tmp_path, KEY, build)
    assert built and engine != b"foreign engine" and build.builds == 1
    assert stale_reason(tmp_path, KEY) is None  # and now it is ours


def test_missing_or_corrupt_sidecar_means_rebuild(tmp_path: Path) -> None:
    build = Builder()
    cached_engine(tmp_path, KEY, build)
    _, sidecar = engine_paths(tmp_path, KEY)
    sidecar.unlink()
    assert "missing" in (stale_reason(tmp_path, KEY) or "")
    assert cached_engine(tmp_path, KEY, build)[1] and build.builds == 2
    for garbage in ["{not json", "[]", json.dumps({"format": 99}), json.dumps({"format": 1})]:
        sidecar.write_text(garbage)
        assert "corrupt" in (stale_reason(tmp_path, KEY) or ""), garbage
    sidecar.write_bytes(b"\xff\xfe")
    assert "corrupt" in (stale_reason(tmp_path, KEY) or "")
    assert cached_engine(tmp_path, KEY, build)[1] and build.builds == 3


def test_a_truncated_or_replaced_engine_is_rebuilt(tmp_path: Path) -> None:
    build = Builder()
    data, _ = cached_engine(tmp_path, KEY, build)
    engine, _ = engine_paths(tmp_path, KEY)
    engine.write_bytes(data[: len(data) // 2])
    assert "sha256" in (stale_reason(tmp_path, KEY) or "")
    assert cached_engine(tmp_path, KEY, build)[1]
    assert "no cached engine" in (stale_reason(tmp_path / "empty", KEY) or "")


def test_tensorrt_is_in_the_registry() -> None:
    assert {"onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"} <= set(BACKENDS)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT installed")
def test_without_tensorrt_the_backend_says_what_to_install(tmp_path: Path) -> None:
    hint = r"install the 'gpu' extra \(tensorrt, and pycuda or cuda-python\)"
    with pytest.raises(BackendUnavailable, match=hint):
        open_backend("tensorrt", tmp_path / "encoder.onnx", engine_cache=tmp_path)
    assert issubclass(BackendUnavailable, ValueError)  # reported by the CLI as a bad setting
