"""Backpressure under overload: a live camera at 1.5x what the cloud can store.

    stream_server (HTTP MPEG-TS, 1.5 x capacity fps) ─► run_agent (live) ═gRPC═► RunningCloud
        ▲ thins capture to RateHint.max_fps                     (ingest_workers=1, lag > 1 s:
        └──────────────────────────────────────────────────────── max_fps hints, lifted < 0.5 s)

The cloud's capacity is measured first, on the same machine in the same run: the
demo video as a file, sent flat out (every frame acked), stored frames per second.
Then the live camera offers 1.5x that for 25 s. Without backpressure the backlog
(in the edge's durable spool) grows by 0.5 x capacity frames every second, so the
capture → stored latency keeps climbing (measured with max_ingest_lag_s=None: p95 of
the last 10 s 6.9 s); with it, the cloud's hints hold it near ``max_ingest_lag_s``
(measured: 1.6-1.9 s). Runs ~30 s.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge.agent import AgentReport, run_agent
from edge.settings import EdgeSettings
from fchm.demo import packaged_video
from tests.conftest import RunningCloud, cloud_settings, free_port

REPO = Path(__file__).resolve().parents[2]
MAX_LAG_S = 1.0
LATENCY_BOUND_S = 4.0
"""p95 over the last 10 s: the hint engages when the *smoothed* lag passes 1 s (single
frames run ahead of the average by up to ~1 s), and the backlog then drains at a
quarter of capacity; 4 s is 3x below what the unthrottled backlog reaches by then."""


@pytest.fixture
def busy_cloud(tiny_bundle, tmp_path: Path) -> Iterator[RunningCloud]:  # type: ignore[no-untyped-def]
    settings = cloud_settings(tiny_bundle, tmp_path, ingest_workers=1, max_ingest_lag_s=MAX_LAG_S)
    running = RunningCloud(settings)
    yield running
    running.stop()


def edge(cloud: RunningCloud, tmp_path: Path, camera: str, source: str, **kw) -> EdgeSettings:  # type: ignore[no-untyped-def]
    return EdgeSettings(
        source=source,
        camera_id=camera,
        cloud=cloud.grpc_target,
        bundle=cloud.settings.bundle,
        rate_level=6,
        threads=1,
        spool_dir=tmp_path / "spool",
        flush_stall_s=20,
        progress_interval_s=2,
        **kw,
    )


def stored_frames(cloud: RunningCloud, camera: str) -> list[dict]:  # type: ignore[type-arg]
    items: list[dict] = []  # type: ignore[type-arg]
    cursor = None
    with cloud.api() as api:
        while True:
            params = {"camera": camera, "limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = api.get("/v1/frames", params=params).json()
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items


def metric(cloud: RunningCloud, name: str) -> float:
    with cloud.api() as api:
        text = api.get("/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def live_camera(fps: float) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.stream_server", str(port),
         str(packaged_video()), "--fps", f"{fps:.1f}"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process, f"http://127.0.0.1:{port}/live.ts"


def test_overload_is_pushed_back_and_nothing_acked_is_lost(
    busy_cloud: RunningCloud, tmp_path: Path
) -> None:
    # 1. Capacity: a file sent flat out; the cloud's stored rate is what it can do.
    probe = run_agent(edge(busy_cloud, tmp_path, "probe", str(packaged_video()), max_frames=150))
    assert probe.acked == probe.frames == 150 and probe.spooled_left == 0
    received = sorted(f["received_time_ns"] for f in stored_frames(busy_cloud, "probe"))
    capacity = (len(received) - 1) / ((received[-1] - received[0]) / 1e9)
    print(f"capacity {capacity:.1f} frames/s")

    # 2. A live camera offering 1.5x that for 25 s.
    process, url = live_camera(1.5 * capacity)
    try:
        stop = threading.Event()
        result: list[AgentReport] = []
        settings = edge(busy_cloud, tmp_path, "live", url, queue_frames=64)
        runner = threading.Thread(target=lambda: result.append(run_agent(settings, stop)))
        started = time.time_ns()
        runner.start()
        time.sleep(25)
        stop.set()
        runner.join(60)
    finally:
        process.kill()
        process.wait(10)
    assert result, "the agent did not finish its flush"
    report = result[0]

    # 3. Every frame the edge spooled was acked and is in the store, once.
    frames = stored_frames(busy_cloud, "live")
    assert report.spooled_left == 0
    assert report.acked == report.frames == len(frames) == len({f["sequence"] for f in frames})
    # 4. The cloud pushed back and the edge thinned capture.
    assert metric(busy_cloud, 'fchm_rate_hints_total{kind="backpressure"}') >= 1
    assert report.dropped.get("rate_hint", 0) > 0, report.dropped
    # 5. Latency stayed bounded: p95 over the last 10 s of capture.
    late = [
        (f["received_time_ns"] - f["time_ns"]) / 1e9
        for f in frames
        if f["time_ns"] > started + 15 * 10**9
    ]
    p95 = float(np.percentile(late, 95))
    print(f"p95 latency {p95:.2f} s, stored {len(frames)}, dropped {report.dropped}")
    assert p95 < LATENCY_BOUND_S, f"p95 latency {p95:.2f} s over the last 10 s"


def test_stale_live_frames_are_dropped_before_encoding(cloud: RunningCloud, tmp_path: Path) -> None:
    process, url = live_camera(25)
    try:
        # Every frame is older than a microsecond by the time the encoder reaches it.
        settings = edge(cloud, tmp_path, "stale", url, max_frame_age_s=1e-6, max_frames=20)
        report = run_agent(settings)
    finally:
        process.kill()
        process.wait(10)
    assert report.captured == 20
    assert report.dropped == {"stale": 20}
    assert report.frames == report.acked == 0 and report.spooled_left == 0
