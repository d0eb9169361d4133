"""The human-view judges on real images: PSNR, MS-SSIM at small sizes, bytes-matched JPEG."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from model.human_eval import _at_bytes, ms_ssim, psnr
from tests.conftest import sample_images


def _photo(size: tuple[int, int]) -> np.ndarray:
    image = cv2.imread(str(sample_images()[0]))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)[:, :, ::-1].copy()


def test_identical_images_score_perfectly() -> None:
    rgb = _photo((320, 240))
    assert psnr(rgb, rgb) == 99.0
    assert ms_ssim(rgb, rgb) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_runs_on_a_176x144_frame_and_orders_blur() -> None:
    # The stage clip's size: below pytorch-msssim's 161 px for its default window.
    rgb = _photo((176, 144))
    mild = cv2.GaussianBlur(rgb, (3, 3), 0)
    strong = cv2.GaussianBlur(rgb, (9, 9), 0)
    assert 1.0 > ms_ssim(mild, rgb) > ms_ssim(strong, rgb) > 0.0
    with pytest.raises(ValueError, match="at least 33 px"):
        ms_ssim(rgb[:20, :20], rgb[:20, :20])


def test_pixel_codecs_are_held_to_the_byte_budget() -> None:
    bgr = _photo((320, 240))[:, :, ::-1].copy()
    for codec in ("jpeg", "webp"):
        nbytes, decoded, _ = _at_bytes(codec, bgr, 6000)
        assert nbytes <= 6000 and decoded.shape == bgr.shape
        bigger, _, _ = _at_bytes(codec, bgr, 20000)
        assert nbytes < bigger <= 20000


def test_markdown_lists_levels_then_total_budgets_with_fallbacks() -> None:
    from model.human_eval import markdown_table

    def row(view: str, setting: str, **extra: object) -> dict[str, object]:
        base = {"view": view, "setting": setting, "bytes_per_frame": 1000.0, "psnr": 20.0,
                "ms_ssim": 0.5, "map50": None, "feature_distance": 0.5, "ms_per_frame": 1.0,
                "frames": 4}  # fmt: skip
        return {**base, **extra}

    rows = [
        row("enhanced", "B 16000", edge_ms_per_frame=80.0, fallback_frames=1),
        row("webp", "B 4000"),
        row("preview", "level 10"),
        row("enhanced", "B 4000", edge_ms_per_frame=70.0, fallback_frames=0),
        row("preview", "level 2"),  # rows of an older JSON: no edge time, no fallbacks
    ]
    lines = markdown_table({"rows": rows}).splitlines()[2:]
    assert [line.split(" | ")[:2] for line in lines] == [
        ["| preview", "level 2"], ["| preview", "level 10"], ["| enhanced", "B 4000"],
        ["| webp", "B 4000"], ["| enhanced", "B 16000"],
    ]  # fmt: skip
    assert lines[-1].endswith("| 80 | 1/4 |") and lines[0].endswith("| – | – |")
