"""``fchm model export``: an Ultralytics checkpoint in, a bundle directory out.

    weights.pt ─► load + fuse ─┬► EncoderHalf (layers 0..k) ─► encoder.onnx   (edge)
                               └► TailHalf (k+1..Detect)    ─► tail.onnx      (cloud)
    sample images ─► encoder ─► split features ─┬► mean/scale + integer tables ─► codec.npz
                                                └► ridge fit features → RGB    ─► preview.onnx
    files ─► sha256 ─► manifest.json ─► bundle hash

Nothing here is trained by gradient descent: the uniform codec's statistics and the
preview's linear decoder are closed-form fits on real images shipped by packages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from codec.bundle import Bundle, file_sha256, write_manifest
from codec.entropy_tables import EntropyTables, quantize_frequencies
from codec.feature_codec import UniformFeatureCodec
from codec.inter_frames import build_inter_tables
from edge.preprocess import letterbox
from model.detector_split import (
    EncoderHalf,
    TailHalf,
    check_split,
    class_names,
    load_detector,
    split_stride,
)
from model.sample_images import augment, packaged_image_paths, read_color

log = logging.getLogger(__name__)

OPSET = 17


def default_steps(num_levels: int) -> np.ndarray:
    """Quantization steps in units of each channel's std, coarsest first (half-octave apart).

    2σ → 0.18σ: on real video, coarser steps lose most detections (bench/results).
    """
    return (2.0 * 2.0 ** (-0.5 * np.arange(num_levels))).astype(np.float32)


@dataclass(frozen=True)
class ExportConfig:
    weights: Path
    out: Path
    split_layer: int = 4
    input_size: int = 640
    num_levels: int = 8
    radius: int = 63
    fit_images: list[Path] = field(default_factory=list)
    """Images to fit codec statistics on; empty means the packaged sample images."""
    max_fit_images: int = 40
    num_classes: int | None = None
    """Only for .yaml architectures (random weights)."""
    seed: int = 0


def export_bundle(cfg: ExportConfig) -> Bundle:
    # 1. Check inputs before any slow work.
    check_inputs(cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)

    # 2. Load the detector and split it.
    detector = load_detector(cfg.weights, cfg.num_classes)
    check_split(detector, cfg.split_layer)
    stride, channels = split_stride(detector, cfg.split_layer)
    pad_multiple = int(detector.stride.max())  # the deepest stride must divide the input
    encoder = EncoderHalf(detector, cfg.split_layer).eval()
    tail = TailHalf(detector, cfg.split_layer).eval()

    # 3. Export both halves to ONNX with dynamic spatial size.
    export_onnx(encoder, torch.zeros(1, 3, 64, 96), cfg.out / "encoder.onnx", "image", "features")
    with torch.no_grad():
        probe = encoder(torch.zeros(1, 3, 64, 96))
    export_onnx(tail, probe, cfg.out / "tail.onnx", "features", "predictions")

    # 4. Split features (and their letterboxed images) on the fitting images.
    paths = cfg.fit_images or packaged_image_paths()
    features, images = collect_features(
        encoder, paths[: cfg.max_fit_images], cfg.input_size, pad_multiple, rng
    )
    log.info("fitting on %d feature maps from %d images", len(features), len(paths))

    # 5. Fit the uniform codec: per-channel statistics, then integer tables per level.
    codec = fit_uniform_codec(features, default_steps(cfg.num_levels), cfg.radius)
    codec.save(cfg.out / "codec.npz")

    # 6. Fit the preview decoder (features → RGB) and export it.
    preview = fit_preview_decoder(features, images, stride)
    export_onnx(preview, probe, cfg.out / "preview.onnx", "features", "image")

    # 7. Manifest with hashes; its own hash is the bundle's identity.
    return write_manifest(
        cfg.out,
        {
            "name": cfg.weights.stem,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "detector": {
                "weights": cfg.weights.name,
                "weights_sha256": file_sha256(cfg.weights),
                "class_names": class_names(detector),
                "split_layer": cfg.split_layer,
                "stride": stride,
                "input_size": cfg.input_size,
                "pad_multiple": pad_multiple,
                "channels": channels,
            },
            "codec": UniformFeatureCodec.name,
            "num_levels": cfg.num_levels,
            "files": {
                "encoder": "encoder.onnx",
                "tail": "tail.onnx",
                "codec": "codec.npz",
                "preview": "preview.onnx",
            },
            "notes": {
                "preview": "linear decoder (3x3 conv + pixel shuffle) fitted by ridge regression "
                "from split features to RGB; a blurry preview, not the diffusion view",
            },
        },
    )


def check_inputs(cfg: ExportConfig) -> None:
    if not cfg.weights.is_file():
        raise FileNotFoundError(f"weights: {cfg.weights} does not exist")
    if cfg.input_size % 32 or cfg.input_size < 64:
        raise ValueError(f"input_size must be a multiple of 32 and ≥ 64, got {cfg.input_size}")
    if not 1 <= cfg.num_levels <= 64:
        raise ValueError(f"num_levels must be in 1..64, got {cfg.num_levels}")
    if not 1 <= cfg.radius <= 1000:
        raise ValueError(f"radius must be in 1..1000, got {cfg.radius}")
    for p in cfg.fit_images:
        if not p.is_file():
            raise FileNotFoundError(f"fit_images: {p} does not exist")


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, inp: str, out: str) -> None:
    axes = {inp: {2: "height", 3: "width"}, out: {2: "height", 3: "width"}}
    if out == "predictions":
        # The cloud's tail takes a batch (cloud/tail_batcher.py); the edge's encoder and
        # the preview stay one frame (TensorRT profiles are built for batch 1).
        axes = {inp: {0: "batch", 2: "height", 3: "width"}, out: {0: "batch", 2: "anchors"}}
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=[inp],
        output_names=[out],
        dynamic_axes=axes,
        opset_version=OPSET,
        dynamo=False,
    )


@torch.no_grad()
def collect_features(
    encoder: nn.Module,
    paths: list[Path],
    input_size: int,
    pad_multiple: int,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    features, images = [], []
    for image in read_color(paths):
        for view in augment(image, rng):
            x, _ = letterbox(np.ascontiguousarray(view), input_size, pad_multiple)
            features.append(encoder(torch.from_numpy(x))[0].numpy())
            images.append(x[0])
    if not features:
        raise ValueError("no usable fitting images (need color or grey images ≥ 128 px)")
    return features, images


def fit_uniform_codec(
    features: list[np.ndarray], steps: np.ndarray, radius: int
) -> UniformFeatureCodec:
    channels = features[0].shape[0]
    flat = np.concatenate([f.reshape(channels, -1) for f in features], axis=1)
    mean = flat.mean(axis=1).astype(np.float32)
    scale = np.maximum(flat.std(axis=1), 1e-3).astype(np.float32)
    k = 2 * radius + 2
    counts = np.zeros((len(steps), channels, k), dtype=np.int64)
    normalized = (flat - mean[:, None]) / scale[:, None]
    offsets = (np.arange(channels) * k)[:, None]
    for level, step in enumerate(steps):
        q = np.rint(normalized / step).astype(np.int64)
        symbols = np.where(np.abs(q) > radius, k - 1, q + radius)
        counts[level] = np.bincount((symbols + offsets).ravel(), minlength=channels * k).reshape(
            channels, k
        )
    tables = EntropyTables(quantize_frequencies(counts), radius)
    return UniformFeatureCodec(
        mean, scale, steps.astype(np.float32), tables, build_inter_tables(tables)
    )


class PreviewDecoder(nn.Module):
    """features (1,C,h,w) → RGB (1,3,h·s,w·s) in [0,1]: one 3x3 conv, then pixel shuffle."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 3 * stride * stride, 3, padding=1)
        self.shuffle = nn.PixelShuffle(stride)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(features)).clamp(0.0, 1.0)


@torch.no_grad()
def fit_preview_decoder(
    features: list[np.ndarray], images: list[np.ndarray], stride: int, ridge: float = 1e-2
) -> PreviewDecoder:
    """Closed-form ridge regression from 3x3 feature neighbourhoods to RGB pixel blocks."""
    channels = features[0].shape[0]
    dim = channels * 9 + 1
    xtx = torch.zeros(dim, dim, dtype=torch.float64)
    xty = torch.zeros(dim, 3 * stride * stride, dtype=torch.float64)
    for feat, image in zip(features, images, strict=True):
        f = torch.from_numpy(feat)[None]
        cols = F.unfold(f, 3, padding=1)[0].T.double()  # (h*w, C*9)
        cols = torch.cat([cols, torch.ones(len(cols), 1, dtype=torch.float64)], 1)
        target = F.pixel_unshuffle(torch.from_numpy(image)[None], stride)[0]
        target = target.reshape(target.shape[0], -1).T.double()  # (h*w, 3*s*s)
        xtx += cols.T @ cols
        xty += cols.T @ target
    reg = ridge * xtx.diagonal().mean() * torch.eye(dim, dtype=torch.float64)
    reg[-1, -1] = 0  # leave the bias unpenalized
    solution = torch.linalg.solve(xtx + reg, xty)  # (C*9+1, 3*s*s)
    decoder = PreviewDecoder(channels, stride)
    decoder.conv.weight.copy_(solution[:-1].T.reshape(-1, channels, 3, 3).float())
    assert decoder.conv.bias is not None
    decoder.conv.bias.copy_(solution[-1].float())
    return decoder.eval()
