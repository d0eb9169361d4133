"""What the student (bottleneck + frozen tail) is taught, from the frozen detector.

image ─► detector layers 0..k ─► f ──────────────► tail ─► neck P3..P5, head logits   (teacher)
                              └► bottleneck ─► f̂ ─► tail ─► neck P̂3..P̂5, head logits  (student)

distortion = ‖f̂ − f‖² / var f                         feature distillation
           + Σ_i ‖P̂_i − P_i‖² / var P_i                 neck distillation
           + KL(cls) + KL(box DFL), weighted by the teacher's confidence   detection distillation
loss       = distortion + λ(level) · bits per pixel
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from model.detector_split import _run, check_split


@dataclass(frozen=True)
class TailOutputs:
    neck: list[torch.Tensor]
    """Inputs of the Detect head, one per scale"""
    boxes: torch.Tensor
    """(B, 4·reg_max, anchors) DFL logits"""
    scores: torch.Tensor
    """(B, classes, anchors) class logits"""


class TrainableTail(nn.Module):
    """Layers k+1..Detect returning raw head outputs, for distillation (frozen weights)."""

    def __init__(self, model: Any, split_layer: int) -> None:
        super().__init__()
        check_split(model, split_layer)
        self.split_layer = split_layer
        layers = list(model.model)[split_layer + 1 :]
        self.body = nn.ModuleList(layers[:-1])
        self.head: Any = layers[-1]
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, features: torch.Tensor) -> TailOutputs:
        outputs: dict[int, torch.Tensor] = {self.split_layer: features}
        last = _run(list(self.body), features, outputs)
        f = self.head.f
        neck = [last if j == -1 else outputs[j] for j in f]
        self.head.train()  # the raw prediction dict, not decoded boxes
        preds = self.head(neck)
        preds = preds.get("one2many", preds)
        return TailOutputs(neck, preds["boxes"], preds["scores"])


def _nmse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE normalized by the teacher's variance over the batch."""
    return (student - teacher).pow(2).mean(dim=tuple(range(1, student.dim()))) / (
        teacher.var().detach() + 1e-6
    )


@dataclass(frozen=True)
class DistortionTerms:
    feature: torch.Tensor
    neck: torch.Tensor
    detection: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.feature + self.neck + self.detection


def distortion(
    f_hat: torch.Tensor,
    f: torch.Tensor,
    student: TailOutputs,
    teacher: TailOutputs,
    reg_max: int,
    detection_weight: float,
) -> DistortionTerms:
    """Per-sample distortion terms, each (B,)."""
    feature = _nmse(f_hat, f)
    neck = sum(
        (_nmse(s, t) for s, t in zip(student.neck, teacher.neck, strict=True)),
        torch.zeros_like(feature),
    )
    # Class KD: binary KL between the teacher's and student's sigmoid scores.
    t_prob = torch.sigmoid(teacher.scores)
    cls = F.binary_cross_entropy_with_logits(student.scores, t_prob, reduction="none") - (
        F.binary_cross_entropy_with_logits(teacher.scores, t_prob, reduction="none")
    )
    weight = t_prob.amax(dim=1)  # (B, A): anchors the teacher cares about
    norm = weight.sum(dim=1).clamp_min(1.0)
    cls_kd = (cls.sum(dim=1) * (0.05 + weight)).sum(dim=1) / norm
    # Box KD: KL between the DFL side distributions where the teacher sees objects.
    b, _, a = teacher.boxes.shape
    t_log = F.log_softmax(teacher.boxes.view(b, 4, reg_max, a), dim=2)
    s_log = F.log_softmax(student.boxes.view(b, 4, reg_max, a), dim=2)
    box = (t_log.exp() * (t_log - s_log)).sum(dim=(1, 2))  # (B, A)
    box_kd = (box * weight).sum(dim=1) / norm
    return DistortionTerms(feature, neck, detection_weight * (cls_kd + box_kd))
