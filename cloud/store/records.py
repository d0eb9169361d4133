"""Typed rows exchanged between the stores, the ingest path and the API."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CameraRecord:
    camera_id: str
    bundle_hash: str
    first_seen_ns: int
    last_seen_ns: int
    clock_offset_ns: int
    agent_version: str
    num_frames: int


@dataclass(frozen=True)
class FrameRecord:
    camera_id: str
    sequence: int
    capture_time_ns: int
    """cloud clock (edge capture time + the session's clock offset)"""
    received_time_ns: int
    rate_level: int
    num_bytes: int
    image_width: int
    image_height: int
    num_detections: int = 0
    crc32: int = 0
    """the container's CRC-32: tells a replay from a reused sequence"""
    id: int | None = None
    bitstream_key: str = ""


@dataclass(frozen=True)
class DetectionRecord:
    id: int
    frame_id: int
    camera_id: str
    capture_time_ns: int
    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class StoredFrame:
    frame_id: int
    duplicate: bool
    num_detections: int


@dataclass(frozen=True)
class DetectionQuery:
    camera_id: str | None = None
    cameras: tuple[str, ...] | None = None
    """only these cameras (an API key limited to them); None: every camera"""
    label: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    min_score: float | None = None
    frame_id: int | None = None
    limit: int = 100
    after: tuple[int, int] | None = None
    """keyset cursor: (capture_time_ns, id) of the last row already returned"""
    newest_first: bool = False
    """order by (capture_time_ns, id) descending; ``after`` then means older than the keyset"""


@dataclass(frozen=True)
class ViewRecord:
    id: str
    frame_id: int
    kind: str
    status: str
    """queued | running | done | failed"""
    created_ns: int
    started_ns: int | None = None
    finished_ns: int | None = None
    error: str | None = None
    image_key: str | None = None
    attempts: int = 0
    """times a worker started the job"""
    width: int | None = None
    """rendered image size (status done)"""
    height: int | None = None
