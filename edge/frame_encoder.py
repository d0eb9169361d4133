"""One captured frame → one bitstream, with per-stage timings.

BGR frame ─► letterbox ─► encoder backend (nn_part_1) ─► quantize + entropy code (encode)
          ─► FrameBitstream container ─► bytes
                     ▲                  │
                     └── reference ◄────┘ the latent as the cloud decodes it

A keyframe every ``keyframe_interval`` frames (1 by default: every frame stands alone;
the agent passes its setting, 50), on request (``encode(keyframe=True)``:
the cloud refused a frame, so what follows it cannot be decoded) and after a restart
(a new encoder holds no reference); P-frames in between (codec/inter_frames.py) are
predicted from the previous encoded frame, which the container names (offset 1, its
symbol CRC): the agent spools every frame it encodes, in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from codec.bitstream import FrameBitstream, FrameReference
from codec.bundle import Bundle
from codec.feature_codec import DEFAULT_SKIP_THRESHOLD
from codec.inter_frames import LatentSymbols
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
    keyframe: bool = True


class FrameTooLarge(ValueError):
    """A frame larger than the wire contract's MAX_IMAGE_SIDE; the cloud would refuse it."""


class FrameEncoder:
    def __init__(
        self,
        bundle: Bundle,
        backend: str = "onnxruntime-cpu",
        threads: int = 0,
        engine_cache: Path | None = None,
        keyframe_interval: int = 1,
        skip_threshold: float = DEFAULT_SKIP_THRESHOLD,
    ) -> None:
        if keyframe_interval < 1 or skip_threshold < 0:
            raise ValueError(
                f"keyframe_interval must be ≥ 1 and skip_threshold ≥ 0, got "
                f"{keyframe_interval} and {skip_threshold}"
            )
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
        # Bundles exported before P-frame tables code keyframes only.
        self.keyframe_interval = keyframe_interval if self.codec.supports_inter else 1
        self.skip_threshold = skip_threshold
        self._reference: LatentSymbols | None = None
        self._since_keyframe = 0

    def next_is_keyframe(self) -> bool:
        """Whether the next frame is a keyframe unless one is requested (rate control
        budgets keyframes and P-frames apart)."""
        return self._reference is None or self._since_keyframe >= self.keyframe_interval

    def forget_reference(self) -> None:
        """The next frame is a keyframe (the cloud cannot decode what followed a refusal)."""
        self._reference = None

    @property
    def num_levels(self) -> int:
        return self.codec.num_levels

    def encode(self, frame: CapturedFrame, rate_level: int, keyframe: bool = False) -> EncodedFrame:
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
        reference = None if keyframe or self.next_is_keyframe() else self._reference
        encoded = self.codec.compress(features, rate_level, reference, self.skip_threshold)
        data = FrameBitstream(
            codec_id=self.codec.codec_id,
            rate_level=rate_level,
            bundle_tag=self.bundle.tag,
            image_size=geometry.image_size,
            latent_shape=encoded.latent_shape,
            payload=encoded.payload,
            symbol_crc=encoded.symbol_crc,
            reference=None
            if encoded.reference_crc is None
            else FrameReference(1, encoded.reference_crc),
        ).to_bytes()
        t3 = time.perf_counter()
        self._reference = encoded.symbols
        self._since_keyframe = 1 if encoded.reference_crc is None else self._since_keyframe + 1
        stage_ms = {"preprocess": t1 - t0, "nn_part_1": t2 - t1, "encode": t3 - t2}
        return EncodedFrame(
            frame.index,
            frame.capture_time_ns,
            rate_level,
            data,
            {k: v * 1000 for k, v in stage_ms.items()},
            encoded.reference_crc is None,
        )
