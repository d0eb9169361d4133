"""``fchm model train``: distil the learned bottleneck from the frozen detector.

    crops ─► detector layers 0..k (frozen) ─► f ─┬─► tail (frozen) ──────────► teacher outputs
                                                 └─► bottleneck(level) ─► f̂ ─► tail ─► student
    level ~ U[0, L−1] per sample (anchors and the space between them)
    loss  = distortion(student, teacher) + λ(level) · bpp      (model/distillation.py)

Only the bottleneck learns, and by default only its entropy model: the transforms stay
the KLT they start as (in the metric of the detector's sensitivity, model/sensitivity.py)
and the gains stay at reverse water-filling. Distilled on the ~30
packaged photos, everything more overfits (README, "The learned codec"): ``learn_gains``
also learns the per-level gains from the detector, ``nonlinear`` adds conv branches and
trains the projections (at ``transform_lr_scale`` × lr); both are for users with far
more data. Data: the corpus of ``make corpus`` (``corpus``; the CLI takes var/corpus when it
is there) or the packaged photos, plus ``data``; the checkpoint's ``trained_on`` lists
the corpus's packages. One checkpoint file holds everything to resume: weights,
optimizer, step, RNG states and the configuration; ``fchm model export --checkpoint``
turns it into a bundle.
"""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from codec.bundle import file_sha256
from infra.atomic_file import write_atomically
from model.bottleneck import BottleneckConfig, FeatureBottleneck
from model.corpus.manifest import MANIFEST
from model.detector_split import EncoderHalf, check_split, load_detector, split_stride
from model.distillation import TrainableTail, distortion
from model.sensitivity import patch_sensitivity
from model.training_data import CropStream, load_pool

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2  # 2: configurable latent stride (patch), default 16 px


@dataclass(frozen=True)
class TrainConfig:
    weights: Path
    out: Path
    """Checkpoint file written (and resumed from)."""
    data: list[Path] = field(default_factory=list)
    use_packaged: bool = True
    corpus: Path | None = None
    """A corpus built by ``make corpus`` (var/corpus): its images train, the packaged
    ones among them (``use_packaged``); None: the packaged images alone, plus ``data``."""
    split_layer: int = 4
    steps: int = 800
    batch: int = 8
    crop: int = 256
    lr: float = 5e-3
    """Peak learning rate of the entropy model (and gains)."""
    learn_gains: bool = False
    """Learn each level's gains and inverse gains from the detector (else: reverse
    water-filling, one step for every principal component)."""
    nonlinear: bool = False
    """Also train conv branches beside the PCA projections, and the projections."""
    transform_lr_scale: float = 0.2
    sensitivity_mix: float = 0.1
    """The transforms' metric: (1 − mix) · the detector's sensitivity + mix · identity
    (1.0: plain PCA of the split tensor; model/sensitivity.py)."""
    stats_batches: int = 24
    """Batches of crops that measure feature statistics, covariance and sensitivity
    (statistics, not trained weights: more crops steady them without overfitting them.
    24 came in with the lower ``min_gain`` in one A/B, bench/results/transform_metric.md;
    the two changes were not measured apart)."""
    seed: int = 0
    device: str = "cpu"
    num_levels: int = 10
    min_gain: float = 0.025
    """Gain of the coarsest anchor level on the geometric-mean component (its step is
    1/min_gain of that component's spread)."""
    max_gain: float = 4.0
    latent_channels: int | None = None
    """Channels of the coded latent; None: min(256, the dimensions of a patch of the
    split tensor). 256 of YOLOv8s's 512 keep 0.99 mAP50 at the top level where 128
    saturated near 0.95 (README, "The learned codec")."""
    lambda_max: float = 32.0
    """λ at the coarsest level (rate matters most)."""
    lambda_min: float = 0.5
    detection_weight: float = 1.0
    rate_warmup: float = 0.05
    """Fraction of the steps over which λ ramps up from 2% to its full value (with
    nonlinear transforms, make it larger: they first learn to carry information,
    then to carry less of it)."""
    checkpoint_every: int = 200
    resume: bool = False
    num_classes: int | None = None
    """Only for .yaml architectures (random weights)."""


def check_inputs(cfg: TrainConfig) -> None:
    if not cfg.weights.is_file():
        raise FileNotFoundError(f"weights: {cfg.weights} does not exist")
    if cfg.crop % 32 or cfg.crop < 64:
        raise ValueError(f"crop must be a multiple of 32 and ≥ 64, got {cfg.crop}")
    if cfg.steps < 1 or cfg.batch < 1:
        raise ValueError(f"steps and batch must be ≥ 1, got {cfg.steps} and {cfg.batch}")
    if not 0.0 < cfg.sensitivity_mix <= 1.0:
        raise ValueError(f"sensitivity_mix must be in (0, 1], got {cfg.sensitivity_mix}")
    if cfg.stats_batches < 1:
        raise ValueError(f"stats_batches must be ≥ 1, got {cfg.stats_batches}")
    if not 0 < cfg.min_gain < cfg.max_gain:
        raise ValueError(f"need 0 < min_gain < max_gain, got {cfg.min_gain}, {cfg.max_gain}")
    if cfg.num_levels < 2:
        raise ValueError(f"num_levels must be ≥ 2, got {cfg.num_levels}")
    if not 0 < cfg.lambda_min < cfg.lambda_max:
        raise ValueError(
            f"need 0 < lambda_min < lambda_max, got {cfg.lambda_min}, {cfg.lambda_max}"
        )
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device}: CUDA is not available here")
    if cfg.corpus is not None and not (cfg.corpus / MANIFEST).is_file():
        raise FileNotFoundError(f"corpus: no manifest in {cfg.corpus}: run `make corpus`")
    if cfg.resume and not cfg.out.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {cfg.out}")
    if cfg.resume and "optimizer" not in load_checkpoint(cfg.out):
        raise ValueError(f"--resume: {cfg.out} is a slim (weights-only) checkpoint")


def latent_channels(cfg: TrainConfig, feature_channels: int) -> int:
    """The configured latent width, or the default capped at a patch's dimensions (tiny
    detectors have fewer than 256)."""
    if cfg.latent_channels is not None:
        return cfg.latent_channels
    return min(BottleneckConfig.latent_channels, feature_channels * BottleneckConfig.patch**2)


def lambdas_at(level: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """λ falls geometrically from lambda_max (level 0) to lambda_min (top level)."""
    t = level / (cfg.num_levels - 1)
    return torch.exp(
        math.log(cfg.lambda_max) + t * (math.log(cfg.lambda_min) - math.log(cfg.lambda_max))
    )


@dataclass(frozen=True)
class TrainReport:
    checkpoint: Path
    steps: int
    seconds: float
    last: dict[str, float]


def train(cfg: TrainConfig, progress: bool = True) -> TrainReport:
    # 1. Check inputs, seed everything.
    check_inputs(cfg)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = torch.device(cfg.device)

    # 2. The frozen detector, split; the bottleneck to train.
    detector = load_detector(cfg.weights, cfg.num_classes)
    check_split(detector, cfg.split_layer)
    _, channels = split_stride(detector, cfg.split_layer)
    encoder = EncoderHalf(detector, cfg.split_layer).to(device).eval()
    tail = TrainableTail(detector, cfg.split_layer).to(device)
    for p in encoder.parameters():
        p.requires_grad_(False)
    reg_max = int(getattr(tail.head, "reg_max", 16))
    model_cfg = BottleneckConfig(
        channels,
        latent_channels(cfg, channels),
        num_levels=cfg.num_levels,
        min_gain=cfg.min_gain,
        max_gain=cfg.max_gain,
        nonlinear=cfg.nonlinear,
    )
    model = FeatureBottleneck(model_cfg).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
        ),
    )

    # 3. Resume: weights, optimizer, schedule and RNG where the checkpoint left off.
    step = 0
    if cfg.resume:
        state = load_checkpoint(cfg.out)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        log.info("resumed %s at step %d", cfg.out, step)

    # 4. Data: augmented crops of real images; the stream's seed moves with the step so
    #    a resumed run does not replay the crops it has already seen.
    pool = load_pool(cfg.data, cfg.use_packaged, corpus=cfg.corpus)
    loader = iter(
        torch.utils.data.DataLoader(
            CropStream(pool.images, cfg.crop, cfg.seed + step), batch_size=cfg.batch
        )
    )

    # 5. Fresh runs measure the split tensor's statistics on a few batches first, and
    #    the detector's sensitivity to it: the transforms start (and by default stay) at
    #    the KLT in the metric that sensitivity defines (model/sensitivity.py).
    if step == 0:
        with torch.no_grad():
            f = torch.cat([encoder(next(loader).to(device)) for _ in range(cfg.stats_batches)])
        model.set_feature_stats(f)
        if cfg.sensitivity_mix < 1.0:
            stats = model.analysis.stats
            s = patch_sensitivity(tail, f, stats, model_cfg.patch, reg_max, batch=cfg.batch)
            model.init_transform(stats.normalize(f), s, cfg.sensitivity_mix)

    # 6. The loop: teacher, student, loss, step; checkpoints as it goes.
    detector_sha = file_sha256(cfg.weights)
    started = time.perf_counter()
    last: dict[str, float] = {}
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        disable=not progress,
        desc="train",
        unit="step",
        mininterval=2.0,
    )
    # With transforms and gains frozen, nothing upstream of the tail trains: the entropy
    # model learns from the rate alone, so the teacher and student passes are skipped.
    distil = cfg.learn_gains or cfg.nonlinear
    model.train()
    while step < cfg.steps:
        images = next(loader).to(device)
        with torch.no_grad():
            f = encoder(images)
        level = torch.rand(images.shape[0], device=device) * (cfg.num_levels - 1)
        out = model(f, level)
        bpp = out.bits / (images.shape[2] * images.shape[3])
        ramp = min(1.0, 0.02 + step / max(1.0, cfg.rate_warmup * cfg.steps))
        per_sample = ramp * lambdas_at(level, cfg) * bpp
        terms: dict[str, torch.Tensor] = {}
        if distil:
            with torch.no_grad():
                teacher = tail(f)
            d = distortion(out.features, f, tail(out.features), teacher, reg_max,
                           cfg.detection_weight)  # fmt: skip
            per_sample = per_sample + d.total
            terms = {"feature": d.feature, "neck": d.neck, "detection": d.detection}
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        last = {
            "loss": loss.item(),
            **{k: v.mean().item() for k, v in terms.items()},
            "bpp": bpp.mean().item(),
        }
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in last.items()})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(cfg, model, optimizer, schedule, step, detector_sha, last,
                            pool.sources)  # fmt: skip
    bar.close()
    return TrainReport(cfg.out, step, time.perf_counter() - started, last)


def _param_groups(model: FeatureBottleneck, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Entropy model (and gains) at lr; transforms frozen, or at a smaller lr."""
    gains = [model.log_gains, model.log_inverse_gains]
    transforms = [*model.analysis.parameters(), *model.synthesis.parameters()]
    frozen = ([] if cfg.learn_gains else gains) + ([] if cfg.nonlinear else transforms)
    for p in frozen:
        p.requires_grad_(False)
    rate = [*model.density.parameters(), *(gains if cfg.learn_gains else [])]
    if not cfg.nonlinear:
        return [{"params": rate}]
    return [{"params": rate}, {"params": transforms, "lr": cfg.lr * cfg.transform_lr_scale}]


def save_checkpoint(
    cfg: TrainConfig,
    model: FeatureBottleneck,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    detector_sha: str,
    metrics: dict[str, float],
    trained_on: dict[str, Any] | None = None,
) -> None:
    state = {
        "version": CHECKPOINT_VERSION,
        "bottleneck": asdict(model.cfg),
        "train": {
            k: [str(p) for p in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
            for k, v in asdict(cfg).items()
        },
        "detector_sha256": detector_sha,
        "trained_on": trained_on or {},
        "split_layer": cfg.split_layer,
        "step": step,
        "metrics": metrics,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    _write_state(state, cfg.out)


def _write_state(state: dict[str, Any], path: Path) -> None:
    """torch.save, atomically: a crash mid-write never leaves half a checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {path} has version {state.get('version')}, need {CHECKPOINT_VERSION}"
        )
    return state


def load_bottleneck(path: Path) -> tuple[FeatureBottleneck, dict[str, Any]]:
    """The trained bottleneck (eval mode) and its checkpoint's metadata."""
    state = load_checkpoint(path)
    model = FeatureBottleneck(BottleneckConfig(**state["bottleneck"]))
    model.load_state_dict(state["model"])
    return model.eval(), state


def slim_checkpoint(src: Path, dst: Path) -> None:
    """The checkpoint without optimizer state (export reads it; training cannot resume
    from it): what ships in the repository."""
    state = load_checkpoint(src)
    for key in ("optimizer", "schedule", "torch_rng"):
        state.pop(key, None)
    _write_state(state, dst)
