"""Why the enhancement layer codes the frame and not its residual over the preview.

    frame ─► machine bitstream (level L, m bytes) ─► cloud's preview P
    at a total of B bytes:
      webp      WebP of the frame at B                     (what a user would send instead)
      avif      AVIF of the frame at B − m                 (the enhancement layer as built)
      residual  AVIF of (frame − P) / 2 + 128 at B − m, view P + 2 · (decoded − 128)

Every picture at the frame's own size (capped at the network input), quality bisected to
fit. MS-SSIM and PSNR against the frame, mean over the photos dev set (bench/dev_sets.py).

    .venv/bin/python bench/enhancement_residual.py [--bundle bundles/default] [--level 0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from dev_sets import DEV_SETS, path_of
from PIL import Image

from cloud.frame_decoder import FrameDecoder
from cloud.restorers import PreviewRestorer, view_size
from codec.bundle import Bundle
from codec.enhancement import decode_enhancement, encode_enhancement, fit_quality
from edge.frame_encoder import FrameEncoder
from edge.sources import CapturedFrame
from model.human_eval import ms_ssim, psnr

BUDGETS = (4000, 8000, 16000, 32000)


def _save(image: Image.Image, fmt: str, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, quality=quality)
    return out.getvalue()


def _fit(rgb: np.ndarray, fmt: str, budget: int) -> np.ndarray | None:
    fit = fit_quality(partial(_save, Image.fromarray(rgb), fmt), budget)
    return None if fit is None else decode_enhancement(fit[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--level", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    bundle = Bundle.load(args.bundle)
    encoder = FrameEncoder(bundle, threads=2, keyframe_interval=1)
    decoder = FrameDecoder(bundle)
    preview = PreviewRestorer(bundle, 2)
    photos = sorted(path_of({d.name: d for d in DEV_SETS}["photos"]).iterdir())
    started = time.perf_counter()
    scores: dict[tuple[str, int], list[tuple[float, float]]] = {}
    machine = []
    for path in photos:
        bgr = cv2.imread(str(path))
        if bgr is None:
            continue
        coded = encoder.encode(CapturedFrame(0, 0, bgr), args.level).bitstream
        machine.append(len(coded))
        decoded = decoder.decode(coded)
        size = view_size(decoded.geometry.image_size, encoder.input_size)
        truth = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)[:, :, ::-1].copy()
        base = preview(decoded, size).astype(np.int16)
        for budget in BUDGETS:
            left = budget - len(coded)
            views: dict[str, np.ndarray | None] = {"webp": _fit(truth, "WEBP", budget)}
            views["avif"] = None
            views["residual"] = None
            if left >= 200:
                with contextlib.suppress(ValueError):  # nothing fits: no avif row for it
                    views["avif"] = decode_enhancement(encode_enhancement(truth, left).data, size)
                residual = np.clip((truth.astype(np.int16) - base) // 2 + 128, 0, 255)
                got = _fit(residual.astype(np.uint8), "AVIF", left)
                if got is not None:
                    views["residual"] = np.clip(base + 2 * (got.astype(np.int16) - 128), 0, 255)
            for name, view in views.items():
                if view is None:
                    continue
                as_bgr = np.ascontiguousarray(view.astype(np.uint8)[:, :, ::-1])
                score = (psnr(truth[:, :, ::-1], as_bgr), ms_ssim(truth[:, :, ::-1], as_bgr))
                scores.setdefault((name, budget), []).append(score)
    lines = [
        f"Photos dev set, {len(machine)} frames; machine bitstream at level {args.level}: "
        f"{statistics.mean(machine):,.0f} B/frame on average "
        f"({time.perf_counter() - started:.0f} s).",
        "",
        "| total B | view | frames | PSNR dB | MS-SSIM |",
        "|---:|---|---:|---:|---:|",
    ]
    rows = []
    for budget in BUDGETS:
        for name in ("webp", "avif", "residual"):
            got = scores.get((name, budget), [])
            if not got:
                lines.append(f"| {budget:,} | {name} | 0 | – | – |")
                continue
            p, m = statistics.mean(g[0] for g in got), statistics.mean(g[1] for g in got)
            rows.append({"budget": budget, "view": name, "frames": len(got), "psnr": p,
                         "ms_ssim": m})  # fmt: skip
            lines.append(f"| {budget:,} | {name} | {len(got)} | {p:.2f} | {m:.3f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "enhancement_residual.json").write_text(json.dumps({"rows": rows}, indent=2))
    (args.out / "enhancement_residual.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
