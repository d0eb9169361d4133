"""FrameQueue: drop-oldest for live sources, lossless blocking for files, close and errors."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from edge.frame_queue import FrameQueue, start_capture
from edge.sources import CapturedFrame, SourceError


def frame(index: int) -> CapturedFrame:
    return CapturedFrame(index, time.time_ns(), np.full((4, 6, 3), index % 256, np.uint8))


def test_live_queue_never_blocks_and_drops_the_oldest() -> None:
    frames = FrameQueue(maxsize=3, drop_oldest=True)
    for i in range(10):
        assert frames.put(frame(i))  # returns at once even though nobody reads
    assert frames.dropped == 7
    assert len(frames) == 3
    frames.close()
    # The newest frames survive, in order: the encoder works on what is current.
    assert [f.index for f in frames] == [7, 8, 9]


def test_file_queue_blocks_and_loses_nothing() -> None:
    frames = FrameQueue(maxsize=2, drop_oldest=False)
    produced: list[int] = []

    def produce() -> None:
        for i in range(50):
            frames.put(frame(i))
            produced.append(i)
        frames.close()

    producer = threading.Thread(target=produce)
    producer.start()
    deadline = time.monotonic() + 5
    while len(produced) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # time enough to overrun the queue, if put did not block
    assert len(produced) == 2, "the producer must wait while the queue is full"
    got = [f.index for f in frames]
    producer.join(5)
    assert got == list(range(50))
    assert frames.dropped == 0


def test_get_times_out_then_drains_after_close() -> None:
    frames = FrameQueue(maxsize=4, drop_oldest=True)
    with pytest.raises(queue.Empty):
        frames.get(timeout=0.05)
    frames.put(frame(0))
    frames.put(frame(1))
    frames.close()
    assert not frames.put(frame(2)), "a closed queue takes no more frames"
    assert [frames.get(timeout=1).index, frames.get(timeout=1).index] == [0, 1]  # type: ignore[union-attr]
    assert frames.get(timeout=1) is None  # the end, every time it is asked
    assert frames.get() is None


def test_close_wakes_a_blocked_consumer() -> None:
    frames = FrameQueue(maxsize=1, drop_oldest=True)
    threading.Timer(0.05, frames.close).start()
    assert frames.get(timeout=5) is None


def test_a_source_error_reaches_the_consumer_after_the_frames_before_it() -> None:
    def failing_source() -> Iterator[CapturedFrame]:
        yield frame(0)
        yield frame(1)
        raise SourceError("camera unplugged")

    frames = FrameQueue(maxsize=8, drop_oldest=False)
    capture = start_capture(failing_source(), frames)
    got = []
    with pytest.raises(SourceError, match="camera unplugged"):
        for f in frames:
            got.append(f.index)
    assert got == [0, 1]
    capture.join(5)
    assert not capture.is_alive()


def test_capture_stops_and_closes_the_source_when_the_consumer_closes_the_queue() -> None:
    closed = threading.Event()

    def endless_source() -> Iterator[CapturedFrame]:
        try:
            i = 0
            while True:
                yield frame(i)
                i += 1
        finally:
            closed.set()

    frames = FrameQueue(maxsize=2, drop_oldest=False)
    capture = start_capture(endless_source(), frames)
    assert frames.get(timeout=5) is not None
    frames.close()  # the encoder side gives up (shutdown)
    capture.join(5)
    assert not capture.is_alive()
    assert closed.is_set(), "the source (stream, camera) must be released"


def test_queue_size_is_checked() -> None:
    with pytest.raises(ValueError, match="queue_frames"):
        FrameQueue(maxsize=0, drop_oldest=True)
