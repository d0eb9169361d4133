"""The enhancement layer: one retained frame's own pixels, coded at a byte budget on demand.

    edge:  retained frame (RGB, long side ≤ the network input) ─► AVIF (libaom, through
           Pillow): per picture size the highest quality that fits the budget (bisection),
           the size closest to the frame kept ─► payload
    cloud: payload ─► check it is a still AVIF/WebP of a sane size ─► RGB at the view size

Why a pixel codec and not a residual over the preview: coding (original − preview) with
AVIF loses to coding the frame at every total budget from 4 to 32 KB on the photos dev set
(bench/enhancement_residual.py; the README's "Enhanced views on demand" quotes it). Such
codecs spend their bits on the residual's texture as if it were an image, and the
preview's errors are not sparse. What the machine bitstream buys here is the budget: a view
of B total bytes spends B minus the frame's own bytes on the enhancement.

WebP stands in where Pillow was built without AVIF; the payload names its own format.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image, features

T = TypeVar("T")

ENHANCEMENT_CODECS = ("avif", "webp")
MIN_BUDGET_BYTES = 320
"""Below this nothing fits: the smallest AVIF there is, a flat 32×32 picture at quality 0, is
306 B (measured; a 640×480 frame at 0.35 of its size and quality 0 takes ~700 B)."""
MAX_BUDGET_BYTES = 4_000_000
MAX_PIXELS = 4096 * 4096
"""The cloud decodes no payload larger than this, whatever its header claims."""
SCALES = (1.0, 0.7, 0.5, 0.35)
"""Picture sizes tried, as fractions of the retained frame's."""
_AVIF_SPEED = 6  # libaom's: 6 codes a 640x480 frame in 90-120 ms on this 2-core machine


class EnhancementError(ValueError):
    """A payload that is not a valid enhancement, or a budget nothing fits in."""


@dataclass(frozen=True)
class EnhancementPayload:
    data: bytes
    codec: str
    quality: int
    size: tuple[int, int]
    """(width, height) of the coded picture"""


def default_codec() -> str:
    return "avif" if features.check("avif") else "webp"


def encode_enhancement(
    rgb: np.ndarray, budget_bytes: int, codec: str | None = None
) -> EnhancementPayload:
    """The picture of ``rgb`` (H, W, 3 uint8) closest to it (PSNR, after the cloud's resize
    back) among those whose file is ≤ ``budget_bytes``.

    Each of SCALES gets the highest quality that fits (``fit_quality``); at small budgets a
    smaller picture at a higher quality wins, as in any rate-adaptive stream. The choice is
    measured, not guessed: the edge holds the original. EnhancementError when nothing fits."""
    codec = codec or default_codec()
    if codec not in ENHANCEMENT_CODECS:
        raise EnhancementError(f"enhancement codec {codec!r} unknown, known: {ENHANCEMENT_CODECS}")
    if not MIN_BUDGET_BYTES <= budget_bytes <= MAX_BUDGET_BYTES:
        raise EnhancementError(
            f"enhancement budget {budget_bytes} B outside {MIN_BUDGET_BYTES}..{MAX_BUDGET_BYTES}"
        )
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise EnhancementError(f"expected an RGB uint8 HxWx3 image, got {rgb.dtype} {rgb.shape}")
    original = Image.fromarray(np.ascontiguousarray(rgb))
    best: tuple[float, EnhancementPayload] | None = None
    for scale in SCALES:
        size = (max(16, round(original.width * scale)), max(16, round(original.height * scale)))
        image = original if scale == 1.0 else original.resize(size, Image.Resampling.LANCZOS)
        fit = fit_quality(functools.partial(_encode, image, codec), budget_bytes)
        if fit is None:
            continue
        quality, data = fit
        error = _psnr(rgb, decode_enhancement(data, original.size))
        if best is None or error > best[0]:
            best = (error, EnhancementPayload(data, codec, quality, image.size))
    if best is None:
        raise EnhancementError(
            f"a {original.width}x{original.height} frame does not fit in {budget_bytes} B "
            f"even at {codec} quality 0 and {min(SCALES):g}x its size"
        )
    return best[1]


def fit_quality(
    encode: Callable[[int], T],
    budget_bytes: int,
    size: Callable[[T], int] = len,  # type: ignore[assignment]
    lowest: int = 0,
) -> tuple[int, T] | None:
    """(quality, result) of the highest quality ``lowest``..100 whose ``encode(quality)`` is
    at most the budget (``size`` of it), by bisection (size grows with quality nearly
    monotonically; each result is checked against the budget, never assumed); None when
    the lowest quality does not fit."""
    best: tuple[int, T] | None = None
    lo, hi = lowest, 100
    while lo <= hi:
        quality = (lo + hi) // 2
        result = encode(quality)
        if size(result) <= budget_bytes:
            best, lo = (quality, result), quality + 1
        else:
            hi = quality - 1
    return best


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 10.0 * float(np.log10(255.0**2 / max(mse, 1e-10)))


def _encode(image: Image.Image, codec: str, quality: int) -> bytes:
    out = io.BytesIO()
    if codec == "avif":
        image.save(out, format="AVIF", quality=quality, speed=_AVIF_SPEED)
    else:
        image.save(out, format="WEBP", quality=quality, method=4)
    return out.getvalue()


def decode_enhancement(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """Payload → RGB uint8 (H, W, 3), resized to ``size`` (width, height) when given.

    EnhancementError, naming what is wrong, for anything but a still AVIF or WebP of at most
    MAX_PIXELS: the bytes come from a camera, and a camera's bug must not become the cloud's."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in ("AVIF", "WEBP"):
            raise EnhancementError(f"enhancement payload is {image.format}, not AVIF or WebP")
        if getattr(image, "n_frames", 1) != 1:
            raise EnhancementError("enhancement payload is an animation, not a still picture")
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise EnhancementError(f"enhancement payload is {width}x{height}, over {MAX_PIXELS} px")
        rgb = image.convert("RGB")
    except EnhancementError:
        raise
    except Exception as exc:  # Pillow raises many types for a broken file
        raise EnhancementError(f"enhancement payload does not decode: {exc}") from exc
    if size is not None and rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)
