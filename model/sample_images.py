"""Real images that ship inside installed Python packages (no downloads).

Used to fit codec statistics. Evaluation uses other images (the demo's video, the
user's folders), never these.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

_SUFFIXES = {".jpg", ".jpeg", ".png"}


def packaged_image_paths() -> list[Path]:
    paths: list[Path] = []
    import skimage.data
    import ultralytics

    for root in (Path(ultralytics.__file__).parent / "assets", Path(skimage.data.__file__).parent):
        paths += sorted(p for p in root.iterdir() if p.suffix.lower() in _SUFFIXES)
    return paths


def folder_image_paths(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png images under {folder}")
    return paths


def read_color(paths: list[Path], min_side: int = 128) -> Iterator[np.ndarray]:
    """BGR uint8 frames; grey images become 3-channel, tiny ones are skipped."""
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None or min(image.shape[:2]) < min_side:
            continue
        yield image


def augment(image: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The image, its mirror, and a random crop: more statistics from few images."""
    yield image
    yield image[:, ::-1]
    h, w = image.shape[:2]
    ch, cw = int(h * rng.uniform(0.5, 0.9)), int(w * rng.uniform(0.5, 0.9))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    yield image[y : y + ch, x : x + cw]
