"""What ``fchm model eval`` feeds the detector: frames in, coded signals out.

    --images DIR ─► imread ─┐
    --video FILE ─► thinned to --fps as the edge thins it ─► --clips runs of --frames consecutive
                            ┴─► downscale only if the long side > input_size ─► EvalFrame
    EvalFrame ─► FullDetector (letterbox ─► encoder ─► tail) ─► reference detections
             ─► encoder ─► FeatureCodec.compress(level) ─► FrameBitstream ─► bytes
                 bytes ─► FrameDecoder ─► tail                                  (fchm/uniform)
    clip frames ─► encoder ─► compress(level, reference=previous frame's decoded latent)
                 ─► FrameBitstream (P-frame: names its reference) ─► bytes
                 bytes ─► FrameDecoder(reference) ─► tail   keyframe every gop (FeatureStream)
    pixel codecs (model/eval_pixel_codecs.py) code the EvalFrame at its own size; the cloud
    decodes, then letterboxes for the detector, as a user's cloud would.

The feature path is the deployed one (the edge's encoder backend and container, the
cloud's FrameDecoder and DetectorTail), so any bundle's codec is judged as it runs; a
clip is also streamed with P-frames (``FeatureStream``) when the bundle has their tables.
``packaged_copies`` flags evaluation images that are the default export's fitting images.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from cloud.detector_tail import Detection, DetectorTail
from cloud.frame_decoder import FrameDecoder, ReferenceFrame
from codec.bitstream import FrameBitstream, FrameReference
from codec.bundle import Bundle
from codec.feature_codec import DEFAULT_SKIP_THRESHOLD
from codec.geometry import Letterbox
from codec.inter_frames import LatentSymbols
from edge.encoder_backends import open_backend
from edge.preprocess import letterbox
from edge.sources import CapturedFrame, SourceError, SourceStats, open_source
from model.sample_images import folder_image_paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalFrame:
    image: np.ndarray
    """BGR uint8 at its own size, downscaled (never upscaled) to fit the input size"""
    source: str
    """"images" or "video\""""
    name: str
    """file name, or video name and source frame index"""
    clip: int | None = None
    """which clip of the video (None for images)"""


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    size: tuple[int, int]
    """(width, height) as decoded"""
    total_frames: int
    source_fps: float
    fps: float
    """the evaluated rate: --fps, or the source's own when it is lower"""
    clips: tuple[tuple[int, ...], ...]
    """source frame indices of each clip, consecutive at ``fps``"""


def clock() -> Callable[[], float]:
    """Start a stopwatch; calling the result gives the seconds since."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def fit_down(image: np.ndarray, size: int, pad_multiple: int) -> np.ndarray:
    """Downscale as the edge's letterbox does (same rounding, same filter) when the long
    side exceeds ``size``; a smaller frame is returned as it is, never upscaled: a camera
    would code it at its own resolution."""
    h, w = image.shape[:2]
    if max(h, w) <= size:
        return image
    new = Letterbox.fit((w, h), size, pad_multiple).resized_size
    return cv2.resize(image, new, interpolation=cv2.INTER_LINEAR)


def load_images(folder: Path, size: int, pad_multiple: int) -> list[EvalFrame]:
    frames = []
    for path in folder_image_paths(folder):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # grey files become 3-channel
        if image is None:
            raise ValueError(f"cannot read image {path}")
        frames.append(EvalFrame(fit_down(image, size, pad_multiple), "images", path.name))
    return frames


def clip_starts(available: int, frames: int, clips: int) -> list[int]:
    """Where up to ``clips`` disjoint runs of ``frames`` start: each centred in its share
    of the video, so one clip is the middle of it, not its opening titles (one run of
    everything when the video is shorter)."""
    if available <= frames:
        return [0]
    starts: list[int] = []
    for k in range(clips):
        s = min(max(round((k + 0.5) * available / clips - frames / 2), 0), available - frames)
        if not starts or s >= starts[-1] + frames:  # clips never share a frame
            starts.append(s)
    return starts


def _source_fps(path: Path) -> float:
    try:
        with av.open(str(path)) as container:
            return float(container.streams.video[0].average_rate or 0) or 25.0
    except (av.FFmpegError, IndexError) as exc:
        raise ValueError(f"cannot read video {path}: {exc}") from exc


def _decoded(path: Path, fps: float | None, stats: SourceStats) -> Iterator[CapturedFrame]:
    """The file as the edge reads it, thinned to ``fps`` by its own timestamps exactly as
    ``fchm edge run --max-fps`` thins it (edge/sources.py ``thinned``)."""
    try:
        yield from open_source(str(path), max_fps=fps, reconnect=False, stats=stats)
    except SourceError as exc:
        raise ValueError(str(exc)) from exc


def _second_pass(
    path: Path,
    fps: float | None,
    wanted: Mapping[int, int | None],
    resize: Callable[[np.ndarray], np.ndarray],
) -> tuple[list[EvalFrame], tuple[int, int]]:
    """Decode only the ``wanted`` frames (index → clip), resized: (frames, source w×h)."""
    out: list[EvalFrame] = []
    size_wh = (0, 0)
    for f in _decoded(path, fps, SourceStats()):
        if f.index in wanted:
            size_wh = (f.image.shape[1], f.image.shape[0])
            name = f"{path.name}#{f.index}"
            out.append(EvalFrame(resize(f.image), "video", name, wanted[f.index]))
    return out, size_wh


def video_clips(
    path: Path, fps: float, frames: int, clips: int, size: int, pad_multiple: int
) -> tuple[list[EvalFrame], VideoInfo]:
    """``clips`` runs of ``frames`` consecutive frames as a camera at ``fps`` sends them.

    Two passes: the first finds which frames the camera keeps (containers do not always
    know their frame count), the second decodes only the clips' frames into memory."""
    source_fps = _source_fps(path)
    stats = SourceStats()
    kept = [(f.index, f.media_time_s) for f in _decoded(path, fps, stats)]
    if not kept:
        raise ValueError(f"video {path} has no frames")
    runs = [
        [index for index, _ in kept[s : s + frames]] for s in clip_starts(len(kept), frames, clips)
    ]
    wanted = {i: c for c, run in enumerate(runs) for i in run}
    out, size_wh = _second_pass(path, fps, wanted, lambda im: fit_down(im, size, pad_multiple))
    out.sort(key=lambda f: (f.clip, int(f.name.rsplit("#", 1)[1])))
    first, last = kept[0][1], kept[-1][1]
    span = (
        (last - first) / (len(kept) - 1)
        if len(kept) > 1 and first is not None and last is not None
        else 0
    )
    rate = min(fps, 1 / span) if span else fps
    info = VideoInfo(path, size_wh, stats.frames + stats.skipped, source_fps, round(rate, 3),
                     tuple(tuple(r) for r in runs))  # fmt: skip
    return out, info


def resize_long_side(image: np.ndarray, size: int, pad_multiple: int) -> np.ndarray:
    """Resize as the edge's letterbox does (same rounding, same filter), without padding.

    Every codec then sees the same pixels, and letterboxing the result is a pure pad.
    """
    h, w = image.shape[:2]
    new = Letterbox.fit((w, h), size, pad_multiple).resized_size
    if new == (w, h):
        return image
    return cv2.resize(image, new, interpolation=cv2.INTER_LINEAR)


def sample_video(
    path: Path, count: int, size: int, pad_multiple: int
) -> tuple[list[EvalFrame], VideoInfo]:
    """``count`` frames sampled evenly across the whole video, each resized to the input
    size: for benches that judge feature codecs only (roi_oracle, transform_metric);
    ``video_clips`` is what eval uses. Two passes, as there."""
    fps = _source_fps(path)
    total = sum(1 for _ in _decoded(path, None, SourceStats()))
    if total == 0:
        raise ValueError(f"video {path} has no frames")
    wanted = sorted({int(i) for i in np.linspace(0, total - 1, count).round()})
    frames, size_wh = _second_pass(
        path, None, dict.fromkeys(wanted), lambda im: resize_long_side(im, size, pad_multiple)
    )
    return frames, VideoInfo(path, size_wh, total, fps, fps, (tuple(wanted),))


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


@dataclass(frozen=True)
class StreamCoded(Coded):
    """One frame of a feature stream: a keyframe or a P-frame, as its container says."""

    keyframe: bool
    """what the cloud parsed: the container names no reference"""


@dataclass(frozen=True)
class SentFrame:
    coded: StreamCoded
    edge_symbols: LatentSymbols
    """the encoder's reference for the next P-frame"""
    cloud_reference: ReferenceFrame
    """what the cloud decoded: its reference for the next P-frame"""


class FeaturePath:
    """The bundle's own codec as deployed: compress → container → FrameDecoder → tail."""

    def __init__(self, bundle: Bundle, scorer: DetectorTail) -> None:
        self.bundle = bundle
        self.codec = bundle.load_codec()
        self.codec.prepare()  # build entropy models now, not inside the first frame's timing
        self.decoder = FrameDecoder(bundle)
        self.scorer = scorer

    def __call__(self, edge: EdgeFeatures, level: int) -> Coded:
        """One intra-coded frame (a keyframe), as every photo is sent."""
        return self.send(edge, level).coded

    def send(
        self,
        edge: EdgeFeatures,
        level: int,
        reference: tuple[LatentSymbols, ReferenceFrame] | None = None,
        skip_threshold: float = DEFAULT_SKIP_THRESHOLD,
    ) -> SentFrame:
        """One frame edge → bytes → cloud; ``reference``: (the edge's, the cloud's) latent of
        the previous frame, for a P-frame; None: a keyframe."""
        edge_ref, cloud_ref = (None, None) if reference is None else reference
        lap = clock()
        enc = self.codec.compress(edge.features, level, edge_ref, skip_threshold)
        ref = None if enc.reference_crc is None else FrameReference(1, enc.reference_crc)
        data = FrameBitstream(
            self.codec.codec_id, level, self.bundle.tag, edge.geometry.image_size,
            enc.latent_shape, enc.payload, enc.symbol_crc, ref,
        ).to_bytes()  # fmt: skip
        t_code = lap()
        lap = clock()
        decoded = self.decoder.decode(data, reference=cloud_ref)
        t_dec = lap()
        if decoded.geometry != edge.geometry:
            raise RuntimeError(f"cloud geometry {decoded.geometry} != edge's {edge.geometry}")
        if enc.symbols is None or enc.symbols.crc != decoded.symbols.crc:
            raise RuntimeError("the cloud decoded other symbols than the edge holds as reference")
        dets = self.scorer(decoded.features, edge.geometry)
        coded = StreamCoded(len(data), t_code, t_dec, dets, decoded.bitstream.is_keyframe)
        return SentFrame(coded, enc.symbols, decoded.as_reference)


class FeatureStream:
    """The bundle's codec as a camera streams a clip: frame 0 and every ``gop``-th frame a
    keyframe, the rest P-frames against the previous frame's decoded latent (closed loop:
    the edge predicts from what the cloud rebuilds), one stream per rate level."""

    def __init__(self, path: FeaturePath, gop: int, skip_threshold: float) -> None:
        if not path.codec.supports_inter:
            raise ValueError(f"bundle {path.bundle.path} has no P-frame tables")
        if gop < 1:
            raise ValueError(f"gop must be ≥ 1 frame, got {gop}")
        self.path = path
        self.gop = gop
        self.skip_threshold = skip_threshold
        self._held: dict[int, tuple[int, LatentSymbols, ReferenceFrame]] = {}
        """level → (position, the edge's and the cloud's latent) of the last frame sent"""

    def __call__(self, edge: EdgeFeatures, level: int, position: int) -> StreamCoded:
        """Frame ``position`` (0: the clip's first) of the clip at ``level``; positions of a
        level come in order, so every P-frame's reference is the frame just before it."""
        reference = None
        if position % self.gop:
            held = self._held.get(level)
            if held is None or held[0] != position - 1:
                raise RuntimeError(
                    f"level {level}: frame {position} of the clip is a P-frame, but frame "
                    f"{position - 1} was not sent before it"
                )
            reference = held[1], held[2]
        sent = self.path.send(edge, level, reference, self.skip_threshold)
        self._held[level] = position, sent.edge_symbols, sent.cloud_reference
        return sent.coded
