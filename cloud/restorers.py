"""Human views: decoded split features → an RGB image a person can look at.

    DecodedFrame.features (C,h,w) ─► restorer network ─► RGB of the letterboxed input
        ─► crop the letterbox padding ─► resize to the view size (w, h) ─► uint8 HxWx3

The view size is ``view_size(original, max_side)``: the original frame's size, scaled
down (aspect kept) so its long side is at most ``max_side``, never scaled up. The cap
is what keeps a view's memory bounded whatever size a frame declares; the worker
picks it (``CloudSettings.view_max_side``, by default the network input size: the
restorer has no more detail than that to show).

Restorers are chosen by *kind* through the explicit ``RESTORERS`` registry; a view
job names its kind and the restore worker looks it up there.

- ``preview``: the bundle's preview.onnx, from the decoded latent to RGB on CPU. Bundles
  made with ``--preview`` ship a trained coarse-to-fine decoder (semantic aggregation,
  model/preview_training.py); older ones a linear decoder fitted by ridge regression.
  Either shows what the machine latent holds, not a photograph.
- The diffusion view of Diff-FCHM (semantic aggregation + a diffusion prior) is a
  later registry entry; it is not this module's preview.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from cloud.frame_decoder import DecodedFrame
from cloud.onnx_sessions import open_session
from codec.bundle import Bundle, file_sha256
from codec.geometry import Letterbox

log = logging.getLogger(__name__)


class Restorer(ABC):
    """One kind of human view; instances are shared by all workers (ORT is thread-safe)."""

    kind: ClassVar[str]
    description: ClassVar[str]
    """What this view is, in plain words; the API shows it with every view job."""
    model_sha256: str = ""
    """sha256 of the network that renders it (the view PNG's metadata says which)."""
    seed_text: str = "none: deterministic"
    """The sampling seed a view used; a deterministic restorer has none."""

    @abstractmethod
    def __init__(self, bundle: Bundle, threads: int = 0) -> None: ...

    @abstractmethod
    def __call__(self, frame: DecodedFrame, size: tuple[int, int]) -> np.ndarray:
        """Return an RGB uint8 (H, W, 3) image of exactly ``size`` (width, height).

        The caller passes ``view_size(frame.geometry.image_size, max_side)``; a restorer
        never allocates by the frame's declared size, which may be anything up to
        MAX_IMAGE_SIDE.
        """


class PreviewRestorer(Restorer):
    kind = "preview"
    description = (
        "preview: a reconstruction decoded from the machine bitstream alone (the bundle's "
        "preview decoder: trained coarse-to-fine, or a linear fit in older bundles). It "
        "shows what the machine saw, not a photograph, and is not the diffusion-restored view."
    )

    def __init__(self, bundle: Bundle, threads: int = 0, model: Path | None = None) -> None:
        """``model``: another preview.onnx for the same latent (evaluation compares them)."""
        if model is None:
            model = bundle.file("preview")
            self.model_sha256 = bundle.manifest.sha256.get(bundle.manifest.files["preview"], "")
        else:
            self.model_sha256 = file_sha256(model)
        self.session = open_session(model, threads)

    def __call__(self, frame: DecodedFrame, size: tuple[int, int]) -> np.ndarray:
        features = frame.features[None].astype(np.float32, copy=False)
        (image,) = self.session.run(None, {"features": features})
        return uncrop_letterbox(image[0], frame.geometry, size)


def view_size(image_size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) of a view: the original's, scaled down to a long side of max_side."""
    if max_side < 1:
        raise ValueError(f"max_side must be ≥ 1, got {max_side}")
    w, h = image_size
    if max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def uncrop_letterbox(
    image_chw: np.ndarray, geometry: Letterbox, size: tuple[int, int]
) -> np.ndarray:
    """Network-input RGB (3, H, W) in [0, 1] → RGB uint8 (h, w, 3) of ``size`` (w, h)."""
    expected = (3, geometry.input_size[1], geometry.input_size[0])
    if image_chw.shape != expected:
        raise ValueError(f"restored image has shape {image_chw.shape}, expected {expected}")
    left, top = geometry.pad
    new_w, new_h = geometry.resized_size
    inner = image_chw[:, top : top + new_h, left : left + new_w].transpose(1, 2, 0)
    rgb = (np.clip(inner, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if (new_w, new_h) != size:
        # Up: linear, not cubic (cubic overshoot adds ringing to a blurry preview).
        # Down: area averaging, which does not alias as linear does.
        shrink = size[0] < new_w or size[1] < new_h
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.ascontiguousarray(rgb)


RESTORERS: dict[str, type[Restorer]] = {"preview": PreviewRestorer}


def load_restorers(
    bundle: Bundle, threads: int = 0, kinds: list[str] | None = None
) -> dict[str, Restorer]:
    """Build one instance per registered kind (or the given kinds)."""
    wanted = list(RESTORERS) if kinds is None else kinds
    unknown = [k for k in wanted if k not in RESTORERS]
    if unknown:
        raise ValueError(f"unknown view kinds {unknown}, known: {sorted(RESTORERS)}")
    restorers = {kind: RESTORERS[kind](bundle, threads) for kind in wanted}
    log.info("view restorers ready: %s", ", ".join(restorers))
    return restorers
