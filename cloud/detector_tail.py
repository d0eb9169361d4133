"""Decoded split features → detections in original-image pixels.

features (C,h,w) ─► tail.onnx (layers k+1..Detect) ─► (4+nc, anchors)
    ─► best class per anchor, score ≥ conf ─► class-aware NMS (OpenCV) ─► Detection[]
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cloud.onnx_sessions import open_session
from codec.bundle import Bundle
from codec.geometry import Letterbox


@dataclass(frozen=True)
class Detection:
    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    """x1, y1, x2, y2 in original-image pixels"""


class DetectorTail:
    def __init__(
        self,
        bundle: Bundle,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        threads: int = 0,
    ) -> None:
        self.session = open_session(bundle.file("tail"), threads)
        self.class_names = bundle.class_names
        self.conf, self.iou, self.max_det = conf, iou, max_det

    def __call__(self, features: np.ndarray, geometry: Letterbox) -> list[Detection]:
        return self.postprocess(self.predict(features[None])[0], geometry)

    @property
    def batchable(self) -> bool:
        """Whether tail.onnx takes a batch (bundles exported before batching take one)."""
        return not isinstance(self.session.get_inputs()[0].shape[0], int)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(B, C, h, w) latents of one shape → (B, 4+nc, anchors) raw predictions."""
        (pred,) = self.session.run(None, {"features": features.astype(np.float32, copy=False)})
        return np.asarray(pred)

    def postprocess(self, pred: np.ndarray, geometry: Letterbox) -> list[Detection]:
        scores_all = pred[4:]
        class_ids = scores_all.argmax(axis=0)
        scores = scores_all[class_ids, np.arange(pred.shape[1])]
        keep = scores >= self.conf
        if not keep.any():
            return []
        xywh, scores, class_ids = pred[:4, keep].T, scores[keep], class_ids[keep]
        xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        tlwh = np.concatenate([xyxy[:, :2], xywh[:, 2:]], 1)
        chosen = cv2.dnn.NMSBoxesBatched(
            tlwh.tolist(), scores.tolist(), class_ids.tolist(), self.conf, self.iou
        )
        order = np.asarray(chosen, dtype=np.int64).reshape(-1)
        order = order[np.argsort(-scores[order], kind="stable")][: self.max_det]
        boxes = geometry.to_image(xyxy[order])
        return [
            Detection(
                class_id=int(class_ids[i]),
                label=self.class_names[int(class_ids[i])],
                score=float(scores[i]),
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
            )
            for i, b in zip(order, boxes, strict=True)
        ]
