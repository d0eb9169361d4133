"""What ``fchm model eval`` feeds the detector: frames in, coded signals out.

    --images DIR ─► imread ─┐
    --video FILE ─► N frames ┴─► resize (long side = input_size) ─► EvalFrame
    EvalFrame ─► FullDetector (encoder ─► tail) ─► reference detections + timing
             ─► encoder ─► FeatureCodec.compress(level) ─► FrameBitstream ─► bytes
                 bytes ─► FrameDecoder ─► tail                                  (fchm/uniform)
             ─► cv2.imencode(JPEG|WebP, q) ─► bytes ─► imdecode ─► FullDetector  (jpeg/webp)
    video frames ─► PyAV encoder (one clip per setting) ─► packets ─► decoder ─► FullDetector

The feature path is the deployed one (the edge's encoder backend and container, the
cloud's FrameDecoder and DetectorTail), so any bundle's codec is judged as it runs.
``packaged_copies`` flags evaluation images that are the default export's fitting images.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from cloud.detector_tail import Detection, DetectorTail
from cloud.frame_decoder import FrameDecoder
from codec.bitstream import FrameBitstream
from codec.bundle import Bundle
from codec.geometry import Letterbox
from edge.encoder_backends import open_backend
from edge.preprocess import letterbox
from model.sample_images import folder_image_paths

log = logging.getLogger(__name__)

IMAGE_CODECS = {
    "jpeg": (".jpg", cv2.IMWRITE_JPEG_QUALITY),
    "webp": (".webp", cv2.IMWRITE_WEBP_QUALITY),
}


@dataclass(frozen=True)
class EvalFrame:
    image: np.ndarray
    """BGR uint8, resized so its long side is the bundle's input size"""
    source: str
    """"images" or "video\""""
    name: str
    """file name, or video name and frame index"""


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    size: tuple[int, int]
    """(width, height) before resizing"""
    total_frames: int
    fps: float
    indices: tuple[int, ...]


def clock() -> Callable[[], float]:
    """Start a stopwatch; calling the result gives the seconds since."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def resize_long_side(image: np.ndarray, size: int, pad_multiple: int) -> np.ndarray:
    """Resize as the edge's letterbox does (same rounding, same filter), without padding.

    Every codec then sees the same pixels, and letterboxing the result is a pure pad.
    """
    h, w = image.shape[:2]
    new = Letterbox.fit((w, h), size, pad_multiple).resized_size
    if new == (w, h):
        return image
    return cv2.resize(image, new, interpolation=cv2.INTER_LINEAR)


def load_images(folder: Path, size: int, pad_multiple: int) -> list[EvalFrame]:
    frames = []
    for path in folder_image_paths(folder):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # grey files become 3-channel
        if image is None:
            raise ValueError(f"cannot read image {path}")
        frames.append(EvalFrame(resize_long_side(image, size, pad_multiple), "images", path.name))
    return frames


def sample_video(
    path: Path, count: int, size: int, pad_multiple: int
) -> tuple[list[EvalFrame], VideoInfo]:
    """``count`` frames sampled evenly across the whole video (two decoding passes:
    containers do not always know their frame count)."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 0) or 25.0
            total = sum(1 for _ in container.decode(video=0))
    except (av.FFmpegError, IndexError) as exc:
        raise ValueError(f"cannot read video {path}: {exc}") from exc
    if total == 0:
        raise ValueError(f"video {path} has no frames")
    wanted = sorted({int(i) for i in np.linspace(0, total - 1, count).round()})
    keep = set(wanted)
    frames: list[EvalFrame] = []
    size_wh = (0, 0)
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in keep:
                image = frame.to_ndarray(format="bgr24")
                size_wh = (image.shape[1], image.shape[0])
                resized = resize_long_side(image, size, pad_multiple)
                frames.append(EvalFrame(resized, "video", f"{path.name}#{i}"))
    return frames, VideoInfo(path, size_wh, total, fps, tuple(wanted))


def packaged_copies(folder: Path | None) -> list[str]:
    """Evaluation images byte-identical to a packaged image the default export fits on."""
    if folder is None:
        return []
    packaged: set[str] = set()
    # find_spec, not import: importing ultralytics would pull in torch just to list files.
    for module, sub in (("ultralytics", "assets"), ("skimage", "data")):
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            continue
        root = Path(spec.origin).parent / sub
        packaged |= {
            _sha256_file(p) for p in root.glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
        }
    hits = [p.name for p in folder_image_paths(folder) if _sha256_file(p) in packaged]
    if hits:
        log.warning("evaluation images the default bundle was fitted on: %s", hits)
    return hits


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class EdgeFeatures:
    features: np.ndarray
    """(C, h, w) float32: what the bundle's codec compresses"""
    geometry: Letterbox
    encoder_s: float


@dataclass(frozen=True)
class Detected:
    reference: list[Detection]
    """at the cloud's threshold: the ground truth"""
    scored: list[Detection]
    """at the low threshold: the whole precision-recall curve"""
    encoder_s: float
    tail_s: float


class FullDetector:
    """The bundle's detector, whole.

    For a bundle whose encoder.onnx holds only detector layers (the uniform codec),
    encoder → tail *is* the full detector. A bundle that folds a learned transform into
    its encoder and tail is judged against the plain detector's ONNX instead
    (``reference``, from ``model.reference_detector``).
    """

    def __init__(
        self,
        bundle: Bundle,
        conf: float,
        pred_conf: float,
        threads: int,
        reference: Path | None = None,
    ) -> None:
        self.size = bundle.manifest.detector.input_size
        self.pad_multiple = bundle.manifest.detector.pad_multiple
        self.encoder = open_backend("onnxruntime-cpu", bundle.file("encoder"), threads)
        self.tail = DetectorTail(bundle, conf=conf, threads=threads)  # what the cloud stores
        self.scorer = DetectorTail(bundle, conf=pred_conf, threads=threads)
        self.whole = None
        if reference is not None:
            from cloud.onnx_sessions import open_session

            self.whole = open_session(reference, threads)

    def encode(self, image: np.ndarray) -> EdgeFeatures:
        """The edge's half: letterbox, then encoder.onnx (timed without the letterbox)."""
        x, geometry = letterbox(image, self.size, self.pad_multiple)
        lap = clock()
        features = self.encoder(x)
        return EdgeFeatures(features, geometry, lap())

    def __call__(self, image: np.ndarray, edge: EdgeFeatures | None = None) -> Detected:
        """Detections on ``image``; ``edge`` reuses its encoder output (and time) when
        encoder → tail is the detector."""
        if self.whole is not None:
            x, geometry = letterbox(image, self.size, self.pad_multiple)
            lap = clock()
            (pred,) = self.whole.run(None, {"image": x})
            t_enc = 0.0  # one network: all of its time is under tail_s
        else:
            edge = edge or self.encode(image)
            geometry = edge.geometry
            lap = clock()
            (pred,) = self.tail.session.run(None, {"features": edge.features[None]})
            t_enc = edge.encoder_s
        reference = self.tail.postprocess(pred[0], geometry)
        t_tail = lap()
        # The network ran once: the low-threshold pass only re-filters the same output.
        scored = self.scorer.postprocess(pred[0], geometry)
        return Detected(reference, scored, t_enc, t_tail)


@dataclass(frozen=True)
class Coded:
    """One frame through one codec setting."""

    nbytes: int
    encode_s: float
    """edge time after the shared encoder (quantize + code + container; image encode)"""
    decode_s: float
    detections: list[Detection]


class FeaturePath:
    """The bundle's own codec as deployed: compress → container → FrameDecoder → tail."""

    def __init__(self, bundle: Bundle, scorer: DetectorTail) -> None:
        self.bundle = bundle
        self.codec = bundle.load_codec()
        self.codec.prepare()  # build entropy models now, not inside the first frame's timing
        self.decoder = FrameDecoder(bundle)
        self.scorer = scorer

    def __call__(self, edge: EdgeFeatures, level: int) -> Coded:
        lap = clock()
        enc = self.codec.compress(edge.features, level)
        data = FrameBitstream(
            self.codec.codec_id, level, self.bundle.tag, edge.geometry.image_size,
            enc.latent_shape, enc.payload, enc.symbol_crc,
        ).to_bytes()  # fmt: skip
        t_code = lap()
        lap = clock()
        decoded = self.decoder.decode(data)
        t_dec = lap()
        if decoded.geometry != edge.geometry:
            raise RuntimeError(f"cloud geometry {decoded.geometry} != edge's {edge.geometry}")
        return Coded(len(data), t_code, t_dec, self.scorer(decoded.features, edge.geometry))


@dataclass(frozen=True)
class ImageCoded:
    nbytes: int
    encode_s: float
    decode_s: float
    image: np.ndarray


def code_image(codec: str, image: np.ndarray, quality: int) -> ImageCoded:
    ext, flag = IMAGE_CODECS[codec]
    lap = clock()
    ok, buf = cv2.imencode(ext, image, [flag, quality])
    t_enc = lap()
    if not ok:
        raise RuntimeError(f"OpenCV cannot encode {codec} (built without it?)")
    lap = clock()
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    t_dec = lap()
    if decoded is None:
        raise RuntimeError(f"OpenCV cannot decode its own {codec} output")
    return ImageCoded(int(buf.size), t_enc, t_dec, decoded)


@dataclass(frozen=True)
class VideoEncoder:
    """The PyAV encoder the video baseline uses, and how its sweep is set."""

    name: str
    """FFmpeg encoder name (libx264, h264_nvenc, mpeg4, ...)"""
    family: str
    """row codec: "h264", or "mpeg4" when no H.264 encoder works"""
    decoder: str
    mode: str
    """"crf" (libx264's constant rate factor) or "bitrate" (target bytes per frame)"""
    note: str


CRFS = (18, 23, 28, 33, 38, 43, 48)
TARGET_BYTES = (1000, 2000, 4000, 8000, 16000, 32000)


def _works(name: str) -> bool:
    try:
        ctx = _encoder_context(name, 64, 64, Fraction(1), {})
        frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="bgr24")
        frame.pts = 0
        return bool(list(ctx.encode(frame)) + list(ctx.encode(None)))
    except (av.FFmpegError, ValueError, OSError) as exc:  # listed but no device/library
        log.debug("video encoder %s unusable: %s", name, exc)
        return False


def pick_video_encoder() -> VideoEncoder:
    """libx264 (CRF sweep), else any working H.264 encoder, else MPEG-4 part 2.

    FFmpeg builds differ (libx264 is GPL and absent from some), so the baseline says
    which encoder produced its numbers.
    """
    if _works("libx264"):
        return VideoEncoder(
            "libx264", "h264", "h264", "crf", "libx264 preset medium, B-frames, one clip"
        )
    others = sorted(c for c in av.codecs_available if "264" in c and c != "libx264rgb")
    for name in others:
        if _works(name):
            return VideoEncoder(name, "h264", "h264", "bitrate", f"{name} (no libx264), one clip")
    return VideoEncoder(
        "mpeg4", "mpeg4", "mpeg4", "bitrate",
        "MPEG-4 part 2: this FFmpeg has no working H.264 encoder, so no h264 rows",
    )  # fmt: skip


def video_settings(encoder: VideoEncoder) -> list[tuple[str, dict[str, str], int]]:
    """(setting label, encoder options, target bytes per frame or 0) per sweep point."""
    if encoder.mode == "crf":
        return [(f"crf={c}", {"crf": str(c)}, 0) for c in CRFS]
    return [(f"target={b} B/frame", {}, b) for b in TARGET_BYTES]


def _encoder_context(
    name: str, width: int, height: int, rate: Fraction, options: dict[str, str], bit_rate: int = 0
) -> av.VideoCodecContext:
    ctx = av.CodecContext.create(name, "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.framerate, ctx.time_base = rate, 1 / rate
    if bit_rate:
        ctx.bit_rate = bit_rate
    ctx.options = options
    return ctx


@dataclass(frozen=True)
class ClipCoded:
    nbytes: int
    """whole elementary stream, parameter sets included"""
    encode_s: float
    decode_s: float
    images: list[np.ndarray]


def code_clip(
    encoder: VideoEncoder,
    images: list[np.ndarray],
    rate: Fraction,
    setting: tuple[str, dict[str, str], int],
) -> ClipCoded:
    """Encode the frames as one clip, decode it back; frames keep their order and size."""
    h, w = images[0].shape[:2]
    # 4:2:0 needs even sides: replicate the last row/column, crop it off after decoding.
    ew, eh = w + w % 2, h + h % 2
    _, options, target = setting
    ctx = _encoder_context(encoder.name, ew, eh, rate, options, int(target * 8 * rate))
    packets: list[av.Packet] = []
    lap = clock()
    for i, image in enumerate(images):
        padded = cv2.copyMakeBorder(image, 0, eh - h, 0, ew - w, cv2.BORDER_REPLICATE)
        frame = av.VideoFrame.from_ndarray(np.asarray(padded, np.uint8), format="bgr24")
        frame.pts = i
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    t_enc = lap()
    decoder = av.CodecContext.create(encoder.decoder, "r")
    assert isinstance(decoder, av.VideoCodecContext)
    lap = clock()
    decoded: list[av.VideoFrame] = []
    for packet in packets:
        decoded += decoder.decode(packet)
    decoded += decoder.decode(None)
    decoded.sort(key=lambda f: f.pts or 0)
    out = [f.to_ndarray(format="bgr24")[:h, :w] for f in decoded]
    t_dec = lap()
    if len(out) != len(images):
        raise RuntimeError(f"{encoder.name}: {len(images)} frames in, {len(out)} decoded")
    return ClipCoded(sum(p.size for p in packets), t_enc, t_dec, out)
