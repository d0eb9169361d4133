"""``fchm model eval`` results out: JSON, a markdown table, the rate–fidelity plot.

EvalResult ─┬─► write_json ─► {"rows": [...], "bd_rate_vs_jpeg": {...}, "meta": {...}}
            ├─► markdown   ─► rows table + BD-rate table + run facts
            └─► plot       ─► PNG: bytes/frame (log) vs mAP50, class-agnostic mAP50 and
                               mAP50-95, one curve per codec
"""

from __future__ import annotations

import json
from pathlib import Path

from model.evaluate import FULL_DETECTOR, EvalResult

COLUMNS = ("codec", "setting", "frames", "bytes_per_frame", "bpp", "map50", "map50_95",
           "map50_confident", "map50_95_confident", "reference_boxes",
           "confident_reference_boxes", "edge_ms_per_frame", "decode_ms_per_frame")  # fmt: skip


def write_json(result: EvalResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: a NaN would make invalid JSON; "not computable" is always None.
    path.write_text(json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n")


def _cell(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and v >= 1000:
        return f"{v:,.1f}"
    return str(v)


def bytes_cell(v: dict[str, object]) -> str:
    """One ``bytes_at`` entry: '12,345', '≤ 900' (upper bound) or '–' (never reached)."""
    n = v["bytes_per_frame"]
    if not isinstance(n, float | int):
        return "–"
    return ("≤ " if v["bound"] else "") + f"{n:,.0f}"


def _percent(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:+.1f} %"


def markdown(result: EvalResult) -> str:
    rows = [r.__dict__ for r in result.rows]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    lines += ["", "BD-rate against JPEG (bytes/frame at equal mAP50; negative = fewer bytes):", ""]
    lines += ["| codec | BD-rate | mAP50 overlap | frames | note |", "|---|---|---|---|---|"]
    for name, d in result.bd_rate_details.items():
        overlap = (
            "–" if d["overlap_map50"] is None else "{:.3f}..{:.3f}".format(*d["overlap_map50"])
        )
        lines.append(
            f"| {name} | {_percent(d['bd_rate'])} | {overlap} | {d['frames']} | {d['note'] or ''} |"
        )
    meta = result.meta
    equal = meta["bytes_at_equal_map50"]
    families = list(next(iter(equal.values())))
    lines += ["", "Bytes/frame at equal fidelity (interpolated on each codec's envelope; "
              "≤: its cheapest setting already reaches it; –: never reaches it):"]  # fmt: skip
    lines += ["", "| target | " + " | ".join(families) + " |"]
    lines += ["|" + "---|" * (len(families) + 1)]
    lines += [f"| {t} | " + " | ".join(bytes_cell(v[f]) for f in families) + " |"
              for t, v in equal.items()]  # fmt: skip
    t = meta["timing_ms_per_frame"]
    video = meta["video"]
    source = [f"{meta['image_frames']} images from {meta['images']}"] if meta["images"] else []
    if video:
        source.append(
            f"{len(video['clips'])} clip(s) of {video['frames_per_clip']} consecutive frames "
            f"at {video['fps']} fps from {Path(video['path']).name} ({video['size'][0]}x"
            f"{video['size'][1]}, {video['total_frames']} frames at {video['source_fps']} fps)"
        )
    lines += [
        "",
        f"{' + '.join(source)}, coded at {', '.join(meta['coded_sizes'])} (never upscaled); "
        f"{meta['reference_detections']} reference detections (conf ≥ {meta['reference_conf']}),"
        f" {meta['confident_reference_detections']} confident (≥ {meta['confident_conf']}), "
        f"{meta['frames_without_reference_detections']} frames without any.",
        f"Video baselines: {meta['video_options']}; GOP {meta['video_gop_frames']} frames. "
        f"Left out: {meta['baselines_unavailable'] or 'none'}.",
        *_inter_line(meta.get("feature_inter")),
        f"Edge ms/frame: encoder {t['encoder']}, tail {t['tail']}, full detector "
        f"{t['full_detector_on_edge']}. edge_ms = encoder + quantize + entropy-code + container "
        "(feature codec) or image/stream encode (pixel codecs); decode_ms = cloud-side decode.",
    ]
    return "\n".join(lines) + "\n"


def _inter_line(inter: dict[str, object] | None) -> list[str]:
    if not inter:
        return []
    families = inter["families"]
    assert isinstance(families, list)
    return [
        f"Feature codec streamed ({', '.join(families)}): P-frames against the previous "
        f"frame's decoded latent, keyframe every {inter['keyframe_every_frames']} frames, "
        f"skip threshold {inter['skip_threshold']} symbol steps²; photos stay intra."
    ]


def plot(result: EvalResult, path: Path) -> None:
    """Rate–fidelity curves of every codec, points in sweep order, log bytes axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), constrained_layout=True)
    families = dict.fromkeys(r.codec for r in result.rows if r.codec != FULL_DETECTOR)
    for ax, metric in zip(axes, ("map50", "map50_agnostic", "map50_95"), strict=True):
        for name in families:
            points = sorted(
                (r.bytes_per_frame, getattr(r, metric))
                for r in result.rows
                if r.codec == name and r.bytes_per_frame and getattr(r, metric) is not None
            )
            if not points:
                continue
            bd = result.bd_rate_vs_jpeg.get(name) if metric == "map50" else None
            label = name if bd is None else f"{name} (BD-rate vs JPEG {_percent(bd)})"
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("bytes per frame (log)")
        ax.set_ylabel(metric.replace("map", "mAP").replace("_", "-", 1).replace("_", " "))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    meta = result.meta
    fig.suptitle(
        f"{Path(meta['bundle']).name} ({meta['bundle_codec']} codec), {meta['frames']} frames: "
        "fidelity vs the uncompressed detector"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
