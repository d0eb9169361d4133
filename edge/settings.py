"""EdgeSettings: the one settings class of ``fchm edge run``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FCHM_EDGE_", extra="forbid")

    bundle: Path = Field(Path("bundles/default"), description="Model bundle directory")
    source: str = Field(
        description="Video file, image folder, stream URL (rtsp://, http://) or webcam index"
    )
    camera_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="Camera id, unique per cloud"
    )
    cloud: str = Field("127.0.0.1:50051", description="Cloud gRPC ingest address, host:port")
    backend: str = Field(
        "onnxruntime-cpu", description="Encoder backend (see edge/encoder_backends.py)"
    )
    rate_level: int = Field(0, ge=0, description="Rate level, 0 = fewest bytes")
    follow_rate_hints: bool = Field(True, description="Use the cloud's rate hints when sent")
    max_fps: float | None = Field(None, gt=0, description="Skip frames to stay under this rate")
    max_frames: int | None = Field(None, gt=0, description="Stop after this many frames")
    max_in_flight: int = Field(32, ge=1, le=4096, description="Frames sent but not yet acked")
    grpc_timeout_s: float = Field(30.0, gt=0, description="Connect / final-ack timeout, seconds")
    threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0: auto)")

    @field_validator("cloud")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {value!r}")
        return value
