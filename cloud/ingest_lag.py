"""Ingest lag: how far behind the cloud is, and the backpressure it asks of the edges.

    stored frame ─► observe(lag_s, now_s) ─► smoothed lag (EWMA over smoothing_s)
                                             stored fps (last window_s)
                                                    │
          lag > max_lag_s ──► behind ───────────────┤── lag < resume_fraction · max_lag_s
          (capacity = stored fps now)               │       ──► caught up (no hint)
                                                    ▼
          hint(streams) ─► Backpressure(max_fps = margin · capacity / streams)

The lag of a frame is capture → stored on the cloud's clock (the camera's clock offset
already applied), so it counts everything the frame waited for: the edge's spool, the
link, the ingest threads. While behind, the cloud's stored rate *is* its capacity, so
the capacity is taken at that moment and shared between the open streams with a
margin under 1: the edges' backlog then drains instead of growing. Hysteresis (a lower
threshold to lift the hint) keeps the hint from flapping on every frame.

A sample counts up to ``clamp`` x max_lag_s: a frame with a wild capture time (a camera
clock off by years) or a replay of yesterday's spool moves the average by a bounded
step, so only lag that lasts a couple of smoothing periods trips the hint.

Time comes in as a value (``now_s``, any monotonic clock in seconds), never read
here, so tests drive it without sleeping.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Backpressure:
    """What the cloud asks of each edge while it is behind."""

    max_fps: float
    """per camera; the edge thins capture to this rate"""
    reason: str


class IngestLag:
    """Smoothed capture → stored lag of one cloud, with hysteresis. Thread-safe."""

    def __init__(
        self,
        max_lag_s: float,
        resume_fraction: float = 0.5,
        smoothing_s: float = 2.0,
        window_s: float = 5.0,
        margin: float = 0.75,
        min_fps: float = 0.5,
        clamp: float = 4.0,
    ) -> None:
        if max_lag_s <= 0 or not 0 < resume_fraction < 1 or not 0 < margin <= 1:
            raise ValueError(
                f"max_lag_s {max_lag_s} must be > 0, resume_fraction {resume_fraction} and "
                f"margin {margin} in (0, 1)"
            )
        self.max_lag_s, self.resume_s = max_lag_s, resume_fraction * max_lag_s
        self.smoothing_s, self.window_s = smoothing_s, window_s
        self.margin, self.min_fps = margin, min_fps
        self.max_sample_s = clamp * max_lag_s
        self.lag_s = 0.0
        """smoothed lag, seconds"""
        self.capacity_fps: float | None = None
        """stored frames per second when the cloud fell behind; None while it keeps up"""
        self._last_s: float | None = None
        self._stored: deque[float] = deque()
        self._lock = threading.Lock()

    @property
    def behind(self) -> bool:
        return self.capacity_fps is not None

    def observe(self, lag_s: float, now_s: float) -> None:
        """One frame stored ``lag_s`` after its capture, at ``now_s``."""
        with self._lock:
            sample = min(max(lag_s, 0.0), self.max_sample_s)
            if self._last_s is not None:
                # Time-based EWMA: the same smoothing at 2 fps and at 200; the first
                # frame only starts the clock.
                alpha = 1.0 - math.exp(-max(now_s - self._last_s, 0.0) / self.smoothing_s)
                self.lag_s += alpha * (sample - self.lag_s)
            self._last_s = now_s
            self._stored.append(now_s)
            while self._stored and self._stored[0] <= now_s - self.window_s:
                self._stored.popleft()
            if self.capacity_fps is None and self.lag_s > self.max_lag_s:
                self.capacity_fps = len(self._stored) / self.window_s
            elif self.capacity_fps is not None and self.lag_s < self.resume_s:
                self.capacity_fps = None

    def hint(self, streams: int) -> Backpressure | None:
        """Each edge's share while behind (None: no limit)."""
        with self._lock:
            capacity, lag = self.capacity_fps, self.lag_s
        if capacity is None:
            return None
        share = max(self.min_fps, self.margin * capacity / max(streams, 1))
        return Backpressure(
            round(share, 1),
            f"backpressure: ingest lag {lag:.1f} s > {self.max_lag_s:g} s; "
            f"{capacity:.1f} frames/s shared by {streams} stream(s)",
        )
