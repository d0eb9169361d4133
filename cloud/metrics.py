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
        self.detections = Counter("fchm_detections", "Detections stored", ["label"], registry=r)
        self.stage_seconds = Histogram(
            "fchm_stage_seconds",
            "Time per frame in each cloud stage",
            ["stage"],
            buckets=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3),
            registry=r,
        )
        self.streams = Gauge("fchm_ingest_streams", "Open edge streams", registry=r)
        self.views_queued = Gauge("fchm_views_queued", "View jobs waiting", registry=r)
        self.views = Counter("fchm_views", "View jobs finished", ["status"], registry=r)
