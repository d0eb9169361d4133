"""Scores for ``fchm model eval``: detection fidelity (COCO mAP) and BD-rate.

    reference detections (GT) ─┐
                               ├─► pycocotools COCOeval (in memory) ─► mAP50, mAP50-95
    a signal's detections ─────┘
    (bytes, mAP50) per setting ─► rate–fidelity envelope ─► PCHIP log-rate(q) ─► BD-rate

Fidelity is agreement with the uncompressed detector: the same detector's own
detections on the original frame are the ground truth, as DESIGN.md ("Measuring")
asks. BD-rate follows Bjøntegaard (VCEG-M33) with the piecewise-cubic interpolation
that JVET's common test conditions use instead of his cubic polyfit: the average
difference in log-rate between two curves over the quality range both cover.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.interpolate import PchipInterpolator

from cloud.detector_tail import Detection


def coco_map(
    reference: Sequence[Sequence[Detection]],
    predicted: Sequence[Sequence[Detection]],
    class_agnostic: bool = False,
) -> tuple[float | None, float | None]:
    """(mAP50, mAP50-95) of ``predicted`` with ``reference`` as ground truth, per frame.

    COCO's mAP is the mean over classes, so a class with one reference box swings it
    by 1/classes on that one box; ``class_agnostic`` pools every class into one
    (pycocotools' ``useCats=0``): boxes must agree, labels need not.
    None when the reference holds no detection at all (mAP is undefined then);
    (0, 0) when there is ground truth but no prediction.
    """
    if len(reference) != len(predicted):
        raise ValueError(f"{len(reference)} reference frames but {len(predicted)} predicted")

    def xywh(d: Detection) -> list[float]:
        x1, y1, x2, y2 = d.box
        return [x1, y1, x2 - x1, y2 - y1]

    pairs = [(i, d) for i, ds in enumerate(reference) for d in ds]
    # COCO reserves category 0 and annotation id 0, hence the +1s.
    anns: list[dict[str, Any]] = [
        {"id": k + 1, "image_id": i, "category_id": d.class_id + 1, "bbox": xywh(d),
         "area": xywh(d)[2] * xywh(d)[3], "iscrowd": 0}
        for k, (i, d) in enumerate(pairs)
    ]  # fmt: skip
    if not anns:
        return None, None
    dets = [
        {"image_id": i, "category_id": d.class_id + 1, "bbox": xywh(d), "score": d.score}
        for i, ds in enumerate(predicted)
        for d in ds
    ]
    if not dets:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {
            "images": [{"id": i} for i in range(len(reference))],
            "annotations": anns,
            "categories": [{"id": c} for c in sorted({a["category_id"] for a in anns})],
        }
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(dets), "bbox")
        evaluator.params.useCats = 0 if class_agnostic else 1
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # stats[0] is AP@[.50:.95], stats[1] AP@.50; -1 would mean "no GT", excluded above.
    return float(evaluator.stats[1]), float(evaluator.stats[0])


def rate_fidelity_envelope(
    rates: Sequence[float], qualities: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """The points no cheaper setting beats: sorted by rate, quality strictly rising.

    mAP over few frames is noisy and not monotonic in the setting (a JPEG at q=50 can
    score below q=30). Bjøntegaard's interpolation needs quality as a function of
    rate, so a point is kept only if it beats every cheaper point; a setting that
    costs more for less fidelity is one a user would never pick.
    """
    order = np.argsort(np.asarray(rates, dtype=np.float64), kind="stable")
    kept_r: list[float] = []
    kept_q: list[float] = []
    for i in order:
        r, q = float(rates[i]), float(qualities[i])
        if not kept_q or q > kept_q[-1]:
            kept_r.append(r)
            kept_q.append(q)
    return np.asarray(kept_r), np.asarray(kept_q)


@dataclass(frozen=True)
class BdRate:
    """Bjøntegaard delta rate of a test curve against an anchor curve."""

    value: float | None
    """mean relative rate difference at equal quality (-0.9: 90 % fewer bytes); None
    when it cannot be computed (see ``note``)"""
    overlap: tuple[float, float] | None
    """quality interval both curves cover, over which the mean is taken"""
    note: str | None = None


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
) -> BdRate:
    """BD-rate of test vs anchor: exp(mean over the overlap of Δ ln rate(q)) - 1.

    Rates must be positive. Each curve is reduced to its envelope, then ln(rate) is
    interpolated as a PCHIP (monotone piecewise cubic, so no overshoot between
    points) function of quality and integrated exactly over the shared quality range.
    No overlap, or fewer than two envelope points on a curve, gives ``value=None``:
    extrapolating a rate-fidelity curve would invent numbers.
    """
    curves = []
    for who, rates, quality in (
        ("anchor", anchor_rates, anchor_quality),
        ("test", test_rates, test_quality),
    ):
        if len(rates) != len(quality):
            raise ValueError(f"{who}: {len(rates)} rates but {len(quality)} qualities")
        if any(not r > 0 for r in rates):
            raise ValueError(f"{who}: rates must be positive, got {list(rates)}")
        r, q = rate_fidelity_envelope(rates, quality)
        if len(r) < 2:
            return BdRate(None, None, f"{who} curve has fewer than 2 distinct fidelity points")
        curves.append((np.log(r), q))
    (lr_a, q_a), (lr_t, q_t) = curves
    lo, hi = max(q_a[0], q_t[0]), min(q_a[-1], q_t[-1])
    if hi <= lo:
        return BdRate(
            None,
            None,
            f"no overlap in fidelity: anchor {q_a[0]:.3g}..{q_a[-1]:.3g}, "
            f"test {q_t[0]:.3g}..{q_t[-1]:.3g}",
        )
    area_a = PchipInterpolator(q_a, lr_a).integrate(lo, hi)
    area_t = PchipInterpolator(q_t, lr_t).integrate(lo, hi)
    mean_log_ratio = float(area_t - area_a) / (hi - lo)
    return BdRate(float(np.expm1(mean_log_ratio)), (float(lo), float(hi)))


@dataclass(frozen=True)
class BytesAt:
    """Bytes per frame a codec needs to reach a fidelity, read off its envelope."""

    bytes_per_frame: float | None
    """None: no setting of the sweep reaches the target"""
    bound: bool
    """True when even the cheapest setting exceeds the target: the figure is an upper
    bound (the codec might need fewer bytes than its sweep tried)"""


def bytes_at(rows: Sequence[tuple[float, float | None]], target: float) -> BytesAt:
    """Bytes at fidelity ``target``: ln(bytes) interpolated linearly between the two
    envelope points that bracket it (no extrapolation past either end)."""
    points = [(b, q) for b, q in rows if q is not None and b > 0]
    if not points:
        return BytesAt(None, False)
    r, q = rate_fidelity_envelope([b for b, _ in points], [q for _, q in points])
    if q[-1] < target:
        return BytesAt(None, False)
    if q[0] >= target:
        return BytesAt(float(r[0]), True)
    k = int(np.searchsorted(q, target))  # q[k-1] < target <= q[k]
    frac = (target - q[k - 1]) / (q[k] - q[k - 1])
    return BytesAt(float(np.exp(np.log(r[k - 1]) + frac * np.log(r[k] / r[k - 1]))), False)
