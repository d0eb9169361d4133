"""Letterbox undo: network-input RGB back to the original frame's place, at the view size."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.restorers import (
    RESTORERS,
    DiffusionRestorer,
    EnhancedRestorer,
    PreviewRestorer,
    uncrop_letterbox,
    view_size,
)
from codec.geometry import Letterbox
from edge.preprocess import letterbox


@pytest.mark.parametrize("size", [(810, 1080), (1280, 720), (320, 320), (97, 53)])
def test_uncrop_inverts_the_edge_letterbox(size: tuple[int, int]) -> None:
    w, h = size
    rng = np.random.default_rng(0)
    # Smooth content, so resizing down and back up loses little.
    yy, xx = np.mgrid[0:h, 0:w]
    bgr = np.stack(
        [127 + 120 * np.sin(xx / 40 + k) * np.cos(yy / 55 - k) for k in range(3)], -1
    ).astype(np.uint8)
    bgr = np.clip(bgr.astype(np.int16) + rng.integers(-2, 3, bgr.shape), 0, 255).astype(np.uint8)
    x, geometry = letterbox(bgr, 320, 32)
    rgb = uncrop_letterbox(x[0], geometry, (w, h))
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
    err = np.abs(rgb.astype(np.int16) - bgr[:, :, ::-1].astype(np.int16))
    assert err.mean() < 6  # no grey padding band, no offset


def test_uncrop_rejects_a_wrong_shape() -> None:
    geometry = Letterbox.fit((640, 480), 320, 32)
    with pytest.raises(ValueError, match="expected"):
        uncrop_letterbox(np.zeros((3, 64, 64), np.float32), geometry, (640, 480))


def test_uncrop_clips_out_of_range_values() -> None:
    geometry = Letterbox.fit((64, 64), 64, 32)
    out = uncrop_letterbox(np.full((3, 64, 64), 1.7, np.float32), geometry, (64, 64))
    assert out.min() == 255


@pytest.mark.parametrize(
    ("image_size", "max_side", "expected"),
    [
        ((810, 1080), 320, (240, 320)),  # scaled down, aspect kept
        ((1280, 720), 320, (320, 180)),
        ((97, 53), 320, (97, 53)),  # never scaled up
        ((320, 320), 320, (320, 320)),
        ((65535, 65535), 320, (320, 320)),
        ((8192, 3), 320, (320, 1)),  # never a zero side
    ],
)
def test_view_size_caps_the_long_side(
    image_size: tuple[int, int], max_side: int, expected: tuple[int, int]
) -> None:
    assert view_size(image_size, max_side) == expected


def test_uncrop_renders_at_the_size_asked_not_the_declared_one() -> None:
    # A frame declaring 8192x8192 renders a 320x320 view: no 200 MB intermediate.
    geometry = Letterbox.fit((8192, 8192), 320, 32)
    out = uncrop_letterbox(np.full((3, 320, 320), 0.5, np.float32), geometry, (320, 320))
    assert out.shape == (320, 320, 3) and int(out[0, 0, 0]) == 128
    small = uncrop_letterbox(np.full((3, 320, 320), 0.5, np.float32), geometry, (64, 64))
    assert small.shape == (64, 64, 3)


def test_registry() -> None:
    # Coarse to refined: the order the API lists them in, and the dashboard refines along
    # (enhanced, the camera's own pixels, has a button of its own).
    assert RESTORERS == {
        "preview": PreviewRestorer, "diffusion": DiffusionRestorer, "enhanced": EnhancedRestorer,
    }  # fmt: skip
    assert list(RESTORERS) == ["preview", "diffusion", "enhanced"]
    assert EnhancedRestorer.wants_enhancement and not PreviewRestorer.wants_enhancement
    assert "not the diffusion" in PreviewRestorer.description
