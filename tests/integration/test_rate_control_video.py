"""BudgetRate on a real video: every 10-second window within ±10% of the budget.

    demo.mp4 (176x144, 24 fps) ─► ActivityMeter ─► BudgetRate.choose ─► FrameEncoder.encode
                                                          ▲                    │ bitstream
                                                          └──── record ◄───────┘

The clock is media time (frame index / fps), as for a file source; the bundle is the
tiny test bundle, so 40 s of video (960 frames) codes in a few seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from codec.bundle import Bundle
from edge.frame_encoder import FrameEncoder
from edge.rate_control import (
    ActivityMeter,
    BudgetRate,
    latent_shape_for,
    make_rate_controller,
    windowed_kbps,
)
from edge.settings import EdgeSettings
from edge.sources import CapturedFrame

FPS = 24.0
SECONDS = 40.0


def video_frames(count: int) -> Iterator[np.ndarray]:
    import av

    from fchm.demo import packaged_video

    try:
        video = packaged_video()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate is not None and float(stream.average_rate) == FPS
        for index, frame in enumerate(container.decode(stream)):
            if index >= count:
                return
            yield frame.to_ndarray(format="bgr24")


@pytest.fixture(scope="module")
def encoder(tiny_bundle: Bundle) -> FrameEncoder:
    return FrameEncoder(tiny_bundle, threads=1)


@pytest.fixture(scope="module")
def codec_range(encoder: FrameEncoder) -> tuple[float, float]:
    """kbit/s of level 0 and of the top level on this video at 24 fps (every 24th frame)."""
    sizes = np.array(
        [
            [len(encoder.encode(CapturedFrame(i, 0, image), lv).bitstream) for lv in (0, 7)]
            for i, image in enumerate(video_frames(int(SECONDS * FPS)))
            if i % 24 == 0
        ]
    )
    low, high = sizes.mean(axis=0) * FPS * 8 / 1000
    return float(low), float(high)


# Budget at 25% / 70% of the way from level 0 to the top level; with the latent shape
# known up front, or without it (as the agent builds it: level 0 first, then calibrated).
@pytest.mark.parametrize(("position", "shape_known"), [(0.25, True), (0.7, False)])
def test_every_10s_window_is_within_10_percent_of_the_budget(
    encoder: FrameEncoder, codec_range: tuple[float, float], position: float, shape_known: bool
) -> None:
    low, high = codec_range
    budget = low + position * (high - low)
    image0 = next(video_frames(1))
    shape = latent_shape_for(encoder.bundle.manifest.detector, (image0.shape[1], image0.shape[0]))
    settings = EdgeSettings(source="demo.mp4", camera_id="stage", budget_kbps=budget)
    controller = make_rate_controller(settings, encoder.codec, FPS, shape if shape_known else None)
    assert isinstance(controller, BudgetRate)
    meter = ActivityMeter()

    times, nbytes, levels = [], [], []
    for index, image in enumerate(video_frames(int(SECONDS * FPS))):
        now = index / FPS
        level = controller.choose(now, meter(image))
        encoded = encoder.encode(CapturedFrame(index, 0, image), level)
        controller.record(now, level, len(encoded.bitstream))
        times.append(now)
        nbytes.append(len(encoded.bitstream))
        levels.append(level)

    assert times[-1] >= 30.0
    rates = windowed_kbps(times, nbytes, window_s=10.0, step_s=1.0)
    errors = rates / budget - 1
    assert rates.size >= 20
    assert np.all(np.abs(errors) <= 0.10), (
        f"budget {budget:.0f} kbit/s (range {low:.0f}-{high:.0f}): window errors "
        f"{np.round(errors * 100, 1).tolist()} %, levels {np.bincount(levels).tolist()}"
    )
    # A budget inside the range uses more than one level (it dithers to hit it).
    assert len(set(levels)) >= 2
