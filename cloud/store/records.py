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
    labels: tuple[str, ...] | None = None
    """any of these labels (a multi-valued filter); with ``label``, both must hold"""
    since_ns: int | None = None
    until_ns: int | None = None
    min_score: float | None = None
    frame_id: int | None = None
    limit: int = 100
    after: tuple[int, int] | None = None
    """keyset cursor: (capture_time_ns, id) of the last row already returned"""
    newest_first: bool = False
    """order by (capture_time_ns, id) descending; ``after`` then means older than the keyset"""


def view_image_key(view_id: str) -> str:
    """Where a view job's image is kept in the blob store."""
    return f"views/{view_id}.png"


def enhancement_key(request_id: str) -> str:
    """Where an enhancement's payload (AVIF or WebP) is kept in the blob store."""
    return f"enhancements/{request_id}"


def view_preview_key(view_id: str) -> str:
    """Where a refined view job keeps the preview it showed first (kinds other than
    preview: the worker renders the preview, then the refined image)."""
    return f"views/{view_id}.preview.png"


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
    priority: int = 5
    """0-9, higher served first"""
    deadline_ns: int | None = None
    """a job no worker started by then fails (not rendered late)"""
    worker: str | None = None
    """the worker rendering it (status running)"""
    lease_until_ns: int | None = None
    """the worker holds the job until then; renewed while it renders"""
    enhancement_bytes: int | None = None
    """enhanced views: the enhancement's byte budget"""
    enhancement_id: str | None = None
    """enhanced views: the request (cloud/store/enhancements.py) it waits for"""
    fallback: str | None = None
    """why this view was rendered from the machine bitstream alone (an enhanced view whose
    enhancement did not come)"""


@dataclass(frozen=True)
class EnhancementRecord:
    id: str
    frame_id: int
    camera_id: str
    sequence: int
    byte_budget: int
    status: str
    """requested | stored | unavailable"""
    requested_ns: int
    sent_ns: int | None = None
    finished_ns: int | None = None
    reason: str | None = None
    blob_key: str | None = None
    num_bytes: int | None = None


@dataclass(frozen=True)
class CameraActivity:
    """What a camera sent lately, read from its frames (the same on every replica)."""

    camera_id: str
    last_frame_ns: int | None
    """capture time of its newest frame"""
    last_received_ns: int | None
    rate_level: int | None
    """rate level of its newest frame"""
    frames: int
    """frames captured in the window"""
    num_bytes: int
    """bitstream bytes of those frames"""
    enhancement_bytes: int = 0
    """enhancement bytes stored in the window (on-demand; counted in the bandwidth)"""


@dataclass(frozen=True)
class CountBucket:
    start_ns: int
    label: str | None
    """None when counts are not split by label"""
    count: int


@dataclass(frozen=True)
class ViewQuery:
    camera_ids: tuple[str, ...] | None = None
    """views of frames of these cameras; None: every camera"""
    frame_id: int | None = None
    status: str | None = None
    kind: str | None = None
    limit: int = 100
    after: tuple[int, str] | None = None
    """keyset cursor: (created_ns, id) of the last view already returned"""
    newest_first: bool = True
