"""Rate vs detection fidelity: the FCHM bitstream against JPEG and WebP, same frames, same run.

    video frame ─► letterbox ─► encoder.onnx ─► features ─┬─► tail ─► reference detections (GT)
                                                          ├─► tail ─► features-fp32 (self-check)
                                                          └─► compress(level) ─► FrameBitstream
                                                               bytes ─► FrameDecoder ─► tail
    resized frame ─► cv2.imencode(JPEG|WebP, q) ─► bytes ─► imdecode ─► encoder ─► tail

Fidelity is COCO mAP50 / mAP50-95 (pycocotools) of each signal's detections against
the detections of the same detector on the uncompressed frame; rate is the whole
container (headers included) per frame. The frames come from a video the codec was
not fitted on (iscc-samples' demo.mp4), sampled evenly across it.

    .venv/bin/python bench/rate_vs_jpeg.py --frames 40
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import onnxruntime as ort
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cloud.detector_tail import Detection, DetectorTail
from cloud.frame_decoder import FrameDecoder
from cloud.onnx_sessions import open_session
from codec.bitstream import FrameBitstream
from codec.bundle import Bundle
from edge.preprocess import letterbox

QUALITIES = (10, 20, 30, 50, 70, 90)
IMAGE_CODECS = {
    "jpeg": (".jpg", cv2.IMWRITE_JPEG_QUALITY),
    "webp": (".webp", cv2.IMWRITE_WEBP_QUALITY),
}
FIDELITY_TARGETS = (0.5, 0.75, 0.9)
COLUMNS = ("codec", "setting", "bytes_per_frame", "bpp", "map50", "map50_95",
           "edge_ms", "decode_ms")  # fmt: skip


@dataclass
class Signal:
    """One codec setting: per-frame bytes, edge/cloud time and the detections it led to."""

    codec: str
    setting: str
    nbytes: list[int] = field(default_factory=list)
    edge_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    detections: list[list[Detection]] = field(default_factory=list)

    def record(self, nbytes: int, edge_s: float, decode_s: float, dets: list[Detection]) -> None:
        self.nbytes.append(nbytes)
        self.edge_s.append(edge_s)
        self.decode_s.append(decode_s)
        self.detections.append(dets)


def default_video() -> Path:
    try:
        import iscc_samples
    except ImportError:
        raise SystemExit("no --video and no iscc-samples: install extra 'demo'") from None
    return next(p for p in iscc_samples.videos() if p.name == "demo.mp4")


def read_frames(path: Path, count: int) -> tuple[list[np.ndarray], list[int]]:
    """``count`` BGR frames sampled evenly across the whole video, and their indices."""
    with av.open(str(path)) as container:
        total = sum(1 for _ in container.decode(video=0))
    wanted = sorted({int(i) for i in np.linspace(0, total - 1, count).round()})
    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames.append(frame.to_ndarray(format="bgr24"))
    return frames, wanted


def coco_map(
    reference: list[list[Detection]], predicted: list[list[Detection]]
) -> tuple[float | None, float | None]:
    """(mAP50, mAP50-95) of ``predicted`` with ``reference`` as ground truth; None if no GT."""

    def xywh(d: Detection) -> list[float]:
        x1, y1, x2, y2 = d.box
        return [x1, y1, x2 - x1, y2 - y1]

    anns: list[dict[str, Any]] = [
        {"id": k + 1, "image_id": i, "category_id": d.class_id + 1, "bbox": xywh(d),
         "area": xywh(d)[2] * xywh(d)[3], "iscrowd": 0}
        for k, (i, d) in enumerate((i, d) for i, ds in enumerate(reference) for d in ds)
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
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": [{"id": i} for i in range(len(reference))],
            "annotations": anns,
            "categories": [{"id": c} for c in sorted({a["category_id"] for a in anns})],
        }
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(dets), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[1]), float(evaluator.stats[0])


def clock() -> Callable[[], float]:
    """Start a stopwatch; calling the result gives the seconds since."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    # 1. Bundle, sessions, frames.
    started = time.perf_counter()
    bundle = Bundle.load(args.bundle)
    size = bundle.manifest.detector.input_size
    pad = bundle.manifest.detector.pad_multiple
    codec = bundle.load_codec()
    decoder = FrameDecoder(bundle)
    encoder = open_session(bundle.file("encoder"), args.threads)
    tail = DetectorTail(bundle, conf=args.conf, threads=args.threads)  # what the cloud stores
    scorer = DetectorTail(bundle, conf=args.pred_conf, threads=args.threads)  # full PR curve
    video = args.video or default_video()
    frames, indices = read_frames(video, args.frames)

    def features(x: np.ndarray) -> np.ndarray:
        return np.asarray(encoder.run(None, {"image": x})[0][0])

    # 2. Warm up ORT and constriction's per-(level, channel) model cache on the first frame.
    x0, g0 = letterbox(frames[0], size, pad)
    for level in range(codec.num_levels):
        codec.compress(features(x0), level)
    tail(features(x0), g0)
    scorer(features(x0), g0)
    resized0 = cv2.resize(frames[0], g0.resized_size, interpolation=cv2.INTER_LINEAR)
    if not np.array_equal(letterbox(resized0, size, pad)[0], x0):
        raise RuntimeError("the resized frame does not letterbox to the edge's network input")

    steps = getattr(codec, "steps", np.full(codec.num_levels, np.nan))  # uniform codec's steps
    fchm = [
        Signal(f"fchm-{codec.name}", f"level {lv} (step {st:.3g})") for lv, st in enumerate(steps)
    ]
    raw = Signal("features-fp32", "uncompressed split tensor")
    images = {(n, q): Signal(n, f"q={q}") for n in IMAGE_CODECS for q in QUALITIES}
    reference: list[list[Detection]] = []
    stage: dict[str, list[float]] = {"preprocess": [], "encoder": [], "tail": []}

    for frame in frames:
        # 3. Edge path: letterbox → encoder; the reference detections come from the same features.
        lap = clock()
        x, geom = letterbox(frame, size, pad)
        stage["preprocess"].append(lap())
        lap = clock()
        feats = features(x)
        t_enc = lap()
        stage["encoder"].append(t_enc)
        lap = clock()
        reference.append(tail(feats, geom))
        stage["tail"].append(lap())
        raw.record(feats.nbytes, t_enc, 0.0, scorer(feats, geom))

        # 4. Every rate level: quantize + entropy-code into the container, then the cloud path.
        for level, signal in enumerate(fchm):
            lap = clock()
            enc = codec.compress(feats, level)
            data = FrameBitstream(
                codec.codec_id, level, bundle.tag, geom.image_size, enc.latent_shape, enc.payload
            ).to_bytes()
            t_code = lap()
            lap = clock()
            decoded = decoder.decode(data)
            t_dec = lap()
            if decoded.geometry != geom:
                raise RuntimeError(f"cloud geometry {decoded.geometry} != edge geometry {geom}")
            signal.record(len(data), t_enc + t_code, t_dec, scorer(decoded.features, geom))

        # 5. Baselines on the frame resized as the edge does, through the full detector.
        resized = cv2.resize(frame, geom.resized_size, interpolation=cv2.INTER_LINEAR)
        for (name, q), signal in images.items():
            ext, flag = IMAGE_CODECS[name]
            lap = clock()
            ok, buf = cv2.imencode(ext, resized, [flag, q])
            t_code = lap()
            if not ok:
                raise RuntimeError(f"OpenCV cannot encode {name} (built without it?)")
            lap = clock()
            image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            t_dec = lap()
            if image is None:
                raise RuntimeError(f"OpenCV cannot decode its own {name} output")
            xi, gi = letterbox(image, size, pad)
            if xi.shape != x.shape or gi.pad != geom.pad:
                raise RuntimeError(f"baseline input {xi.shape} differs from edge input {x.shape}")
            # Boxes through the original frame's geometry: same pixels, same coordinates.
            signal.record(buf.size, t_code, t_dec, scorer(features(xi), geom))

    # 6. Score every signal against the reference.
    resized_w, resized_h = letterbox(frames[0], size, pad)[1].resized_size
    rows: list[dict[str, Any]] = []
    for signal in [*fchm, *images.values(), raw]:
        map50, map50_95 = coco_map(reference, signal.detections)
        mean_bytes = float(np.mean(signal.nbytes))
        rows.append({
            "codec": signal.codec,
            "setting": signal.setting,
            "bytes_per_frame": round(mean_bytes, 1),
            "bpp": round(8 * mean_bytes / (resized_w * resized_h), 4),
            "map50": None if map50 is None else round(map50, 4),
            "map50_95": None if map50_95 is None else round(map50_95, 4),
            "edge_ms": round(1e3 * float(np.mean(signal.edge_s)), 2),
            "decode_ms": round(1e3 * float(np.mean(signal.decode_s)), 2),
        })  # fmt: skip

    # 7. Bytes each codec needs at equal fidelity, timings as ratios of one run.
    equal: dict[str, dict[str, float | None]] = {}
    for target in FIDELITY_TARGETS:
        equal[str(target)] = {}
        for family in dict.fromkeys(r["codec"] for r in rows if r["codec"] != raw.codec):
            ok_rows = [r for r in rows if r["codec"] == family and (r["map50_95"] or 0) >= target]
            equal[str(target)][family] = min((r["bytes_per_frame"] for r in ok_rows), default=None)
    ms = {k: round(1e3 * float(np.mean(v)), 2) for k, v in stage.items()}
    full = ms["encoder"] + ms["tail"]
    meta: dict[str, Any] = {
        "bundle": str(args.bundle),
        "bundle_hash": bundle.hash,
        "codec": codec.name,
        "video": str(video),
        "video_size": list(frames[0].shape[1::-1]),
        "frames": len(frames),
        "frame_indices": indices,
        "resized_size": [resized_w, resized_h],
        "network_input": list(g0.input_size),
        "bpp_pixels": "resized frame (long side = input_size), before padding",
        "reference_conf": args.conf,
        "prediction_conf": args.pred_conf,
        "reference_detections": sum(len(r) for r in reference),
        "frames_without_reference_detections": sum(not r for r in reference),
        "timing_ms_per_frame": {**ms, "full_detector_on_edge": round(full, 2)},
        "edge_encode_over_full_detector": {
            r["setting"]: round(r["edge_ms"] / full, 3) for r in rows[: len(fchm)]
        },
        "bytes_at_equal_map50_95": equal,
        "onnxruntime": f"{ort.__version__} {encoder.get_providers()}",
        "threads": args.threads or "auto",
        "opencv": cv2.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_seconds": round(time.perf_counter() - started, 1),
    }
    return {"rows": rows, "meta": meta}


def markdown(result: dict[str, Any]) -> str:
    def cell(v: object) -> str:
        return "–" if v is None else f"{v:,}" if isinstance(v, float) and v >= 1000 else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in result["rows"]]
    meta = result["meta"]
    equal = meta["bytes_at_equal_map50_95"]
    families = list(next(iter(equal.values())))
    lines += ["", "Bytes/frame at equal fidelity (smallest setting reaching the mAP50-95):", ""]
    lines += ["| mAP50-95 ≥ | " + " | ".join(families) + " |", "|" + "---|" * (len(families) + 1)]
    lines += [
        f"| {t} | " + " | ".join(cell(v[f]) for f in families) + " |" for t, v in equal.items()
    ]
    t = meta["timing_ms_per_frame"]
    lines += [
        "",
        f"{meta['frames']} frames of {Path(meta['video']).name} ({meta['video_size'][0]}x"
        f"{meta['video_size'][1]}) resized to {meta['resized_size'][0]}x{meta['resized_size'][1]};"
        f" {meta['reference_detections']} reference detections (conf ≥ {meta['reference_conf']}),"
        f" {meta['frames_without_reference_detections']} frames without any.",
        f"Edge ms/frame: preprocess {t['preprocess']}, encoder {t['encoder']}, tail {t['tail']},"
        f" full detector {t['full_detector_on_edge']}. edge_ms = encoder + quantize + entropy-code"
        " + container (FCHM) or image encode (JPEG/WebP); decode_ms = cloud-side decode.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--video", type=Path, default=None, help="default: iscc-samples demo.mp4")
    parser.add_argument("--frames", type=int, default=60, help="frames sampled evenly")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--conf", type=float, default=0.25, help="reference detection threshold")
    parser.add_argument("--pred-conf", type=float, default=0.001, help="threshold on test signals")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: auto)")
    args = parser.parse_args()
    if args.frames < 1:
        parser.error(f"--frames must be ≥ 1, got {args.frames}")
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rate_vs_jpeg.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.out / "rate_vs_jpeg.md").write_text("# Rate vs detection fidelity\n\n" + text)
    print(text)
    print(f"wrote {args.out}/rate_vs_jpeg.json and .md in {result['meta']['run_seconds']} s")


if __name__ == "__main__":
    main()
