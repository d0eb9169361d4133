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
- ``diffusion``: the preview, restored by a Stable-Diffusion-class prior a user keeps on
  local disk (``diffusion_prior_dir``, diffusers layout: SD-Turbo, SD 2.1 or similar).
  SDEdit: the preview is noised to ``strength`` and denoised in ``steps`` steps, with a
  recorded seed, on a GPU when there is one. The detail it adds is the prior's, not the
  camera's. Without a prior the kind is not served, and a view asking for it fails
  saying why. Nothing is fetched from a hub.
- ``enhanced``: the frame's own pixels, from the enhancement layer its camera codes on
  request (codec/enhancement.py; the worker waits for it, cloud/restore_worker.py), or the
  preview, saying why, when the camera cannot send it.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from cloud.frame_decoder import DecodedFrame
from cloud.onnx_sessions import open_session
from codec.bundle import Bundle, file_sha256
from codec.enhancement import decode_enhancement
from codec.geometry import Letterbox

log = logging.getLogger(__name__)


class RestorerUnavailable(RuntimeError):
    """A view kind this cloud cannot serve as configured; the message says what to set."""


@dataclass(frozen=True)
class RestorerOptions:
    """What the view service takes from the cloud's settings (CloudSettings.diffusion_*,
    enhancement_wait_s, camera_online_after_s)."""

    diffusion_prior_dir: Path | None = None
    diffusion_steps: int = 4
    diffusion_strength: float = 0.5
    diffusion_seed: int = 0
    enhancement_wait_s: float = 20.0
    """an enhanced view waits this long for its camera's answer (restore_worker.py)"""
    camera_online_after_s: float = 30.0
    """a camera not heard from for longer is offline: its enhanced views do not wait"""


class Restorer(ABC):
    """One kind of human view; instances are shared by all workers (ORT is thread-safe)."""

    kind: ClassVar[str]
    description: ClassVar[str]
    """What this view is, in plain words; the API shows it with every view job."""
    model_sha256: str = ""
    """sha256 of the network that renders it (the view PNG's metadata says which)."""
    seed_text: str = "none: deterministic"
    """The sampling seed a view used; a deterministic restorer has none."""
    wants_enhancement: ClassVar[bool] = False
    """The worker fetches the view's enhancement payload (kind enhanced) and passes it."""

    @abstractmethod
    def __init__(
        self, bundle: Bundle, threads: int = 0, options: RestorerOptions | None = None
    ) -> None: ...

    @abstractmethod
    def __call__(
        self, frame: DecodedFrame, size: tuple[int, int], enhancement: bytes | None = None
    ) -> np.ndarray:
        """Return an RGB uint8 (H, W, 3) image of exactly ``size`` (width, height).

        ``enhancement``: the view's enhancement payload, for kinds that want one (None: it
        did not come, and the view is rendered from the machine bitstream alone).

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

    def __init__(
        self,
        bundle: Bundle,
        threads: int = 0,
        options: RestorerOptions | None = None,
        *,
        model: Path | None = None,
    ) -> None:
        """``model``: another preview.onnx for the same latent (evaluation compares them)."""
        if model is None:
            model = bundle.file("preview")
            self.model_sha256 = bundle.manifest.sha256.get(bundle.manifest.files["preview"], "")
        else:
            self.model_sha256 = file_sha256(model)
        self.session = open_session(model, threads)

    def __call__(
        self, frame: DecodedFrame, size: tuple[int, int], enhancement: bytes | None = None
    ) -> np.ndarray:
        return uncrop_letterbox(self.network_image(frame), frame.geometry, size)

    def network_image(self, frame: DecodedFrame) -> np.ndarray:
        """(3, H, W) float32 RGB in [0, 1] at the network input, letterbox included."""
        features = frame.features[None].astype(np.float32, copy=False)
        (image,) = self.session.run(None, {"features": features})
        return np.asarray(image[0], dtype=np.float32)


class DiffusionRestorer(Restorer):
    kind = "diffusion"
    description = (
        "diffusion: the preview restored by a Stable-Diffusion-class prior from local disk "
        "(noised, then denoised in a few steps, seed recorded). A reconstruction from the "
        "machine bitstream alone: the detail the prior adds is invented, not the camera's."
    )

    def __init__(
        self, bundle: Bundle, threads: int = 0, options: RestorerOptions | None = None
    ) -> None:
        o = options or RestorerOptions()
        if not 1 <= o.diffusion_steps <= 50 or not 0.0 < o.diffusion_strength <= 1.0:
            raise ValueError(
                f"diffusion_steps {o.diffusion_steps} (1..50) or diffusion_strength "
                f"{o.diffusion_strength} (0..1] out of range"
            )
        prior = o.diffusion_prior_dir
        if prior is None:
            raise RestorerUnavailable(
                "no diffusion prior: set diffusion_prior_dir (FCHM_CLOUD_DIFFUSION_PRIOR_DIR) "
                "to a local Stable-Diffusion-class checkpoint in diffusers layout (SD-Turbo, "
                "SD 2.1 or similar); nothing is fetched from a hub"
            )
        if not (prior / "model_index.json").is_file():
            raise RestorerUnavailable(
                f"diffusion_prior_dir {prior} holds no model_index.json: it must be a "
                "diffusers checkpoint directory (unet/, vae/, text_encoder/, tokenizer/, "
                "scheduler/)"
            )
        self.preview = PreviewRestorer(bundle, threads)
        self.steps, self.strength, self.seed = (
            o.diffusion_steps,
            o.diffusion_strength,
            o.diffusion_seed,
        )
        self.seed_text = (
            f"{self.seed} (torch.Generator; {self.steps} steps, strength {self.strength})"
        )
        self.model_sha256 = _directory_sha256(prior, extra=self.preview.model_sha256)
        try:
            from model.torchvision_cpu import ensure_torchvision_nms

            ensure_torchvision_nms()  # transformers imports torchvision, next to CPU torch
            import torch
            from diffusers import StableDiffusionImg2ImgPipeline
        except ImportError as exc:
            raise RestorerUnavailable(
                f"diffusion views need torch and diffusers ({exc}): install the cloud with "
                "the `train` and `diffusion` extras"
            ) from exc

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        try:
            pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
                prior, local_files_only=True, dtype=dtype,
                safety_checker=None, requires_safety_checker=False,
            )  # fmt: skip
        except (OSError, ValueError) as exc:
            raise RestorerUnavailable(f"diffusion_prior_dir {prior} does not load: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        if threads:
            torch.set_num_threads(threads)

    def __call__(
        self, frame: DecodedFrame, size: tuple[int, int], enhancement: bytes | None = None
    ) -> np.ndarray:
        torch = self.torch
        base = self.preview.network_image(frame)  # (3, H, W), H and W multiples of 32
        x = torch.from_numpy(base)[None].to(self.device, self.pipe.unet.dtype)  # [0, 1]
        generator = torch.Generator(self.device).manual_seed(self.seed)
        with torch.no_grad():
            out = self.pipe(
                prompt="", image=x, strength=self.strength, num_inference_steps=self.steps,
                guidance_scale=0.0, generator=generator, output_type="np",
            ).images[0]  # fmt: skip
        return uncrop_letterbox(
            np.asarray(out, np.float32).transpose(2, 0, 1), frame.geometry, size
        )


def _directory_sha256(root: Path, extra: str = "") -> str:
    """One sha256 over every file of a checkpoint directory (paths and bytes), and ``extra``
    (the preview's hash): which prior rendered a view, as its PNG says."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class EnhancedRestorer(Restorer):
    kind = "enhanced"
    description = (
        "enhanced: the camera's own pixels of this frame, coded again by its edge on request "
        "from the frames it retains (AVIF at the view's enhancement_bytes, on top of the machine "
        "bitstream; both counted). A lossy photograph of the frame, not a reconstruction from "
        "features. When the camera cannot send it (offline, frame no longer retained) the view "
        "is the preview, and `fallback` says why."
    )
    wants_enhancement = True

    def __init__(
        self, bundle: Bundle, threads: int = 0, options: RestorerOptions | None = None
    ) -> None:
        self.preview = PreviewRestorer(bundle, threads)
        self.model_sha256 = self.preview.model_sha256  # of the fallback; the payload is pixels

    def __call__(
        self, frame: DecodedFrame, size: tuple[int, int], enhancement: bytes | None = None
    ) -> np.ndarray:
        if enhancement is None:
            return self.preview(frame, size)
        return decode_enhancement(enhancement, size)


class UnavailableRestorer(Restorer):
    """Stands in for a kind this cloud cannot serve: a view of it fails with the reason."""

    kind = "unavailable"
    description = "not served by this cloud"

    def __init__(self, reason: str) -> None:  # not a registered kind: built by load_restorers
        self.reason = reason

    def __call__(
        self, frame: DecodedFrame, size: tuple[int, int], enhancement: bytes | None = None
    ) -> np.ndarray:
        raise LookupError(self.reason)


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


RESTORERS: dict[str, type[Restorer]] = {
    "preview": PreviewRestorer,
    "diffusion": DiffusionRestorer,
    "enhanced": EnhancedRestorer,
}


def wants_enhancement(kind: str) -> bool:
    """Whether a view of this kind takes an enhancement budget (unknown kinds: no)."""
    restorer = RESTORERS.get(kind)
    return restorer is not None and restorer.wants_enhancement


def load_restorers(
    bundle: Bundle,
    threads: int = 0,
    kinds: list[str] | None = None,
    options: RestorerOptions | None = None,
) -> dict[str, Restorer]:
    """Build one instance per registered kind (or the given kinds). A kind that cannot be
    served as configured (RestorerUnavailable: no diffusion prior) gets an
    UnavailableRestorer, and its views fail with the reason."""
    wanted = list(RESTORERS) if kinds is None else kinds
    unknown = [k for k in wanted if k not in RESTORERS]
    if unknown:
        raise ValueError(f"unknown view kinds {unknown}, known: {sorted(RESTORERS)}")
    restorers: dict[str, Restorer] = {}
    for kind in wanted:
        try:
            restorers[kind] = RESTORERS[kind](bundle, threads, options)
        except RestorerUnavailable as exc:
            log.warning("view kind %s not served: %s", kind, exc)
            restorers[kind] = UnavailableRestorer(f"{kind}: {exc}")
    log.info("view restorers ready: %s", ", ".join(restorers))
    return restorers
