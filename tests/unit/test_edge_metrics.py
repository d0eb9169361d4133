"""Edge metrics, scraped for real over HTTP from serve_metrics."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.frame_encoder import EncodedFrame
from edge.metrics import EdgeMetrics, MetricsServer, RateWindow, serve_metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def served(clock: FakeClock) -> Iterator[tuple[EdgeMetrics, MetricsServer]]:
    metrics = EdgeMetrics(window_s=10.0, clock=clock)
    server = serve_metrics(metrics, 0)  # port 0: any free loopback port
    yield metrics, server
    server.close()


def scrape(server: MetricsServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics → {(sample name, sorted labels): value}."""
    url = f"http://127.0.0.1:{server.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def encoded(level: int, nbytes: int) -> EncodedFrame:
    stage_ms = {"preprocess": 2.0, "nn_part_1": 30.0, "encode": 8.0}
    return EncodedFrame(0, 0, level, b"x" * nbytes, stage_ms)


def test_scraped_counters_gauges_and_histograms(
    served: tuple[EdgeMetrics, MetricsServer], clock: FakeClock
) -> None:
    metrics, server = served
    metrics.describe("gate-1", "ab" * 32, "onnxruntime-cpu")
    queue = [1, 2, 3]
    spool = {"bytes": 12_345, "frames": 7}
    metrics.watch_queue(lambda: len(queue))
    metrics.watch_spool(lambda: spool["bytes"], lambda: spool["frames"])

    # 20 frames of 1250 bytes over 5 s: 4 fps, 5000 B/s = 40 kbit/s.
    for _ in range(20):
        metrics.on_captured()
        clock.now += 0.25
        metrics.on_encoded(encoded(level=3, nbytes=1250))
        metrics.on_sent(1250)
    for _ in range(18):
        metrics.on_acked(1250)
    metrics.on_dropped("queue_full", 2)
    metrics.on_dropped("spool_age")
    metrics.on_connected()
    metrics.on_disconnected()
    metrics.on_connected()

    got = scrape(server)
    assert got[("fchm_edge_frames_captured_total", ())] == 20
    assert got[("fchm_edge_frames_encoded_total", ())] == 20
    assert got[("fchm_edge_frame_types_total", (("kind", "key"),))] == 20  # keyframes by default
    assert got[("fchm_edge_frames_sent_total", ())] == 20
    assert got[("fchm_edge_frames_acked_total", ())] == 18
    assert got[("fchm_edge_bytes_acked_total", ())] == 18 * 1250
    assert got[("fchm_edge_fps", ())] == pytest.approx(4.0)
    assert got[("fchm_edge_kbps", ())] == pytest.approx(40.0)
    assert got[("fchm_edge_rate_level", ())] == 3
    assert got[("fchm_edge_queue_depth", ())] == 3
    assert got[("fchm_edge_spool_bytes", ())] == 12_345
    assert got[("fchm_edge_spool_frames", ())] == 7
    assert got[("fchm_edge_dropped_frames_total", (("reason", "queue_full"),))] == 2
    assert got[("fchm_edge_dropped_frames_total", (("reason", "spool_age"),))] == 1
    # Reasons never seen are exported as zeros, so an alert rule sees the series.
    assert got[("fchm_edge_dropped_frames_total", (("reason", "spool_full"),))] == 0
    assert got[("fchm_edge_dropped_frames_total", (("reason", "rejected"),))] == 0
    assert got[("fchm_edge_reconnects_total", ())] == 1
    assert got[("fchm_edge_uplink_connected", ())] == 1
    nn = (("stage", "nn_part_1"),)
    assert got[("fchm_edge_stage_seconds_count", nn)] == 20
    assert got[("fchm_edge_stage_seconds_sum", nn)] == pytest.approx(20 * 0.030)
    assert got[("fchm_edge_stage_seconds_bucket", (("le", "0.05"), *nn))] == 20
    assert got[("fchm_edge_stage_seconds_bucket", (("le", "0.02"), *nn))] == 0
    info = [k for k in got if k[0] == "fchm_edge_info"]
    assert dict(info[0][1])["camera"] == "gate-1"

    # Values owned elsewhere are read at scrape time: no update call needed.
    queue.clear()
    spool["bytes"] = 0
    # A stalled pipeline reads as 0 fps once the window has passed, not as the last rate.
    clock.now += 10.0
    got = scrape(server)
    assert got[("fchm_edge_queue_depth", ())] == 0
    assert got[("fchm_edge_spool_bytes", ())] == 0
    assert got[("fchm_edge_fps", ())] == 0
    assert got[("fchm_edge_kbps", ())] == 0


def test_unknown_drop_reason_is_an_error() -> None:
    with pytest.raises(ValueError, match="drop reason 'lost'"):
        EdgeMetrics().on_dropped("lost")


def test_rate_window_slides(clock: FakeClock) -> None:
    window = RateWindow(10.0, clock)
    assert window.rates() == (0.0, 0.0)
    for _ in range(2):  # 10 frames/s of 100 bytes, for 2 s
        for _ in range(10):
            window.add(100)
        clock.now += 1.0
    # Before the window is full, rates are over the time seen (2 s), not 10 s.
    assert window.rates() == pytest.approx((10.0, 1000.0))
    clock.now += 8.5  # only the second second's frames are still inside the window
    assert window.rates() == pytest.approx((1.0, 100.0))


def test_two_agents_in_one_process_do_not_share_metrics() -> None:
    a, b = EdgeMetrics(), EdgeMetrics()
    a.on_captured()
    assert a.registry.get_sample_value("fchm_edge_frames_captured_total") == 1
    assert b.registry.get_sample_value("fchm_edge_frames_captured_total") == 0
