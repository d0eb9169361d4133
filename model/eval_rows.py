"""One row per codec setting: per-frame results in, scored rows and curves out.

    per frame (bytes, edge s, decode s, detections) ─► Tally ─► score_row ─► EvalRow
                                                          └──► curve (for BD-rate)

A row's mAP is against the uncompressed detector's detections on the same frames, and
again against the confident ones only; it says how many reference boxes each rests on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cloud.detector_tail import Detection
from model.eval_metrics import coco_map

FULL_DETECTOR = "full-detector"


@dataclass(frozen=True)
class EvalRow:
    codec: str
    """"fchm" | "uniform" | "jpeg" | "webp" | "avif" | "h264" | "h264-intra" | "h265" |
    "h265-intra" | "full-detector\""""
    setting: str
    """"level 3", "q=50", "crf=28", ..."""
    frame_set: str
    """"all", or "video" for rows that only video frames can have"""
    frames: int
    bytes_per_frame: float | None
    """mean bytes per frame of the whole coded signal (container headers included)"""
    bpp: float | None
    """bits per pixel of the frame as coded (its own size, downscaled only if larger)"""
    map50: float | None
    map50_95: float | None
    map50_agnostic: float | None
    """mAP50 with every class pooled into one (pycocotools ``useCats=0``)"""
    map50_confident: float | None
    """mAP50 against the confident references only (conf ≥ EvalConfig.confident), the
    predictions at the cloud's threshold: does the cloud still store the sure objects"""
    map50_95_confident: float | None
    reference_boxes: int
    """reference boxes map50 rests on"""
    confident_reference_boxes: int
    edge_ms_per_frame: float
    """edge time to produce the bytes (the full detector's time on its row)"""
    decode_ms_per_frame: float | None
    note: str | None = None
    keyframes: int | None = None
    """streamed rows (video codecs, ``<family>-inter``): frames sent as keyframes, all
    clips together; None where every frame is coded on its own"""


@dataclass
class Tally:
    """Accumulates one setting's per-frame results while frames stream through."""

    codec: str
    setting: str
    note: str | None = None
    keyframes: int | None = None
    """None: per-frame coding; a stream's tally starts at 0 and counts them"""
    ids: list[int] = field(default_factory=list)
    nbytes: list[float] = field(default_factory=list)
    edge_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    detections: list[list[Detection]] = field(default_factory=list)

    def add(
        self, i: int, nbytes: float, edge_s: float, decode_s: float, dets: list[Detection]
    ) -> None:
        self.ids.append(i)
        self.nbytes.append(nbytes)
        self.edge_s.append(edge_s)
        self.decode_s.append(decode_s)
        self.detections.append(dets)

    def count_keyframes(self, n: int = 1) -> None:
        self.keyframes = (self.keyframes or 0) + n


def score_row(
    t: Tally, reference: list[list[Detection]], pixels: list[int], conf: float, confident: float
) -> EvalRow:
    """One setting's row: bytes, mAP against every reference and the confident ones."""
    truth = [reference[i] for i in t.ids]
    map50, map50_95 = coco_map(truth, t.detections)
    pooled, _ = coco_map(truth, t.detections, class_agnostic=True)
    sure = [[d for d in ds if d.score >= confident] for ds in truth]
    stored = [[d for d in ds if d.score >= conf] for ds in t.detections]
    c50, c50_95 = coco_map(sure, stored)
    n = len(t.ids)
    has_bytes = t.codec != FULL_DETECTOR
    total = sum(t.nbytes)

    def r4(v: float | None) -> float | None:
        return None if v is None else round(v, 4)

    return EvalRow(
        codec=t.codec,
        setting=t.setting,
        frame_set="all" if n == len(reference) else "video",
        frames=n,
        bytes_per_frame=round(total / n, 1) if has_bytes else None,
        bpp=round(8 * total / sum(pixels[i] for i in t.ids), 4) if has_bytes else None,
        map50=r4(map50),
        map50_95=r4(map50_95),
        map50_agnostic=r4(pooled),
        map50_confident=r4(c50),
        map50_95_confident=r4(c50_95),
        reference_boxes=sum(len(ds) for ds in truth),
        confident_reference_boxes=sum(len(ds) for ds in sure),
        edge_ms_per_frame=round(1e3 * sum(t.edge_s) / n, 2),
        decode_ms_per_frame=round(1e3 * sum(t.decode_s) / n, 2) if has_bytes else None,
        note=t.note,
        keyframes=t.keyframes,
    )


def families(tallies: list[Tally]) -> dict[str, list[Tally]]:
    out: dict[str, list[Tally]] = {}
    for t in tallies:
        out.setdefault(t.codec, []).append(t)
    return out


def curve(
    tallies: list[Tally], reference: list[list[Detection]], ids: list[int]
) -> tuple[list[float], list[float]]:
    """(bytes/frame, mAP50) per setting, scored on frames ``ids`` only: a clip codec
    that sees only the video frames is compared with JPEG on those same frames."""
    rates, quality = [], []
    for t in tallies:
        pos = {i: k for k, i in enumerate(t.ids)}
        if not all(i in pos for i in ids):
            continue
        map50, _ = coco_map([reference[i] for i in ids], [t.detections[pos[i]] for i in ids])
        nbytes = float(np.mean([t.nbytes[pos[i]] for i in ids]))
        if map50 is not None and nbytes > 0:
            rates.append(nbytes)
            quality.append(map50)
    return rates, quality
