"""The edge agent: frames in, bitstreams out, every frame acknowledged.

    source ─► FrameEncoder (letterbox ─► encoder ─► quantize + code) ─► Uplink ─► cloud
                     ▲ rate level: fixed, or the cloud's hint

``run_agent`` reads top to bottom; it returns an AgentReport when the source ends
and every frame is acknowledged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from codec.bundle import Bundle
from edge.frame_encoder import FrameEncoder
from edge.settings import EdgeSettings
from edge.sources import open_source
from edge.uplink import Uplink

log = logging.getLogger(__name__)


@dataclass
class AgentReport:
    camera_id: str
    frames: int = 0
    bytes_sent: int = 0
    acked: int = 0
    duplicates: int = 0
    detections: int = 0
    first_sequence: int = 0
    elapsed_s: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    """mean milliseconds per frame in each edge stage"""
    frame_bytes: list[int] = field(default_factory=list)

    @property
    def bytes_per_frame(self) -> float:
        return self.bytes_sent / max(self.frames, 1)


def run_agent(settings: EdgeSettings) -> AgentReport:
    # 1. Load the bundle and open the encoder backend before touching the network.
    bundle = Bundle.load(settings.bundle)
    encoder = FrameEncoder(bundle, settings.backend, settings.threads)
    check_inputs(settings, encoder)

    # 2. Handshake: the cloud checks the bundle and says where our sequence resumes.
    uplink = Uplink(
        settings.cloud,
        settings.camera_id,
        bundle.hash,
        settings.max_in_flight,
        settings.grpc_timeout_s,
    )
    session = uplink.open()
    log.info(
        "camera %s connected to %s, resuming at sequence %d (clock offset %.1f ms)",
        settings.camera_id,
        settings.cloud,
        session.next_sequence,
        session.clock_offset_ns / 1e6,
    )
    report = AgentReport(settings.camera_id, first_sequence=session.next_sequence)
    totals: dict[str, float] = {}
    started = time.perf_counter()

    # 3. Encode and send each frame; the uplink blocks when too many are unacked.
    sequence = session.next_sequence
    for frame in open_source(settings.source, settings.max_fps, settings.max_frames):
        level = choose_rate_level(settings, uplink.rate_hint, encoder.num_levels)
        encoded = encoder.encode(frame, level)
        uplink.send(sequence, encoded)
        sequence += 1
        report.frames += 1
        report.bytes_sent += len(encoded.bitstream)
        report.frame_bytes.append(len(encoded.bitstream))
        for stage, ms in encoded.stage_ms.items():
            totals[stage] = totals.get(stage, 0.0) + ms

    # 4. Drain: wait for every ack, then close the stream.
    uplink.close()
    report.elapsed_s = time.perf_counter() - started
    report.acked, report.duplicates = uplink.acked, uplink.duplicates
    report.detections = uplink.detections
    report.stage_ms = {k: v / max(report.frames, 1) for k, v in totals.items()}
    return report


def check_inputs(settings: EdgeSettings, encoder: FrameEncoder) -> None:
    if settings.rate_level >= encoder.num_levels:
        raise ValueError(
            f"rate_level {settings.rate_level} outside 0..{encoder.num_levels - 1} for this bundle"
        )


def choose_rate_level(settings: EdgeSettings, hint: int | None, num_levels: int) -> int:
    if settings.follow_rate_hints and hint is not None and 0 <= hint < num_levels:
        return hint
    return settings.rate_level
