"""The pixel baselines of ``fchm model eval``: image codecs per frame, video codecs per clip.

    frame (its own size, never upscaled) ─► JPEG / WebP (OpenCV), AVIF (Pillow) ─► bytes
                                                 ─► decode ─► (cloud) letterbox ─► detector
    clip (consecutive frames at --fps)   ─► H.264 / H.265 (PyAV: libx264 / libx265)
             inter: one stream, a keyframe every --gop seconds, no B-frames (zerolatency)
             intra: the same encoder with every frame a keyframe
                                                 ─► packets ─► decode ─► detector

Bytes are the whole coded signal: an image file each, or the whole elementary stream of
a clip (parameter sets included) shared out over its frames. Codecs are explicit
registries; one missing from this build (AVIF without Pillow's libavif, libx265 absent
from PyAV's FFmpeg) is left out with a reason in ``unavailable()``, never faked.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageCoded:
    nbytes: int
    encode_s: float
    decode_s: float
    image: np.ndarray
    """decoded BGR, the size it was coded at"""


Decoder = Callable[[], np.ndarray]
ImageCodec = Callable[[np.ndarray, int], tuple[bytes, Decoder]]
"""(frame, quality) → (file bytes, a decoder to call, timed apart)"""


def _opencv(ext: str, flag: int) -> ImageCodec:
    def code(image: np.ndarray, quality: int) -> tuple[bytes, Decoder]:
        ok, buf = cv2.imencode(ext, image, [flag, quality])
        if not ok:
            raise RuntimeError(f"OpenCV cannot encode {ext} (built without it?)")

        def decode() -> np.ndarray:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            if out is None:
                raise RuntimeError(f"OpenCV cannot decode its own {ext}")
            return np.asarray(out)

        return buf.tobytes(), decode

    return code


def _avif(image: np.ndarray, quality: int) -> tuple[bytes, Decoder]:
    from PIL import Image

    out = io.BytesIO()
    # Pillow's defaults (speed 6, 4:2:0): what a user saving an AVIF gets.
    Image.fromarray(np.ascontiguousarray(image[:, :, ::-1])).save(out, "AVIF", quality=quality)
    data = out.getvalue()

    def decode() -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.ascontiguousarray(np.asarray(im.convert("RGB"))[:, :, ::-1])

    return data, decode


IMAGE_CODECS: dict[str, ImageCodec] = {
    "jpeg": _opencv(".jpg", cv2.IMWRITE_JPEG_QUALITY),
    "webp": _opencv(".webp", cv2.IMWRITE_WEBP_QUALITY),
    "avif": _avif,
}


def image_codecs() -> list[str]:
    """The image codecs this build can run (AVIF needs Pillow built with libavif)."""
    from PIL import features

    return [n for n in IMAGE_CODECS if n != "avif" or features.check("avif")]


def code_image(codec: str, image: np.ndarray, quality: int) -> ImageCoded:
    start = time.perf_counter()
    data, decode = IMAGE_CODECS[codec](image, quality)
    t_enc = time.perf_counter() - start
    start = time.perf_counter()
    decoded = decode()
    t_dec = time.perf_counter() - start
    if decoded.shape != image.shape:
        raise RuntimeError(f"{codec}: decoded {decoded.shape}, coded {image.shape}")
    return ImageCoded(len(data), t_enc, t_dec, decoded)


@dataclass(frozen=True)
class VideoCodec:
    """One video baseline: an FFmpeg encoder and how its GOP is set."""

    encoder: str
    """FFmpeg encoder (libx264, libx265)"""
    decoder: str
    intra: bool
    """every frame a keyframe (all-intra), else one keyframe per GOP"""

    def options(self, crf: int, gop: int) -> dict[str, str]:
        # zerolatency: no B-frames and no lookahead, as a live camera streams.
        opts = {"preset": "medium", "tune": "zerolatency", "crf": str(crf)}
        keyint = 1 if self.intra else gop
        if self.encoder == "libx265":
            opts["x265-params"] = f"keyint={keyint}:min-keyint={keyint}:log-level=error"
        else:
            opts["x264-params"] = f"keyint={keyint}:min-keyint={keyint}:scenecut=0"
        return opts


VIDEO_CODECS = {
    "h264": VideoCodec("libx264", "h264", intra=False),
    "h264-intra": VideoCodec("libx264", "h264", intra=True),
    "h265": VideoCodec("libx265", "hevc", intra=False),
    "h265-intra": VideoCodec("libx265", "hevc", intra=True),
}
CRFS = (18, 23, 28, 33, 38, 43)


def video_codecs() -> list[str]:
    """The video baselines PyAV's FFmpeg has encoders for."""
    return [n for n, c in VIDEO_CODECS.items() if c.encoder in av.codecs_available]


def unavailable() -> dict[str, str]:
    """Baselines left out of this run, and why."""
    out = {}
    if "avif" not in image_codecs():
        out["avif"] = "Pillow built without libavif (PIL.features.check('avif') is False)"
    for name, c in VIDEO_CODECS.items():
        if name not in video_codecs():
            out[name] = f"PyAV's FFmpeg has no {c.encoder}"
    return out


@dataclass(frozen=True)
class ClipCoded:
    nbytes: int
    """whole elementary stream, parameter sets included"""
    keyframes: int
    encode_s: float
    decode_s: float
    images: list[np.ndarray]


def code_clip(codec: VideoCodec, images: list[np.ndarray], rate: Fraction, crf: int,
              gop: int) -> ClipCoded:  # fmt: skip
    """Encode the frames as one stream at ``rate`` fps, decode it back in order."""
    h, w = images[0].shape[:2]
    # 4:2:0 needs even sides: replicate the last row/column, crop it off after decoding.
    ew, eh = w + w % 2, h + h % 2
    ctx = av.CodecContext.create(codec.encoder, "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt = ew, eh, "yuv420p"
    ctx.framerate, ctx.time_base = rate, 1 / rate
    ctx.options = codec.options(crf, gop)
    packets: list[av.Packet] = []
    start = time.perf_counter()
    for i, image in enumerate(images):
        padded = cv2.copyMakeBorder(image, 0, eh - h, 0, ew - w, cv2.BORDER_REPLICATE)
        frame = av.VideoFrame.from_ndarray(np.asarray(padded, np.uint8), format="bgr24")
        frame.pts = i
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    t_enc = time.perf_counter() - start
    decoder = av.CodecContext.create(codec.decoder, "r")
    assert isinstance(decoder, av.VideoCodecContext)
    start = time.perf_counter()
    decoded: list[av.VideoFrame] = []
    for packet in packets:
        decoded += decoder.decode(packet)
    decoded += decoder.decode(None)
    out = [f.to_ndarray(format="bgr24")[:h, :w] for f in decoded]
    t_dec = time.perf_counter() - start
    if len(out) != len(images):
        raise RuntimeError(f"{codec.encoder}: {len(images)} frames in, {len(out)} decoded")
    keyframes = sum(bool(p.is_keyframe) for p in packets)
    return ClipCoded(sum(p.size for p in packets), keyframes, t_enc, t_dec, out)
