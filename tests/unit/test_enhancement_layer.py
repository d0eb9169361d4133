"""The enhancement layer's pieces, each real: the codec (Pillow's AVIF/WebP), the edge's
retention buffer on disk, its durable answers in the spool, and the coder between them."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from codec.enhancement import (
    MIN_BUDGET_BYTES,
    EnhancementError,
    decode_enhancement,
    encode_enhancement,
)
from edge.enhancements import EnhancementCoder, EnhancementRequest
from edge.frame_retention import FrameRetention
from edge.spool import Spool, SpooledEnhancement
from tests.conftest import sample_images


def _photo(side: int = 320) -> np.ndarray:
    bgr = cv2.imread(str(sample_images()[0]))
    h, w = bgr.shape[:2]
    scale = side / max(h, w)
    bgr = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / mse)


def test_payload_fits_its_budget_and_more_bytes_look_better() -> None:
    rgb = _photo()
    size = (rgb.shape[1], rgb.shape[0])
    quality = []
    for budget in (1500, 4000, 12000):
        payload = encode_enhancement(rgb, budget)
        assert len(payload.data) <= budget
        decoded = decode_enhancement(payload.data, size)
        assert decoded.shape == rgb.shape and decoded.dtype == np.uint8
        quality.append(_psnr(rgb, decoded))
    assert quality[0] < quality[1] < quality[2]
    assert quality[2] > 28  # a photograph, not a sketch


def test_small_budgets_code_a_smaller_picture() -> None:
    rgb = _photo(640)
    small, large = encode_enhancement(rgb, 1200), encode_enhancement(rgb, 60000)
    assert small.size[0] < large.size[0] == rgb.shape[1]


def test_budget_and_payload_errors_name_what_is_wrong() -> None:
    rgb = _photo()
    with pytest.raises(EnhancementError, match="budget"):
        encode_enhancement(rgb, MIN_BUDGET_BYTES - 1)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    with pytest.raises(EnhancementError, match="PNG, not AVIF or WebP"):
        decode_enhancement(png.getvalue())
    with pytest.raises(EnhancementError, match="does not decode"):
        decode_enhancement(b"\x00garbage" * 10)
    webp = encode_enhancement(rgb, 4000, codec="webp").data
    with pytest.raises(EnhancementError, match="does not decode"):
        decode_enhancement(webp[: len(webp) // 2])


def test_retention_keeps_recent_frames_within_its_bounds(tmp_path: Path) -> None:
    frame = np.full((480, 640, 3), 100, np.uint8)
    retention = FrameRetention(tmp_path, max_age_s=60, max_bytes=3 * 320 * 240 * 3 + 500,
                               max_side=320)  # fmt: skip
    for sequence in range(5):
        retention.keep(sequence, frame)
    # Downscaled to max_side; only the newest three fit the byte bound.
    assert retention.frames == 3 and retention.get(0) is None
    kept = retention.get(4)
    assert kept is not None and kept.shape == (240, 320, 3)
    assert (retention.stats.kept, retention.stats.evicted) == (5, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.npy", "3.npy", "4.npy"]

    # A restarted agent serves what the last run left; the age bound still applies.
    os.utime(tmp_path / "2.npy", ns=(time.time_ns() - 120 * 10**9,) * 2)
    again = FrameRetention(tmp_path, max_age_s=60, max_bytes=10**9, max_side=320)
    assert again.frames == 2 and again.get(2) is None and again.get(3) is not None
    assert not FrameRetention(tmp_path / "off", 0, 10**9, 320).enabled


def test_spooled_answers_survive_reopening_until_acked(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600)
    answer = SpooledEnhancement("r1", 7, b"AVIF", "")
    assert spool.append_enhancement(answer) and not spool.append_enhancement(answer)
    refusal = SpooledEnhancement("r2", 8, b"", "gone")
    spool.append_enhancement(refusal)
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600)
    assert again.pending_enhancements(set(), 10) == [answer, refusal]
    assert [a.request_id for a in again.pending_enhancements({"r1"}, 10)] == ["r2"]
    assert again.ack_enhancement("r1") and not again.ack_enhancement("r1")
    assert again.frames == 0  # answers are not frames: a flush does not wait for them


def _answers(spool: Spool, n: int, timeout_s: float = 30.0) -> list[SpooledEnhancement]:
    deadline = time.monotonic() + timeout_s
    while len(found := spool.pending_enhancements(set(), 100)) < n:
        assert time.monotonic() < deadline, f"{len(found)} of {n} answers"
        time.sleep(0.05)
    return found


def test_coder_answers_every_request_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20, max_age_s=3600)
    retention = FrameRetention(tmp_path / "kept", 60, 10**9, max_side=320)
    rgb = _photo()
    retention.keep(5, np.ascontiguousarray(rgb[:, :, ::-1]))  # kept as captured: BGR
    coder = EnhancementCoder(retention, spool)
    try:
        coder.request(EnhancementRequest("a", 5, 6000))
        coder.request(EnhancementRequest("a", 5, 6000))  # repeated on a new stream
        coder.request(EnhancementRequest("b", 99, 6000))  # never retained
        coder.request(EnhancementRequest("c", 5, 250))  # nothing fits
        answers = {a.request_id: a for a in _answers(spool, 3)}
    finally:
        coder.close()
    assert len(spool.pending_enhancements(set(), 100)) == 3
    coded = answers["a"]
    assert not coded.unavailable and 0 < len(coded.payload) <= 6000
    assert _psnr(rgb, decode_enhancement(coded.payload, (rgb.shape[1], rgb.shape[0]))) > 25
    assert "no longer in the camera's retention buffer" in answers["b"].unavailable
    assert "budget 250 B outside" in answers["c"].unavailable
