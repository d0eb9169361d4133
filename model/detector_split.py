"""Split an Ultralytics detection model into an edge half and a cloud half.

    image ─► layers 0..k (EncoderHalf, edge) ─► split tensor ─► layers k+1..Detect (TailHalf, cloud)

A cut after layer k is valid when no later layer reads an output older than k, so
one tensor carries everything the tail needs (for YOLOv8, k=4 is the last such cut).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _offline() -> None:
    # Never let ultralytics reach for the network (settings sync, font, hub).
    os.environ.setdefault("YOLO_OFFLINE", "1")


def load_detector(weights: str | Path, num_classes: int | None = None) -> Any:
    """A fused, eval-mode DetectionModel from a checkpoint (.pt) or an architecture (.yaml).

    A .yaml builds random weights: the tests use tiny models made that way.
    """
    _offline()
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"detector weights {weights} not found")
    if weights.suffix in {".yaml", ".yml"}:
        model = DetectionModel(str(weights), nc=num_classes, verbose=False)
    else:
        model, _ = load_checkpoint(weights)
    if type(model).__name__ != "DetectionModel":
        raise ValueError(
            f"{weights} is a {type(model).__name__}, not an Ultralytics detection model"
        )
    return model.float().fuse().eval()


def class_names(model: Any) -> list[str]:
    names = getattr(model, "names", None)
    nc = int(model.model[-1].nc)
    if isinstance(names, dict):
        return [str(names.get(i, i)) for i in range(nc)]
    if isinstance(names, list | tuple) and len(names) == nc:
        return [str(n) for n in names]
    return [str(i) for i in range(nc)]


def _sources(layer: Any) -> list[int]:
    f = layer.f
    refs = [f] if isinstance(f, int) else list(f)
    i = int(layer.i)
    return [i - 1 if r == -1 else int(r) for r in refs]


def valid_split_layers(model: Any) -> list[int]:
    """Layers after which a single tensor carries everything downstream."""
    layers = list(model.model)
    valid = []
    for k in range(len(layers) - 1):
        if all(src >= k for layer in layers[k + 1 :] for src in _sources(layer)):
            valid.append(k)
    return valid


def check_split(model: Any, split_layer: int) -> None:
    valid = valid_split_layers(model)
    if split_layer not in valid:
        raise ValueError(
            f"split_layer={split_layer} is not a single-tensor cut of this model; valid: {valid}"
        )


def _run(layers: list[Any], x: torch.Tensor, outputs: dict[int, torch.Tensor]) -> torch.Tensor:
    # Ultralytics' _predict_once, over a slice of the layer list.
    for layer in layers:
        f = layer.f
        if f != -1:
            inp: torch.Tensor | list[torch.Tensor] = (
                outputs[f] if isinstance(f, int) else [x if j == -1 else outputs[j] for j in f]
            )
        else:
            inp = x
        x = layer(inp)
        outputs[int(layer.i)] = x
    return x


class EncoderHalf(nn.Module):
    """Layers 0..k: (1,3,H,W) in [0,1] → split tensor (1,C,H/s,W/s)."""

    def __init__(self, model: Any, split_layer: int) -> None:
        super().__init__()
        check_split(model, split_layer)
        self.layers = nn.ModuleList(list(model.model)[: split_layer + 1])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return _run(list(self.layers), image, {})


class TailHalf(nn.Module):
    """Layers k+1..Detect: split tensor → (1, 4+nc, anchors), boxes as xywh in input pixels."""

    def __init__(self, model: Any, split_layer: int) -> None:
        super().__init__()
        check_split(model, split_layer)
        self.split_layer = split_layer
        self.layers = nn.ModuleList(list(model.model)[split_layer + 1 :])
        head: Any = self.layers[-1]
        head.export = True  # return decoded predictions only
        head.format = "onnx"
        head.dynamic = True  # anchors follow the input shape

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return _run(list(self.layers), features, {self.split_layer: features})


def split_stride(model: Any, split_layer: int) -> tuple[int, int]:
    """(stride, channels) of the split tensor, measured with a probe input."""
    with torch.no_grad():
        out = EncoderHalf(model, split_layer)(torch.zeros(1, 3, 64, 64))
    return 64 // int(out.shape[-1]), int(out.shape[1])
