"""An RTSP camera, as a real RTSP server on loopback: Debian's rtsp-server-perl relays
a stream that rtsp_publisher.py records to it, and open_source reads it back.

    rtsp_publisher ──RECORD──► rtsp-server-perl ──PLAY──► open_source(rtsp://…) ──► test

That server offers RTP over UDP only, so this also exercises the source's fallback from
TCP interleaving to UDP. Then the server and the publisher die mid-stream, and come back.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.frame_queue import FrameQueue, start_capture
from edge.sources import Backoff, SourceStats, open_source
from fchm.demo import packaged_video
from tests.conftest import free_port
from tests.integration.test_sources import take, wait_until

REPO = Path(__file__).resolve().parents[2]
SERVER = shutil.which("rtsp-server-perl")

pytestmark = pytest.mark.skipif(
    SERVER is None, reason="rtsp-server-perl not installed (make setup installs it as root)"
)


class RtspCamera:
    """rtsp-server-perl plus a publisher: one camera that can lose power and come back."""

    def __init__(self) -> None:
        self.client_port, self.source_port = free_port(), free_port()
        self.url = f"rtsp://127.0.0.1:{self.client_port}/cam"
        self.procs: list[subprocess.Popen[str]] = []

    def start(self) -> None:
        assert SERVER is not None
        server = subprocess.Popen(
            [SERVER, "--clientport", str(self.client_port), "--serverport",
             str(self.source_port), "--client_listen_address", "127.0.0.1",
             "--source_listen_address", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.procs = [server]
        deadline = time.monotonic() + 20
        while True:  # the server needs a moment before it accepts a publisher
            publisher = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.rtsp_publisher",
                 f"rtsp://127.0.0.1:{self.source_port}/cam", str(packaged_video())],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            assert publisher.stdout is not None
            if publisher.stdout.readline().strip() == "publishing":
                self.procs.append(publisher)
                return
            publisher.wait(5)
            assert time.monotonic() < deadline, "rtsp-server-perl refused the publisher"
            time.sleep(0.2)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def camera() -> Iterator[RtspCamera]:
    cam = RtspCamera()
    yield cam
    cam.kill()


def test_rtsp_camera_is_read_and_reconnected(camera: RtspCamera) -> None:
    camera.start()
    stats, stop = SourceStats(), threading.Event()
    source = open_source(camera.url, backoff=Backoff(0.1, 0.5), stats=stats, stop=stop,
                         timeout_s=3)  # fmt: skip
    frames = FrameQueue(maxsize=8, drop_oldest=True)
    capture = start_capture(source, frames)
    try:
        before = take(frames, 10, deadline_s=30)
        assert all(f.image.shape == (144, 176, 3) for f in before)
        attempts = stats.reconnect_attempts

        camera.kill()
        wait_until(lambda: stats.reconnect_attempts > attempts, 15, "the drop to be noticed")
        while len(frames):
            frames.get(timeout=0.1)

        camera.start()
        after = take(frames, 10, deadline_s=40)
        assert stats.reconnects >= 1
        assert after[0].index > before[-1].index
    finally:
        stop.set()
        frames.close()
        capture.join(15)
