"""EdgeSettings: the one settings class of ``fchm edge run``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from codec.wire import CAMERA_ID_PATTERN


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FCHM_EDGE_", extra="forbid")

    # ── what to encode ───────────────────────────────────────────────────────
    bundle: Path = Field(Path("bundles/default"), description="Model bundle directory")
    source: str = Field(
        description="Video file, image folder, stream URL (rtsp://, http://) or webcam index"
    )
    camera_id: str = Field(pattern=CAMERA_ID_PATTERN, description="Camera id, unique per cloud")
    backend: str = Field(
        "onnxruntime-cpu", description="Encoder backend (see edge/encoder_backends.py)"
    )
    threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0: auto)")
    engine_cache: Path = Field(
        Path("var/edge/engines"), description="TensorRT engine cache directory"
    )
    max_fps: float | None = Field(None, gt=0, description="Skip frames to stay under this rate")
    max_frames: int | None = Field(None, gt=0, description="Stop after this many frames")
    queue_frames: int = Field(
        8, ge=1, le=1024, description="Frames buffered between capture and encode"
    )
    reconnect_source: bool = Field(
        True, description="Reopen a live stream that drops (files are never reopened)"
    )
    max_frame_age_s: float | None = Field(
        2.0,
        gt=0,
        description="Live sources: a frame older than this when the encoder reaches it is "
        "dropped before encoding, counted as 'stale' (none: never; files: never)",
    )

    # ── rate ─────────────────────────────────────────────────────────────────
    rate_level: int = Field(0, ge=0, description="Fixed rate level (0 = fewest bytes)")
    budget_kbps: float | None = Field(
        None, gt=0, description="Bandwidth budget in kbit/s; chooses the level per frame"
    )
    follow_rate_hints: bool = Field(True, description="Honour the cloud's rate hints")
    keyframe_interval: int = Field(
        50,
        ge=1,
        description="A keyframe every this many encoded frames, P-frames between "
        "(1: every frame a keyframe, no inter coding)",
    )
    skip_threshold: float = Field(
        6.0,
        ge=0,
        description="P-frames: a latent cell whose change is within this many quantizer "
        "steps² is skipped (copied from the previous frame); 0: code every change",
    )

    # ── uplink ───────────────────────────────────────────────────────────────
    cloud: str = Field("127.0.0.1:50051", description="Cloud gRPC ingest address, host:port")
    token: SecretStr | None = Field(None, description="Per-camera token sent as gRPC metadata")
    tls_ca: Path | None = Field(None, description="CA bundle to verify the cloud (enables TLS)")
    tls_cert: Path | None = Field(None, description="Client certificate for mutual TLS")
    tls_key: Path | None = Field(None, description="Client private key for mutual TLS")
    tls_server_name: str | None = Field(
        None, description="Expected server name in the cloud's certificate"
    )
    max_in_flight: int = Field(32, ge=1, le=4096, description="Frames sent but not yet acked")
    grpc_timeout_s: float = Field(10.0, gt=0, description="Connect timeout per attempt, s")
    backoff_initial_s: float = Field(0.2, gt=0, description="First reconnect delay, s")
    backoff_max_s: float = Field(30.0, gt=0, description="Longest reconnect delay, s")

    # ── store-and-forward ────────────────────────────────────────────────────
    spool_dir: Path = Field(Path("var/edge/spool"), description="Durable spool directory")
    spool_max_mb: float = Field(512.0, gt=0, description="Spool size bound; oldest dropped")
    spool_max_age_s: float = Field(
        24 * 3600.0, gt=0, description="Frames older than this are dropped from the spool"
    )
    flush_timeout_s: float | None = Field(
        None,
        ge=0,
        description="At the end, wait at most this long for the spool to drain (none: as "
        "long as the cloud keeps acking)",
    )
    flush_stall_s: float = Field(
        30.0,
        gt=0,
        description="At the end, give up the flush when nothing was acked for this long "
        "(cloud unreachable); what is left stays spooled for the next run",
    )

    # ── enhancements (the retention buffer, edge/frame_retention.py) ─────────
    retention_s: float = Field(
        120.0,
        ge=0,
        description="Keep each encoded frame's pixels this long, so a view can ask for an "
        "enhancement of it (0: keep none; such views fall back to the machine-only view)",
    )
    retention_max_mb: float = Field(
        512.0, ge=0, description="Retention buffer size bound; oldest frames dropped first"
    )
    retention_dir: Path | None = Field(
        None, description="Retention buffer directory (default: <spool_dir>/<camera>/retention)"
    )

    # ── operations ───────────────────────────────────────────────────────────
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve Prometheus metrics on this port"
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the metrics endpoint binds (0.0.0.0 in a container)"
    )
    progress_interval_s: float = Field(
        5.0, ge=0, description="Log frames captured/encoded/acked this often, s (0: never)"
    )
    log_format: str = Field("text", pattern="^(text|json)$", description="text or json logs")

    @field_validator("cloud")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {value!r}")
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> EdgeSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together (mutual TLS)")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("tls_cert needs tls_ca (mutual TLS runs over TLS)")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be ≥ backoff_initial_s")
        return self
