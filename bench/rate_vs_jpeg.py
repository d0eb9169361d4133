"""Rate vs detection fidelity: the bundle's codec against JPEG, WebP and H.264, same frames.

A thin wrapper over ``model.evaluate`` (the library behind ``fchm model eval``), kept
for ``make bench`` and its results files:

    video frames ─► model.evaluate.evaluate ─► EvalResult ─► rate_vs_jpeg.json + .md

Fidelity is COCO mAP50 / mAP50-95 (pycocotools) of each signal's detections against
the same detector's detections on the uncompressed frame; rate is the whole coded
signal per frame (the FCHM container with its headers). The frames come from a video
the codec was not fitted on (iscc-samples' demo.mp4), sampled evenly across it.

    .venv/bin/python bench/rate_vs_jpeg.py --frames 40
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fchm.demo import packaged_video
from model.eval_report import markdown, write_json
from model.evaluate import EvalConfig, EvalInputError, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--video", type=Path, default=None, help="default: iscc-samples demo.mp4")
    parser.add_argument("--images", type=Path, default=None, help="folder of evaluation images")
    parser.add_argument("--frames", type=int, default=60, help="frames sampled evenly")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--conf", type=float, default=0.25, help="reference detection threshold")
    parser.add_argument("--pred-conf", type=float, default=0.001, help="threshold on test signals")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: auto)")
    args = parser.parse_args()
    video = args.video
    if video is None and args.images is None:
        try:
            video = packaged_video()
        except RuntimeError as exc:
            parser.error(f"--video: {exc}")
    cfg = EvalConfig(
        bundle=args.bundle,
        images=args.images,
        video=video,
        frames=args.frames,
        conf=args.conf,
        pred_conf=args.pred_conf,
        threads=args.threads,
    )
    try:
        result = evaluate(cfg)
    except EvalInputError as exc:
        parser.error(str(exc))
    write_json(result, args.out / "rate_vs_jpeg.json")
    text = markdown(result)
    (args.out / "rate_vs_jpeg.md").write_text("# Rate vs detection fidelity\n\n" + text)
    print(text)
    print(f"wrote {args.out}/rate_vs_jpeg.json and .md in {result.meta['run_seconds']} s")


if __name__ == "__main__":
    main()
