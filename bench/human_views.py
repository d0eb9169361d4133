"""Human views per dev set: the bundle's views against JPEG/WebP at the same bytes.

    bench/dev_sets.py DEV_SETS ─► model.human_eval.evaluate_human (one run per set)
        ─► human_views_<set>.json + .md   rows: view, level, bytes, PSNR, MS-SSIM, mAP50;
                                          and per total budget B: enhanced, JPEG, WebP at B
        ─► human_views_<set>.png          original | JPEG | WebP | each view | enhanced
        ─► human_views.md                 every set's table

``--extra-preview NAME=preview.onnx`` judges another preview decoder on the same decoded
latents (e.g. the linear one an export without ``--preview`` ships). Video sets use the
first ``--frames`` frames of a clip at ``--fps``, each coded as a keyframe (a view decodes
the same latent whether it came as a keyframe or a P-frame chain).

    .venv/bin/python bench/human_views.py --bundle bundles/default [--set photos]
"""

from __future__ import annotations

import argparse
from pathlib import Path

# bench/ is on the path of a script run from it (as `make bench` runs it).
from dev_sets import DEV_SETS, fetch, path_of

from model.human_eval import (
    ENHANCED_BYTES,
    HumanEvalConfig,
    evaluate_human,
    markdown_table,
    write_human_json,
)

LEVELS = (0, 2, 4, 6, 8, 10, 12, 14)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument(
        "--set",
        action="append",
        choices=[d.name for d in DEV_SETS],
        help="dev set (repeatable; default: photos, fixed_camera, stage)",
    )
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--frames", type=int, default=8, help="frames per video set")
    parser.add_argument("--extra-preview", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--grid-level", type=int, default=8)
    parser.add_argument(
        "--enhanced-bytes",
        type=lambda v: tuple(int(b) for b in v.split(",") if b),
        default=ENHANCED_BYTES,
        metavar="B,B,...",
        help="total bytes per frame of the enhanced view's rows (machine bitstream at level 0 "
        "+ enhancement), comma-separated; '' for none "
        f"[default: {','.join(map(str, ENHANCED_BYTES))}]",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    fetch()
    extras = tuple((n, Path(p)) for n, _, p in (e.partition("=") for e in args.extra_preview))
    wanted = args.set or ["photos", "fixed_camera", "stage"]
    sections = ["# Human views against JPEG/WebP at the same bytes", "",
                f"Bundle {args.bundle}; levels {list(LEVELS)}; video sets: {args.frames} frames "
                f"at {args.fps} fps, each a keyframe. JPEG/WebP: the largest file at or under "
                "the machine bitstream's bytes. mAP50: the detector on the view against its "
                "own detections on the original. Feature distance: normalized MSE of the "
                "detector's first layers (not LPIPS). ms/frame: a view's restore time on "
                f"{args.threads} ONNX Runtime threads; JPEG/WebP: decode time.",
                "",
                "Setting `B n`: n bytes per frame in all. enhanced: the machine bitstream at "
                "level 0 (m bytes) plus the frame's enhancement layer (codec/enhancement.py, "
                "the payload without a container) coded at n − m; ms/frame is the cloud's "
                "decode of it, edge ms/frame the edge's encode. A frame where n − m is under "
                "the enhancement's minimum or nothing fits is the preview at m bytes "
                "(fallback frames). JPEG/WebP at `B n`: the largest file at or under n.",
                ""]  # fmt: skip
    for dev in (d for d in DEV_SETS if d.name in wanted):
        path = path_of(dev)
        grid = args.out / f"human_views_{dev.name}.png"
        result = evaluate_human(
            HumanEvalConfig(
                bundle=args.bundle,
                images=path if dev.kind == "photos" else None,
                video=path if dev.kind == "video" else None,
                fps=args.fps, frames=args.frames, levels=LEVELS, extra_previews=extras,
                grid=grid, grid_level=args.grid_level, threads=args.threads,
                enhanced_bytes=args.enhanced_bytes,
            )
        )  # fmt: skip
        write_human_json(result, args.out / f"human_views_{dev.name}.json")
        meta = result["meta"]
        table = markdown_table(result)
        lines = [f"## {dev.name}: {dev.shows}", "",
                 f"{meta['frames']} frames, {meta['reference_boxes']} reference boxes; "
                 f"{meta['run_seconds']} s. Grid: `{grid.name}` (level {meta['grid_level']}).",
                 "", table, ""]  # fmt: skip
        (args.out / f"human_views_{dev.name}.md").write_text("\n".join(lines))
        print("\n".join(lines), flush=True)
        sections += lines
    (args.out / "human_views.md").write_text("\n".join(sections))


if __name__ == "__main__":
    main()
