"""``fchm model eval --human``: are the human views worth looking at, and at what bytes?

    frame ─► edge encoder ─► codec at level l (a keyframe) ─► container ─► FrameDecoder ─► ŷ
        ─► each view the cloud serves (cloud.restorers.RESTORERS) ─► RGB at the frame's size
    frame ─► JPEG / WebP at the machine bitstream's bytes (the best quality that fits) ─► RGB
    every RGB against the original frame:
        PSNR · MS-SSIM (pytorch-msssim) · detector agreement: mAP50 of the detector on the
        view against its own detections on the original · detector-feature distance:
        normalized MSE of the frozen detector's first layers (the edge's half), *not* LPIPS

Rows, one per (view, level): ``view`` (a restorer kind, or jpeg / webp), ``setting``,
``bytes_per_frame`` (the machine bitstream; plus the enhancement once there is one),
``psnr``, ``ms_ssim``, ``map50``, ``feature_distance``, ``ms_per_frame`` (the view's
restore time, or the pixel codec's decode time), ``frames`` and ``reference_boxes``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
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
from edge.preprocess import letterbox
from model.eval_metrics import coco_map
from model.eval_pixel_codecs import code_image
from model.eval_signals import EvalFrame, FullDetector, load_images, video_clips
from model.reference_detector import DEFAULT_CACHE, reference_detector

PIXEL_VIEWS = ("jpeg", "webp")


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


@dataclass
class _Tally:
    view: str
    level: int
    nbytes: list[int] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    ms_ssim: list[float] = field(default_factory=list)
    feature: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    detections: list[list[Detection]] = field(default_factory=list)


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
    """The highest quality whose file fits ``budget`` (quality 1 when none does)."""
    lo, hi, best = 1, 100, None
    while lo <= hi:
        q = (lo + hi) // 2
        coded = code_image(codec, image, q)
        if coded.nbytes <= budget:
            best, lo = coded, q + 1
        else:
            hi = q - 1
    if best is None:
        best = code_image(codec, image, 1)
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
    views: dict[str, Restorer] = {k: r for k, r in loaded.items() if k not in missing}
    for name, path in cfg.extra_previews:
        views[name] = PreviewRestorer(bundle, cfg.threads, model=path)
    features = FeatureDistance(bundle, cfg.weights)
    levels = list(cfg.levels or range(0, codec.num_levels, 2))
    if min(levels) < 0 or max(levels) >= codec.num_levels:
        raise ValueError(f"levels {levels} outside the bundle's 0..{codec.num_levels - 1}")
    grid_level = cfg.grid_level if cfg.grid_level is not None else levels[len(levels) // 2]
    if grid_level not in levels:
        levels.append(grid_level)
    frames = _frames(cfg, bundle)

    # 2. Every frame: its reference detections, then per level the bitstream, each view
    # from it and each pixel codec at its bytes, all judged against the original.
    tallies = {(v, lv): _Tally(v, lv) for v in [*views, *PIXEL_VIEWS] for lv in levels}
    refs: list[list[Detection]] = []
    grid_cells: list[tuple[int, list[tuple[str, np.ndarray]]]] = []
    for i, frame in enumerate(frames):
        original = frame.image
        h, w = original.shape[:2]
        found = detector(original)
        refs.append(found.reference)
        edge = detector.encode(original)
        original_features = features.of(original)
        for level in levels:
            encoded = codec.compress(edge.features, level)
            data = FrameBitstream(
                codec.codec_id, level, bundle.tag, edge.geometry.image_size,
                encoded.latent_shape, encoded.payload, encoded.symbol_crc,
            ).to_bytes()  # fmt: skip
            decoded = decoder.decode(data)
            shown: list[tuple[str, np.ndarray]] = [("original", original)]
            outputs: list[tuple[str, np.ndarray, int, float]] = []
            for name, restorer in views.items():
                lap = time.perf_counter()
                rgb = restorer(decoded, (w, h))
                outputs.append((name, rgb[:, :, ::-1], len(data), time.perf_counter() - lap))
            for name in PIXEL_VIEWS:
                nbytes, bgr, seconds = _at_bytes(name, original, len(data))
                outputs.append((name, bgr, nbytes, seconds))
            for name, bgr, nbytes, seconds in outputs:
                t = tallies[(name, level)]
                t.nbytes.append(nbytes)
                t.seconds.append(seconds)
                # PSNR and MS-SSIM average over channels: BGR order scores as RGB does.
                t.psnr.append(psnr(bgr, original))
                t.ms_ssim.append(ms_ssim(bgr, original))
                t.feature.append(features(original_features, bgr))
                t.detections.append(detector(bgr).scored)
                if level == grid_level:
                    shown.append((f"{name} {nbytes:,} B", bgr))
            if level == grid_level:
                grid_cells.append((len(found.reference), shown))
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
            "threads": cfg.threads,
            "views": {k: getattr(v, "description", "") for k, v in views.items()},
            "notes": [
                "bytes_per_frame: the machine bitstream (container included); JPEG/WebP: "
                "the largest file at or under it (quality 1 where none fits)",
                "map50: the detector on the view against its own detections on the original",
                "feature_distance: normalized MSE of the detector's first layers; not LPIPS",
                "ms_per_frame: a view's restore time; JPEG/WebP: their decode time",
            ],
            "run_seconds": round(time.perf_counter() - started, 1),
        },
    }


def _row(t: _Tally, refs: Sequence[list[Detection]]) -> HumanRow:
    m50, _ = coco_map(refs, t.detections, class_agnostic=True)
    return HumanRow(
        view=t.view,
        setting=f"level {t.level}",
        bytes_per_frame=float(np.mean(t.nbytes)),
        psnr=float(np.mean(t.psnr)),
        ms_ssim=float(np.mean(t.ms_ssim)),
        map50=m50,
        feature_distance=float(np.mean(t.feature)),
        ms_per_frame=1000 * float(np.mean(t.seconds)),
        frames=len(t.nbytes),
        reference_boxes=sum(len(r) for r in refs),
    )


def write_grid(rows: list[list[tuple[str, np.ndarray]]], path: Path, height: int = 240) -> None:
    """One row per frame: original | JPEG | WebP | each view, labelled, at ``height`` px."""
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


def markdown_table(result: dict[str, Any]) -> str:
    out = [
        "| view | setting | B/frame | PSNR dB | MS-SSIM | mAP50 agreement | feature dist. "
        "| ms/frame |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(result["rows"], key=lambda r: (int(r["setting"].split()[-1]), r["view"])):
        m = "–" if r["map50"] is None else f"{r['map50']:.3f}"
        out.append(
            f"| {r['view']} | {r['setting']} | {r['bytes_per_frame']:,.0f} | {r['psnr']:.2f} | "
            f"{r['ms_ssim']:.3f} | {m} | {r['feature_distance']:.3f} | {r['ms_per_frame']:.0f} |"
        )
    return "\n".join(out)


def write_human_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
