"""How much a region map could save: the learned codec with only the detected regions coded.

    video frames ─► encoder.onnx ─► y ─► q = round(y·gain[level])
                 ─► plain detector ─► reference boxes ─► dilate by a margin ─► mask (latent grid)
    whole frame:  bits of q everywhere                         ─► tail ─► mAP50
    oracle ROI:   coded q inside the mask + the mask's own     ─► tail (0 outside) ─► mAP50
                  cost (binary entropy of its cells) + framing

An *oracle*: the mask comes from the reference detections themselves, which no edge
has. It bounds what a spatially adaptive rate (an objectness map on the edge, or regions
fed back by the cloud from earlier frames) could buy before anyone builds one. Bits are
the integer tables' ideal code lengths (constriction's ANS is within 0.01 % of them),
not a coded payload; the decoded side is the bundle's own tail.onnx.

    .venv/bin/python bench/roi_oracle.py --frames 60 [--video clip.mp4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cloud.detector_tail import Detection
from codec.bitstream import KEYFRAME_OVERHEAD_BYTES
from codec.bundle import Bundle
from codec.feature_codec import GainedFeatureCodec
from codec.geometry import Letterbox
from fchm.demo import packaged_video
from model.eval_metrics import coco_map
from model.eval_signals import FullDetector, sample_video
from model.reference_detector import reference_detector

MARGINS = (None, 16, 48)
"""Pixels of context around each box at the network input; None codes the whole frame."""


def region_mask(
    boxes: list[Detection], geometry: Letterbox, grid: tuple[int, int], stride: int, margin: int
) -> np.ndarray:
    """Latent cells covered by the boxes (original-image pixels), each grown by ``margin``."""
    h, w = grid
    mask = np.zeros(grid, dtype=bool)
    for d in boxes:
        x1, y1, x2, y2 = (v * geometry.scale for v in d.box)
        left, top = geometry.pad
        px1, px2 = x1 + left - margin, x2 + left + margin
        py1, py2 = y1 + top - margin, y2 + top + margin
        c0, c1 = max(int(px1 // stride), 0), min(int(px2 // stride) + 1, w)
        r0, r1 = max(int(py1 // stride), 0), min(int(py2 // stride) + 1, h)
        mask[r0:r1, c0:c1] = True
    return mask


def coded_bytes(codec: GainedFeatureCodec, q: np.ndarray, level: int, mask: np.ndarray) -> int:
    """Payload bytes of the symbols of q inside ``mask``, coded channel by channel as the
    codec codes a frame (the cells in raster order, as one (C, cells, 1) tensor)."""
    return len(codec.tables.encode(q[:, mask][:, :, None], level))


def mask_bits(mask: np.ndarray) -> float:
    """The mask's cost: the binary entropy of its cells, plus 16 bits for its shape."""
    p = float(mask.mean())
    if p in (0.0, 1.0):
        return 16.0
    return mask.size * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) + 16.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--video", type=Path, default=None, help="default: demo.mp4")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument(
        "--levels", type=int, nargs="*", default=[0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    video = args.video or packaged_video()
    bundle = Bundle.load(args.bundle)
    codec = bundle.load_codec()
    if not isinstance(codec, GainedFeatureCodec):
        raise SystemExit(f"{args.bundle} is not a learned bundle")
    info = bundle.manifest.detector
    detector = FullDetector(bundle, 0.25, 0.001, 0, reference_detector(bundle))
    images, _ = sample_video(video, args.frames, info.input_size, info.pad_multiple)
    edges = [detector.encode(f.image) for f in tqdm(images, desc="encode", unit="frame")]
    reference = [detector(f.image, e).reference for f, e in zip(images, edges, strict=True)]
    rows = []
    for level in tqdm(args.levels, desc="levels", unit="level"):
        symbols = [codec.quantize(edge.features, level) for edge in edges]
        for margin in MARGINS:
            nbytes, found = [], []
            for edge, boxes, q in zip(edges, reference, symbols, strict=True):
                grid = (q.shape[1], q.shape[2])
                if margin is None:
                    mask, side = np.ones(grid, dtype=bool), 0.0
                else:
                    mask = region_mask(boxes, edge.geometry, grid, info.stride, margin)
                    side = mask_bits(mask)
                coded = coded_bytes(codec, q, level, mask) + side / 8
                nbytes.append(coded + KEYFRAME_OVERHEAD_BYTES)
                decoded = codec.dequantize(q * mask[None], level)
                found.append(detector.scorer(decoded, edge.geometry))
            map50, _ = coco_map(reference, found)
            rows.append(
                {
                    "level": level,
                    "region": "whole frame" if margin is None else f"boxes + {margin} px",
                    "bytes_per_frame": round(float(np.mean(nbytes)), 1),
                    "map50": map50,
                }
            )
    refs = sum(len(r) for r in reference)
    head = (
        f"{len(images)} frames of {video.name}, {refs} reference detections; "
        "coded bytes plus the mask's entropy."
    )
    lines = [head, "", "| level | region | bytes/frame | mAP50 |", "|---:|---|---:|---:|"]
    lines += [
        f"| {r['level']} | {r['region']} | {r['bytes_per_frame']:,.0f} | "
        f"{'–' if r['map50'] is None else format(r['map50'], '.3f')} |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    stem = "roi_oracle" if args.video is None else f"roi_oracle_{video.stem}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            {"rows": rows, "meta": {"video": video.name, "reference_detections": refs}}, indent=2
        )
        + "\n"
    )
    (args.out / f"{stem}.md").write_text(
        "# Oracle region map: what a spatially adaptive rate could save\n\n" + text
    )
    print(text)


if __name__ == "__main__":
    main()
