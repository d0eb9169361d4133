"""Rate control: the rate level each frame is coded at, fixed or under a bandwidth budget.

    frame ─► small_gray ─► scene_activity(prev, cur) ─┐
                                                      ▼
    cloud RateHint ─► set_hint(level | None) ─► choose(now_s, activity) ─► level
                                                      ▲                     │
                                                      │           FrameEncoder.encode
                                                      │                     │
                                   record(now_s, level, nbytes) ◄───────────┘

The agent calls ``choose`` before encoding a frame and ``record`` after, with the
same clock: the capture clock in seconds (media time for files, wall time for live
sources). ``make_rate_controller`` builds the controller EdgeSettings asks for:

- ``FixedRate``: always ``settings.rate_level``.
- ``BudgetRate``: a leaky bucket of bytes filled at ``budget_kbps``, drained by
  every frame's bitstream, and a per-level bytes predictor corrected online; each
  frame gets the level whose predicted size is closest to its allowance (its share
  of the budget plus a proportional pay-back of the bucket's surplus or debt).

Cloud rate hints *cap* the level: a hint X means "no more than level X", for both
controllers, until ``set_hint(None)`` lifts it (unless hints are not followed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from codec.bitstream import KEYFRAME_OVERHEAD_BYTES
from codec.bundle import DetectorInfo
from codec.feature_codec import FeatureCodec
from codec.geometry import Letterbox
from edge.settings import EdgeSettings

_ACTIVITY_FLOOR = 0.002
"""Below this a frame difference is sensor noise, whatever the baseline says."""


class RateController(Protocol):
    """What the agent calls once per frame."""

    def choose(self, now_s: float, activity: float | None = None, keyframe: bool = True) -> int:
        """The rate level for the frame captured at ``now_s`` (a keyframe or a P-frame)."""
        ...

    def record(self, now_s: float, level: int, nbytes: int, keyframe: bool = True) -> None:
        """The frame chosen at ``now_s`` went out at ``level`` as ``nbytes`` bytes."""
        ...

    def set_hint(self, level: int | None) -> None:
        """The cloud's cap on the level; None lifts it."""
        ...

    def charge(self, nbytes: int) -> None:
        """Bytes the camera sent besides frames (enhancements): the same budget pays."""
        ...


# ── scene activity ───────────────────────────────────────────────────────────


def small_gray(image: np.ndarray, size: int = 32) -> np.ndarray:
    """A ``size``-cell-wide grey thumbnail (float32, 0..255) of a BGR or grey frame.

    Each cell is the mean of ~16 pixels sampled on a grid: averaging suppresses
    sensor noise, and sampling keeps the cost flat (~0.1 ms) whatever the frame
    size, which is all an activity measure needs; numpy only.
    """
    h, w = image.shape[:2]
    step = max(1, w // (4 * size))  # ~4x4 samples per cell
    sampled = image[::step, ::step].astype(np.float32)
    if sampled.ndim == 3:
        sampled = sampled @ np.array([0.114, 0.587, 0.299], np.float32)
    h, w = sampled.shape
    block = max(1, w // size)
    rows, cols = h // block, w // block
    cells = sampled[: rows * block, : cols * block].reshape(rows, block, cols, block)
    return np.asarray(cells.mean(axis=(1, 3)), dtype=np.float32)


def scene_activity(prev_small_gray: np.ndarray | None, small_gray: np.ndarray) -> float:
    """Mean absolute difference of two grey thumbnails, as a fraction of full scale.

    0.0 for identical frames, a few thousandths for sensor noise and small changes,
    0.02 and more when people move or the view cuts (demo.mp4 at 24 fps: median
    0.005, 95th percentile 0.03). Each frame is coded on its own (no inter prediction), so activity
    does not change a frame's *size*; it says how much a frame is *worth*: a static
    frame repeats what the cloud already detected, a changing one may not. BudgetRate
    therefore saves tokens on static frames and spends them on active ones.
    """
    if prev_small_gray is None or prev_small_gray.shape != small_gray.shape:
        return 0.0
    diff = np.abs(small_gray.astype(np.float32) - prev_small_gray.astype(np.float32))
    return float(diff.mean()) / 255.0


class ActivityMeter:
    """Keeps the previous thumbnail: ``meter(image)`` → scene_activity against the last call."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._prev: np.ndarray | None = None

    def __call__(self, image_bgr: np.ndarray) -> float | None:
        cur = small_gray(image_bgr, self.size)
        prev, self._prev = self._prev, cur
        return None if prev is None else scene_activity(prev, cur)


# ── controllers ──────────────────────────────────────────────────────────────


class FixedRate:
    """One level for every frame; a cloud hint lowers it, never raises it."""

    def __init__(
        self, level: int, num_levels: int | None = None, follow_hints: bool = True
    ) -> None:
        if level < 0 or (num_levels is not None and level >= num_levels):
            raise ValueError(f"rate_level {level} outside 0..{(num_levels or 1) - 1}")
        self.level = level
        self.follow_hints = follow_hints
        self.hint: int | None = None

    def choose(self, now_s: float, activity: float | None = None, keyframe: bool = True) -> int:
        return self.level if self.hint is None else min(self.level, self.hint)

    def record(self, now_s: float, level: int, nbytes: int, keyframe: bool = True) -> None:
        pass

    def charge(self, nbytes: int) -> None:
        pass  # no budget to charge

    def set_hint(self, level: int | None) -> None:
        if self.follow_hints:
            self.hint = None if level is None else max(0, int(level))


class BudgetRate:
    """Leaky bucket + per-level bytes predictor: the level per frame under a kbit/s budget.

        tokens ──(budget_kbps · dt)──► [ bucket, depth ±D ] ──(nbytes)──► frames
                                            │ balance b
        allowance = share + (b − b*) · interval / payback_s      b* from scene activity
        level     = argmin_l |predicted_l − allowance|,  capped by the cloud's hint
        predicted_l = expected_l · bias_l · scene        (corrected on every record)

    Why it holds ±10 % over any 10 s window: every byte goes through the bucket, so
    the bytes sent in a window are the tokens added (budget · window) minus the
    change of the balance. The pay-back term pulls the balance towards its target
    b*, which stays within ±D/2 with D = ``slack`` · tolerance · window of budget
    (0.4 s of budget by default), so a window is off by about |Δb*| ≤ D (4 %) plus
    the dither of the balance and the predictor's misses (measured: worst windows
    within 3 % at 24 fps, 5.4 % at 2 fps on demo.mp4; bench/rate_control.py).
    Choosing the *nearest* level (not the one below) with that feedback dithers
    between the two levels around the budget, so the mean rate matches any budget
    inside the codec's range, not just the levels' sizes.

    Outside the range it degrades gracefully: under level 0 it sends level 0 and
    forgives debt beyond D (it could never be repaid); above the top level (or
    while a hint caps it) it drops tokens beyond D, so a later change cannot burst.

    The predictor starts from the codec's expected bytes (its integer tables'
    entropy) and learns two corrections from actual sizes, in log space: a fast
    *scene* factor shared by all levels (content moves every level together: the
    log-ratios across levels correlate ≥ 0.98 on demo.mp4) and a slow per-level
    *bias* (how this camera's statistics differ from the fitting images per step).
    Keyframes and P-frames have a predictor each (a P-frame of a still scene is a
    tenth of a keyframe or less): the P-frames' starts from the keyframes' and
    learns from the first P-frame on.

    Scene activity moves the balance target b* within ±D/2: frames at the camera's
    floor of activity (static scene, sensor noise) save tokens, frames at 4x that
    floor spend them, so the level rises the moment something moves and drops back
    when it stops; the window error this adds is ≤ D.
    """

    def __init__(
        self,
        budget_kbps: float,
        expected_bytes: Sequence[float] | np.ndarray,
        fps_hint: float = 10.0,
        *,
        calibrated: bool = True,
        window_s: float = 10.0,
        tolerance: float = 0.10,
        slack: float = 0.4,
        payback_s: float = 1.0,
        follow_hints: bool = True,
    ) -> None:
        if budget_kbps <= 0 or fps_hint <= 0:
            raise ValueError(f"budget_kbps and fps_hint must be > 0, got {budget_kbps}, {fps_hint}")
        expected = np.asarray(expected_bytes, dtype=np.float64)
        if expected.ndim != 1 or expected.size == 0 or np.any(expected <= 0):
            raise ValueError("expected_bytes must be one positive size per level")
        self.budget_kbps = float(budget_kbps)
        self.rate_bps = budget_kbps * 1000.0 / 8.0  # bytes per second
        self.expected = expected
        self.depth = slack * tolerance * window_s * self.rate_bps
        self.payback_s = payback_s
        self.follow_hints = follow_hints
        self.hint: int | None = None
        self.balance = 0.0
        self.interval = 1.0 / fps_hint
        self._last_s: float | None = None
        # Predictor state in log space: scene factor + per-level bias, per frame kind.
        self._key = _SizePredictor(np.zeros_like(expected), calibrated)
        self._inter: _SizePredictor | None = None
        # Scene activity: a slow baseline it is judged against.
        self._activity_base: float | None = None
        self._target = 0.0

    @property
    def num_levels(self) -> int:
        return int(self.expected.size)

    def predicted(self, keyframe: bool = True) -> np.ndarray:
        """Bytes per frame the predictor expects at each level now."""
        p = self._predictor(keyframe)
        return np.asarray(self.expected * np.exp(p.log_scene + p.log_bias))

    def _predictor(self, keyframe: bool) -> _SizePredictor:
        if keyframe:
            return self._key
        if self._inter is None:  # no P-frame seen yet: as big as a keyframe, until one is
            return self._key
        return self._inter

    def choose(self, now_s: float, activity: float | None = None, keyframe: bool = True) -> int:
        # 1. Refill for the time since the last frame.
        if self._last_s is not None:
            dt = now_s - self._last_s
            if dt > 0:
                self.balance += self.rate_bps * dt
                # A stall (source hiccup) must not stretch the per-frame share.
                self.interval += 0.1 * (min(dt, 4 * self.interval) - self.interval)
        self._last_s = now_s
        if not self._key.calibrated:
            return 0  # fewest bytes until the first frame calibrates the scale
        # 2. Scene activity sets where the balance should sit.
        self._target = self._activity_target(activity)
        # 3. This frame's allowance: its share, plus surplus (or minus debt) paid back.
        share = self.rate_bps * self.interval
        allowance = share + (self.balance - self._target) * self.interval / self.payback_s
        level = int(np.argmin(np.abs(self.predicted(keyframe) - allowance)))
        return level if self.hint is None else min(level, self.hint)

    def record(self, now_s: float, level: int, nbytes: int, keyframe: bool = True) -> None:
        if not 0 <= level < self.num_levels:
            raise ValueError(f"rate level {level} outside 0..{self.num_levels - 1}")
        self.balance -= nbytes
        # The bucket is bounded only where the controller is saturated, so a bound
        # never removes bytes it could still have corrected. Debt beyond the depth at
        # level 0 means the budget is below the codec's range: forgive it, to recover
        # as soon as the scene gets cheaper. Surplus beyond it at the top level (or at
        # the hint's cap) could never be spent: drop it, so lifting a cap cannot burst.
        if level == 0:
            self.balance = max(self.balance, -self.depth)
        if level == self.num_levels - 1 or level == self.hint:
            self.balance = min(self.balance, self.depth)
        if not keyframe and self._inter is None:
            self._inter = _SizePredictor(self._key.log_bias.copy(), False, self._key.log_scene)
        predictor = self._predictor(keyframe)
        error = math.log(max(nbytes, 1) / self.predicted(keyframe)[level])
        predictor.learn(level, error)

    def set_hint(self, level: int | None) -> None:
        if self.follow_hints:
            self.hint = None if level is None else max(0, int(level))

    def charge(self, nbytes: int) -> None:
        """An enhancement went out: the following frames pay it back, down to level 0
        (debt beyond the bucket's depth is forgiven there, as for frames)."""
        self.balance -= nbytes

    def _activity_target(self, activity: float | None) -> float:
        """Balance target in [-D/2, D/2]: +D/2 (save) at the camera's noise floor of
        activity, 0 at twice it, -D/2 (spend) at four times it and above."""
        if activity is None:
            return 0.0
        act = max(activity, _ACTIVITY_FLOOR)
        base = self._activity_base
        if base is None or act < base:
            # Falls at once, rises over ~30 s: it tracks the floor (noise, static
            # scene), so a camera that always sees motion is judged against its own.
            self._activity_base = act
        else:
            self._activity_base = base + min(1.0, self.interval / 30.0) * (act - base)
        if base is None:
            return 0.0
        salience = math.log2(act / base)
        return 0.5 * self.depth * max(-1.0, min(1.0, 1.0 - salience))


@dataclass
class _SizePredictor:
    """log(actual / expected bytes) = scene + bias[level], learned online."""

    log_bias: np.ndarray
    calibrated: bool
    log_scene: float = 0.0

    def learn(self, level: int, error: float) -> None:
        if not self.calibrated:
            self.log_scene += error  # the first frame sets the absolute scale
            self.calibrated = True
            return
        # The scene factor follows content within a few frames; the per-level bias is
        # slow so one odd frame at a rarely used level does not skew it.
        self.log_scene += 0.3 * error
        self.log_bias[level] += 0.05 * error


class FpsCap:
    """The cloud's max_fps hint on a live source: one frame kept per 1/max_fps s.

    A schedule of slots (like ``edge.sources.thinned``), so 10 fps out of 25 stays 10,
    not 8.3; a frame more than a slot late starts a new schedule (no burst after a
    stall). No hint (None or 0): every frame is kept.
    """

    def __init__(self) -> None:
        self._due_s: float | None = None

    def keep(self, now_s: float, max_fps: float | None) -> bool:
        if not max_fps:
            self._due_s = None
            return True
        gap_s = 1.0 / max_fps
        due = self._due_s
        if due is not None and now_s < due - 1e-6:
            return False
        on_schedule = due is not None and now_s - due < gap_s
        self._due_s = due + gap_s if on_schedule and due is not None else now_s + gap_s
        return True


# ── measuring ──────────────────────────────────────────────────────────────


def windowed_kbps(
    times_s: Sequence[float] | np.ndarray,
    nbytes: Sequence[int] | np.ndarray,
    window_s: float = 10.0,
    step_s: float = 1.0,
) -> np.ndarray:
    """kbit/s of every full window [t0, t0 + window_s), t0 stepping by ``step_s``.

    The media covered runs to one frame interval past the last frame, so frames at
    i / fps fill whole windows exactly. Empty when the run is shorter than a window.
    """
    t = np.asarray(times_s, dtype=np.float64)
    b = np.asarray(nbytes, dtype=np.float64)
    if t.size < 2:
        return np.zeros(0)
    end = t[-1] + (t[-1] - t[0]) / (t.size - 1)
    starts = np.arange(t[0], end - window_s + 1e-9, step_s)
    cum = np.concatenate([[0.0], np.cumsum(b)])
    lo = np.searchsorted(t, starts - 1e-9)
    hi = np.searchsorted(t, starts + window_s - 1e-9)
    return np.asarray((cum[hi] - cum[lo]) * 8.0 / 1000.0 / window_s)


# ── factory ──────────────────────────────────────────────────────────────────


def latent_shape_for(detector: DetectorInfo, image_size: tuple[int, int]) -> tuple[int, int, int]:
    """(C, H, W) of the split tensor for frames of ``image_size`` (width, height)."""
    box = Letterbox.fit(image_size, detector.input_size, detector.pad_multiple)
    in_w, in_h = box.input_size
    return detector.channels, in_h // detector.stride, in_w // detector.stride


def expected_frame_bytes(codec: FeatureCodec, latent_shape: tuple[int, int, int]) -> list[float]:
    """Expected bytes of a whole frame bitstream (container included) at each level."""
    return [
        codec.expected_bytes(level, latent_shape) + KEYFRAME_OVERHEAD_BYTES
        for level in range(codec.num_levels)
    ]


def make_rate_controller(
    settings: EdgeSettings,
    codec: FeatureCodec,
    fps_hint: float | None = None,
    latent_shape: tuple[int, int, int] | None = None,
) -> FixedRate | BudgetRate:
    """FixedRate, or BudgetRate when ``settings.budget_kbps`` is set.

    Without ``latent_shape`` (the frame size is not known yet) BudgetRate sends the
    first frame at level 0 and takes the absolute scale from its size; with it
    (see ``latent_shape_for``) the first frame already targets the budget.
    """
    if settings.budget_kbps is None:
        return FixedRate(settings.rate_level, codec.num_levels, settings.follow_rate_hints)
    # Uncalibrated: any shape gives the right *ratios* between levels; a nominal
    # 64x64 latent keeps the container overhead as negligible as in real frames.
    shape = latent_shape or (codec.num_channels, 64, 64)
    return BudgetRate(
        settings.budget_kbps,
        expected_frame_bytes(codec, shape),
        fps_hint or 10.0,
        calibrated=latent_shape is not None,
        follow_hints=settings.follow_rate_hints,
    )
