"""Frame sources: video files and streams (PyAV), image folders, webcams (OpenCV).

    --source ─► source_kind ─► SOURCES[kind]: one opening of a file, folder, stream or webcam
                                  │
                                  ├─ file, folder: frames until the end, then stop
                                  └─ live (URL, webcam index): ``reconnecting`` reopens it
                                     whenever it drops or fails to open (Backoff: exponential,
                                     jitter, capped) until ``stop`` is set
                                  ▼
                        ``thinned``: max_fps, max_frames ─► CapturedFrame, CapturedFrame, …

``open_source`` wires these together; SourceStats counts frames, skips and
reconnects for the agent's metrics.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge.backoff import Backoff

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
EPS_S = 1e-6  # timestamps in files are rounded to their time base
NETWORK_TIMEOUT_S = 10.0
"""A stream that sends nothing for this long counts as dropped (and is reopened)."""


@dataclass(frozen=True)
class CapturedFrame:
    index: int
    """position in the source, counting skipped frames (and across reconnects)"""
    capture_time_ns: int
    """edge wall clock, ns since the Unix epoch"""
    image: np.ndarray
    """H x W x 3 BGR uint8"""
    media_time_s: float | None = None
    """position in a recorded file (its timestamps), None for live sources"""


class SourceError(RuntimeError):
    """A source that cannot be opened or read."""


@dataclass
class SourceStats:
    """What a source has done so far. The capture thread writes, metrics read."""

    frames: int = 0
    """frames handed on (after max_fps thinning)"""
    skipped: int = 0
    """frames thinned away by max_fps"""
    reconnects: int = 0
    """times a live source delivered frames again after it dropped or failed to open"""
    reconnect_attempts: int = 0
    """reopen attempts, failed ones included"""
    last_error: str | None = None


def is_live(source: str) -> bool:
    """Webcams and network streams are live; files, ``file://`` URLs and folders are not."""
    return source.isdigit() or ("://" in source and not source.lower().startswith("file:"))


def redact(uri: str) -> str:
    """The URI with any user:password replaced, fit for logs and error messages."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", uri)


def _describe(exc: BaseException, uri: str, timeout_s: float) -> str:
    import av

    if isinstance(exc, av.error.ExitError):  # PyAV's timeout interrupted FFmpeg
        return f"no data from {redact(uri)} within {timeout_s:g} s"
    return str(exc).replace(uri, redact(uri))  # FFmpeg's messages end with the URL


def stream_options(uri: str, timeout_s: float, rtsp_transport: str = "tcp") -> dict[str, str]:
    """FFmpeg options for a network stream, so that a dead stream raises, never hangs."""
    micros = str(int(timeout_s * 1e6))
    options = {"rw_timeout": micros}  # every protocol: give up on a read after timeout_s
    if is_rtsp(uri):
        options |= {"rtsp_transport": rtsp_transport, "timeout": micros}
    return options


def is_rtsp(uri: str) -> bool:
    return uri.lower().startswith(("rtsp://", "rtsps://"))


def _open_stream(uri: str, timeout_s: float) -> Any:
    """Open a network stream; RTSP tries TCP first, then UDP if the server refuses it.

    TCP interleaving survives NAT and lossy Wi-Fi where UDP loses packets and frames,
    but some servers only offer RTP over UDP (they answer 400 or 461 to TCP).
    """
    import av

    transports = ("tcp", "udp") if is_rtsp(uri) else ("tcp",)
    for transport in transports:
        try:
            return av.open(
                uri,
                options=stream_options(uri, timeout_s, transport),
                # PyAV's own interrupt timeout (open, read) backs up the protocol options.
                timeout=(timeout_s, timeout_s),
            )
        except av.error.FFmpegError as exc:
            refused = any(code in str(exc) for code in ("400 Bad Request", "461"))
            if transport == transports[-1] or not refused:
                raise
            log.info("%s refused RTP over TCP; trying UDP", redact(uri))
    raise AssertionError("unreachable")


def video_frames(uri: str, timeout_s: float = NETWORK_TIMEOUT_S) -> Iterator[CapturedFrame]:
    """One opening of a video file or stream, decoded with PyAV."""
    import av

    live = is_live(uri)
    try:
        container = _open_stream(uri, timeout_s) if live else av.open(uri)
    except (av.error.FFmpegError, OSError) as exc:
        raise SourceError(f"cannot open video source: {_describe(exc, uri, timeout_s)}") from exc
    with container:
        if not container.streams.video:
            raise SourceError(f"video source {redact(uri)!r} has no video stream")
        stream = container.streams.video[0]
        if not live:
            # Frame threading decodes faster but holds frames back: files only.
            stream.thread_type = "AUTO"
        decoded = container.decode(stream)
        index = 0
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                return
            except (av.error.FFmpegError, OSError) as exc:
                raise SourceError(
                    f"video source failed after {index} frames: {_describe(exc, uri, timeout_s)}"
                ) from exc
            media_time = None if live else frame.time
            yield CapturedFrame(index, time.time_ns(), frame.to_ndarray(format="bgr24"), media_time)
            index += 1


def folder_frames(folder: str, timeout_s: float = NETWORK_TIMEOUT_S) -> Iterator[CapturedFrame]:
    """Images of a folder in name order (``timeout_s`` is unused: folders are local)."""
    import cv2

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {folder}")
    for index, path in enumerate(paths):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"cannot read image {path}")
        yield CapturedFrame(index, time.time_ns(), image)


def webcam_frames(device: str, timeout_s: float = NETWORK_TIMEOUT_S) -> Iterator[CapturedFrame]:
    """One opening of a local camera by index (OpenCV)."""
    import cv2

    capture = cv2.VideoCapture(int(device))
    if not capture.isOpened():
        raise SourceError(f"cannot open webcam {device}")
    try:
        index = 0
        while True:
            ok, image = capture.read()
            if not ok:
                return  # unplugged or busy: a drop, which ``reconnecting`` handles
            yield CapturedFrame(index, time.time_ns(), image)
            index += 1
    finally:
        capture.release()


SourceOpener = Callable[[str, float], Iterator[CapturedFrame]]
"""(source, network timeout in s) → frames of one opening"""

SOURCES: dict[str, SourceOpener] = {
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


def close_frames(frames: Iterator[CapturedFrame]) -> None:
    """Release the file, socket or camera behind ``frames`` now, not when it is collected."""
    close = getattr(frames, "close", None)
    if close is not None:
        close()


def reconnecting(
    open_frames: Callable[[], Iterator[CapturedFrame]],
    name: str,
    backoff: Backoff,
    stats: SourceStats,
    stop: threading.Event,
    max_attempts: int | None = None,
) -> Iterator[CapturedFrame]:
    """Frames of a live source, reopened whenever it ends, fails or cannot be opened.

    Frame indices keep counting across reopenings. Returns when ``stop`` is set;
    raises SourceError after ``max_attempts`` failed reopenings in a row (None: never
    give up, which is what an unattended camera wants).
    """
    rng = random.Random()
    attempt = 0  # reopenings since frames last flowed
    index = 0
    reopened = False
    while not stop.is_set():
        frames = open_frames()
        try:
            for frame in frames:
                if reopened:
                    stats.reconnects += 1
                    log.info("source %s is back after %d attempt(s)", name, attempt)
                    reopened, attempt = False, 0
                yield replace(frame, index=index)
                index += 1
                if stop.is_set():
                    return
            reason = f"source {name} ended"
        except SourceError as exc:
            reason = str(exc)
        finally:
            close_frames(frames)
        stats.last_error = reason
        if max_attempts is not None and attempt >= max_attempts:
            raise SourceError(f"source {name} did not come back after {attempt} attempts: {reason}")
        delay = backoff.delay_s(attempt, rng)
        attempt += 1
        stats.reconnect_attempts += 1
        reopened = True
        log.warning("%s; reconnect attempt %d in %.2f s", reason, attempt, delay)
        if stop.wait(delay):
            return


def thinned(
    frames: Iterator[CapturedFrame],
    max_fps: float | None,
    max_frames: int | None,
    stats: SourceStats,
) -> Iterator[CapturedFrame]:
    """At most ``max_fps`` frames per second on average, and at most ``max_frames``.

    Recorded files are thinned by their own timestamps (deterministic), live
    sources by capture time. Frames are kept on a schedule of one per 1/max_fps s
    rather than "at least 1/max_fps after the last kept one", which would give
    8.3 fps instead of 10 on a 25 fps camera.
    """
    gap_s = 1.0 / max_fps if max_fps else 0.0
    due_s: float | None = None
    produced = 0
    try:
        if max_frames is not None and max_frames <= 0:
            return
        for frame in frames:
            t_s = frame.media_time_s
            if t_s is None:
                t_s = frame.capture_time_ns / 1e9
            if gap_s:
                late_s = None if due_s is None else t_s - due_s
                if late_s is not None and -gap_s - EPS_S <= late_s < -EPS_S:
                    stats.skipped += 1  # between two slots
                    continue
                # On schedule: the next slot is one gap on. More than a gap late (a stall,
                # a reconnect) or earlier than the last slot (the clock or the stream's
                # timestamps went back): start a new schedule, never burst or stall.
                if due_s is not None and late_s is not None and -EPS_S <= late_s < gap_s:
                    due_s += gap_s
                else:
                    due_s = t_s + gap_s
            produced += 1
            stats.frames += 1
            yield frame
            if max_frames is not None and produced >= max_frames:
                return  # before reading another frame: a live read may block
    finally:
        close_frames(frames)


def open_source(
    source: str,
    max_fps: float | None = None,
    max_frames: int | None = None,
    *,
    reconnect: bool = True,
    backoff: Backoff | None = None,
    stats: SourceStats | None = None,
    stop: threading.Event | None = None,
    timeout_s: float = NETWORK_TIMEOUT_S,
    max_attempts: int | None = None,
) -> Iterator[CapturedFrame]:
    """Frames from ``source``, thinned to ``max_fps`` and capped at ``max_frames``.

    Live sources (URLs, webcams) are reopened with ``backoff`` when they drop or
    fail to open, unless ``reconnect`` is False; files and folders just end. Set
    ``stop`` to end a live source from another thread (it also cuts a backoff
    wait short). A bad ``source`` string raises SourceError here, not on the
    first frame.
    """
    opener = SOURCES[source_kind(source)]
    stats = stats if stats is not None else SourceStats()
    if reconnect and is_live(source):
        frames = reconnecting(
            lambda: opener(source, timeout_s),
            redact(source),
            backoff or Backoff(),
            stats,
            stop or threading.Event(),
            max_attempts,
        )
    else:
        frames = opener(source, timeout_s)
    return thinned(frames, max_fps, max_frames, stats)
