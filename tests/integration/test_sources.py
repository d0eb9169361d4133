"""Live sources against a real stream server on loopback: read, lose it, get it back.

stream_server (subprocess, HTTP MPEG-TS of demo.mp4) ──► open_source(url) ──► capture
    thread ──► FrameQueue ──► this test; the server is killed and restarted mid-stream.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.frame_queue import FrameQueue, start_capture
from edge.sources import Backoff, CapturedFrame, SourceError, SourceStats, open_source
from fchm.demo import packaged_video
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
FAST = Backoff(initial_s=0.05, max_s=0.4)


class StreamServer:
    """tests/integration/stream_server.py as a process that can be killed and restarted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/live.ts"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.stream_server", str(self.port),
             str(packaged_video())],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # SIGKILL: clients see the connection die, no goodbye
            self.process.wait(10)


@pytest.fixture
def stream_server() -> Iterator[StreamServer]:
    server = StreamServer(free_port())
    yield server
    server.kill()


def take(frames: FrameQueue, n: int, deadline_s: float) -> list[CapturedFrame]:
    got: list[CapturedFrame] = []
    deadline = time.monotonic() + deadline_s
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} frames in {deadline_s} s"
        frame = frames.get(timeout=max(0.01, deadline - time.monotonic()))
        assert frame is not None, "a live source must not end"
        got.append(frame)
    return got


def wait_until(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_stream_drops_and_the_source_reconnects(stream_server: StreamServer) -> None:
    stats, stop = SourceStats(), threading.Event()
    # The source opens before the server is up: failing to open is retried too.
    source = open_source(stream_server.url, backoff=FAST, stats=stats, stop=stop, timeout_s=3)
    frames = FrameQueue(maxsize=8, drop_oldest=True)
    capture = start_capture(source, frames)
    try:
        wait_until(lambda: stats.reconnect_attempts >= 1, 10, "a failed first open")
        stream_server.start()

        # 1. Frames of the real video arrive.
        before = take(frames, 15, deadline_s=20)
        assert all(f.image.shape == (144, 176, 3) and f.media_time_s is None for f in before)
        reconnects, attempts = stats.reconnects, stats.reconnect_attempts

        # 2. The server dies mid-stream: the source notices and starts reconnecting.
        stream_server.kill()
        wait_until(lambda: stats.reconnect_attempts > attempts, 10, "the drop to be noticed")
        time.sleep(0.3)  # a few refused reconnects while the server is down
        while len(frames):  # what was captured before the drop
            frames.get(timeout=0.1)

        # 3. The server comes back: frames flow again, indices keep counting.
        stream_server.start()
        after = take(frames, 15, deadline_s=20)
        assert stats.reconnects > reconnects
        assert stats.reconnect_attempts >= attempts + 2
        assert after[0].index > before[-1].index
        assert [f.index for f in after] == sorted(f.index for f in after)
    finally:
        stop.set()
        frames.close()
        capture.join(10)
    assert not capture.is_alive()


def test_a_stream_that_never_comes_back_gives_up_after_max_attempts() -> None:
    stats = SourceStats()
    url = f"http://127.0.0.1:{free_port()}/live.ts"  # nobody listens: connection refused
    started = time.monotonic()
    with pytest.raises(SourceError, match="did not come back after 3 attempts"):
        list(open_source(url, backoff=FAST, stats=stats, max_attempts=3, timeout_s=2))
    assert stats.reconnect_attempts == 3
    assert time.monotonic() - started < 10


def test_a_silent_server_raises_instead_of_hanging() -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/live.ts"
        started = time.monotonic()
        with pytest.raises(SourceError, match="cannot open video source"):
            next(open_source(url, reconnect=False, timeout_s=1.0))
        assert time.monotonic() - started < 5


def test_files_end_and_are_not_reopened() -> None:
    stats = SourceStats()
    frames = list(open_source(str(packaged_video()), max_fps=4, stats=stats))
    # 60.04 s of 24 fps video on a 4 fps schedule: one frame per 0.25 s, none reopened.
    assert len(frames) == 241
    assert stats.frames == 241 and stats.skipped == 1441 - 241
    assert stats.reconnect_attempts == 0
    assert [f.index for f in frames[:3]] == [0, 6, 12]


def test_file_source_through_the_queue_loses_nothing() -> None:
    source = open_source(str(packaged_video()), max_frames=40)
    frames = FrameQueue(maxsize=2, drop_oldest=False)
    capture = start_capture(source, frames)
    got = []
    for frame in frames:
        got.append(frame.index)
        time.sleep(0.002)  # a slower encoder: capture has to wait, nothing is dropped
    assert got == list(range(40))
    assert frames.dropped == 0
    capture.join(5)
    assert not capture.is_alive()
