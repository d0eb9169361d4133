"""IngestLag on a clock the test sets: behind above max_lag_s, caught up below half."""

import pytest

from cloud.ingest_lag import IngestLag
from edge.rate_control import FpsCap


def feed(lag: IngestLag, lag_s: float, fps: float, seconds: float, t0: float) -> float:
    """Frames stored at ``fps`` for ``seconds``, each ``lag_s`` late; returns the end time."""
    n = int(seconds * fps)
    for i in range(n):
        lag.observe(lag_s, t0 + i / fps)
    return t0 + n / fps


def test_keeping_up_sends_no_hint() -> None:
    lag = IngestLag(max_lag_s=2.0)
    feed(lag, 0.3, 12, 30, 0.0)
    assert not lag.behind
    assert lag.hint(streams=3) is None
    assert lag.lag_s == pytest.approx(0.3)


def test_behind_shares_the_capacity_then_lifts_with_hysteresis() -> None:
    lag = IngestLag(max_lag_s=2.0, smoothing_s=2.0, window_s=5.0, margin=0.75)
    t = feed(lag, 0.3, 12, 10, 0.0)
    # One slow frame does not trip it: the lag is smoothed over ~2 s.
    lag.observe(30.0, t)
    assert not lag.behind
    t = feed(lag, 0.3, 12, 10, t)
    t = feed(lag, 4.0, 12, 6, t)  # a backlog: frames 4 s late at full capacity
    assert lag.behind
    assert lag.capacity_fps == pytest.approx(12, abs=0.5)
    hint = lag.hint(streams=2)
    assert hint is not None
    assert hint.max_fps == pytest.approx(0.75 * 12 / 2, abs=0.3)
    assert "backpressure" in hint.reason and "2 stream(s)" in hint.reason
    # Between the thresholds (1 s .. 2 s) the hint holds: no flapping.
    t = feed(lag, 1.5, 9, 10, t)
    assert lag.behind
    # The capacity is the one measured when it fell behind, not the throttled rate.
    assert lag.capacity_fps == pytest.approx(12, abs=0.5)
    feed(lag, 0.4, 9, 10, t)
    assert not lag.behind and lag.hint(streams=2) is None


def test_a_wild_capture_time_moves_the_average_by_a_bounded_step() -> None:
    lag = IngestLag(max_lag_s=2.0)
    t = feed(lag, 0.2, 12, 5, 0.0)
    for i in range(3):  # capture_time_ns 0: 56 years late
        lag.observe(1.7e9, t + i / 12)
    assert not lag.behind and lag.lag_s < 2.0


def test_the_share_never_falls_to_zero() -> None:
    lag = IngestLag(max_lag_s=1.0, min_fps=0.5)
    feed(lag, 5.0, 2, 10, 0.0)
    hint = lag.hint(streams=100)
    assert hint is not None and hint.max_fps == 0.5


def test_bad_thresholds_are_named() -> None:
    with pytest.raises(ValueError, match="max_lag_s 0"):
        IngestLag(max_lag_s=0)
    with pytest.raises(ValueError, match="resume_fraction 1.5"):
        IngestLag(max_lag_s=1, resume_fraction=1.5)


def test_fps_cap_keeps_frames_on_a_schedule() -> None:
    cap = FpsCap()
    times = [i / 25 for i in range(250)]  # 10 s of a 25 fps camera
    assert sum(cap.keep(t, None) for t in times) == 250
    kept = sum(cap.keep(t + 100, 10.0) for t in times)
    assert kept == pytest.approx(100, abs=1)
    # Lifting the hint keeps every frame again; a stall does not cause a burst.
    assert all(cap.keep(t + 200, 0.0) for t in times)
    assert cap.keep(300.0, 2.0) and not cap.keep(300.1, 2.0) and cap.keep(310.0, 2.0)
    assert not cap.keep(310.2, 2.0)
