"""Int8 weight storage: a real torch → ONNX export, rewritten, run in ONNX Runtime."""

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from cloud.onnx_sessions import open_session
from model.bundle_export import export_onnx
from model.weight_storage import store_conv_weights_int8


def _export(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(8, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 32, 3, padding=1), nn.SiLU(),
        nn.Conv2d(32, 4, 1),  # 128 weights: below the size floor, stays fp32
    ).eval()  # fmt: skip
    path = tmp_path / "net.onnx"
    export_onnx(net, torch.zeros(1, 8, 16, 16), path, "features", "image")
    return path


def test_int8_weights_shrink_the_file_and_keep_the_outputs(tmp_path: Path) -> None:
    fp32 = _export(tmp_path)
    x = np.random.default_rng(1).standard_normal((1, 8, 24, 20)).astype(np.float32)
    (before,) = open_session(fp32).run(None, {"features": x})
    size = fp32.stat().st_size
    assert store_conv_weights_int8(fp32, min_elements=1024) == 2  # 8·32·9 and 32·32·9
    assert fp32.stat().st_size < 0.5 * size
    graph = onnx.load(str(fp32)).graph
    kinds = {i.name: i.data_type for i in graph.initializer}
    assert sum(t == onnx.TensorProto.INT8 for t in kinds.values()) == 2
    assert [n.op_type for n in graph.node].count("DequantizeLinear") == 2
    (after,) = open_session(fp32).run(None, {"features": x})  # dynamic sizes still work
    assert after.shape == before.shape
    # Per-channel int8 rounds each weight by ≤ 1/254 of its channel's peak.
    assert np.abs(after - before).max() < 0.02 * np.abs(before).max()
    assert not np.array_equal(after, before), "the weights were rounded"
