"""``fchm model eval --human``: are the human views worth looking at, and at what bytes?

    frame ─► edge encoder ─► codec at level l (a keyframe) ─► container ─► FrameDecoder ─► ŷ
        ─► each view the cloud serves (cloud.restorers.RESTORERS) ─► RGB at the frame's size
    frame ─► JPEG / WebP at the machine bitstream's bytes (the best quality that fits) ─► RGB
    enhanced view at B total bytes: the bitstream at the lowest level (m bytes) + the frame's
        enhancement layer (codec.enhancement) at B − m ─► RGB; JPEG / WebP at B beside it
    every RGB against the original frame:
        PSNR · MS-SSIM (pytorch-msssim) · detector agreement: mAP50 of the detector on the
        view against its own detections on the original · detector-feature distance:
        normalized MSE of the frozen detector's first layers (the edge's half), *not* LPIPS

Rows, one per (view, setting): ``view`` (a restorer kind, jpeg / webp, or enhanced),
``setting`` ("level l", or "B n" for the rows at a total budget of n bytes: enhanced, jpeg,
webp), ``bytes_per_frame`` (the machine bitstream; enhanced: plus the enhancement payload),
``psnr``, ``ms_ssim``, ``map50``, ``feature_distance``, ``ms_per_frame`` (the cloud's time:
the view's restore, the pixel codec's decode, the enhancement's decode),
``edge_ms_per_frame`` (enhanced only: the edge's enhancement encode), ``fallback_frames``
(enhanced only: frames where B − m bought no enhancement, served as the preview at m
bytes), ``frames`` and ``reference_boxes``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cloud.detector_tail import Detection
from cloud.frame_decoder import FrameDecoder
from cloud.restorers import (
    RESTORERS,
    PreviewRestorer,
    Restorer,
    RestorerOptions,
    UnavailableRestorer,
    load_restorers,
)
from codec.bitstream import FrameBitstream
from codec.bundle import Bundle
from codec.enhancement import (
    MIN_BUDGET_BYTES,
    EnhancementError,
    decode_enhancement,
    default_codec,
    encode_enhancement,
    fit_quality,
)
from edge.preprocess import letterbox
from model.eval_metrics import coco_map
from model.eval_pixel_codecs import code_image
from model.eval_signals import EvalFrame, FullDetector, load_images, video_clips
from model.reference_detector import DEFAULT_CACHE, reference_detector

PIXEL_VIEWS = ("jpeg", "webp")
ENHANCED = "enhanced"
ENHANCED_BYTES = (4000, 8000, 16000, 32000)
ENHANCED_DESCRIPTION = (
    "enhanced: the machine bitstream at the enhanced level plus the frame's own pixels coded "
    "by codec.enhancement at the rest of the total budget, decoded at the frame's size; the "
    "preview where no enhancement fits"
)


@dataclass(frozen=True)
class HumanEvalConfig:
    bundle: Path
    images: Path | None = None
    video: Path | None = None
    fps: float = 5.0
    frames: int = 30
    levels: tuple[int, ...] | None = None
    """rate levels (None: every other level of the bundle)"""
    views: tuple[str, ...] | None = None
    """restorer kinds (None: every registered one)"""
    restorers: RestorerOptions | None = None
    """the diffusion prior and its sampling (None: no prior; the kind is left out unless
    ``views`` names it, which is then an error)"""
    extra_previews: tuple[tuple[str, Path], ...] = ()
    """(name, preview.onnx) judged beside the bundle's own (e.g. an older decoder)"""
    grid: Path | None = None
    grid_level: int | None = None
    """level of the example grid (None: the middle of ``levels``)"""
    grid_frames: int = 4
    threads: int = 2
    conf: float = 0.25
    pred_conf: float = 0.001
    weights: Path | None = None
    reference_cache: Path = DEFAULT_CACHE
    enhanced_bytes: tuple[int, ...] = ENHANCED_BYTES
    """total bytes per frame (machine bitstream + enhancement) of the enhanced view's rows,
    each beside JPEG and WebP at the same total; () for no enhanced rows"""
    enhanced_level: int = 0
    """the rate level under the enhancement: the lowest, so the enhancement gets the most"""


@dataclass
class _Tally:
    view: str
    setting: str
    nbytes: list[int] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    ms_ssim: list[float] = field(default_factory=list)
    feature: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    detections: list[list[Detection]] = field(default_factory=list)
    edge_seconds: list[float] = field(default_factory=list)
    fallbacks: int = 0


@dataclass(frozen=True)
class HumanRow:
    view: str
    setting: str
    bytes_per_frame: float
    psnr: float
    ms_ssim: float
    map50: float | None
    feature_distance: float
    ms_per_frame: float
    frames: int
    reference_boxes: int
    edge_ms_per_frame: float | None = None
    """enhanced: the edge's enhancement encode (ms_per_frame is the cloud's decode)"""
    fallback_frames: int | None = None
    """enhanced: frames served as the preview at the machine bytes (no enhancement fit)"""


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two 3-channel uint8 images (pytorch-msssim, five scales). Its four
    downsamplings need the short side above 16·(window − 1): small frames (the stage
    clip is 176×144) use the largest odd Gaussian window ≤ 11 that fits."""
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    side = min(a.shape[:2])
    win = min(11, (side - 1) // 16 + 1)
    win -= 1 - win % 2
    if win < 3:
        raise ValueError(f"MS-SSIM needs frames of at least 33 px, got {a.shape[1]}x{a.shape[0]}")
    x, y = (
        torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float() for im in (a, b)
    )
    with torch.no_grad():
        return float(_ms_ssim(x, y, data_range=255.0, win_size=win))


class FeatureDistance:
    """Normalized MSE between the detector's first layers on two images (the edge's half
    of the frozen detector): a perceptual distance in the machine's own terms."""

    def __init__(self, bundle: Bundle, weights: Path | None) -> None:
        import torch

        from model.default_weights import default_weights
        from model.detector_split import EncoderHalf, load_detector

        detector = load_detector(weights or default_weights())
        self.net = EncoderHalf(detector, bundle.manifest.detector.split_layer).eval()
        self.size = bundle.manifest.detector.input_size
        self.pad = bundle.manifest.detector.pad_multiple
        self.torch = torch

    def of(self, bgr: np.ndarray) -> Any:
        """The detector's first-layer features of a frame (the original's: once per frame)."""
        x, _ = letterbox(bgr, self.size, self.pad)
        with self.torch.no_grad():
            return self.net(self.torch.from_numpy(x))

    def __call__(self, original: Any, view_bgr: np.ndarray) -> float:
        """Distance of a view from the original's features (``of(original)``)."""
        fv = self.of(view_bgr)
        return float(((original - fv) ** 2).mean() / (original**2).mean().clamp_min(1e-12))


def _at_bytes(codec: str, image: np.ndarray, budget: int) -> tuple[int, np.ndarray, float]:
    """The highest quality 1..100 whose file fits ``budget`` (quality 1 when none does)."""
    fit = fit_quality(partial(code_image, codec, image), budget, lambda c: c.nbytes, lowest=1)
    best = code_image(codec, image, 1) if fit is None else fit[1]
    return best.nbytes, best.image, best.decode_s


def _frames(cfg: HumanEvalConfig, bundle: Bundle) -> list[EvalFrame]:
    info = bundle.manifest.detector
    frames: list[EvalFrame] = []
    if cfg.images is not None:
        frames += load_images(cfg.images, info.input_size, info.pad_multiple)
    if cfg.video is not None:
        clip, _ = video_clips(cfg.video, cfg.fps, cfg.frames, 1, info.input_size, info.pad_multiple)
        frames += clip
    if not frames:
        raise ValueError("--human needs --images or --video")
    return frames


def evaluate_human(
    cfg: HumanEvalConfig, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    # 1. The bundle as edge and cloud run it, the views, the judges.
    started = time.perf_counter()
    bundle = Bundle.load(cfg.bundle)
    codec = bundle.load_codec()
    codec.prepare()
    decoder = FrameDecoder(bundle)
    reference = reference_detector(bundle, cfg.weights, cfg.reference_cache)
    detector = FullDetector(bundle, cfg.conf, cfg.pred_conf, cfg.threads, reference)
    loaded = load_restorers(bundle, cfg.threads, list(cfg.views or RESTORERS), cfg.restorers)
    missing = {k: r.reason for k, r in loaded.items() if isinstance(r, UnavailableRestorer)}
    if cfg.views and missing:
        raise ValueError(f"views {sorted(missing)} cannot be served: {missing}")
    # A kind that wants an enhancement payload (the cloud's enhanced view) is no view of the
    # machine bitstream alone: its rows are the "B n" ones below, which code the payload.
    views: dict[str, Restorer] = {
        k: r for k, r in loaded.items() if k not in missing and not r.wants_enhancement
    }
    for name, path in cfg.extra_previews:
        views[name] = PreviewRestorer(bundle, cfg.threads, model=path)
    features = FeatureDistance(bundle, cfg.weights)
    levels = list(cfg.levels or range(0, codec.num_levels, 2))
    if min(levels) < 0 or max(levels) >= codec.num_levels:
        raise ValueError(f"levels {levels} outside the bundle's 0..{codec.num_levels - 1}")
    grid_level = cfg.grid_level if cfg.grid_level is not None else levels[len(levels) // 2]
    if grid_level not in levels:
        levels.append(grid_level)
    budgets = sorted(set(cfg.enhanced_bytes))
    if budgets and budgets[0] <= 0:
        raise ValueError(f"enhanced bytes {budgets} must be positive")
    if budgets and not 0 <= cfg.enhanced_level < codec.num_levels:
        raise ValueError(
            f"enhanced level {cfg.enhanced_level} outside the bundle's 0..{codec.num_levels - 1}"
        )
    # The fallback of a frame no enhancement fits: the bundle's own preview, served or not.
    preview = views.get("preview") if budgets else None
    if budgets and not isinstance(preview, PreviewRestorer):
        preview = PreviewRestorer(bundle, cfg.threads)
    frames = _frames(cfg, bundle)

    def bitstream(edge: Any, level: int) -> bytes:
        encoded = codec.compress(edge.features, level)
        return FrameBitstream(
            codec.codec_id, level, bundle.tag, edge.geometry.image_size,
            encoded.latent_shape, encoded.payload, encoded.symbol_crc,
        ).to_bytes()  # fmt: skip

    # 2. Every frame: its reference detections, then per level the bitstream, each view
    # from it and each pixel codec at its bytes; per total budget B the enhanced view and
    # each pixel codec at B; all judged against the original.
    settings = [f"level {lv}" for lv in levels]
    tallies = {(v, s): _Tally(v, s) for v in [*views, *PIXEL_VIEWS] for s in settings}
    for b in budgets:
        for v in (ENHANCED, *PIXEL_VIEWS):
            tallies[(v, f"B {b}")] = _Tally(v, f"B {b}")

    def judge(
        key: tuple[str, str], bgr: np.ndarray, nbytes: int, seconds: float, of: EvalFrame, ref: Any
    ) -> _Tally:
        """Score one view ``bgr`` of frame ``of`` (``ref``: its original's features)."""
        t = tallies[key]
        t.nbytes.append(nbytes)
        t.seconds.append(seconds)
        # PSNR and MS-SSIM average over channels: BGR order scores as RGB does.
        t.psnr.append(psnr(bgr, of.image))
        t.ms_ssim.append(ms_ssim(bgr, of.image))
        t.feature.append(features(ref, bgr))
        t.detections.append(detector(bgr).scored)
        return t

    refs: list[list[Detection]] = []
    grid_cells: list[tuple[int, list[tuple[str, np.ndarray]]]] = []
    for i, frame in enumerate(frames):
        original = frame.image
        h, w = original.shape[:2]
        found = detector(original)
        refs.append(found.reference)
        edge = detector.encode(original)
        original_features = features.of(original)

        shown: list[tuple[str, np.ndarray]] = []
        grid_bytes = 0
        machine: dict[int, tuple[int, Any]] = {}
        for level in levels:
            data = bitstream(edge, level)
            decoded = decoder.decode(data)
            machine[level] = (len(data), decoded)
            outputs: list[tuple[str, np.ndarray, int, float]] = []
            for name in PIXEL_VIEWS:
                nbytes, bgr, seconds = _at_bytes(name, original, len(data))
                outputs.append((name, bgr, nbytes, seconds))
            for name, restorer in views.items():
                lap = time.perf_counter()
                rgb = restorer(decoded, (w, h))
                outputs.append((name, rgb[:, :, ::-1], len(data), time.perf_counter() - lap))
            for name, bgr, nbytes, seconds in outputs:
                judge((name, f"level {level}"), bgr, nbytes, seconds, frame, original_features)
                if level == grid_level:
                    shown.append((f"{name} {nbytes:,} B", bgr))
            if level == grid_level:
                grid_bytes = len(data)

        if budgets:
            assert preview is not None
            if cfg.enhanced_level not in machine:
                data = bitstream(edge, cfg.enhanced_level)
                machine[cfg.enhanced_level] = (len(data), decoder.decode(data))
            m, decoded = machine[cfg.enhanced_level]
            fallback: tuple[np.ndarray, float] | None = None
            enhanced_cell: tuple[str, np.ndarray] | None = None
            # The budget of the grid's enhanced cell: the one nearest the grid level's bytes.
            shown_budget = min(budgets, key=lambda b: (abs(b - grid_bytes), b))
            rgb_original = np.ascontiguousarray(original[:, :, ::-1])
            for budget in budgets:
                setting = f"B {budget}"
                lap = time.perf_counter()
                try:
                    if budget - m < MIN_BUDGET_BYTES:
                        raise EnhancementError(f"{budget - m} B left for the enhancement")
                    payload = encode_enhancement(rgb_original, budget - m)
                except EnhancementError:
                    payload = None
                edge_s = time.perf_counter() - lap
                if payload is None:
                    if fallback is None:
                        lap = time.perf_counter()
                        image = preview(decoded, (w, h))[:, :, ::-1]
                        fallback = (np.ascontiguousarray(image), time.perf_counter() - lap)
                    bgr, cloud_s, nbytes = fallback[0], fallback[1], m
                else:
                    lap = time.perf_counter()
                    rgb = decode_enhancement(payload.data, (w, h))
                    cloud_s = time.perf_counter() - lap
                    bgr, nbytes = np.ascontiguousarray(rgb[:, :, ::-1]), m + len(payload.data)
                t = judge((ENHANCED, setting), bgr, nbytes, cloud_s, frame, original_features)
                t.edge_seconds.append(edge_s)
                t.fallbacks += payload is None
                if budget == shown_budget:
                    label = "enhanced" if payload is not None else "enhanced=preview"
                    enhanced_cell = (f"{label} {nbytes:,} B", bgr)
                for name in PIXEL_VIEWS:
                    nbytes, bgr, seconds = _at_bytes(name, original, budget)
                    judge((name, setting), bgr, nbytes, seconds, frame, original_features)
            if enhanced_cell is not None:
                shown.append(enhanced_cell)
        grid_cells.append((len(found.reference), [("original", original), *shown]))
        if progress is not None:
            progress(i + 1, len(frames))

    # 3. Rows, pooled over frames; the grid of the frames with the most people.
    rows = [_row(t, refs) for t in tallies.values()]
    if cfg.grid is not None:
        grid_cells.sort(key=lambda c: -c[0])
        write_grid([cells for _, cells in grid_cells[: cfg.grid_frames]], cfg.grid)
    return {
        "rows": [asdict(r) for r in rows],
        "meta": {
            "bundle": str(bundle.path),
            "bundle_hash": bundle.hash,
            "preview": bundle.manifest.notes.get("preview"),
            "frames": len(frames),
            "reference_boxes": sum(len(r) for r in refs),
            "levels": levels,
            "grid_level": grid_level,
            "enhanced_bytes": budgets,
            "enhanced_level": cfg.enhanced_level,
            "enhancement_codec": default_codec() if budgets else None,
            "threads": cfg.threads,
            "views": {
                **{k: getattr(v, "description", "") for k, v in views.items()},
                **({ENHANCED: ENHANCED_DESCRIPTION} if budgets else {}),
            },
            "notes": [
                "bytes_per_frame: the machine bitstream (container included); JPEG/WebP: "
                "the largest file at or under it (quality 1 where none fits)",
                "setting 'B n': a total of n bytes per frame. enhanced: the machine bitstream "
                f"at level {cfg.enhanced_level} (m bytes) + the enhancement payload "
                "(codec.enhancement, no container) coded at n - m; a frame where n - m is "
                f"under {MIN_BUDGET_BYTES} B or nothing fits is served as the preview at m "
                "bytes (fallback_frames). JPEG/WebP: the largest file at or under n",
                "map50: the detector on the view against its own detections on the original",
                "feature_distance: normalized MSE of the detector's first layers; not LPIPS",
                "ms_per_frame: the cloud's time: a view's restore, JPEG/WebP's decode, the "
                "enhancement's decode (the preview's restore on fallback frames); "
                "edge_ms_per_frame: the edge's enhancement encode (enhanced rows only)",
            ],
            "run_seconds": round(time.perf_counter() - started, 1),
        },
    }


def _row(t: _Tally, refs: Sequence[list[Detection]]) -> HumanRow:
    m50, _ = coco_map(refs, t.detections, class_agnostic=True)
    enhanced = t.view == ENHANCED
    return HumanRow(
        view=t.view,
        setting=t.setting,
        bytes_per_frame=float(np.mean(t.nbytes)),
        psnr=float(np.mean(t.psnr)),
        ms_ssim=float(np.mean(t.ms_ssim)),
        map50=m50,
        feature_distance=float(np.mean(t.feature)),
        ms_per_frame=1000 * float(np.mean(t.seconds)),
        frames=len(t.nbytes),
        reference_boxes=sum(len(r) for r in refs),
        edge_ms_per_frame=1000 * float(np.mean(t.edge_seconds)) if enhanced else None,
        fallback_frames=t.fallbacks if enhanced else None,
    )


def write_grid(rows: list[list[tuple[str, np.ndarray]]], path: Path, height: int = 240) -> None:
    """One row per frame: original | JPEG | WebP | each view | enhanced (as the cells come),
    labelled, at ``height`` px."""
    lines = []
    for cells in rows:
        tiles = []
        for label, image in cells:
            h, w = image.shape[:2]
            tile = cv2.resize(
                image, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA
            )
            cv2.rectangle(tile, (0, 0), (tile.shape[1], 22), (0, 0, 0), -1)
            cv2.putText(
                tile, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA
            )
            tiles.append(tile)
        lines.append(np.concatenate(tiles, axis=1))
    width = max(line.shape[1] for line in lines)
    padded = [np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0))) for line in lines]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.concatenate(padded, axis=0)):
        raise OSError(f"cannot write {path}")


def _setting_key(setting: str) -> tuple[bool, int]:
    """Levels first, then the total budgets ("B n"), each in numeric order."""
    return not setting.startswith("level"), int(setting.split()[-1])


def markdown_table(result: dict[str, Any]) -> str:
    out = [
        "| view | setting | B/frame | PSNR dB | MS-SSIM | mAP50 agreement | feature dist. "
        "| ms/frame | edge ms/frame | fallback frames |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = sorted(result["rows"], key=lambda r: (_setting_key(r["setting"]), r["view"]))
    for r in rows:
        m = "–" if r["map50"] is None else f"{r['map50']:.3f}"
        edge_ms = r.get("edge_ms_per_frame")
        fallback = r.get("fallback_frames")
        fell = "–" if fallback is None else f"{fallback}/{r['frames']}"
        out.append(
            f"| {r['view']} | {r['setting']} | {r['bytes_per_frame']:,.0f} | {r['psnr']:.2f} | "
            f"{r['ms_ssim']:.3f} | {m} | {r['feature_distance']:.3f} | {r['ms_per_frame']:.0f} "
            f"| {'–' if edge_ms is None else f'{edge_ms:.0f}'} "
            f"| {fell} |"
        )
    return "\n".join(out)


def write_human_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
