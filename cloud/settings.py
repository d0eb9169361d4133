"""CloudSettings: the one settings class of ``fchm cloud serve``."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import AfterValidator, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cloud.store.blobs import check_blob_url, check_endpoint_url
from codec.wire import CAMERA_ID, MAX_IMAGE_SIDE

SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


class CloudSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FCHM_CLOUD_", extra="forbid")

    bundle: Path = Field(Path("bundles/default"), description="Model bundle directory")
    data_dir: Path = Field(Path("var/cloud"), description="Blob directory (and SQLite file)")
    blob_url: Annotated[str | None, AfterValidator(check_blob_url)] = Field(
        None,
        description="s3://bucket/prefix: frame bitstreams and view images as objects in "
        "an S3-compatible bucket, credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
        "AWS_PROFILE or an instance role (none: the directory <data_dir>/blobs)",
    )
    s3_endpoint_url: Annotated[str | None, AfterValidator(check_endpoint_url)] = Field(
        None,
        description="Endpoint of an S3-compatible server for blob_url, e.g. "
        "http://127.0.0.1:9000 for MinIO (none: AWS S3)",
    )
    s3_region: str | None = Field(
        None, min_length=1, description="Region of blob_url's bucket (none: boto3's default)"
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/fchm.db"
    )
    grpc_host: str = Field("127.0.0.1", description="gRPC ingest bind address")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC ingest port (0: any free)")
    http_host: str = Field("127.0.0.1", description="REST API bind address")
    http_port: int = Field(8000, ge=0, le=65535, description="REST API port (0: any free)")
    detector_conf: float = Field(0.25, gt=0, lt=1, description="Minimum detection score")
    detector_iou: float = Field(0.7, gt=0, le=1, description="NMS IoU threshold")
    rate_hint: int | None = Field(
        None, ge=0, description="Rate level advised to every edge at connect (none: no advice)"
    )
    max_ingest_lag_s: float | None = Field(
        5.0,
        gt=0,
        description="Smoothed capture-to-stored lag above which edges are told to slow "
        "down (max_fps hints); lifted below half of it (none: never)",
    )
    backpressure_rate_level: int | None = Field(
        None,
        ge=0,
        description="Rate level cap sent with backpressure hints (none: only max_fps)",
    )
    ingest_workers: int = Field(
        0,
        ge=0,
        le=256,
        description="Threads that decode, detect and store received frames (0: asyncio's "
        "default pool, min(32, cores + 4))",
    )
    max_message_bytes: int = Field(
        8 << 20, gt=1024, description="Largest gRPC message (one frame bitstream) accepted"
    )
    max_queued_views: int = Field(
        64, ge=1, description="View jobs waiting before POST /v1/views answers 429"
    )
    view_workers: int = Field(
        1,
        ge=0,
        le=16,
        description="Restore workers in this process (0: none here, `fchm worker` processes "
        "render; needs view_queue_url)",
    )
    view_queue_url: str | None = Field(
        None,
        description="redis://host:port/db: the view queue shared by every replica and "
        "`fchm worker` process (none: an in-process queue, for a cloud alone on its database)",
    )
    view_lease_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="How long a worker holds a job without renewing (it renews every third "
        "of it while rendering); a job whose lease lapsed is re-queued by any process",
    )
    worker_metrics_port: int | None = Field(
        None, ge=0, le=65535, description="`fchm worker`: serve /metrics on this port"
    )
    view_max_side: int | None = Field(
        None,
        ge=16,
        le=MAX_IMAGE_SIDE,
        description="Longest side of a rendered view in pixels; a view is the frame's own "
        "size or smaller, aspect kept, never larger (none: the bundle's network input size)",
    )
    view_max_attempts: int = Field(
        2,
        ge=1,
        description="Times a view job may be started; a job still running after that many "
        "starts (the process died rendering it) is marked failed at restart, not re-queued",
    )
    diffusion_prior_dir: Path | None = Field(
        None,
        description="A local Stable-Diffusion-class checkpoint in diffusers layout "
        "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/: SD-Turbo, SD "
        "2.1 or similar) for `diffusion` views; unset: the kind is not served, and a view "
        "asking for it fails saying so. Nothing is fetched from a hub",
    )
    diffusion_steps: int = Field(4, ge=1, le=50, description="Denoising steps of a diffusion view")
    diffusion_strength: float = Field(
        0.5, gt=0.0, le=1.0, description="How far the preview is noised before denoising"
    )
    diffusion_seed: int = Field(0, ge=0, description="Sampling seed (the view PNG records it)")
    enhancement_wait_s: float = Field(
        20.0,
        gt=0,
        le=600,
        description="An enhanced view waits this long for the camera's enhancement, then "
        "falls back to the machine-only view, saying so (a camera offline is not waited for)",
    )
    enhancement_poll_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="Ingest looks for enhancement requests to send down its streams this "
        "often (requests may come from another process's API)",
    )
    onnx_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0: auto)")
    tail_max_batch: int = Field(
        1,
        ge=1,
        le=64,
        description="Frames (of one latent shape, from any cameras) the detector tail runs "
        "in one call (1: frame by frame). Worth it on a GPU; on 2 CPU cores batches of 2 "
        "gave 14% more frames/s",
    )
    tail_max_delay_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="How long the first frame of a batch waits for more (tail_max_batch > 1)",
    )

    camera_online_after_s: float = Field(
        30.0,
        gt=0,
        description="A camera is online (GET /v1/cameras) if heard from within this long",
    )
    camera_rate_window_s: float = Field(
        60.0, gt=0, le=3600, description="Window of a camera's fps and kbit/s in its status"
    )

    retention_days: float | None = Field(
        None,
        gt=0,
        description="Delete frames (their detections, views and blobs) captured more than "
        "this many days ago; kept back to the keyframe the oldest kept frame decodes from "
        "(none: keep forever)",
    )
    retention_per_camera: dict[str, float] = Field(
        default_factory=dict,
        description="camera id → retention in days for that camera, overriding retention_days",
    )
    retention_sweep_interval_s: float = Field(
        300.0, gt=0, description="Seconds between retention sweeps (one runs at start)"
    )
    retention_batch: int = Field(
        1000,
        ge=1,
        le=10_000,
        description="Frames deleted per transaction by a retention sweep (short locks)",
    )

    camera_tokens: dict[str, str] = Field(
        default_factory=dict,
        description="camera id → sha256 hex of its token; when set, unknown cameras and "
        "wrong tokens are refused",
    )
    tls_cert: Path | None = Field(None, description="Server certificate (enables TLS)")
    tls_key: Path | None = Field(None, description="Server private key")
    tls_client_ca: Path | None = Field(
        None, description="CA that signs camera certificates (requires mutual TLS)"
    )

    @field_validator("camera_tokens")
    @classmethod
    def _token_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        for camera, digest in _camera_keys(value):
            if not SHA256_HEX.match(digest):
                # The usual mistake is pasting the token itself: say what is expected.
                raise ValueError(
                    f"camera {camera}: expected the sha256 hex of its token (64 hex "
                    "characters, printed by `fchm cloud token`), not the token itself"
                )
        return {camera: digest.lower() for camera, digest in value.items()}

    @field_validator("retention_per_camera")
    @classmethod
    def _retention_days(cls, value: dict[str, float]) -> dict[str, float]:
        for camera, days in _camera_keys(value):
            if not days > 0:  # also refuses NaN
                raise ValueError(f"camera {camera}: retention {days} days must be > 0")
        return value

    @field_validator("view_queue_url")
    @classmethod
    def _queue_scheme(cls, value: str | None) -> str | None:
        # The schemes of cloud/view_queue.py's VIEW_QUEUES.
        if value is not None and value.split("://", 1)[0] not in ("redis", "rediss"):
            raise ValueError(f"{value!r}: expected redis://host:port/db or rediss://…")
        return value

    @model_validator(mode="after")
    def _somebody_renders(self) -> CloudSettings:
        if self.view_workers == 0 and self.view_queue_url is None:
            raise ValueError(
                "view_workers 0 leaves views to `fchm worker` processes, which take jobs "
                "from view_queue_url: set it (redis://…), or keep view_workers ≥ 1"
            )
        return self

    @model_validator(mode="after")
    def _tls_pairs(self) -> CloudSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together (TLS)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (mutual TLS runs over TLS)")
        return self

    @model_validator(mode="after")
    def _tokens_beyond_loopback(self) -> CloudSettings:
        # Without tokens any client may stream as any camera: acceptable only when no
        # other machine can reach the port. (REST always needs an API key.)
        if not self.camera_tokens and not is_loopback(self.grpc_host):
            raise ValueError(
                f"grpc_host {self.grpc_host!r} accepts cameras from other machines, so "
                "camera_tokens must be set (`fchm cloud token --camera ID` prints one; "
                'FCHM_CLOUD_CAMERA_TOKENS=\'{"cam1": "<sha256>"}\'), or bind grpc_host '
                "to 127.0.0.1"
            )
        return self

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'fchm.db'}"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; a name that resolves elsewhere is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_V = TypeVar("_V")


def _camera_keys(value: dict[str, _V]) -> list[tuple[str, _V]]:
    """A per-camera setting's items, once every key is checked to be a camera id."""
    for camera in value:
        if not CAMERA_ID.match(camera):
            raise ValueError(f"camera id {camera!r} must match {CAMERA_ID.pattern}")
    return list(value.items())
