"""The edge agent: frames in, bitstreams out, nothing lost on the way.

    capture thread ─► FrameQueue ─► rate controller ─► FrameEncoder ─► Spool (durable)
    (source, reconnects)  (bounded; live: drop        (budget, cloud    (letterbox ─►     │
                           oldest, files: block)        hints, activity,  encoder ─► code,  │
                                                        key or P)         key or P-frame)   ▼
                                                                         Uplink thread ═gRPC═► cloud
                                                                         (replay oldest first,
                                                                          reconnect with backoff)
    each spooled frame's pixels ─► FrameRetention (minutes, on disk) ◄─ EnhancementCoder ◄─
        EnhancementRequest from the cloud; its answer is spooled and sent like a frame

Live sources stay current under load: a frame older than ``max_frame_age_s`` when
the encoder reaches it is dropped before encoding ("stale"), and the cloud's
backpressure hint (RateHint.max_fps) thins capture ("rate_hint"). A frame that was
encoded is spooled, and a spooled frame is never dropped for being late.

``run_agent`` reads top to bottom. It returns when the source ends (or ``stop`` is
set) and the spool has drained: it waits as long as the cloud keeps acking, up to
``flush_timeout_s`` if set, and gives up after ``flush_stall_s`` without an ack (or
when ``give_up`` is set). Frames still in the spool then are sent by the next run.
Progress (captured, encoded, acked, spooled) is logged every ``progress_interval_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from codec.bundle import Bundle
from edge.backoff import Backoff
from edge.channel import call_metadata, channel_credentials, open_channel
from edge.enhancements import EnhancementCoder, EnhancementListener
from edge.frame_encoder import FrameEncoder
from edge.frame_queue import FrameQueue, start_capture
from edge.frame_retention import FrameRetention
from edge.metrics import EdgeMetrics, MetricsServer, serve_metrics
from edge.rate_control import ActivityMeter, FpsCap, make_rate_controller
from edge.settings import EdgeSettings
from edge.sources import CapturedFrame, SourceStats, is_live, open_source
from edge.spool import Spool
from edge.uplink import Session, Uplink

log = logging.getLogger(__name__)


@dataclass
class AgentReport:
    camera_id: str
    captured: int = 0
    """frames read from the source by this run"""
    frames: int = 0
    """frames encoded and spooled by this run"""
    bytes_encoded: int = 0
    acked: int = 0
    duplicates: int = 0
    detections: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    resumed_after: int | None = None
    """source index this run resumed after (a recorded source spooled earlier)"""
    spooled_left: int = 0
    """frames still waiting in the spool at exit (sent by the next run)"""
    elapsed_s: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    """mean milliseconds per frame in each edge stage"""

    @property
    def bytes_per_frame(self) -> float:
        return self.bytes_encoded / max(self.frames, 1)


class _Listener(EnhancementListener):
    def __init__(self, metrics: EdgeMetrics, enhancements: EnhancementCoder) -> None:
        super().__init__(enhancements)
        self.metrics = metrics

    def on_connected(self, session: Session) -> None:
        self.metrics.on_connected()

    def on_disconnected(self, error: Exception | None) -> None:
        self.metrics.on_disconnected()

    def on_sent(self, sequence: int, nbytes: int) -> None:
        self.metrics.on_sent(nbytes)

    def on_acked(self, sequence: int, nbytes: int, duplicate: bool) -> None:
        self.metrics.on_acked(nbytes)


def run_agent(
    settings: EdgeSettings,
    stop: threading.Event | None = None,
    give_up: threading.Event | None = None,
) -> AgentReport:
    stop = stop or threading.Event()
    report = AgentReport(settings.camera_id)

    # 1. Bundle, encoder and credentials first: a bad bundle, backend or TLS file fails
    #    here, with the setting named, before anything runs.
    channel_credentials(settings)
    source_stop = threading.Event()
    source_stats = SourceStats()
    frames = open_source(  # a bad source string fails here, before anything starts
        settings.source,
        settings.max_fps,
        reconnect=settings.reconnect_source,
        stats=source_stats,
        stop=source_stop,
    )
    bundle = Bundle.load(settings.bundle)
    encoder = FrameEncoder(
        bundle,
        settings.backend,
        settings.threads,
        engine_cache=settings.engine_cache,
        keyframe_interval=settings.keyframe_interval,
        skip_threshold=settings.skip_threshold,
    )
    check_inputs(settings, encoder)
    metrics = EdgeMetrics()
    metrics.describe(settings.camera_id, bundle.hash, settings.backend)
    server: MetricsServer | None = None
    if settings.metrics_port is not None:
        server = serve_metrics(metrics, settings.metrics_port, settings.metrics_host)

    # 2. The durable spool (one per camera) and the uplink that drains it.
    def dropped(reason: str, frames: int) -> None:
        report.dropped[reason] = report.dropped.get(reason, 0) + frames
        metrics.on_dropped(reason, frames)

    spool = Spool(
        settings.spool_dir / settings.camera_id,
        int(settings.spool_max_mb * 1e6),
        settings.spool_max_age_s,
        on_drop=dropped,
    )
    # The retention buffer keeps each frame's pixels for a while: a view may ask for them.
    retention = FrameRetention(
        settings.retention_dir or settings.spool_dir / settings.camera_id / "retention",
        settings.retention_s,
        int(settings.retention_max_mb * 1e6),
        max_side=encoder.input_size,
    )
    metrics.watch_retention(
        lambda: retention.frames, lambda: retention.size_bytes, retention.oldest_age_s
    )
    enhancements = EnhancementCoder(retention, spool, metrics)
    uplink = Uplink(
        spool,
        settings.camera_id,
        bundle.hash,
        channel_factory=lambda: open_channel(settings),
        metadata=call_metadata(settings),
        max_in_flight=settings.max_in_flight,
        connect_timeout_s=settings.grpc_timeout_s,
        backoff=Backoff(settings.backoff_initial_s, settings.backoff_max_s),
        listener=_Listener(metrics, enhancements),
    )
    metrics.watch_spool(lambda: spool.size_bytes, lambda: spool.frames)
    uplink.start()

    # 3. Capture on its own thread into a bounded queue.
    live = is_live(settings.source)
    resume = None if live else spool.resume_position(settings.source)
    if resume is not None:
        log.info("resuming %s after frame %d (already spooled)", settings.source, resume)
        report.resumed_after = resume
    metrics.watch_source(lambda: source_stats.reconnects)
    queue = FrameQueue(settings.queue_frames, drop_oldest=live)
    metrics.watch_queue(lambda: len(queue))
    start_capture(_after(frames, resume, settings.max_frames), queue)
    done = threading.Event()

    def on_stop() -> None:
        # A stop must end the run even while a live source is down and no frame comes.
        while not stop.wait(0.2):
            if done.is_set():
                return
        source_stop.set()
        queue.close()

    threading.Thread(target=on_stop, name="stop-watch", daemon=True).start()
    if settings.progress_interval_s > 0:
        threading.Thread(
            target=_log_progress,
            args=(report, uplink, spool, done, settings.progress_interval_s),
            name="progress",
            daemon=True,
        ).start()

    # 4. Encode loop: rate level per frame, encode, spool (durable), account.
    rate = make_rate_controller(settings, encoder.codec, fps_hint=settings.max_fps)
    fps_cap = FpsCap()
    activity = ActivityMeter()
    totals: dict[str, float] = {}
    queue_drops = 0
    started = time.perf_counter()
    try:
        for frame in queue:
            if stop.is_set() or uplink.fatal is not None:
                break
            metrics.on_captured()
            report.captured += 1
            if queue.dropped > queue_drops:
                dropped("queue_full", queue.dropped - queue_drops)
                queue_drops = queue.dropped
            if live and _stale(frame, settings.max_frame_age_s):
                dropped("stale", 1)  # before encoding: nothing durable is lost
                continue
            if live and not fps_cap.keep(frame.capture_time_ns / 1e9, uplink.max_fps_hint):
                dropped("rate_hint", 1)
                continue
            now_s = _clock(frame)
            rate.set_hint(uplink.rate_hint)
            rate.charge(enhancements.take_coded_bytes())
            # A refused frame breaks the chain of P-frames after it: start a new one.
            forced = uplink.take_keyframe_request()
            keyframe = forced or encoder.next_is_keyframe()
            level = rate.choose(now_s, activity(frame.image), keyframe=keyframe)
            encoded = encoder.encode(frame, level, keyframe=forced)
            sequence = spool.append(
                frame.capture_time_ns,
                level,
                encoded.bitstream,
                source=None if live else settings.source,
                source_index=frame.index,
            )
            retention.keep(sequence, frame.image)
            rate.record(now_s, level, len(encoded.bitstream), keyframe=encoded.keyframe)
            metrics.on_encoded(encoded)
            report.frames += 1
            report.bytes_encoded += len(encoded.bitstream)
            for stage, ms in encoded.stage_ms.items():
                totals[stage] = totals.get(stage, 0.0) + ms
    finally:
        # 5. Shut down in order: stop capture, flush the spool, close the stream.
        queue.close()
        source_stop.set()
        if spool.frames and uplink.fatal is None:
            log.info("capture ended; waiting for the cloud to ack %d spooled frames", spool.frames)
        drained = uplink.stop(
            settings.flush_timeout_s if uplink.fatal is None else 0,
            stall_s=settings.flush_stall_s,
            give_up=give_up,
        )
        done.set()
        if settings.progress_interval_s > 0:
            # A run shorter than one interval still shows where it ended.
            _progress_line(report, uplink, spool, live=False)
        report.elapsed_s = time.perf_counter() - started
        report.acked, report.duplicates = uplink.stats.acked, uplink.stats.duplicates
        report.detections = uplink.stats.detections
        report.spooled_left = spool.frames
        report.stage_ms = {k: v / max(report.frames, 1) for k, v in totals.items()}
        enhancements.close()
        spool.close()
        if server is not None:
            server.close()
    if uplink.fatal is not None:
        raise uplink.fatal
    if not drained:
        log.warning("%d frames stay in the spool; the next run sends them", report.spooled_left)
    return report


def check_inputs(settings: EdgeSettings, encoder: FrameEncoder) -> None:
    if settings.rate_level >= encoder.num_levels:
        raise ValueError(
            f"rate_level {settings.rate_level} outside 0..{encoder.num_levels - 1} for this bundle"
        )


def _after(
    frames: Iterator[CapturedFrame], resume: int | None, max_frames: int | None
) -> Iterator[CapturedFrame]:
    """Skip what an earlier run already spooled; cap this run at ``max_frames``.

    The cap is counted after the skip, so it applies to this run's new frames; it
    stops right after the last one rather than waiting on a live source for another.
    """
    produced = 0
    for frame in frames:
        if resume is not None and frame.index <= resume:
            continue
        yield frame
        produced += 1
        if max_frames is not None and produced >= max_frames:
            return


def _stale(frame: CapturedFrame, max_age_s: float | None) -> bool:
    return max_age_s is not None and time.time_ns() - frame.capture_time_ns > max_age_s * 1e9


def _log_progress(
    report: AgentReport, uplink: Uplink, spool: Spool, done: threading.Event, every_s: float
) -> None:
    while not done.wait(every_s):
        _progress_line(report, uplink, spool, live=True)


def _progress_line(report: AgentReport, uplink: Uplink, spool: Spool, *, live: bool) -> None:
    dropped = sum(report.dropped.values())
    log.info(
        "camera %s: %d captured, %d encoded, %d acked, %d spooled, %d dropped%s",
        report.camera_id, report.captured, report.frames, uplink.stats.acked, spool.frames,
        dropped, " (cloud not connected)" if live and not uplink.connected else "",
    )  # fmt: skip


def _clock(frame: CapturedFrame) -> float:
    # Recorded files run faster than real time: budget them on their own timeline.
    return frame.media_time_s if frame.media_time_s is not None else frame.capture_time_ns / 1e9
