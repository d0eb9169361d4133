"""Letterbox geometry shared by the edge (resize) and the cloud (boxes back).

The edge scales a frame so its long side is ``size``, then pads to a multiple of
the detector's stride, as Ultralytics does for rectangular inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Letterbox:
    image_size: tuple[int, int]
    """(width, height) of the original frame"""
    input_size: tuple[int, int]
    """(width, height) of the padded network input"""
    scale: float
    pad: tuple[int, int]
    """(left, top) padding in input pixels"""

    @classmethod
    def fit(cls, image_size: tuple[int, int], size: int, stride: int) -> Letterbox:
        w, h = image_size
        scale = min(size / w, size / h)
        new_w, new_h = round(w * scale), round(h * scale)
        in_w = -(-new_w // stride) * stride
        in_h = -(-new_h // stride) * stride
        # Ultralytics' rounding, so boxes line up with its own predictions.
        left = round((in_w - new_w) / 2 - 0.1)
        top = round((in_h - new_h) / 2 - 0.1)
        return cls(image_size, (in_w, in_h), scale, (left, top))

    @property
    def resized_size(self) -> tuple[int, int]:
        w, h = self.image_size
        return round(w * self.scale), round(h * self.scale)

    def to_image(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Map boxes from network-input pixels to original-image pixels (clipped)."""
        out = boxes_xyxy.astype(np.float32).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad[0]) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad[1]) / self.scale
        w, h = self.image_size
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
        return out
