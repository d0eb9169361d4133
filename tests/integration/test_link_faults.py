"""Store-and-forward under faults, on loopback: nothing acknowledged is lost, nothing
is stored twice.

- a TCP proxy between edge and cloud cuts the link 20 times during 2000 frames;
- the cloud is SIGKILLed mid-stream and restarted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import grpc
import httpx

from codec.bundle import Bundle
from edge.backoff import Backoff
from edge.frame_encoder import FrameEncoder
from edge.sources import CapturedFrame
from edge.spool import Spool
from edge.uplink import Uplink, UplinkListener
from fchm.cloud_process import CloudProcess
from tests.conftest import RunningCloud, sample_images
from tests.tcp_proxy import TcpProxy


def bitstreams(bundle: Bundle) -> list[tuple[int, bytes]]:
    """(rate level, bitstream) pairs of real images."""
    encoder = FrameEncoder(bundle)
    images = [cv2.imread(str(p)) for p in sample_images()]
    return [(level, encoder.encode(CapturedFrame(0, 0, im), level).bitstream)
            for im in images for level in (0, 3)]  # fmt: skip


def stored_sequences(cloud: RunningCloud | CloudProcess, camera: str) -> list[int]:
    with cloud.api() as api:
        return _pages(api, camera)


def _pages(api: httpx.Client, camera: str) -> list[int]:
    sequences: list[int] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"camera": camera, "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/frames", params=params).raise_for_status().json()
        sequences += [f["sequence"] for f in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            return sequences


class Acks(UplinkListener):
    """The sequences the uplink saw acknowledged, in order."""

    def __init__(self) -> None:
        self.sequences: list[int] = []
        self.lock = threading.Lock()

    def on_acked(self, sequence: int, nbytes: int, duplicate: bool) -> None:
        with self.lock:
            self.sequences.append(sequence)


def make_uplink(spool: Spool, bundle: Bundle, port: int, camera: str,
                listener: UplinkListener | None = None) -> Uplink:  # fmt: skip
    return Uplink(
        spool, camera, bundle.hash,
        channel_factory=lambda: grpc.insecure_channel(f"127.0.0.1:{port}"),
        max_in_flight=16, connect_timeout_s=5,
        backoff=Backoff(initial_s=0.05, max_s=0.5), listener=listener,
    )  # fmt: skip


def test_twenty_link_cuts_during_2000_frames_lose_and_duplicate_nothing(
    cloud: RunningCloud, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    data = bitstreams(tiny_bundle)
    proxy = TcpProxy(cloud.server.grpc_port)
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, max_age_s=3600)
    uplink = make_uplink(spool, tiny_bundle, proxy.port, "flaky-cam")
    uplink.start()
    sent: list[int] = []

    def produce() -> None:
        for i in range(2000):
            sent.append(spool.append(time.time_ns(), *data[i % len(data)]))
            if i % 20 == 0:
                time.sleep(0.005)  # a camera, not a burst

    producer = threading.Thread(target=produce)
    producer.start()
    # Spread the cuts over the whole stream by ack progress, each on a live stream.
    for k in range(1, 21):
        deadline = time.monotonic() + 60
        while uplink.stats.acked < k * 95 or proxy.live() == 0:
            assert time.monotonic() < deadline, f"stalled before cut {k}"
            time.sleep(0.002)
        assert proxy.cut() >= 1, f"cut {k} hit no live connection"
    producer.join()
    assert uplink.stop(flush_timeout_s=240), f"{spool.frames} frames still spooled"
    proxy.close()

    assert uplink.stats.sessions >= 21, "every cut forces a reconnect"
    stored = stored_sequences(cloud, "flaky-cam")
    assert len(stored) == len(set(stored)) == 2000
    assert sorted(stored) == sent
    assert spool.frames == 0


def test_cloud_sigkill_and_restart_loses_no_acked_frame(
    tiny_bundle: Bundle, tmp_path: Path
) -> None:
    cloud = CloudProcess(tiny_bundle.path, tmp_path / "cloud")
    data = bitstreams(tiny_bundle)
    acks = Acks()
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, max_age_s=3600)
    uplink = make_uplink(spool, tiny_bundle, cloud.grpc_port, "kill-cam", acks)
    cloud.start()
    uplink.start()
    try:
        sent = [spool.append(time.time_ns(), *data[i % len(data)]) for i in range(300)]
        deadline = time.monotonic() + 60
        while len(acks.sequences) < 100 and time.monotonic() < deadline:
            time.sleep(0.005)
        cloud.kill()
        with acks.lock:
            acked_before_kill = list(acks.sequences)
        assert 100 <= len(acked_before_kill) < 300, "the kill should land mid-stream"
        cloud.start()  # same ports, same data
        assert uplink.stop(flush_timeout_s=120), f"{spool.frames} frames still spooled"
        stored = stored_sequences(cloud, "kill-cam")
    finally:
        cloud.stop()
    assert set(acked_before_kill) <= set(stored), "an acknowledged frame was lost"
    assert len(stored) == len(set(stored)) == 300
    assert sorted(stored) == sent


def test_a_frame_the_cloud_rejects_is_dropped_and_the_rest_delivered(
    cloud: RunningCloud, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    (level, good), *_ = bitstreams(tiny_bundle)
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, max_age_s=3600)
    uplink = make_uplink(spool, tiny_bundle, cloud.server.grpc_port, "picky-cam")
    uplink.start()
    sent = [spool.append(time.time_ns(), level, good) for _ in range(3)]
    bad = spool.append(time.time_ns(), level, good[:-1] + bytes([good[-1] ^ 1]))  # bad CRC
    sent += [spool.append(time.time_ns(), level, good) for _ in range(3)]
    assert uplink.stop(flush_timeout_s=60)
    assert uplink.stats.rejected == 1 and uplink.fatal is None
    assert sorted(stored_sequences(cloud, "picky-cam")) == sent
    assert bad not in sent


def test_edge_sigkill_and_restart_resumes_from_its_spool(
    cloud: RunningCloud, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "frames"
    folder.mkdir()
    images = sample_images()
    for i in range(120):
        shutil.copy(images[i % 2], folder / f"{i:04d}{images[i % 2].suffix}")
    command = [sys.executable, "-m", "fchm", "edge", "run", "--source", str(folder),
               "--camera", "restart-cam", "--cloud", cloud.grpc_target,
               "--bundle", str(tiny_bundle.path),
               "--spool-dir", str(tmp_path / "spool")]  # fmt: skip
    env = {**os.environ, "FCHM_EDGE_THREADS": "1", "FCHM_EDGE_MAX_IN_FLIGHT": "4"}

    edge = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(stored_sequences(cloud, "restart-cam")) < 30:
        assert edge.poll() is None, "the edge finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    edge.send_signal(signal.SIGKILL)
    edge.wait(10)
    before = stored_sequences(cloud, "restart-cam")
    assert 30 <= len(before) < 120

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    stored = stored_sequences(cloud, "restart-cam")
    assert len(stored) == len(set(stored)) == 120, "each image exactly once"
    assert set(before) <= set(stored)
