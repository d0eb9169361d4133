"""How much each direction of a split-tensor patch matters to the detector's output.

    crops ─► detector layers 0..k ─► f ─► normalize ─► x ──► tail (frozen) ─► class and DFL logits
                                                       ▲                           │
                                  gradient of u·logits ┘◄── u = H^½ v, v ~ N(0, I) ┘
    E[g gᵀ] over patches ─► S (d×d, d = channels · patch²)

S is the Gauss–Newton matrix of the detection-distillation loss
(``model.distillation.distortion``) at the teacher: for a small error e in one patch of
x, that loss grows by about ½ eᵀ S e. It is estimated without forming any Jacobian:
with u = H^½ v for a Gaussian probe v, the gradient g = Jᵀ u has E[g gᵀ] = Jᵀ H J
(Hutchinson-style). H is the loss's Hessian in the logits: p(1−p) per class score
(binary KL), diag(p) − p pᵀ per DFL side (softmax KL), both weighted by the teacher's
confidence as the loss weights them.

Why: a PCA keeps the directions with the most *energy*; a detector does not need all of
them equally. Whitening the patch space by S first (``FeatureBottleneck.init_transform``)
keeps the directions that move the detections most per unit of variance (measured
gains: README, "The learned codec"). It is a statistic of the frozen detector, not a
trained network, so a few crops estimate it and it cannot overfit them the way
trained transforms did.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from model.bottleneck import FeatureStats
from model.distillation import TrainableTail


def _probe(scores: torch.Tensor, boxes: torch.Tensor, reg_max: int) -> torch.Tensor:
    """u·logits for u = H^½ v: the scalar whose gradient is one Gauss–Newton sample."""
    b, _, a = scores.shape
    p = torch.sigmoid(scores)
    confidence = p.amax(dim=1, keepdim=True)  # (B,1,A), as the distillation loss weights
    norm = confidence.sum(dim=2, keepdim=True).clamp_min(1.0)
    cls_weight = (0.05 + confidence) / norm
    u_cls = torch.sqrt(cls_weight * p * (1 - p)) * torch.randn_like(p)
    # Softmax Hessian diag(p) − p pᵀ = L Lᵀ with L = diag(√p) − p √pᵀ (as Σp = 1).
    q = F.softmax(boxes.view(b, 4, reg_max, a), dim=2)
    v = torch.randn_like(q)
    root = q.sqrt()
    u_box = root * v - q * (root * v).sum(dim=2, keepdim=True)
    u_box = u_box * torch.sqrt(confidence / norm)[:, None]
    return (u_cls.detach() * scores).sum() + (u_box.detach().view_as(boxes) * boxes).sum()


def patch_sensitivity(
    tail: TrainableTail,
    features: torch.Tensor,
    stats: FeatureStats,
    patch: int,
    reg_max: int,
    probes: int = 2,
    batch: int = 8,
) -> torch.Tensor:
    """(d, d) float64 Gauss–Newton matrix per patch of the *normalized* split tensor.

    ``features`` (N, C, H, W) are raw split tensors; the gradient is taken with respect
    to ``stats.normalize(features)``, the space the analysis transform projects.
    """
    c = features.shape[1]
    d = c * patch * patch
    total = torch.zeros(d, d, dtype=torch.float64, device=features.device)
    count = 0
    for start in range(0, features.shape[0], batch):
        f = features[start : start + batch]
        for _ in range(probes):
            x = stats.normalize(f).detach().requires_grad_(True)
            with torch.enable_grad():
                out = tail(stats.denormalize(x))
                (grad,) = torch.autograd.grad(_probe(out.scores, out.boxes, reg_max), x)
            g = F.unfold(grad, patch, stride=patch).transpose(1, 2).reshape(-1, d).double()
            total += g.T @ g
            count += f.shape[0]
    return total / max(count, 1)
