"""``fchm model export --checkpoint``: a trained bottleneck + its detector → a learned bundle.

    weights.pt ─► detector layers 0..k ─┐
    checkpoint ─► analysis ─────────────┴► encoder.onnx   image → latent y            (edge)
               ─► synthesis ─► detector tail ─► int8 weights ─► tail.onnx  ŷ → predictions (cloud)
               ─► gains (anchors + interpolated levels) ┐
               ─► entropy model at each level's gain ───┴► codec.npz (integer tables)
    sample images ─► encoder ─► ŷ ─► synthesis ─► ridge fit ─► preview.onnx  ŷ → RGB
    files ─► sha256 ─► manifest.json ─► bundle hash

ONNX tensor names are the bundle contract's ("image" → "features" → "predictions"),
so the edge and cloud run a learned bundle exactly as they run a uniform one.
The plain detector is not in the bundle (nothing deployed runs it): evaluation
rebuilds it from the weights the manifest pins (model/reference_detector.py).
The tables are integer data computed once here, so every decoder (any machine, any
runtime) reads the same probabilities; floats never decide a decoded symbol.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from codec.bundle import Bundle, file_sha256, write_manifest
from codec.entropy_tables import EntropyTables, quantize_frequencies
from codec.feature_codec import GainedFeatureCodec
from codec.inter_frames import build_inter_tables
from model.bottleneck import FeatureBottleneck
from model.bundle_export import (
    OPSET,
    collect_features,
    export_onnx,
    fit_preview_decoder,
)
from model.detector_split import EncoderHalf, TailHalf, check_split, class_names, load_detector
from model.sample_images import packaged_image_paths
from model.train import load_bottleneck
from model.weight_storage import store_conv_weights_int8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnedExportConfig:
    checkpoint: Path
    weights: Path
    out: Path
    input_size: int = 640
    sublevels: int = 2
    """Deployed levels per trained anchor interval (2: anchors and midpoints)."""
    radius: int = 63
    fit_images: list[Path] = field(default_factory=list)
    """Images for the preview's ridge fit; empty means the packaged sample images."""
    max_fit_images: int = 40
    int8_tail: bool = True
    """store tail.onnx's convolution weights as int8 (what keeps the bundle ≤ 20 MB)"""
    num_classes: int | None = None
    seed: int = 0


def check_inputs(cfg: LearnedExportConfig) -> None:
    for name, path in (("checkpoint", cfg.checkpoint), ("weights", cfg.weights)):
        if not path.is_file():
            raise FileNotFoundError(f"{name}: {path} does not exist")
    if cfg.input_size % 32 or cfg.input_size < 64:
        raise ValueError(f"input_size must be a multiple of 32 and ≥ 64, got {cfg.input_size}")
    if not 1 <= cfg.sublevels <= 8:
        raise ValueError(f"sublevels must be in 1..8, got {cfg.sublevels}")


def integer_tables(bottleneck: FeatureBottleneck, gains: np.ndarray, radius: int) -> EntropyTables:
    """The trained density at every deployed gain, as 16-bit integer tables."""
    probs = bottleneck.density.bin_probabilities(gains, radius)
    return EntropyTables(quantize_frequencies(probs), radius)


def export_learned_bundle(cfg: LearnedExportConfig) -> Bundle:
    # 1. Check inputs; the checkpoint must have been trained on these very weights.
    check_inputs(cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    bottleneck, state = load_bottleneck(cfg.checkpoint)
    if state["detector_sha256"] != file_sha256(cfg.weights):
        raise ValueError(
            f"checkpoint {cfg.checkpoint} was trained on other detector weights than {cfg.weights}"
        )
    cfg.out.mkdir(parents=True, exist_ok=True)

    # 2. The detector, split where the bottleneck was trained.
    detector = load_detector(cfg.weights, cfg.num_classes)
    split_layer = int(state["split_layer"])
    check_split(detector, split_layer)
    pad_multiple = int(detector.stride.max())
    encoder_half = EncoderHalf(detector, split_layer).eval()
    tail_half = TailHalf(detector, split_layer).eval()
    # Each exported network is two stages in a row: image → latent, ŷ → predictions.
    encoder = nn.Sequential(encoder_half, bottleneck.analysis).eval()
    tail = nn.Sequential(bottleneck.synthesis, tail_half).eval()
    with torch.no_grad():
        probe = encoder(torch.zeros(1, 3, 64, 96))
    stride = 64 // int(probe.shape[2])
    if pad_multiple % stride and stride % pad_multiple:
        raise ValueError(f"latent stride {stride} does not fit the detector's {pad_multiple}")
    pad_multiple = max(pad_multiple, stride)

    # 3. ONNX: edge encoder (fp32: TensorRT builds from it), cloud tail with its
    #    convolution weights stored as int8 (4x smaller; it still computes in fp32).
    export_onnx(encoder, torch.zeros(1, 3, 64, 96), cfg.out / "encoder.onnx", "image", "features")
    export_onnx(tail, probe, cfg.out / "tail.onnx", "features", "predictions")
    if cfg.int8_tail:
        store_conv_weights_int8(cfg.out / "tail.onnx")

    # 4. Rate levels: trained anchors plus interpolated gains, tables from the density.
    gains, inverse_gains = bottleneck.level_gains(cfg.sublevels)
    tables = integer_tables(bottleneck, gains, cfg.radius)
    codec = GainedFeatureCodec(gains, inverse_gains, tables, build_inter_tables(tables))
    codec.save(cfg.out / "codec.npz")

    # 5. Preview: ridge fit from synthesized features (mid level) to RGB.
    paths = cfg.fit_images or packaged_image_paths()
    mid = codec.num_levels // 2
    latents, images = collect_features(
        encoder, paths[: cfg.max_fit_images], cfg.input_size, pad_multiple, rng
    )
    with torch.no_grad():
        decoded = [
            bottleneck.synthesis(
                torch.from_numpy(codec.dequantize(codec.quantize(y, mid), mid))[None]
            )[0].numpy()
            for y in latents
        ]
    feature_stride = stride // (decoded[0].shape[1] // latents[0].shape[1])
    decoder = fit_preview_decoder(decoded, images, feature_stride)
    preview = nn.Sequential(bottleneck.synthesis, decoder).eval()  # ŷ → RGB
    export_onnx(preview, probe, cfg.out / "preview.onnx", "features", "image")

    # 6. Manifest with hashes; its own hash is the bundle's identity.
    train = state.get("train", {})
    return write_manifest(
        cfg.out,
        {
            "name": f"{cfg.weights.stem}-fchm",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "detector": {
                "weights": cfg.weights.name,
                "weights_sha256": file_sha256(cfg.weights),
                "class_names": class_names(detector),
                "split_layer": split_layer,
                "stride": stride,
                "input_size": cfg.input_size,
                "pad_multiple": pad_multiple,
                "channels": int(probe.shape[1]),
            },
            "codec": GainedFeatureCodec.name,
            "num_levels": codec.num_levels,
            "files": {
                "encoder": "encoder.onnx",
                "tail": "tail.onnx",
                "codec": "codec.npz",
                "preview": "preview.onnx",
            },
            "notes": {
                "checkpoint": f"{cfg.checkpoint.name} sha256 {file_sha256(cfg.checkpoint)}, "
                f"step {state['step']}, seed {train.get('seed')}",
                "rate": f"gain vectors: {bottleneck.cfg.num_levels} trained anchors, "
                f"{cfg.sublevels - 1} interpolated level(s) between neighbours",
                "onnx_opset": str(OPSET),
                "tail_weights": "int8 per output channel, fp32 compute"
                if cfg.int8_tail
                else "fp32",
                "preview": "synthesis + linear decoder fitted by ridge regression; "
                "a blurry preview, not the diffusion view",
            },
        },
    )
