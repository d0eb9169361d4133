"""Learned bundles side by side, level by level, on the same frames (an A/B of codecs).

    video frames ─► each bundle's deployed path (encoder.onnx ─► codec ─► container
                    ─► FrameDecoder ─► tail.onnx), every level
                 ─► plain detector (reference) ─► COCO mAP50, class-agnostic mAP50

``fchm model eval`` runs one learned bundle against the pixel codecs; this compares
learned bundles with each other, e.g. the shipped transforms (KLT in the detector's
sensitivity metric) against the plain PCA the earlier model used:

    .venv/bin/python -m fchm model train --sensitivity-mix 1 --out var/train/pca.pt
    .venv/bin/python -m fchm model export --checkpoint var/train/pca.pt --out bundles/pca
    .venv/bin/python bench/transform_metric.py --bundle bundles/default --bundle bundles/pca

Writes ``transform_metric.json`` and ``.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from cloud.detector_tail import Detection
from codec.bundle import Bundle
from fchm.demo import packaged_video
from model.eval_metrics import coco_map
from model.eval_signals import FeaturePath, FullDetector, sample_video
from model.reference_detector import reference_detector


def sweep(bundle_dir: Path, video: Path, frames: int) -> list[dict[str, object]]:
    bundle = Bundle.load(bundle_dir)
    info = bundle.manifest.detector
    detector = FullDetector(bundle, 0.25, 0.001, 0, reference_detector(bundle))
    path = FeaturePath(bundle, detector.scorer)
    images, _ = sample_video(video, frames, info.input_size, info.pad_multiple)
    levels = range(path.codec.num_levels)
    nbytes: dict[int, list[int]] = {lv: [] for lv in levels}
    found: dict[int, list[list[Detection]]] = {lv: [] for lv in levels}
    reference: list[list[Detection]] = []
    for frame in tqdm(images, desc=bundle_dir.name, unit="frame"):
        edge = detector.encode(frame.image)
        reference.append(detector(frame.image, edge).reference)
        for lv in levels:
            coded = path(edge, lv)
            nbytes[lv].append(coded.nbytes)
            found[lv].append(coded.detections)
    rows = []
    for lv in levels:
        map50, _ = coco_map(reference, found[lv])
        pooled, _ = coco_map(reference, found[lv], class_agnostic=True)
        rows.append(
            {
                "bundle": bundle_dir.name,
                "level": lv,
                "bytes_per_frame": round(sum(nbytes[lv]) / len(images), 1),
                "map50": map50,
                "map50_agnostic": pooled,
            }
        )
    return rows


def _fmt(v: object) -> str:
    return "–" if not isinstance(v, float) else f"{v:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, action="append", required=True)
    parser.add_argument("--video", type=Path, default=None, help="default: demo.mp4")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    video = args.video or packaged_video()
    rows = [row for b in args.bundle for row in sweep(b, video, args.frames)]
    lines = [
        f"{args.frames} frames of {video.name}; fidelity against the plain detector.",
        "",
        "| bundle | level | bytes/frame | mAP50 | class-agnostic mAP50 |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['bundle']} | {r['level']} | {r['bytes_per_frame']:,} | "
        f"{_fmt(r['map50'])} | {_fmt(r['map50_agnostic'])} |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transform_metric.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    (args.out / "transform_metric.md").write_text("# Learned bundles side by side\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
