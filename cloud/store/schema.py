"""Tables. Times are integer nanoseconds since the Unix epoch (UTC): exact, and the
same on SQLite and PostgreSQL.

The database is created and upgraded by the migrations in ``cloud/store/migrations/``;
a change here needs a new revision there (a test compares the two on both engines)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# 64-bit ids on PostgreSQL (detections pass 2**31 rows quickly at fleet scale); SQLite
# needs plain INTEGER for its rowid primary keys, which are 64-bit anyway.
Id = BigInteger().with_variant(Integer, "sqlite")

cameras = Table(
    "cameras",
    metadata,
    Column("camera_id", String(128), primary_key=True),
    Column("bundle_hash", String(64), nullable=False),
    Column("first_seen_ns", BigInteger, nullable=False),
    Column("last_seen_ns", BigInteger, nullable=False),
    Column("clock_offset_ns", BigInteger, nullable=False, default=0),
    Column("agent_version", String(64), nullable=False, default=""),
)

frames = Table(
    "frames",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("camera_id", String(128), ForeignKey("cameras.camera_id"), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("capture_time_ns", BigInteger, nullable=False),
    Column("received_time_ns", BigInteger, nullable=False),
    Column("rate_level", Integer, nullable=False),
    Column("num_bytes", Integer, nullable=False),
    Column("crc32", BigInteger, nullable=False, default=0),
    Column("image_width", Integer, nullable=False),
    Column("image_height", Integer, nullable=False),
    Column("num_detections", Integer, nullable=False),
    Column("bitstream_key", String(256), nullable=False),
    UniqueConstraint("camera_id", "sequence", name="uq_frames_camera_sequence"),
    Index("ix_frames_camera_time", "camera_id", "capture_time_ns", "id"),
)

detections = Table(
    "detections",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("frame_id", Id, ForeignKey("frames.id"), nullable=False),
    Column("camera_id", String(128), nullable=False),
    Column("capture_time_ns", BigInteger, nullable=False),
    Column("class_id", Integer, nullable=False),
    Column("label", String(128), nullable=False),
    Column("score", Float, nullable=False),
    Column("x1", Float, nullable=False),
    Column("y1", Float, nullable=False),
    Column("x2", Float, nullable=False),
    Column("y2", Float, nullable=False),
    Index("ix_detections_time", "capture_time_ns", "id"),
    Index("ix_detections_camera_time", "camera_id", "capture_time_ns", "id"),
    Index("ix_detections_label_time", "label", "capture_time_ns", "id"),
    Index("ix_detections_frame", "frame_id"),
    Index("ix_detections_camera_label_time", "camera_id", "label", "capture_time_ns", "id"),
)

views = Table(
    "views",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("frame_id", Id, ForeignKey("frames.id"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("started_ns", BigInteger),
    Column("finished_ns", BigInteger),
    Column("error", Text),
    Column("image_key", String(256)),
    # Starts of the job: a job the process died rendering is retried only so often.
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    Column("width", Integer),  # the rendered image's size (status done)
    Column("height", Integer),
    # Higher first (0-9); a job not started by its deadline fails rather than render late.
    Column("priority", Integer, nullable=False, default=5, server_default="5"),
    Column("deadline_ns", BigInteger),
    # Who renders it, and until when: renewed while rendering; a lapsed lease is a dead
    # worker, and any process re-queues the job (cloud/view_queue.py).
    Column("worker", String(128)),
    Column("lease_until_ns", BigInteger),
    # Enhanced views: the enhancement's byte budget, the request it waits for, and why the
    # view was rendered from the machine bitstream alone when it was (done, no enhancement).
    Column("enhancement_bytes", Integer),
    Column("enhancement_id", String(36)),
    Column("fallback", Text),
    Index("ix_views_status", "status", "created_ns"),
    Index("ix_views_frame", "frame_id"),
    Index("ix_views_created", "created_ns", "id"),
)

# On-demand enhancements (cloud/store/enhancements.py): a frame coded again by its edge,
# from the pixels it retained, at a byte budget; sent down the camera's stream until
# answered. One per (frame, budget): a second view at the same budget shares it.
enhancements = Table(
    "enhancements",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("frame_id", Id, ForeignKey("frames.id"), nullable=False),
    Column("camera_id", String(128), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("byte_budget", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # requested | stored | unavailable
    Column("requested_ns", BigInteger, nullable=False),
    Column("sent_ns", BigInteger),  # last sent down a stream (again on every new stream)
    Column("finished_ns", BigInteger),
    Column("reason", Text),  # unavailable: the edge's why
    Column("blob_key", String(256)),
    Column("num_bytes", Integer),
    UniqueConstraint("frame_id", "byte_budget", name="uq_enhancements_frame_budget"),
    Index("ix_enhancements_status_camera", "status", "camera_id"),
    Index("ix_enhancements_camera_finished", "camera_id", "finished_ns"),
)

# REST API keys (cloud/store/api_keys.py). Only the sha256 of a key is stored; the key
# itself is printed once by `fchm cloud key create`.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("key_sha256", String(64), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("cameras", JSON, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("expires_ns", BigInteger),
    Column("revoked_ns", BigInteger),
)
