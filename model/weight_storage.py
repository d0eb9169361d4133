"""Int8 storage for an exported network's convolution weights: 4x smaller files, fp32 compute.

    conv weight W (fp32, O×I×k×k) ─► per-output-channel scale s = max|W_o| / 127
                                  ─► q = round(W / s) ∈ [-127, 127] (int8)
    tail.onnx:  q, s ─► DequantizeLinear(axis=0) ─► W' ─► Conv           (same graph otherwise)

ONNX Runtime folds each DequantizeLinear of a constant into an fp32 initializer when
the session opens (``cloud.onnx_sessions`` turns off the QDQ fusion that would keep it),
so the network runs at fp32 speed on fp32 activations. Only the weights are rounded:
the cloud's tail is not part of bitstream decoding, so bit-exactness is untouched.
ONNX Runtime's own quantizers quantize activations too (dynamic/static QDQ), or only
MatMul weights (MatMulNBits); this is the weight-only Conv case, a few lines of onnx.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

MIN_ELEMENTS = 4096
"""Smaller tensors (biases, the head's last 1x1 convs) stay fp32: they barely add bytes."""


def store_conv_weights_int8(path: Path, min_elements: int = MIN_ELEMENTS) -> int:
    """Rewrite ``path`` in place; returns how many weight tensors now travel as int8."""
    model = onnx.load(str(path))
    graph = model.graph
    dequantize: list[onnx.NodeProto] = []
    for init in list(graph.initializer):
        weight = numpy_helper.to_array(init)
        if weight.dtype != np.float32 or weight.ndim != 4 or weight.size < min_elements:
            continue
        peak = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(weight / scale[:, None, None, None]), -127, 127).astype(np.int8)
        graph.initializer.remove(init)
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{init.name}_int8"),
                numpy_helper.from_array(scale, f"{init.name}_scale"),
            ]
        )
        # The node's output takes the weight's name, so every Conv reading it is untouched.
        dequantize.append(
            helper.make_node(
                "DequantizeLinear", [f"{init.name}_int8", f"{init.name}_scale"], [init.name], axis=0
            )
        )
    for i, node in enumerate(dequantize):  # before their consumers: graphs are topological
        graph.node.insert(i, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return len(dequantize)
