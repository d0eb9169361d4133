"""The edge's retention buffer: the last minutes of frames, as pixels, for enhancements.

    encode loop ─► keep(sequence, frame) ─► <dir>/<sequence>.npy (long side ≤ max_side)
                                              │  oldest out beyond max_age_s or max_bytes
    EnhancementRequest(sequence) ─► get() ────┘─► the frame, or None: it left the buffer

The machine bitstream cannot give a person the camera's pixels back; this buffer can, for
as long as it holds a frame. It is a cache, not a spool: nothing here is owed to the
cloud, so a write is not fsynced, and a buffer lost in a power cut costs only the
enhancements of its frames (their views fall back to the machine-only view, saying so).
Frames are stored raw (.npy), not as PNG: a PNG of a 640-px frame costs ~25 ms of the
encode loop's CPU, a raw write ~1 ms. Downscaled first to ``max_side``, the network's input:
an enhancement is never coded larger than the view it enhances.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass
class RetentionStats:
    kept: int = 0
    evicted: int = 0
    hits: int = 0
    misses: int = 0


class FrameRetention:
    def __init__(self, directory: Path, max_age_s: float, max_bytes: int, max_side: int) -> None:
        if max_age_s < 0 or max_bytes < 0 or max_side < 1:
            raise ValueError(
                f"retention: max_age_s {max_age_s} and max_bytes {max_bytes} must be ≥ 0, "
                f"max_side {max_side} ≥ 1"
            )
        self.directory = directory
        self.max_age_ns, self.max_bytes, self.max_side = int(max_age_s * 1e9), max_bytes, max_side
        self.stats = RetentionStats()
        self._lock = threading.Lock()
        self._index: OrderedDict[int, tuple[int, int]] = OrderedDict()  # seq → (kept_ns, bytes)
        self._bytes = 0
        if self.enabled:
            directory.mkdir(parents=True, exist_ok=True)
            self._reload()

    @property
    def enabled(self) -> bool:
        return self.max_age_ns > 0 and self.max_bytes > 0

    @property
    def frames(self) -> int:
        return len(self._index)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def keep(self, sequence: int, image_bgr: np.ndarray) -> None:
        """Retain one encoded frame (BGR, as captured) under its spool sequence."""
        if not self.enabled:
            return
        h, w = image_bgr.shape[:2]
        if max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image_bgr = cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
        path = self._path(sequence)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            np.save(f, np.ascontiguousarray(image_bgr[:, :, ::-1]), allow_pickle=False)
        os.replace(tmp, path)  # a reader sees the whole frame or none
        now = time.time_ns()
        with self._lock:
            self._index[sequence] = (now, path.stat().st_size)
            self._bytes += self._index[sequence][1]
            self.stats.kept += 1
            self._evict(now)

    def get(self, sequence: int) -> np.ndarray | None:
        """The frame as RGB uint8 (H, W, 3), or None when it is not (or no longer) held."""
        with self._lock:
            self._evict(time.time_ns())
            held = sequence in self._index
        if not held:
            self.stats.misses += 1
            return None
        try:
            image = np.load(self._path(sequence), allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning("retained frame %d unreadable: %s", sequence, exc)
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return np.asarray(image, dtype=np.uint8)

    def oldest_age_s(self) -> float:
        with self._lock:
            if not self._index:
                return 0.0
            kept_ns, _ = next(iter(self._index.values()))
        return max(0.0, (time.time_ns() - kept_ns) / 1e9)

    def _path(self, sequence: int) -> Path:
        return self.directory / f"{sequence}.npy"

    def _evict(self, now_ns: int) -> None:
        while self._index:
            sequence, (kept_ns, size) = next(iter(self._index.items()))
            if now_ns - kept_ns <= self.max_age_ns and self._bytes <= self.max_bytes:
                return
            del self._index[sequence]
            self._bytes -= size
            self.stats.evicted += 1
            self._path(sequence).unlink(missing_ok=True)

    def _reload(self) -> None:
        """What an earlier run left, oldest first (a restarted agent still serves it)."""
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        found = []
        for path in self.directory.glob("*.npy"):
            try:
                st = path.stat()
                found.append((int(path.stem), st.st_mtime_ns, st.st_size))
            except (ValueError, OSError):
                continue
        for sequence, kept_ns, size in sorted(found):
            self._index[sequence] = (kept_ns, size)
            self._bytes += size
        self._evict(time.time_ns())
