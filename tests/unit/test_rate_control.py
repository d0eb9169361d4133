"""Rate controllers on simulated frame sizes, and the codec's expected sizes on real coding."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from codec.bundle import Bundle
from codec.entropy_tables import PRECISION, EntropyTables, quantize_frequencies
from codec.feature_codec import FeatureCodec
from edge.rate_control import (
    ActivityMeter,
    BudgetRate,
    FixedRate,
    RateController,
    make_rate_controller,
    scene_activity,
    small_gray,
    windowed_kbps,
)
from edge.settings import EdgeSettings

LEVEL_BYTES = np.array([1000.0, 1500.0, 2200.0, 3000.0, 4000.0])
FPS = 24.0


def kbps(bytes_per_frame: float) -> float:
    return bytes_per_frame * FPS * 8 / 1000


def simulate(
    controller: RateController,
    seconds: float,
    size: Callable[[int, int], float] = lambda i, level: LEVEL_BYTES[level],
    activity: Callable[[int], float | None] = lambda i: None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames at i / FPS; frame i at ``level`` costs ``size(i, level)`` bytes."""
    times, levels, nbytes = [], [], []
    for i in range(int(seconds * FPS)):
        now = i / FPS
        level = controller.choose(now, activity(i))
        n = int(size(i, level))
        controller.record(now, level, n)
        times.append(now)
        levels.append(level)
        nbytes.append(n)
    return np.array(times), np.array(levels), np.array(nbytes)


def worst_error(times: np.ndarray, nbytes: np.ndarray, budget: float) -> float:
    rates = windowed_kbps(times, nbytes)
    assert rates.size > 0
    return float(np.max(np.abs(rates / budget - 1)))


# ── fixed rate and hints ─────────────────────────────────────────────────────


def test_fixed_rate_is_capped_by_hints_and_never_raised() -> None:
    fixed = FixedRate(3, num_levels=5)
    assert fixed.choose(0.0) == 3
    fixed.set_hint(1)
    assert fixed.choose(0.1) == 1
    fixed.set_hint(4)  # a hint is a cap: it never raises the level
    assert fixed.choose(0.2) == 3
    fixed.set_hint(None)
    assert fixed.choose(0.3) == 3
    deaf = FixedRate(3, follow_hints=False)
    deaf.set_hint(0)
    assert deaf.choose(0.0) == 3
    with pytest.raises(ValueError, match="rate_level 5"):
        FixedRate(5, num_levels=5)


def test_budget_rate_hint_caps_then_lifting_it_does_not_burst() -> None:
    budget = kbps(3500)  # between levels 3 and 4
    rate = BudgetRate(budget, LEVEL_BYTES, FPS)
    rate.set_hint(1)
    _, capped, _ = simulate(rate, 5)
    assert capped.max() == 1
    assert rate.balance <= rate.depth + rate.rate_bps / FPS  # saved tokens are bounded
    rate.set_hint(None)
    times, levels, nbytes = [], [], []
    for i in range(int(20 * FPS)):
        now = 5 + i / FPS
        level = rate.choose(now)
        rate.record(now, level, int(LEVEL_BYTES[level]))
        times.append(now)
        levels.append(level)
        nbytes.append(int(LEVEL_BYTES[level]))
    assert set(levels[int(2 * FPS) :]) <= {3, 4}
    assert worst_error(np.array(times), np.array(nbytes), budget) < 0.05


# ── the bucket ───────────────────────────────────────────────────────────────


@pytest.mark.parametrize("bytes_per_frame", [1100.0, 1800.0, 2600.0, 3900.0])
def test_every_window_is_within_a_few_percent_of_a_budget_inside_the_range(
    bytes_per_frame: float,
) -> None:
    budget = kbps(bytes_per_frame)
    times, levels, nbytes = simulate(BudgetRate(budget, LEVEL_BYTES, FPS), 40)
    assert worst_error(times, nbytes, budget) < 0.03
    # It dithers between the two levels around the budget, not across the range.
    lo = int(np.searchsorted(LEVEL_BYTES, bytes_per_frame)) - 1
    assert set(levels[int(FPS) :]) <= {lo, lo + 1}


def test_an_enhancement_is_paid_back_by_the_frames_after_it() -> None:
    budget = kbps(2600)
    rate = BudgetRate(budget, LEVEL_BYTES, FPS)
    simulate(rate, 10)
    rate.charge(20_000)  # a 20 KB enhancement went out with the frames
    times, levels, nbytes = [], [], []
    for i in range(int(20 * FPS)):
        now = 10 + i / FPS
        level = rate.choose(now)
        rate.record(now, level, int(LEVEL_BYTES[level]))
        times.append(now), levels.append(level), nbytes.append(int(LEVEL_BYTES[level]))
    # The next seconds pay it back at lower levels (steady: 2 and 3 around 2,600 B).
    assert max(levels[: int(FPS)]) <= 2 and np.mean(levels[: int(2 * FPS)]) < 2
    # Over the 10 s window that holds it, the enhancement is inside the budget.
    first = int(10 * FPS)
    spent = sum(nbytes[:first]) + 20_000
    assert spent * 8 / 1000 / 10 == pytest.approx(budget, rel=0.05)


def test_content_the_tables_did_not_expect_is_learned() -> None:
    # Actual sizes 35% above the tables, drifting, with per-frame noise.
    rng = np.random.default_rng(0)
    noise = rng.normal(1.0, 0.05, 10_000)

    def size(i: int, level: int) -> float:
        return LEVEL_BYTES[level] * (1.35 + 0.2 * np.sin(i / 200)) * noise[i]

    budget = kbps(3000)
    rate = BudgetRate(budget, LEVEL_BYTES, FPS)
    times, _, nbytes = simulate(rate, 60, size)
    assert worst_error(times, nbytes, budget) < 0.05
    level = rate.choose(60.0)
    assert rate.predicted()[level] == pytest.approx(size(1440, level), rel=0.1)


def test_budgets_outside_the_range_clamp_to_the_end_levels() -> None:
    below = BudgetRate(kbps(500), LEVEL_BYTES, FPS)
    _, levels, _ = simulate(below, 20)
    assert set(levels) == {0}
    assert below.balance >= -below.depth  # unpayable debt is forgiven, not accumulated
    above = BudgetRate(kbps(8000), LEVEL_BYTES, FPS)
    _, levels, _ = simulate(above, 20)
    assert set(levels) == {4}
    assert above.balance <= above.depth + above.rate_bps / FPS


def test_recovers_at_once_when_an_expensive_scene_ends() -> None:
    # 10 s where even level 0 is over budget, then ordinary content.
    def size(i: int, level: int) -> float:
        return LEVEL_BYTES[level] * (4.0 if i < 10 * FPS else 1.0)

    budget = kbps(2600)
    times, levels, nbytes = simulate(BudgetRate(budget, LEVEL_BYTES, FPS), 30, size)
    after = times >= 10
    assert set(levels[~after][int(FPS) :]) == {0}  # once the scene factor has learned
    assert set(levels[after][int(3 * FPS) :]) <= {2, 3}
    assert worst_error(times[after], nbytes[after], budget) < 0.10


def test_activity_spends_tokens_saved_on_static_frames() -> None:
    # 6 s static (camera noise), 2 s of motion, repeating; the budget still holds.
    def activity(i: int) -> float:
        return 0.05 if (i // int(FPS)) % 8 >= 6 else 0.003

    budget = kbps(2600)
    times, levels, nbytes = simulate(BudgetRate(budget, LEVEL_BYTES, FPS), 48, activity=activity)
    active = np.array([activity(i) > 0.01 for i in range(times.size)])
    assert levels[active].mean() > levels[~active].mean() + 0.3
    assert worst_error(times, nbytes, budget) < 0.10


def test_uncalibrated_starts_at_level_zero_then_learns_the_scale() -> None:
    # Predictions in arbitrary units (right ratios, wrong scale by 50x).
    rate = BudgetRate(kbps(2600), LEVEL_BYTES / 50, FPS, calibrated=False)
    assert rate.choose(0.0) == 0
    rate.record(0.0, 0, 1000)
    assert rate.predicted() == pytest.approx(LEVEL_BYTES, rel=1e-6)
    times, _, nbytes = simulate(rate, 30)
    assert worst_error(times[1:], nbytes[1:], kbps(2600)) < 0.05


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(ValueError, match="budget_kbps"):
        BudgetRate(0, LEVEL_BYTES)
    with pytest.raises(ValueError, match="expected_bytes"):
        BudgetRate(100, [])
    with pytest.raises(ValueError, match="rate level 9"):
        BudgetRate(100, LEVEL_BYTES).record(0.0, 9, 10)


# ── scene activity ───────────────────────────────────────────────────────────


def test_scene_activity_is_zero_for_still_frames_and_grows_with_change() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (144, 176, 3), dtype=np.uint8)
    thumb = small_gray(frame)
    assert thumb.shape == (144 // 5, 176 // 5)
    assert scene_activity(thumb, thumb) == 0.0
    assert scene_activity(None, thumb) == 0.0
    moved = small_gray(np.roll(frame, 40, axis=1))
    assert 0.01 < scene_activity(thumb, moved) <= 1.0
    meter = ActivityMeter()
    assert meter(frame) is None
    assert meter(frame) == 0.0


# ── factory ──────────────────────────────────────────────────────────────────


def test_factory_picks_the_controller_from_settings(tiny_bundle: Bundle) -> None:
    codec = tiny_bundle.load_codec()
    fixed = make_rate_controller(EdgeSettings(source="x.mp4", camera_id="c", rate_level=2), codec)
    assert isinstance(fixed, FixedRate) and fixed.choose(0.0) == 2
    with pytest.raises(ValueError, match="rate_level 99"):
        make_rate_controller(EdgeSettings(source="x.mp4", camera_id="c", rate_level=99), codec)
    settings = EdgeSettings(source="x.mp4", camera_id="c", budget_kbps=500, follow_rate_hints=False)
    budget = make_rate_controller(settings, codec, 24.0, (32, 36, 40))
    assert isinstance(budget, BudgetRate)
    budget.set_hint(0)
    assert budget.hint is None  # hints not followed
    assert budget.predicted()[0] == pytest.approx(codec.expected_bytes(0, (32, 36, 40)), rel=0.01)
    # Without the frame size yet: level 0 first, its size calibrates the scale.
    lazy = make_rate_controller(settings, codec, None)
    assert isinstance(lazy, BudgetRate) and lazy.choose(0.0) == 0


# ── expected sizes from the tables ───────────────────────────────────────────


def test_expected_bits_match_coding_symbols_drawn_from_the_tables() -> None:
    radius, channels = 7, 3
    values = np.arange(-radius, radius + 1)
    counts = np.exp(-np.abs(values) / np.array([0.7, 1.5, 3.0])[:, None])
    counts = np.concatenate([counts, np.full((channels, 1), 0.02)], axis=1)  # some escapes
    tables = EntropyTables(quantize_frequencies(counts[None]), radius)
    rng = np.random.default_rng(0)
    shape = (channels, 64, 64)
    probs = tables.freqs[0] / (1 << PRECISION)
    symbols = np.stack([rng.choice(2 * radius + 2, size=shape[1:], p=p) for p in probs])
    q = np.where(symbols == tables.escape, 1000, symbols - radius).astype(np.int32)
    coded_bits = 8 * len(tables.encode(q, 0))
    assert tables.expected_bits(0, shape) == pytest.approx(coded_bits, rel=0.02)


def test_expected_bytes_match_real_frames_at_every_level(tiny_bundle: Bundle) -> None:
    import cv2

    from edge.encoder_backends import open_backend
    from edge.preprocess import letterbox
    from edge.rate_control import expected_frame_bytes
    from model.bundle_export import default_steps, fit_uniform_codec
    from tests.conftest import sample_images

    backend = open_backend("onnxruntime-cpu", tiny_bundle.file("encoder"), 1)
    detector = tiny_bundle.manifest.detector
    features = []
    for path in sample_images():
        bgr = np.asarray(cv2.imread(str(path)))
        image, _ = letterbox(bgr, detector.input_size, detector.pad_multiple)
        features.append(backend(image))

    def totals(codec: FeatureCodec) -> tuple[np.ndarray, np.ndarray]:
        actual = [sum(len(codec.compress(f, lv).payload) for f in features) for lv in range(8)]
        expected = [sum(codec.expected_bytes(lv, f.shape) for f in features) for lv in range(8)]
        return np.array(actual, float), np.array(expected)

    # Tables fitted on exactly these feature maps: their entropy is the coded size, up
    # to the mass the tables give unseen symbols (≥ 1/2**16 each), which the entropy
    # counts and the data never spends: ~2.5% at the coarsest level.
    actual, expected = totals(fit_uniform_codec(features, default_steps(8), 63))
    np.testing.assert_allclose(expected, actual, rtol=0.03)
    # The bundle's tables were fitted on augmented views of the same images: close.
    codec = tiny_bundle.load_codec()
    actual, expected = totals(codec)
    np.testing.assert_allclose(expected, actual, rtol=0.15)
    assert np.all(np.diff(expected_frame_bytes(codec, features[0].shape)) > 0)


def test_budget_holds_with_keyframes_and_small_p_frames() -> None:
    """A keyframe every 25 frames and P-frames a tenth of its size: the controller learns
    the two sizes apart, so it spends the budget on a finer level for P-frames instead of
    oscillating between what a keyframe and a P-frame would cost at one level."""
    budget = kbps(350.0)  # P-frames about level 2, keyframes (1–4 KB) paid over 25 frames
    rate = BudgetRate(budget, LEVEL_BYTES, FPS)
    times, levels, nbytes = [], [], []
    for i in range(int(30 * FPS)):
        now, keyframe = i / FPS, i % 25 == 0
        level = rate.choose(now, keyframe=keyframe)
        n = int(LEVEL_BYTES[level] * (1.0 if keyframe else 0.1))
        rate.record(now, level, n, keyframe=keyframe)
        times.append(now)
        levels.append(level)
        nbytes.append(n)
    assert worst_error(np.array(times[48:]), np.array(nbytes[48:]), budget) <= 0.10
    # P-frames are predicted at a tenth of a keyframe, not at a keyframe's size.
    ratio = rate.predicted(keyframe=False) / rate.predicted(keyframe=True)
    assert np.allclose(ratio, 0.1, rtol=0.25)
    p_levels = [lv for i, lv in enumerate(levels) if i % 25 and i > 48]
    assert np.mean(p_levels) > 2
