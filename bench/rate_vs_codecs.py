"""Bytes at equal detection fidelity: the bundle's codec against every pixel codec, per dev set.

    bench/dev_sets.py DEV_SETS ─► model.evaluate.evaluate (one run per set) ─► EvalResult
        ─► rate_vs_codecs_<set>.json + .md     rows, BD-rates, bytes at equal mAP50
        ─► rate_vs_codecs.md                   the issue-12 targets table, with verdicts

Video sets are judged as a camera streams them: --frames consecutive frames thinned to
--fps (default 5) from the source's timestamps; H.264 and H.265 code each clip as one
stream with inter prediction (keyframe every --gop s, no B-frames) and all-intra, and so
does the bundle's codec: "fchm-inter" (P-frames against the previous frame's decoded
latent, the same keyframe interval) beside "fchm" (every frame intra). Photo sets are
coded at their own size (downscaled to the detector's 640 px when larger), intra only.
The targets (issue 12): fixed-camera video at mAP50 0.95: ≤ 0.5x H.264's bytes and
≤ 0.7x H.265's, judged on fchm-inter (what a camera runs; fchm where the bundle has no
P-frame tables); photos at mAP50 0.9 and 0.95: ≤ 0.33x WebP's and ≤ 0.5x the best intra
pixel codec's; photos: mAP50 ≥ 0.95 at ≤ 8 KB.

    .venv/bin/python bench/rate_vs_codecs.py --bundle bundles/default [--set fixed_camera]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# bench/ is on the path of a script run from it (as `make bench` runs it).
from dev_sets import DEV_SETS, DevSet, fetch, path_of

from model.eval_report import bytes_cell, markdown, write_json
from model.evaluate import EvalConfig, EvalInputError, EvalResult, evaluate

INTRA = ("jpeg", "webp", "avif", "h264-intra", "h265-intra")
# A sweep that fits `make bench` on 2 cores: every other rate level, the pixel codecs'
# qualities from 10 (AVIF at q=30 already reaches mAP50 0.95 on the fixed camera) to 98,
# CRFs 23-48 (H.265 inter holds 0.95 up to CRF 43 there).
LEVELS = tuple(range(0, 19, 2))
QUALITIES = (10, 25, 50, 75, 90, 98)
CRFS = (23, 28, 33, 38, 43, 48)


def at(result: EvalResult, codec: str, target: float) -> dict[str, Any]:
    """Bytes per frame ``codec`` needs for mAP50 ``target``, as evaluate() read them off
    its envelope (model/eval_metrics.py ``bytes_at``)."""
    entry: dict[str, Any] = result.meta["bytes_at_equal_map50"][f"map50>={target}"][codec]
    return entry


def judged(dev: DevSet, result: EvalResult) -> str:
    """The row family the targets judge: the bundle's codec as the set's camera sends it,
    streamed with P-frames on video when the bundle can, intra on photos."""
    family = "uniform" if result.meta["bundle_codec"] == "uniform" else "fchm"
    if dev.kind == "video" and any(r.codec == f"{family}-inter" for r in result.rows):
        return f"{family}-inter"
    return family


def ratio(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[float | None, str]:
    """ours/theirs bytes, and how sure: an upper bound on ours makes the ratio one too."""
    a, b = ours["bytes_per_frame"], theirs["bytes_per_frame"]
    if a is None:
        return None, "FCHM never reaches it"
    if b is None:
        return None, "baseline never reaches it in its sweep"
    if theirs["bound"]:
        return a / b, "baseline's cheapest setting already reaches it: ratio ≥ this"
    return a / b, "ratio ≤ this" if ours["bound"] else ""


def verdict(ours: dict[str, Any], theirs: dict[str, Any], value: float | None,
            limit: float) -> str:  # fmt: skip
    """met / missed / unknown, minding which side's figure is only a bound."""
    if ours["bytes_per_frame"] is None:
        return "missed"
    if theirs["bytes_per_frame"] is None or value is None:
        # Its finest setting stays below: a finer one (lower CRF, higher quality) might
        # reach it, so no ratio is known.
        return "unknown (the baseline's sweep does not reach it)"
    if ours["bound"] and theirs["bound"]:
        return "unknown (both cheapest settings reach it)"
    if ours["bound"]:
        return "met" if value <= limit else "unknown (FCHM's cheapest level reaches it)"
    if theirs["bound"]:
        return "missed" if value > limit else "unknown (the baseline's cheapest reaches it)"
    return "met" if value <= limit else "missed"


def targets(dev: DevSet, result: EvalResult) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows of the issue's targets table for one dev set."""
    codecs = {r.codec for r in result.rows}
    family = judged(dev, result)
    out: list[tuple[str, str, str]] = []

    def check(target: float, name: str, limit: float) -> None:
        if name not in codecs:
            return
        ours, theirs = at(result, family, target), at(result, name, target)
        value, how = ratio(ours, theirs)
        shown = "–" if value is None else f"{value:.2f}x"
        measured = f"{family} {bytes_cell(ours)} B, {name} {bytes_cell(theirs)} B: {shown} {how}"
        out.append((f"mAP50 {target}: ≤ {limit}x {name}", measured.strip(),
                    verdict(ours, theirs, value, limit)))  # fmt: skip

    if dev.kind == "video":
        check(0.95, "h264", 0.5)
        check(0.95, "h265", 0.7)
    else:
        for t in (0.9, 0.95):
            check(t, "webp", 0.33)
            best = min(
                (c for c in INTRA if c in codecs),
                key=lambda c: at(result, c, t)["bytes_per_frame"] or float("inf"),
            )
            check(t, best, 0.5)
        ours = at(result, family, 0.95)
        n = ours["bytes_per_frame"]
        out.append(("mAP50 ≥ 0.95 at ≤ 8 KB/frame", f"{bytes_cell(ours)} B",
                    "missed" if n is None or n > 8192 else "met"))  # fmt: skip
    return out


def equal_table(result: EvalResult, family: str) -> list[str]:
    """Bytes per frame at mAP50 0.9 and 0.95 for every codec (the bundle's intra and
    P-frame rows among them), and the judged ``family``'s ratio to each."""
    codecs = list(dict.fromkeys(r.codec for r in result.rows if r.codec != "full-detector"))
    lines = [f"| codec | B at mAP50 0.9 | {family} / it | B at mAP50 0.95 | {family} / it |",
             "|---|---|---|---|---|"]  # fmt: skip
    for c in codecs:
        cells = []
        for t in (0.9, 0.95):
            theirs = at(result, c, t)
            ours = at(result, family, t)
            value, _ = ratio(ours, theirs)
            sign = "≥ " if theirs["bound"] and not ours["bound"] else ""
            sign = "≤ " if ours["bound"] and not theirs["bound"] else sign
            cells += [bytes_cell(theirs), "–" if value is None else f"{sign}{value:.2f}x"]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return lines


def run_set(dev: DevSet, args: argparse.Namespace) -> tuple[EvalResult, list[str]]:
    path = path_of(dev)
    cfg = EvalConfig(
        bundle=args.bundle,
        images=path if dev.kind == "photos" else None,
        video=path if dev.kind == "video" else None,
        fps=args.fps, frames=args.frames, clips=args.clips, gop_seconds=args.gop,
        qualities=QUALITIES, crfs=CRFS, levels=None if args.all_levels else LEVELS,
        threads=args.threads,
    )  # fmt: skip
    result = evaluate(cfg)
    stem = args.out / f"rate_vs_codecs_{dev.name}"
    write_json(result, stem.with_suffix(".json"))
    stem.with_suffix(".md").write_text(f"# {dev.name}: rate vs detection fidelity\n\n"
                                       + markdown(result))  # fmt: skip
    checks = targets(dev, result)
    streamed = result.meta.get("feature_inter")
    inter = (
        ""
        if not streamed
        else f" {', '.join(streamed['families'])}: P-frames, keyframe every "
        f"{streamed['keyframe_every_frames']} frames, skip threshold {streamed['skip_threshold']}."
    )
    lines = [f"## {dev.name} ({dev.kind}): {dev.shows}", "",
             f"{dev.package} {dev.version}, {dev.licence}. {result.meta['frames']} frames, "
             f"{result.meta['reference_detections']} reference boxes (conf ≥ 0.25), "
             f"{result.meta['confident_reference_detections']} confident (≥ 0.5); "
             f"{result.meta['run_seconds']} s.{inter}", "",
             *equal_table(result, judged(dev, result)), "",
             "| target | measured | verdict |", "|---|---|---|",
             *(f"| {t} | {m} | {v} |" for t, m, v in checks), ""]  # fmt: skip
    print("\n".join(lines), flush=True)
    return result, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--set", action="append", choices=[d.name for d in DEV_SETS],
                        help="dev set (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--fps", type=float, default=5.0, help="camera rate of video sets")
    parser.add_argument("--frames", type=int, default=30, help="consecutive frames per clip")
    parser.add_argument("--clips", type=int, default=1, help="clips per video")
    parser.add_argument("--gop", type=float, default=10.0, help="inter keyframe interval, s")
    parser.add_argument("--all-levels", action="store_true", help="every rate level")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: auto)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    fetch()
    chosen = [d for d in DEV_SETS if not args.set or d.name in args.set]
    sections = ["# Rate vs codecs: bytes at equal mAP50 (issue 12 targets)", "",
                f"Bundle {args.bundle}; video at {args.fps} fps, {args.frames} consecutive "
                f"frames x {args.clips} clip(s), inter GOP {args.gop} s. mAP50 against the "
                "uncompressed detector's own detections (no labelled set offline). Bytes "
                "interpolated on each codec's envelope (≤: its cheapest setting already "
                "reaches the target).", ""]  # fmt: skip
    summary: dict[str, Any] = {}
    for dev in chosen:
        try:
            result, lines = run_set(dev, args)
        except EvalInputError as exc:
            parser.error(str(exc))
        sections += lines
        summary[dev.name] = {"targets": targets(dev, result), "dev_set": dev.__dict__}
    # With --set, a summary of its own: rate_vs_codecs_<set>.md holds that set's rows.
    name = "rate_vs_codecs" if not args.set else "rate_vs_codecs_summary_" + "_".join(args.set)
    (args.out / f"{name}.md").write_text("\n".join(sections) + "\n")
    (args.out / f"{name}_targets.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}/{name}.md")


if __name__ == "__main__":
    main()
