"""Frames → network input: letterbox resize + pad, BGR uint8 → RGB float in [0, 1]."""

from __future__ import annotations

import cv2
import numpy as np

from codec.geometry import Letterbox

PAD_VALUE = 114  # Ultralytics' letterbox grey


def letterbox(image_bgr: np.ndarray, size: int, stride: int) -> tuple[np.ndarray, Letterbox]:
    """Return the (1, 3, H, W) float32 network input and the geometry that made it."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 BGR frame, got shape {image_bgr.shape}")
    h, w = image_bgr.shape[:2]
    box = Letterbox.fit((w, h), size, stride)
    new_w, new_h = box.resized_size
    if (new_w, new_h) != (w, h):
        image_bgr = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    in_w, in_h = box.input_size
    left, top = box.pad
    canvas = cv2.copyMakeBorder(
        image_bgr,
        top,
        in_h - new_h - top,
        left,
        in_w - new_w - left,
        cv2.BORDER_CONSTANT,
        value=(PAD_VALUE, PAD_VALUE, PAD_VALUE),
    )
    tensor = canvas[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    return np.ascontiguousarray(tensor), box
