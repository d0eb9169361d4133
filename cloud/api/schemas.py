"""Response and request bodies. Times appear twice: ISO-8601 UTC (``time``) for people
and integer ns since the epoch (``time_ns``) for exact round trips.

Every 64-bit integer (ids, sequences, ``*_ns`` times) also comes as ``<name>_str``, its
exact decimal string: ns times pass 2**53, where JavaScript numbers and jq round them
(protobuf's JSON mapping and Google's APIs send int64 as strings for the same reason;
the integers stay for clients that already read them). Inputs take either form.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, computed_field, model_validator

from cloud.api.params import INT64_MAX, Bucket, iso_utc, optional_iso
from cloud.restorers import RESTORERS, wants_enhancement
from cloud.store.records import (
    CameraActivity,
    CameraRecord,
    DetectionRecord,
    FrameRecord,
    ViewRecord,
)
from codec.enhancement import MIN_BUDGET_BYTES

# ── errors ───────────────────────────────────────────────────────────────────


class ErrorBody(BaseModel):
    """An RFC 9457 problem details object, sent as ``application/problem+json``. Some
    errors add members, e.g. ``view_status`` on a 409 for a view not done yet."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(
        description="URI of the problem type, by status: https://fchm.dev/problems/<slug>",
        examples=["https://fchm.dev/problems/not-found"],
    )
    title: str = Field(description="The HTTP reason phrase of `status`", examples=["Not Found"])
    status: int = Field(description="HTTP status code")
    detail: str = Field(description="What is wrong, naming the bad parameter")
    instance: str = Field(description="The request path", examples=["/v1/frames/42"])
    field: str | None = Field(description="The bad parameter or body field, if one")


# The OpenAPI entry of every error response (built once, at import).
_PROBLEM: dict[str, object] = {
    "content": {"application/problem+json": {"schema": ErrorBody.model_json_schema()}}
}


Int64 = Annotated[int, Field(json_schema_extra={"format": "int64"})]


def int64_twin(name: str) -> Any:
    """Makes a property the read-only ``<name>_str`` of the int64 field ``name``: a computed
    field, so the two cannot drift apart. (mypy cannot type decorators on properties.)"""
    return computed_field(
        description=f"`{name}` as an exact decimal string (JavaScript numbers round above 2^53)",
        json_schema_extra={"format": "int64", "pattern": "^-?[0-9]+$"},
    )


def error_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for ``codes``, plus ``default`` (any other error, e.g. a 500), all
    ``application/problem+json``. The schema is inline: FastAPI would list a ``model``
    under application/json. ``default`` also stands in for FastAPI's own 422 entry, whose
    HTTPValidationError body this API never sends."""
    return {**{code: _PROBLEM for code in codes}, "default": {"description": "Error", **_PROBLEM}}


# ── cameras ──────────────────────────────────────────────────────────────────


class CameraStatus(BaseModel):
    """What the camera is doing, from its stored frames (the same answer on every replica)."""

    online: bool = Field(
        description="Heard from (connected or a frame stored) within camera_online_after_s"
    )
    last_frame: str | None = Field(description="Capture time of its newest frame")
    last_frame_ns: Int64 | None
    last_received: str | None = Field(description="When its newest frame was received")
    rate_level: int | None = Field(description="Rate level of its newest frame")
    window_s: float = Field(description="The recent window `fps` and `kbit_s` cover")
    fps: float = Field(description="Frames per second captured in the window")
    kbit_s: float = Field(
        description="kbit/s (1000 bit) in the window: bitstreams plus enhancements"
    )
    enhancement_kbit_s: float = Field(
        description="Of kbit_s, what on-demand enhancements (enhanced views) took"
    )

    @int64_twin("last_frame_ns")  # type: ignore[prop-decorator]
    @property
    def last_frame_ns_str(self) -> str | None:
        return None if self.last_frame_ns is None else str(self.last_frame_ns)

    @classmethod
    def of(cls, a: CameraActivity, online: bool, window_s: float) -> CameraStatus:
        return cls(
            online=online,
            last_frame=optional_iso(a.last_frame_ns),
            last_frame_ns=a.last_frame_ns,
            last_received=optional_iso(a.last_received_ns),
            rate_level=a.rate_level,
            window_s=window_s,
            fps=round(a.frames / window_s, 3),
            kbit_s=round((a.num_bytes + a.enhancement_bytes) * 8 / 1000 / window_s, 3),
            enhancement_kbit_s=round(a.enhancement_bytes * 8 / 1000 / window_s, 3),
        )


class CameraOut(BaseModel):
    camera_id: str
    bundle_hash: str = Field(description="Bundle the camera's agent announced")
    first_seen: str
    first_seen_ns: Int64
    last_seen: str
    last_seen_ns: Int64
    num_frames: int
    clock_offset_ns: Int64 = Field(description="Cloud clock minus edge clock at the handshake")
    agent_version: str
    status: CameraStatus

    @int64_twin("first_seen_ns")  # type: ignore[prop-decorator]
    @property
    def first_seen_ns_str(self) -> str:
        return str(self.first_seen_ns)

    @int64_twin("last_seen_ns")  # type: ignore[prop-decorator]
    @property
    def last_seen_ns_str(self) -> str:
        return str(self.last_seen_ns)

    @int64_twin("clock_offset_ns")  # type: ignore[prop-decorator]
    @property
    def clock_offset_ns_str(self) -> str:
        return str(self.clock_offset_ns)

    @classmethod
    def of(cls, c: CameraRecord, status: CameraStatus) -> CameraOut:
        return cls(
            status=status,
            camera_id=c.camera_id,
            bundle_hash=c.bundle_hash,
            first_seen=iso_utc(c.first_seen_ns),
            first_seen_ns=c.first_seen_ns,
            last_seen=iso_utc(c.last_seen_ns),
            last_seen_ns=c.last_seen_ns,
            num_frames=c.num_frames,
            clock_offset_ns=c.clock_offset_ns,
            agent_version=c.agent_version,
        )


class CameraList(BaseModel):
    items: list[CameraOut]


# ── detections ───────────────────────────────────────────────────────────────


class Box(BaseModel):
    """Corners in original-image pixels."""

    x1: float
    y1: float
    x2: float
    y2: float


class DetectionOut(BaseModel):
    id: Int64
    frame_id: Int64
    camera: str
    time: str = Field(description="Capture time, ISO-8601 UTC")
    time_ns: Int64 = Field(description="Capture time, ns since the epoch")
    label: str
    class_id: int
    score: float
    box: Box

    @int64_twin("id")  # type: ignore[prop-decorator]
    @property
    def id_str(self) -> str:
        return str(self.id)

    @int64_twin("frame_id")  # type: ignore[prop-decorator]
    @property
    def frame_id_str(self) -> str:
        return str(self.frame_id)

    @int64_twin("time_ns")  # type: ignore[prop-decorator]
    @property
    def time_ns_str(self) -> str:
        return str(self.time_ns)

    @classmethod
    def of(cls, d: DetectionRecord) -> DetectionOut:
        x1, y1, x2, y2 = d.box
        return cls(
            id=d.id,
            frame_id=d.frame_id,
            camera=d.camera_id,
            time=iso_utc(d.capture_time_ns),
            time_ns=d.capture_time_ns,
            label=d.label,
            class_id=d.class_id,
            score=d.score,
            box=Box(x1=x1, y1=y1, x2=x2, y2=y2),
        )


class DetectionPage(BaseModel):
    items: list[DetectionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end")


class CountBucketOut(BaseModel):
    start: str = Field(
        description="Bucket start, ISO-8601 UTC (the bucket is [start, start+width))"
    )
    start_ns: Int64
    count: int
    labels: dict[str, int] | None = Field(
        description="Count per label (with `by_label=true`; else null)"
    )

    @int64_twin("start_ns")  # type: ignore[prop-decorator]
    @property
    def start_ns_str(self) -> str:
        return str(self.start_ns)


class DetectionCounts(BaseModel):
    bucket: Bucket
    since: str
    since_ns: Int64
    until: str
    until_ns: Int64
    total: int
    buckets: list[CountBucketOut] = Field(
        description="Buckets with detections, oldest first; empty buckets are left out"
    )

    @int64_twin("since_ns")  # type: ignore[prop-decorator]
    @property
    def since_ns_str(self) -> str:
        return str(self.since_ns)

    @int64_twin("until_ns")  # type: ignore[prop-decorator]
    @property
    def until_ns_str(self) -> str:
        return str(self.until_ns)


# ── frames ───────────────────────────────────────────────────────────────────


class FrameLinks(BaseModel):
    self: str
    bitstream: str


class FrameOut(BaseModel):
    id: Int64
    camera: str
    sequence: Int64
    time: str = Field(description="Capture time (cloud clock), ISO-8601 UTC")
    time_ns: Int64
    received_time: str
    received_time_ns: Int64
    rate_level: int = Field(description="Rate level the edge coded this frame at")
    num_bytes: int = Field(description="Whole bitstream size, headers included")
    image_width: int
    image_height: int
    num_detections: int
    links: FrameLinks

    @int64_twin("id")  # type: ignore[prop-decorator]
    @property
    def id_str(self) -> str:
        return str(self.id)

    @int64_twin("sequence")  # type: ignore[prop-decorator]
    @property
    def sequence_str(self) -> str:
        return str(self.sequence)

    @int64_twin("time_ns")  # type: ignore[prop-decorator]
    @property
    def time_ns_str(self) -> str:
        return str(self.time_ns)

    @int64_twin("received_time_ns")  # type: ignore[prop-decorator]
    @property
    def received_time_ns_str(self) -> str:
        return str(self.received_time_ns)

    @classmethod
    def fields_of(cls, f: FrameRecord) -> dict[str, object]:
        assert f.id is not None, "frames read from the store have ids"
        return dict(
            id=f.id,
            camera=f.camera_id,
            sequence=f.sequence,
            time=iso_utc(f.capture_time_ns),
            time_ns=f.capture_time_ns,
            received_time=iso_utc(f.received_time_ns),
            received_time_ns=f.received_time_ns,
            rate_level=f.rate_level,
            num_bytes=f.num_bytes,
            image_width=f.image_width,
            image_height=f.image_height,
            num_detections=f.num_detections,
            links=FrameLinks(self=f"/v1/frames/{f.id}", bitstream=f"/v1/frames/{f.id}/bitstream"),
        )

    @classmethod
    def of(cls, f: FrameRecord) -> FrameOut:
        return cls.model_validate(cls.fields_of(f))


class FrameDetail(FrameOut):
    detections: list[DetectionOut]


class FramePage(BaseModel):
    items: list[FrameOut]
    next_cursor: str | None


# ── views ────────────────────────────────────────────────────────────────────

MAX_ENHANCEMENT_BYTES = 1_000_000


class ViewStatus(StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


# Kinds are a registry, not a fixed enum; OpenAPI still lists them.
_KINDS: dict[str, JsonValue] = {"enum": list(RESTORERS)}  # coarse to refined: the registry order


class ViewRequest(BaseModel):
    """Which frame: **either** `frame_id`, **or** `camera` alone (its newest frame), **or**
    `camera` with `sequence`. `frame_id` with `camera` or `sequence` is a 422, as is
    `sequence` without `camera`. Integers may also be given as decimal strings (`id_str`,
    `sequence_str`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"frame_id": 42, "kind": "preview"},
                {"camera": "cam1"},
                {"camera": "cam1", "sequence": "1733270400000000"},
            ]
        },
    )

    frame_id: Int64 | None = Field(None, ge=1, le=INT64_MAX, description="Frame to view")
    camera: str | None = Field(
        None, max_length=128, description="Camera of the frame; alone, its newest frame"
    )
    sequence: Int64 | None = Field(
        None,
        ge=0,
        le=INT64_MAX,
        description="The frame's sequence on that camera (`sequence` of GET /v1/frames; an edge "
        "numbers frames from its first start's wall clock in µs, not from 0)",
    )
    kind: str = Field("preview", description="View kind", json_schema_extra=_KINDS)
    priority: int = Field(
        5, ge=0, le=9, description="Queue priority, 9 first; within one priority, oldest first"
    )
    deadline_s: float | None = Field(
        None,
        gt=0,
        le=86400,
        description="Give up (status failed) if no worker has started the job within this "
        "many seconds; null: wait as long as it takes",
    )
    reuse: bool = Field(
        True,
        description="Answer with an existing job of this frame and kind (done: 200 with the "
        "cached view; queued or running: 200 with that job) instead of queuing another",
    )
    enhancement_bytes: int | None = Field(
        None,
        ge=MIN_BUDGET_BYTES,
        le=MAX_ENHANCEMENT_BYTES,
        description="Kind `enhanced` only (required there): the byte budget of the enhancement "
        "the camera codes from the pixels it retained, on top of the frame's machine bitstream "
        "(both are counted in the view's bytes_used and in the camera's bandwidth)",
    )

    @model_validator(mode="after")
    def _enhancement_bytes(self) -> ViewRequest:
        if wants_enhancement(self.kind) != (self.enhancement_bytes is not None):
            raise ValueError("enhancement_bytes is required for kind enhanced, and only there")
        return self


class ViewLinks(BaseModel):
    self: str
    image: str
    preview: str | None = Field(
        None,
        description="A refined kind's preview, shown first: rendered before the refined "
        "image, while the job runs (none for kind preview)",
    )


class ViewOut(BaseModel):
    id: str
    status: ViewStatus
    kind: str = Field(json_schema_extra=_KINDS)
    description: str = Field(description="What this kind of view is")
    frame_id: Int64
    created: str
    created_ns: Int64
    started: str | None
    started_ns: Int64 | None
    finished: str | None
    finished_ns: Int64 | None
    error: str | None = Field(description="Why the job failed (status failed)")
    attempts: int = Field(description="Times a worker started the job")
    priority: int = Field(description="Queue priority, 0–9, 9 served first")
    deadline: str | None = Field(description="Latest start time (ISO 8601 UTC), if any")
    deadline_ns: Int64 | None
    width: int | None = Field(
        description="Width of the rendered image (status done): the frame's, or smaller so "
        "the long side is at most view_max_side"
    )
    height: int | None = Field(description="Height of the rendered image (status done)")
    enhancement_bytes: int | None = Field(
        description="Kind enhanced: the enhancement's byte budget"
    )
    fallback: str | None = Field(
        description="Set when the view was rendered from the machine bitstream alone although "
        "more was asked (kind enhanced: the camera was offline, or no longer held the frame), "
        "and why"
    )
    links: ViewLinks

    @int64_twin("frame_id")  # type: ignore[prop-decorator]
    @property
    def frame_id_str(self) -> str:
        return str(self.frame_id)

    @int64_twin("created_ns")  # type: ignore[prop-decorator]
    @property
    def created_ns_str(self) -> str:
        return str(self.created_ns)

    @int64_twin("started_ns")  # type: ignore[prop-decorator]
    @property
    def started_ns_str(self) -> str | None:
        return None if self.started_ns is None else str(self.started_ns)

    @int64_twin("finished_ns")  # type: ignore[prop-decorator]
    @property
    def finished_ns_str(self) -> str | None:
        return None if self.finished_ns is None else str(self.finished_ns)

    @int64_twin("deadline_ns")  # type: ignore[prop-decorator]
    @property
    def deadline_ns_str(self) -> str | None:
        return None if self.deadline_ns is None else str(self.deadline_ns)

    @classmethod
    def of(cls, v: ViewRecord) -> ViewOut:
        restorer = RESTORERS.get(v.kind)
        return cls(
            id=v.id,
            status=ViewStatus(v.status),
            kind=v.kind,
            description=restorer.description if restorer else f"unknown view kind {v.kind!r}",
            frame_id=v.frame_id,
            created=iso_utc(v.created_ns),
            created_ns=v.created_ns,
            started=optional_iso(v.started_ns),
            started_ns=v.started_ns,
            finished=optional_iso(v.finished_ns),
            finished_ns=v.finished_ns,
            error=v.error,
            attempts=v.attempts,
            priority=v.priority,
            deadline=optional_iso(v.deadline_ns),
            deadline_ns=v.deadline_ns,
            width=v.width,
            height=v.height,
            enhancement_bytes=v.enhancement_bytes,
            fallback=v.fallback,
            links=ViewLinks(
                self=f"/v1/views/{v.id}",
                image=f"/v1/views/{v.id}/image",
                preview=None if v.kind == "preview" else f"/v1/views/{v.id}/preview",
            ),
        )


class ViewPage(BaseModel):
    items: list[ViewOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end")


# ── health ───────────────────────────────────────────────────────────────────


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool]
