"""The preview view, trained: any bundle's decoded latent → RGB, coarse to fine.

    corpus crops (RGB, S×S) ─► the bundle's encoder.onnx (ONNX Runtime, as the edge runs it)
        ─► y ─► quantize/dequantize at a random rate level with the bundle's own codec ─► ŷ
    ŷ (C, S/16, S/16) ─► PreviewNet ─► RGB at 1/16, 1/8, 1/4, 1/2 and full size
    loss = Σ_scales L1 + (1 − MS-SSIM) (pytorch-msssim) + a feature loss on the frozen
           detector's own first layers (the edge's half: LPIPS's backbones are not offline)

Semantic aggregation after Diff-FCHM (arXiv 2511.08915): the machine latent carries
semantics at stride 16; the decoder aggregates them progressively, each stage adding
detail to the coarser stage's image (a Laplacian pyramid: every scale's RGB is the
upsampled coarser RGB plus a correction), so the coarse layout is learned first and
the fine stages only refine it.

Training takes any bundle: it reads the latent through the bundle's ONNX encoder and
codec, never through the torch bottleneck, so when the codec changes the preview is
retrained with the same command. The checkpoint records the latent it was trained on
(``latent_id``); exporting it into a bundle with another latent is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from codec.bundle import Bundle, file_sha256, write_manifest
from codec.feature_codec import GainedFeatureCodec
from model.bottleneck import ResBlock
from model.training_data import CropStream, TrainingPool

log = logging.getLogger(__name__)

PREVIEW_FILE = "preview.onnx"


@dataclass(frozen=True)
class PreviewNetConfig:
    latent_channels: int = 256
    widths: tuple[int, ...] = (128, 64, 32, 16)
    """Channels at stride 16, 8, 4 and 2 of the input: one ×2 stage between each."""
    stride: int = 16
    """The latent's stride; len(widths) − 1 pixel-shuffle stages and a last ×2 reach it."""

    def __post_init__(self) -> None:
        if self.stride != 2 ** len(self.widths):
            raise ValueError(
                f"{len(self.widths)} widths give stride {2 ** len(self.widths)}, "
                f"the latent has {self.stride}"
            )


class PreviewNet(nn.Module):
    """ŷ → RGB in [0, 1]; ``forward`` returns the full-size image (what ONNX exports),
    ``pyramid`` every scale (what training judges)."""

    def __init__(self, cfg: PreviewNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.stem = nn.Sequential(nn.Conv2d(cfg.latent_channels, w[0], 1), nn.LeakyReLU(0.1))
        self.blocks = nn.ModuleList([ResBlock(c) for c in w])
        # Up by two with a pixel shuffle: the convolution runs at the coarser scale.
        self.ups = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(a, 4 * b, 3, padding=1), nn.PixelShuffle(2), nn.LeakyReLU(0.1)
                )
                for a, b in itertools.pairwise(w)
            ]
        )
        self.rgb = nn.ModuleList([nn.Conv2d(c, 3, 1) for c in w])
        self.last = nn.Sequential(nn.Conv2d(w[-1], 12, 3, padding=1), nn.PixelShuffle(2))

    def pyramid(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """RGB at each scale, coarsest first (stride 16 … 1), each refining the last."""
        x = self.blocks[0](self.stem(latent))
        images = [0.5 + self.rgb[0](x)]
        for up, block, rgb in zip(self.ups, self.blocks[1:], self.rgb[1:], strict=True):
            x = block(up(x))
            images.append(_up(images[-1]) + rgb(x))
        images.append(_up(images[-1]) + self.last(x))
        return images

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.pyramid(latent)[-1].clamp(0, 1)


def _up(image: torch.Tensor) -> torch.Tensor:
    return F.interpolate(image, scale_factor=2.0, mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class PreviewTrainConfig:
    bundle: Path
    out: Path
    steps: int = 3000
    batch: int = 8
    crop: int = 256
    crops: int = 2400
    """Crops encoded once up front (their latents at every level come from the codec)."""
    lr: float = 2e-3
    seed: int = 0
    device: str = "cpu"
    weights: Path | None = None
    """The bundle's detector checkpoint, for the feature loss (None: no feature loss)."""
    feature_weight: float = 0.1
    ms_ssim_weight: float = 0.5
    levels: tuple[int, ...] | None = None
    """Rate levels to train on (None: all the bundle's)."""
    widths: tuple[int, ...] = PreviewNetConfig.widths
    """Decoder channels from the latent's stride down to stride 2 (one per ×2 stage)."""
    checkpoint_every: int = 500


def net_config(bundle: Bundle, widths: tuple[int, ...]) -> PreviewNetConfig:
    """The decoder for this bundle's latent: its channels and stride, ``widths`` wide."""
    info = bundle.manifest.detector
    if info.stride != 2 ** len(widths):
        raise ValueError(
            f"the bundle's latent has stride {info.stride}: give {info.stride.bit_length() - 1} "
            f"widths (one per ×2 stage), not {len(widths)}"
        )
    return PreviewNetConfig(latent_channels=info.channels, widths=widths, stride=info.stride)


def latent_id(bundle: Bundle) -> str:
    """What a preview is trained on: the latent's recipe (sha256), not the ONNX bytes.

    The detector weights and split, the bottleneck checkpoint the encoder came from, and
    the quantizer's numbers. The tail and the entropy tables may change without touching
    it; the latent may not. (ONNX files are not hashed: an export on another machine may
    differ in bytes while computing the same latent.)"""
    info = bundle.manifest.detector
    h = hashlib.sha256()
    h.update(f"{info.weights_sha256}|{info.split_layer}|{info.channels}|{info.stride}|".encode())
    h.update(bundle.manifest.notes.get("checkpoint", "").encode())
    codec = bundle.load_codec()
    for name in ("gains", "inverse_gains", "mean", "scale", "steps"):  # the quantizer's numbers
        value = getattr(codec, name, None)
        if value is not None:
            h.update(name.encode() + np.ascontiguousarray(value, dtype="<f4").tobytes())
    return h.hexdigest()


class LatentPairs:
    """Crops and their float latents, made once through the bundle's ONNX encoder."""

    def __init__(self, bundle: Bundle, pool: TrainingPool, cfg: PreviewTrainConfig) -> None:
        from edge.encoder_backends import open_backend

        stride = bundle.manifest.detector.stride
        if cfg.crop % stride or cfg.crop < 11 * stride:
            raise ValueError(
                f"crop {cfg.crop} must be a multiple of the latent stride {stride} and at "
                f"least {11 * stride} px (MS-SSIM's five scales)"
            )
        encoder = open_backend("onnxruntime-cpu", bundle.file("encoder"), 0)
        stream = CropStream(pool.images, cfg.crop, cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        images, latents = [], []
        for _ in range(cfg.crops):
            crop = stream.crop(rng)  # (3, S, S) float32 RGB in [0, 1]
            latents.append(encoder(crop[None]).astype(np.float16))
            images.append(np.round(crop * 255).astype(np.uint8))
        self.images = np.stack(images)
        self.latents = np.stack(latents)


def _quantizer(bundle: Bundle) -> GainedFeatureCodec:
    codec = bundle.load_codec()
    if not isinstance(codec, GainedFeatureCodec):
        raise ValueError(
            f"bundle {bundle.path} has a '{bundle.manifest.codec}' codec: the trained preview "
            "needs a learned bundle (its latent is what the cloud decodes)"
        )
    return codec


def _feature_net(weights: Path | None, bundle: Bundle, device: str) -> nn.Module | None:
    if weights is None:
        return None
    from model.detector_split import EncoderHalf, load_detector

    if file_sha256(weights) != bundle.manifest.detector.weights_sha256:
        raise ValueError(
            f"--weights {weights} are not the detector bundle {bundle.path} was made from"
        )
    detector = load_detector(weights)
    half = EncoderHalf(detector, bundle.manifest.detector.split_layer).to(device).eval()
    for p in half.parameters():
        p.requires_grad_(False)
    return half


def preview_loss(
    pyramid: list[torch.Tensor],
    target: torch.Tensor,
    features: nn.Module | None,
    cfg: PreviewTrainConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    from pytorch_msssim import ms_ssim

    l1 = pyramid[0].new_zeros(())
    for image in pyramid:
        scaled = F.adaptive_avg_pool2d(target, (image.shape[-2], image.shape[-1]))
        l1 = l1 + F.l1_loss(image, scaled)
    final = pyramid[-1]
    structure = 1 - ms_ssim(final.clamp(0, 1), target, data_range=1.0, size_average=True)
    loss = l1 / len(pyramid) + cfg.ms_ssim_weight * structure
    parts = {"l1": float(l1.detach()) / len(pyramid), "ms_ssim": 1 - float(structure.detach())}
    if features is not None:
        with torch.no_grad():
            want = features(target)
        got = features(final.clamp(0, 1))
        feat = F.mse_loss(got, want) / want.pow(2).mean().clamp_min(1e-6)
        loss = loss + cfg.feature_weight * feat
        parts["feature"] = float(feat.detach())
    return loss, parts


@dataclass
class PreviewTrainReport:
    checkpoint: Path
    steps: int
    seconds: float
    last: dict[str, float]


def train_preview(
    cfg: PreviewTrainConfig,
    pool: TrainingPool,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> PreviewTrainReport:
    # 1. The bundle's latent, as the cloud will decode it: crops through its encoder.
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    bundle = Bundle.load(cfg.bundle)
    codec = _quantizer(bundle)
    gains, inverse = codec.gains, codec.inverse_gains
    net_cfg = net_config(bundle, cfg.widths)
    levels = np.array(cfg.levels if cfg.levels is not None else range(len(gains)))
    if levels.min() < 0 or levels.max() >= len(gains):
        raise ValueError(f"levels {levels.tolist()} outside the bundle's 0..{len(gains) - 1}")
    pairs = LatentPairs(bundle, pool, cfg)
    log.info(
        "preview: %d crops encoded in %.0f s", len(pairs.images), time.perf_counter() - started
    )

    # 2. Network, frozen detector layers for the feature loss, optimizer.
    net = PreviewNet(net_cfg).to(cfg.device)
    features = _feature_net(cfg.weights, bundle, cfg.device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,  # linear warm-up, then cosine decay to zero
        lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(1.0, i / cfg.steps))),
    )
    g, ig = torch.from_numpy(gains).to(cfg.device), torch.from_numpy(inverse).to(cfg.device)
    rng = np.random.default_rng([cfg.seed, 1])

    # 3. Steps: a batch of crops, each at a random level, quantized exactly as the codec does.
    parts: dict[str, float] = {}
    for step in range(1, cfg.steps + 1):
        idx = rng.integers(len(pairs.images), size=cfg.batch)
        lev = torch.from_numpy(rng.choice(levels, size=cfg.batch)).to(cfg.device)
        y = torch.from_numpy(pairs.latents[idx].astype(np.float32)).to(cfg.device)
        y_hat = torch.round(y * g[lev][:, :, None, None]) * ig[lev][:, :, None, None]
        target = torch.from_numpy(pairs.images[idx]).to(cfg.device).float() / 255.0
        loss, parts = preview_loss(net.pyramid(y_hat), target, features, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if progress is not None:
            progress(step, parts)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_preview(net, cfg, bundle, pool, step, parts)
    return PreviewTrainReport(cfg.out, cfg.steps, time.perf_counter() - started, parts)


def save_preview(
    net: PreviewNet,
    cfg: PreviewTrainConfig,
    bundle: Bundle,
    pool: TrainingPool,
    step: int,
    last: dict[str, float],
) -> None:
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "kind": "fchm-preview",
        "net": asdict(net.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "latent_id": latent_id(bundle),
        "bundle": bundle.manifest.name,
        "step": step,
        "last_loss": last,
        "train": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "trained_on": pool.sources,
        "saved": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    tmp = cfg.out.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(cfg.out)


def load_preview(path: Path) -> tuple[PreviewNet, dict[str, Any]]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("kind") != "fchm-preview":
        raise ValueError(f"{path} is not a preview checkpoint (fchm model train-preview)")
    raw = dict(state["net"])
    raw["widths"] = tuple(raw["widths"])
    net = PreviewNet(PreviewNetConfig(**raw))
    net.load_state_dict(state["state_dict"])
    return net.eval(), state


def export_preview(checkpoint: Path, bundle_dir: Path) -> Bundle:
    """Write the trained preview into a bundle as preview.onnx (ŷ → RGB) and re-hash it.

    Refused when the bundle's latent is not the one the preview was trained on."""
    from model.bundle_export import export_onnx

    bundle = Bundle.load(bundle_dir)
    net, state = load_preview(checkpoint)
    if state["latent_id"] != latent_id(bundle):
        raise ValueError(
            f"preview {checkpoint} was trained on another latent than bundle {bundle_dir}'s "
            "(its encoder or gains differ): retrain it with fchm model train-preview --bundle "
            f"{bundle_dir}"
        )
    probe = torch.zeros(1, net.cfg.latent_channels, 4, 6)
    export_onnx(net, probe, bundle.path / PREVIEW_FILE, "features", "image")
    manifest = bundle.manifest.model_dump(mode="json")
    manifest.pop("sha256", None)
    manifest["files"]["preview"] = PREVIEW_FILE
    params = sum(p.numel() for p in net.parameters())
    manifest["notes"]["preview"] = (
        f"trained semantic-aggregation decoder ({params / 1e6:.2f} M parameters, widths "
        f"{list(net.cfg.widths)}), {checkpoint.name} sha256 {file_sha256(checkpoint)}, "
        f"step {state['step']}: a reconstruction from the machine latent, not a photograph"
    )
    return write_manifest(bundle.path, manifest)
