"""Prometheus metrics of the cloud, in one registry per app instance."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class CloudMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.frames = Counter("fchm_ingest_frames", "Frames stored", ["camera"], registry=r)
        self.duplicates = Counter(
            "fchm_ingest_duplicate_frames", "Replayed frames acknowledged again", registry=r
        )
        self.rejected = Counter(
            "fchm_ingest_rejected", "Streams ended with an error status", ["code"], registry=r
        )
        self.bytes = Counter("fchm_ingest_bytes", "Bitstream bytes stored", registry=r)
        self.frame_types = Counter(
            "fchm_ingest_frame_types", "Frames stored by kind (key, p)", ["kind"], registry=r
        )
        self.detections = Counter("fchm_detections", "Detections stored", ["label"], registry=r)
        self.stage_seconds = Histogram(
            "fchm_stage_seconds",
            "Time per frame in each cloud stage",
            ["stage"],
            buckets=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3),
            registry=r,
        )
        self.tail_batch = Histogram(
            "fchm_tail_batch_frames",
            "Frames per detector-tail call (dynamic batching across cameras)",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
            registry=r,
        )
        self.ingest_lag = Histogram(
            "fchm_ingest_lag_seconds",
            "Capture (camera clock, offset corrected) to stored, per stored frame",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.ingest_wait = Histogram(
            "fchm_ingest_wait_seconds",
            "Time a received frame waited for an ingest worker thread",
            buckets=(0.0005, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3),
            registry=r,
        )
        self.ingest_lag_smoothed = Gauge(
            "fchm_ingest_lag_smoothed_seconds",
            "Smoothed ingest lag the backpressure decisions are made on",
            registry=r,
        )
        self.ingest_behind = Gauge(
            "fchm_ingest_behind", "1 while backpressure hints are in force", registry=r
        )
        self.rate_hints = Counter(
            "fchm_rate_hints", "Rate hints sent to edges", ["kind"], registry=r
        )
        self.streams = Gauge("fchm_ingest_streams", "Open edge streams", registry=r)
        self.views_queued = Gauge("fchm_views_queued", "View jobs waiting", registry=r)
        self.views = Counter("fchm_views", "View jobs finished", ["status"], registry=r)
        self.views_reused = Counter(
            "fchm_views_reused",
            "View requests answered by an existing job (done: cached; queued/running: joined)",
            ["status"],
            registry=r,
        )
        # Enhancements (cloud/store/enhancements.py): asked, answered, used by views.
        self.enhancements = Counter(
            "fchm_enhancements",
            "Enhancement events: sent (a request down a stream), stored, duplicate, refused "
            "(ingest); used, unavailable, offline, timeout (enhanced views)",
            ["event"],
            registry=r,
        )
        self.enhancement_bytes = Counter(
            "fchm_enhancement_bytes", "Enhancement payload bytes stored", registry=r
        )
        # Retention (cloud/retention_sweeper.py).
        self.retention_deleted = Counter(
            "fchm_retention_deleted",
            "Rows and blobs deleted by retention (kind: frames, detections, views, blobs)",
            ["camera", "kind"],
            registry=r,
        )
        self.retention_failures = Counter(
            "fchm_retention_failures", "Camera sweeps that failed (retried next sweep)", registry=r
        )
        self.retention_sweep_seconds = Histogram(
            "fchm_retention_sweep_seconds",
            "Time of one retention sweep over every camera",
            buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300),
            registry=r,
        )
        self.retention_last_sweep = Gauge(
            "fchm_retention_last_sweep_timestamp_seconds",
            "When the last retention sweep ended (Unix time)",
            registry=r,
        )
        self.retention_oldest_age = Gauge(
            "fchm_retention_oldest_frame_age_seconds",
            "Age of the oldest frame kept, per camera, after the last sweep",
            ["camera"],
            registry=r,
        )
