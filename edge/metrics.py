"""Prometheus metrics of the edge agent, in their own registry.

    source ─► on_captured ─► queue ─► encoder ─► on_encoded ─► spool ─► uplink ─► on_sent
                               │                 (fps, kbit/s,     │                on_acked
                               ▼                  level, stage s)  ▼
              on_dropped("queue_full")             on_dropped("spool_full" | "spool_age")
    uplink: on_connected / on_disconnected (reconnects); on_dropped("rejected")

The agent calls one ``on_*`` method per event; gauges that mirror a value someone
else owns (queue depth, spool size) are read at scrape time through ``watch_*``,
so they are never stale. fps and kbit/s come from a sliding window (10 s by
default, the window the bandwidth budget is judged over), also computed at scrape
time, so they fall to zero when the pipeline stalls instead of freezing.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from edge.frame_encoder import EncodedFrame

DROP_REASONS = ("queue_full", "stale", "rate_hint", "spool_full", "spool_age", "rejected")
STAGES = ("preprocess", "nn_part_1", "encode")


class RateWindow:
    """Events (one frame, n bytes) in the last ``window_s`` seconds → frames/s, bytes/s."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._started = clock()
        self._events: deque[tuple[float, int]] = deque()
        self._bytes = 0
        self._lock = threading.Lock()  # the agent adds, the scrape thread reads

    def add(self, nbytes: int) -> None:
        with self._lock:
            now = self._clock()
            self._events.append((now, nbytes))
            self._bytes += nbytes
            self._prune(now)

    def rates(self) -> tuple[float, float]:
        """(frames per second, bytes per second) over the window."""
        with self._lock:
            now = self._clock()
            self._prune(now)
            # Right after start the window is not full yet: divide by the time seen.
            span = min(self.window_s, now - self._started)
            if span <= 0:
                return 0.0, 0.0
            return len(self._events) / span, self._bytes / span

    def _prune(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            self._bytes -= self._events.popleft()[1]


@dataclass
class EdgeMetrics:
    """Every edge metric, registered in ``registry`` (not the global one: tests and
    several agents in one process each get their own)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    window_s: float = 10.0
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        r = self.registry
        self.info = Info("fchm_edge", "The agent: camera, bundle, backend", registry=r)
        self.frames_captured = Counter(
            "fchm_edge_frames_captured", "Frames read from the source", registry=r
        )
        self.frames_encoded = Counter(
            "fchm_edge_frames_encoded", "Frames encoded into a bitstream", registry=r
        )
        self.frame_types = Counter(
            "fchm_edge_frame_types", "Frames encoded by kind (key, p)", ["kind"], registry=r
        )
        self.frames_sent = Counter("fchm_edge_frames_sent", "Frames sent to the cloud", registry=r)
        self.frames_acked = Counter(
            "fchm_edge_frames_acked", "Frames the cloud acknowledged (durable)", registry=r
        )
        self.bytes_encoded = Counter(
            "fchm_edge_bytes_encoded", "Bitstream bytes produced", registry=r
        )
        self.bytes_sent = Counter("fchm_edge_bytes_sent", "Bitstream bytes sent", registry=r)
        self.bytes_acked = Counter(
            "fchm_edge_bytes_acked", "Bitstream bytes acknowledged", registry=r
        )
        self.dropped = Counter(
            "fchm_edge_dropped_frames",
            "Frames dropped, by reason: queue_full (encoder behind a live source), "
            "stale (older than max_frame_age_s before encoding), rate_hint (thinned to the "
            "cloud's max_fps), spool_full / spool_age (spool bounds), rejected (refused by "
            "the cloud)",
            ["reason"],
            registry=r,
        )
        for reason in DROP_REASONS:  # export zeros, so alerts see the series from the start
            self.dropped.labels(reason)
        self.stage_seconds = Histogram(
            "fchm_edge_stage_seconds",
            "Time per frame in each edge stage",
            ["stage"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
            registry=r,
        )
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        self.reconnects = Counter(
            "fchm_edge_reconnects", "Uplink streams re-established after a loss", registry=r
        )
        self.source_reconnects = Gauge(
            "fchm_edge_source_reconnects",
            "Times a live source delivered frames again after it dropped",
            registry=r,
        )
        self.uplink_connected = Gauge(
            "fchm_edge_uplink_connected", "1 while the uplink stream is open", registry=r
        )
        self.rate_level = Gauge(
            "fchm_edge_rate_level", "Rate level of the last encoded frame", registry=r
        )
        self.queue_depth = Gauge(
            "fchm_edge_queue_depth", "Frames waiting between capture and encode", registry=r
        )
        self.spool_bytes = Gauge(
            "fchm_edge_spool_bytes", "Bytes in the spool (not yet acknowledged)", registry=r
        )
        self.spool_frames = Gauge(
            "fchm_edge_spool_frames", "Frames in the spool (not yet acknowledged)", registry=r
        )
        self.retention_frames = Gauge(
            "fchm_edge_retention_frames", "Frames held in the retention buffer", registry=r
        )
        self.retention_bytes = Gauge(
            "fchm_edge_retention_bytes", "Bytes held in the retention buffer", registry=r
        )
        self.retention_age = Gauge(
            "fchm_edge_retention_oldest_seconds",
            "Age of the oldest frame in the retention buffer (what an enhancement can reach)",
            registry=r,
        )
        self.enhancements = Counter(
            "fchm_edge_enhancements",
            "Enhancement requests answered, by outcome (coded, unavailable)",
            ["outcome"],
            registry=r,
        )
        self.enhancement_bytes = Counter(
            "fchm_edge_enhancement_bytes", "Enhancement payload bytes coded", registry=r
        )
        self._window = RateWindow(self.window_s, self.clock)
        self.fps = Gauge(
            "fchm_edge_fps", f"Frames encoded per second, last {self.window_s:g} s", registry=r
        )
        self.kbps = Gauge(
            "fchm_edge_kbps",
            f"Bitstream kbit/s encoded (what the budget limits), last {self.window_s:g} s",
            registry=r,
        )
        self.fps.set_function(lambda: self._window.rates()[0])
        self.kbps.set_function(lambda: self._window.rates()[1] * 8 / 1000)
        self._connections = 0
        self._lock = threading.Lock()

    # ── events, one call each ────────────────────────────────────────────────
    def describe(self, camera_id: str, bundle_hash: str, backend: str) -> None:
        self.info.info({"camera": camera_id, "bundle": bundle_hash[:16], "backend": backend})

    def on_captured(self) -> None:
        self.frames_captured.inc()

    def on_encoded(self, frame: EncodedFrame) -> None:
        size = len(frame.bitstream)
        self.frames_encoded.inc()
        self.frame_types.labels("key" if frame.keyframe else "p").inc()
        self.bytes_encoded.inc(size)
        self.rate_level.set(frame.rate_level)
        self._window.add(size)
        for stage, ms in frame.stage_ms.items():
            self.stage_seconds.labels(stage).observe(ms / 1000)

    def on_sent(self, nbytes: int) -> None:
        self.frames_sent.inc()
        self.bytes_sent.inc(nbytes)

    def on_acked(self, nbytes: int) -> None:
        self.frames_acked.inc()
        self.bytes_acked.inc(nbytes)

    def on_dropped(self, reason: str, frames: int = 1) -> None:
        if reason not in DROP_REASONS:
            raise ValueError(f"drop reason {reason!r} is not one of {DROP_REASONS}")
        self.dropped.labels(reason).inc(frames)

    def on_connected(self) -> None:
        """The stream is open (Welcome received); every connection after the first
        counts as a reconnect."""
        with self._lock:
            self._connections += 1
            if self._connections > 1:
                self.reconnects.inc()
        self.uplink_connected.set(1)

    def on_disconnected(self) -> None:
        self.uplink_connected.set(0)

    # ── values owned elsewhere, read at scrape time ──────────────────────────
    def watch_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def watch_source(self, reconnects: Callable[[], float]) -> None:
        self.source_reconnects.set_function(reconnects)

    def watch_spool(self, nbytes: Callable[[], float], frames: Callable[[], float]) -> None:
        self.spool_bytes.set_function(nbytes)
        self.spool_frames.set_function(frames)

    def watch_retention(
        self, frames: Callable[[], float], nbytes: Callable[[], float], age: Callable[[], float]
    ) -> None:
        self.retention_frames.set_function(frames)
        self.retention_bytes.set_function(nbytes)
        self.retention_age.set_function(age)

    def on_enhancement(self, nbytes: int | None) -> None:
        """One request answered: ``nbytes`` coded, or None when unavailable."""
        self.enhancements.labels("unavailable" if nbytes is None else "coded").inc()
        if nbytes is not None:
            self.enhancement_bytes.inc(nbytes)


@dataclass(frozen=True)
class MetricsServer:
    """The /metrics HTTP server: ``port`` is the bound port (useful with port 0)."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def serve_metrics(metrics: EdgeMetrics, port: int, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve ``metrics`` at http://addr:port/metrics in a daemon thread.

    Loopback by default: a camera box is often on a network its owner does not
    control; bind 0.0.0.0 only where the scraper needs it.
    """
    from prometheus_client import start_http_server

    httpd, thread = start_http_server(port, addr=addr, registry=metrics.registry)
    return MetricsServer(httpd, thread)
