"""Frame sources: video files and streams (PyAV), image folders, webcams (OpenCV).

Each source yields CapturedFrame in capture order; ``open_source`` picks one from
the ``--source`` string through the SOURCES registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class CapturedFrame:
    index: int
    """position in the source, counting skipped frames"""
    capture_time_ns: int
    """edge wall clock, ns since the Unix epoch"""
    image: np.ndarray
    """H x W x 3 BGR uint8"""
    media_time_s: float | None = None
    """position in a recorded file (its timestamps), None for live sources"""


class SourceError(RuntimeError):
    """A source that cannot be opened or read."""


def video_frames(uri: str) -> Iterator[CapturedFrame]:
    import av

    try:
        container = av.open(uri)
    except (av.error.FFmpegError, OSError) as exc:
        raise SourceError(f"cannot open video source {uri!r}: {exc}") from exc
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            yield CapturedFrame(index, time.time_ns(), frame.to_ndarray(format="bgr24"), frame.time)


def folder_frames(folder: str) -> Iterator[CapturedFrame]:
    import cv2

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {folder}")
    for index, path in enumerate(paths):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"cannot read image {path}")
        yield CapturedFrame(index, time.time_ns(), image)


def webcam_frames(device: str) -> Iterator[CapturedFrame]:
    import cv2

    capture = cv2.VideoCapture(int(device))
    if not capture.isOpened():
        raise SourceError(f"cannot open webcam {device}")
    try:
        index = 0
        while True:
            ok, image = capture.read()
            if not ok:
                return
            yield CapturedFrame(index, time.time_ns(), image)
            index += 1
    finally:
        capture.release()


SOURCES: dict[str, Callable[[str], Iterator[CapturedFrame]]] = {
    "video": video_frames,
    "folder": folder_frames,
    "webcam": webcam_frames,
}


def source_kind(source: str) -> str:
    if source.isdigit():
        return "webcam"
    if "://" in source:
        return "video"
    path = Path(source)
    if path.is_dir():
        return "folder"
    if path.is_file():
        return "video"
    raise SourceError(f"source {source!r} is not a file, folder, URL or webcam index")


def open_source(
    source: str, max_fps: float | None = None, max_frames: int | None = None
) -> Iterator[CapturedFrame]:
    """Frames from ``source``, thinned to ``max_fps`` and capped at ``max_frames``.

    Recorded files are thinned by their own timestamps (deterministic), live
    sources by capture time.
    """
    frames = SOURCES[source_kind(source)](source)
    min_gap_s = 1.0 / max_fps if max_fps else 0.0
    last_s: float | None = None
    produced = 0
    for frame in frames:
        if max_frames is not None and produced >= max_frames:
            return
        now_s = (
            frame.media_time_s if frame.media_time_s is not None else frame.capture_time_ns / 1e9
        )
        if last_s is not None and now_s - last_s < min_gap_s - 1e-6:
            continue
        last_s = now_s
        produced += 1
        yield frame
