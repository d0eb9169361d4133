"""Source helpers without a network: max_fps thinning, backoff, live detection, redaction."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest

from edge.sources import (
    Backoff,
    CapturedFrame,
    SourceError,
    SourceStats,
    is_live,
    open_source,
    redact,
    thinned,
)

IMAGE = np.zeros((2, 2, 3), np.uint8)


def recorded(fps: float, seconds: float) -> Iterator[CapturedFrame]:
    """Frames of a recording: media timestamps at ``fps``."""
    for i in range(round(fps * seconds)):
        yield CapturedFrame(i, 0, IMAGE, media_time_s=i / fps)


def live(times_s: list[float]) -> Iterator[CapturedFrame]:
    """Frames of a live source: capture times only."""
    for i, t in enumerate(times_s):
        yield CapturedFrame(i, int(t * 1e9), IMAGE)


@pytest.mark.parametrize(("fps", "max_fps"), [(25, 10), (24, 5), (30, 10), (30, 7), (10, 10)])
def test_thinning_keeps_max_fps_on_average(fps: float, max_fps: float) -> None:
    stats = SourceStats()
    kept = list(thinned(recorded(fps, 20), max_fps, None, stats))
    # 20 s at max_fps, ±1 for where the first and last slot fall.
    assert abs(len(kept) - 20 * max_fps) <= 1
    assert stats.frames == len(kept) and stats.skipped == 20 * fps - len(kept)
    # No window of one second holds more than max_fps (+1) frames: no bursts.
    times = np.array([f.media_time_s for f in kept])
    for start in np.arange(0, 19, 0.5):
        assert ((times >= start) & (times < start + 1)).sum() <= max_fps + 1


def test_no_max_fps_keeps_every_frame_even_if_time_goes_back() -> None:
    times = [0.0, 0.04, 0.08, 0.02, 0.06]
    assert len(list(thinned(live(times), None, None, SourceStats()))) == 5


def test_live_thinning_survives_a_clock_step_back_and_a_stall() -> None:
    # 20 fps for 1 s, the wall clock steps back 100 s, 20 fps for 1 s, a 5 s stall, 1 s more.
    first = [i / 20 for i in range(20)]
    stepped = [-100 + i / 20 for i in range(20)]
    resumed = [6 + i / 20 for i in range(20)]
    kept = list(thinned(live(first + stepped + resumed), 5, None, SourceStats()))
    # 5 per second in each stretch: the schedule restarts instead of stalling or bursting.
    assert len(kept) == 15


def test_max_frames_stops_without_reading_another_frame() -> None:
    read: list[int] = []

    def counting() -> Iterator[CapturedFrame]:
        for frame in recorded(25, 10):
            read.append(frame.index)
            yield frame

    kept = list(thinned(counting(), None, 3, SourceStats()))
    assert [f.index for f in kept] == [0, 1, 2]
    assert read == [0, 1, 2], "a live read after the last frame could block for good"


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    backoff = Backoff(initial_s=0.5, max_s=8.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(0)
    for attempt, ceiling in enumerate([0.5, 1, 2, 4, 8, 8, 8]):
        delays = [backoff.delay_s(attempt, rng) for _ in range(200)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > 0.3 * ceiling, "jitter spreads reconnects out"
    assert backoff.delay_s(10_000, rng) <= 8.0  # no float overflow on a long outage
    assert Backoff(jitter=0).delay_s(1) == 1.0
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial_s=2, max_s=1)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("0", True),
        ("rtsp://cam/stream", True),
        ("http://nvr:8080/live.ts", True),
        ("file:///videos/a.mp4", False),
        ("videos/a.mp4", False),
    ],
)
def test_live_sources(source: str, expected: bool) -> None:
    assert is_live(source) is expected


def test_credentials_never_reach_logs() -> None:
    assert redact("rtsp://admin:hunter2@10.0.0.5:554/h264") == "rtsp://***@10.0.0.5:554/h264"
    assert redact("rtsp://10.0.0.5/h264") == "rtsp://10.0.0.5/h264"


def test_a_bad_source_string_fails_at_open_not_at_the_first_frame() -> None:
    with pytest.raises(SourceError, match="not a file, folder, URL or webcam"):
        open_source("no/such/video.mp4")
