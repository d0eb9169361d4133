"""One captured frame → one bitstream, with per-stage timings.

BGR frame ─► letterbox ─► encoder backend (nn_part_1) ─► quantize + entropy code (encode)
          ─► FrameBitstream container ─► bytes
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from codec.bitstream import FrameBitstream
from codec.bundle import Bundle
from codec.wire import MAX_IMAGE_SIDE
from edge.encoder_backends import open_backend
from edge.preprocess import letterbox
from edge.sources import CapturedFrame


@dataclass(frozen=True)
class EncodedFrame:
    index: int
    capture_time_ns: int
    rate_level: int
    bitstream: bytes
    stage_ms: dict[str, float]


class FrameTooLarge(ValueError):
    """A frame larger than the wire contract's MAX_IMAGE_SIDE; the cloud would refuse it."""


class FrameEncoder:
    def __init__(
        self,
        bundle: Bundle,
        backend: str = "onnxruntime-cpu",
        threads: int = 0,
        engine_cache: Path | None = None,
    ) -> None:
        self.bundle = bundle
        self.codec = bundle.load_codec()
        self.backend = open_backend(
            backend,
            bundle.file("encoder"),
            threads,
            engine_cache=engine_cache,  # TensorRT engines, keyed by the bundle hash among others
            bundle_hash=bundle.hash,
        )
        self.input_size = bundle.manifest.detector.input_size
        self.pad_multiple = bundle.manifest.detector.pad_multiple
        self.codec.prepare()  # build every entropy model now, not on the first frame

    @property
    def num_levels(self) -> int:
        return self.codec.num_levels

    def encode(self, frame: CapturedFrame, rate_level: int) -> EncodedFrame:
        if not 0 <= rate_level < self.codec.num_levels:
            raise ValueError(f"rate_level {rate_level} outside 0..{self.codec.num_levels - 1}")
        h, w = frame.image.shape[:2]
        if max(w, h) > MAX_IMAGE_SIDE:
            # Refused, not downscaled: boxes are in the source's pixels, and a silently
            # downscaled frame would put them in another grid.
            raise FrameTooLarge(
                f"frame {frame.index} is {w}x{h}: a side exceeds MAX_IMAGE_SIDE "
                f"{MAX_IMAGE_SIDE}; set the source to a lower resolution"
            )
        t0 = time.perf_counter()
        image, geometry = letterbox(frame.image, self.input_size, self.pad_multiple)
        t1 = time.perf_counter()
        features = self.backend(image)
        t2 = time.perf_counter()
        encoded = self.codec.compress(features, rate_level)
        data = FrameBitstream(
            codec_id=self.codec.codec_id,
            rate_level=rate_level,
            bundle_tag=self.bundle.tag,
            image_size=geometry.image_size,
            latent_shape=encoded.latent_shape,
            payload=encoded.payload,
            symbol_crc=encoded.symbol_crc,
        ).to_bytes()
        t3 = time.perf_counter()
        stage_ms = {"preprocess": t1 - t0, "nn_part_1": t2 - t1, "encode": t3 - t2}
        return EncodedFrame(
            frame.index,
            frame.capture_time_ns,
            rate_level,
            data,
            {k: v * 1000 for k, v in stage_ms.items()},
        )
