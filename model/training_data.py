"""Training crops for the bottleneck: real images (and video frames) → augmented tensors.

    packaged images (ultralytics, scikit-image, matplotlib, scikit-learn)  ┐
    --data folders: images, and frames sampled from any videos in them     ┴► pool (RGB uint8)
        ─► random scale ─► random crop (padded with letterbox grey) ─► flip ─► colour jitter
        ─► (3, S, S) float in [0, 1]

No evaluation material is used by default: the demo's video (iscc-samples) is what
``fchm model eval`` and the benchmarks judge, so it never enters this pool unless a
user passes it in ``--data`` themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from edge.preprocess import PAD_VALUE
from model.sample_images import folder_image_paths, packaged_image_paths, read_color

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"}


def extra_packaged_image_paths() -> list[Path]:
    """More real photos that ship inside installed packages (people among them)."""
    paths: list[Path] = []
    try:
        import matplotlib

        sample = Path(matplotlib.get_data_path()) / "sample_data"
        paths += [p for p in (sample / "grace_hopper.jpg",) if p.is_file()]
    except ImportError:
        pass
    try:
        import sklearn.datasets

        images = Path(sklearn.datasets.__file__).parent / "images"
        paths += sorted(images.glob("*.jpg"))
    except ImportError:
        pass
    return paths


def video_frames(path: Path, every: int) -> Iterator[np.ndarray]:
    """Every ``every``-th frame of a video, BGR."""
    capture = cv2.VideoCapture(str(path))
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            if index % every == 0:
                yield frame
            index += 1
    finally:
        capture.release()


def load_pool(
    data: list[Path], use_packaged: bool = True, video_every: int = 15
) -> list[np.ndarray]:
    """RGB uint8 images to crop from."""
    pool: list[np.ndarray] = []
    if use_packaged:
        pool += list(read_color(packaged_image_paths() + extra_packaged_image_paths()))
    for folder in data:
        if not folder.exists():
            raise FileNotFoundError(f"--data: {folder} does not exist")
        if folder.is_file() and folder.suffix.lower() in VIDEO_SUFFIXES:
            pool += list(video_frames(folder, video_every))
            continue
        videos = [p for p in sorted(folder.rglob("*")) if p.suffix.lower() in VIDEO_SUFFIXES]
        for video in videos:
            pool += list(video_frames(video, video_every))
        try:
            pool += list(read_color(folder_image_paths(folder)))
        except FileNotFoundError:
            if not videos:
                raise
    if not pool:
        raise ValueError("no training images: pass --data with images or videos")
    log.info("training pool: %d images", len(pool))
    return [np.ascontiguousarray(image[:, :, ::-1]) for image in pool]


class CropStream(torch.utils.data.IterableDataset[torch.Tensor]):
    """Endless augmented square crops; deterministic for a given seed."""

    def __init__(self, pool: list[np.ndarray], size: int, seed: int) -> None:
        super().__init__()
        self.pool, self.size, self.seed = pool, size, seed

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            yield torch.from_numpy(self.crop(rng))

    def crop(self, rng: np.random.Generator) -> np.ndarray:
        image = self.pool[int(rng.integers(len(self.pool)))]
        s = self.size
        # Scale so the long side lands between the crop size and 2.5x it: whole scenes
        # at detector scale, and zoomed-in detail.
        long_side = rng.uniform(0.8 * s, 2.5 * s)
        f = long_side / max(image.shape[:2])
        h, w = max(8, round(image.shape[0] * f)), max(8, round(image.shape[1] * f))
        resized = cv2.resize(
            image, (w, h), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
        )
        canvas = np.full((max(h, s), max(w, s), 3), PAD_VALUE, dtype=np.uint8)
        oy, ox = (
            int(rng.integers(canvas.shape[0] - h + 1)),
            int(rng.integers(canvas.shape[1] - w + 1)),
        )
        canvas[oy : oy + h, ox : ox + w] = resized
        y, x = (
            int(rng.integers(canvas.shape[0] - s + 1)),
            int(rng.integers(canvas.shape[1] - s + 1)),
        )
        out = canvas[y : y + s, x : x + s].astype(np.float64)
        if rng.random() < 0.5:
            out = out[:, ::-1]
        if rng.random() < 0.1:
            out = np.repeat(out.mean(axis=2, keepdims=True), 3, axis=2)
        if rng.random() < 0.3:
            # Low-resolution cameras, upscaled to the network size: blur the detail away.
            factor = rng.uniform(1.5, 4.0)
            small = cv2.resize(out, (max(8, int(s / factor)),) * 2, interpolation=cv2.INTER_AREA)
            out = np.asarray(cv2.resize(small, (s, s), interpolation=cv2.INTER_LINEAR), np.float64)
        gain = rng.uniform(0.7, 1.3, size=3 if rng.random() < 0.5 else 1)
        out = (out - 128.0) * rng.uniform(0.7, 1.3) + 128.0 * rng.uniform(0.8, 1.2)
        out = np.clip(out * gain, 0, 255) / 255.0
        return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)
