"""Real frames in a real FrameStore: sample images → encoder.onnx → codec → bitstream
→ decoder → detector tail → store_frame. Shared by the REST and view tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from cloud.detector_tail import Detection, DetectorTail
from cloud.frame_decoder import FrameDecoder
from cloud.store.frame_store import FrameStore
from cloud.store.records import FrameRecord
from codec.bitstream import FrameBitstream
from codec.bundle import Bundle
from edge.preprocess import letterbox

T0_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
STEP_NS = 1_000_000_000


@dataclass(frozen=True)
class StoredSample:
    frame_id: int
    camera: str
    sequence: int
    capture_time_ns: int
    image: Path
    image_size: tuple[int, int]
    bitstream: bytes
    detections: list[Detection]


class FrameMaker:
    """Encodes each image once (encoder ORT), then codes it at any rate level."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.codec = bundle.load_codec()
        self.encoder = ort.InferenceSession(str(bundle.file("encoder")))
        self.decoder = FrameDecoder(bundle)
        self.tail = DetectorTail(bundle)
        self._features: dict[Path, tuple[np.ndarray, tuple[int, int]]] = {}

    def bitstream(self, image: Path, level: int) -> tuple[bytes, tuple[int, int]]:
        if image not in self._features:
            bgr = cv2.imread(str(image))
            assert bgr is not None, image
            info = self.bundle.manifest.detector
            x, g = letterbox(bgr, info.input_size, info.pad_multiple)
            self._features[image] = (self.encoder.run(None, {"image": x})[0][0], g.image_size)
        features, size = self._features[image]
        enc = self.codec.compress(features, level)
        data = FrameBitstream(
            codec_id=self.codec.codec_id,
            rate_level=level,
            bundle_tag=self.bundle.tag,
            image_size=size,
            latent_shape=enc.latent_shape,
            payload=enc.payload,
            symbol_crc=enc.symbol_crc,
        ).to_bytes()
        return data, size

    def store(
        self, store: FrameStore, camera: str, sequence: int, t_ns: int, image: Path, level: int
    ) -> StoredSample:
        data, size = self.bitstream(image, level)
        decoded = self.decoder.decode(data)
        found = self.tail(decoded.features, decoded.geometry)
        record = FrameRecord(
            camera_id=camera,
            sequence=sequence,
            capture_time_ns=t_ns,
            received_time_ns=t_ns + 5_000_000,
            rate_level=level,
            num_bytes=len(data),
            image_width=size[0],
            image_height=size[1],
        )
        stored = store.store_frame(record, found, data)
        return StoredSample(stored.frame_id, camera, sequence, t_ns, image, size, data, found)


def open_store(root: Path, bundle: Bundle, cameras: list[str]) -> FrameStore:
    store = FrameStore.open(f"sqlite:///{root / 'fchm.db'}", root / "blobs")
    for camera in cameras:
        store.register_camera(camera, bundle.hash, 0, "test")
    return store
