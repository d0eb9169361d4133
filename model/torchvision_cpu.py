"""Make the PyPI torchvision wheel importable next to CPU-only torch.

The torchvision wheel on PyPI is a CUDA build; with the CPU torch wheel its C
extension does not load, and ``import torchvision`` fails on
``torchvision::nms does not exist``. Ultralytics' predictor imports torchvision,
so before it does we define the two operators torchvision's meta registrations
need, with a plain-torch NMS, and tell torchvision.ops that its nms is there.
On a normal CUDA or CPU install from the PyTorch index the real operators exist
and this does nothing.
"""

from __future__ import annotations

import torch

_LIB: torch.library.Library | None = None


def _nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = scores.argsort(descending=True)
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    keep = []
    while order.numel():
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return torch.stack(keep) if keep else torch.empty(0, dtype=torch.long)


def ensure_torchvision_nms() -> None:
    global _LIB
    if _LIB is not None:
        return
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return  # torchvision's own extension is loaded
    except RuntimeError:
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms, "CPU")
    _LIB = lib
    import torchvision.extension

    # torchvision.ops.nms asks the (unloaded) extension whether ops exist; nms now does.
    torchvision.extension._has_ops = lambda: True
