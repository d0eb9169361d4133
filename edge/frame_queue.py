"""The bounded queue between the capture thread and the encode loop.

    capture thread                      FrameQueue(maxsize)                encode loop
    source ─► put(frame) ──► [ oldest … newest ] ──► get() ─► FrameEncoder ─► uplink
                 │ full, live source: drop the OLDEST, count it (latency stays bounded)
                 │ full, file: block until the encoder catches up (nothing lost)
    end or error ─► close(error) ──► get() drains what is left, then None (or raises error)

A camera does not wait for a slow encoder: if the encoder falls behind a live
source, the frames it would reach last are the stale ones, so those are dropped
and the encoder always works on the newest frames. A file has all the time in
the world, so capture waits instead.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator

from edge.sources import CapturedFrame, close_frames

log = logging.getLogger(__name__)


class FrameQueue:
    """Thread-safe bounded FIFO of captured frames; one producer, one consumer."""

    def __init__(self, maxsize: int, drop_oldest: bool) -> None:
        if maxsize < 1:
            raise ValueError(f"queue_frames must be ≥ 1, got {maxsize}")
        self.maxsize = maxsize
        self.drop_oldest = drop_oldest
        self.dropped = 0
        """frames dropped because the queue was full (live sources only)"""
        self._frames: deque[CapturedFrame] = deque()
        self._closed = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    def __len__(self) -> int:
        """Frames waiting now (the queue-depth metric)."""
        with self._lock:
            return len(self._frames)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, frame: CapturedFrame) -> bool:
        """Add a frame; False once the queue is closed (the producer should stop).

        Live (``drop_oldest``): never blocks. File: blocks while the queue is full.
        """
        with self._lock:
            if not self.drop_oldest:
                while len(self._frames) >= self.maxsize and not self._closed:
                    self._not_full.wait()
            if self._closed:
                return False
            if len(self._frames) >= self.maxsize:
                self._frames.popleft()
                self.dropped += 1
            self._frames.append(frame)
            self._not_empty.notify()
            return True

    def get(self, timeout: float | None = None) -> CapturedFrame | None:
        """The oldest waiting frame; None at the end of the source.

        If the source failed, its error is raised here once the frames captured
        before the failure have been handed out. Raises ``queue.Empty`` when
        ``timeout`` (s) passes with no frame and no end.
        """
        with self._lock:
            if not self._not_empty.wait_for(lambda: self._frames or self._closed, timeout):
                raise queue.Empty
            if self._frames:
                frame = self._frames.popleft()
                self._not_full.notify()
                return frame
            if self._error is not None:
                raise self._error
            return None

    def close(self, error: BaseException | None = None) -> None:
        """End of the source (with its error, if it failed), or the consumer giving up.

        Frames already queued are still handed out by ``get``. Only the first
        close counts: a later one neither adds nor replaces the error.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._error = error
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def __iter__(self) -> Iterator[CapturedFrame]:
        """Frames until the end of the source (re-raising its error, if any)."""
        while (frame := self.get()) is not None:
            yield frame


def start_capture(
    frames: Iterator[CapturedFrame], frame_queue: FrameQueue, name: str = "capture"
) -> threading.Thread:
    """Pull ``frames`` into ``frame_queue`` on a daemon thread; close the queue at the end.

    A source error is kept in the queue for the consumer to re-raise. Closing the
    queue from the consumer side stops the thread at the next frame (set the
    source's ``stop`` event as well to cut a reconnect wait short).
    """

    def capture() -> None:
        error: BaseException | None = None
        try:
            for frame in frames:
                if not frame_queue.put(frame):
                    break  # the consumer closed the queue
        except BaseException as exc:  # handed to the consumer, which re-raises it
            error = exc
        finally:
            try:
                close_frames(frames)  # on this thread: the generator runs here
            except Exception:
                log.exception("closing the source failed")
            frame_queue.close(error)

    thread = threading.Thread(target=capture, name=name, daemon=True)
    thread.start()
    return thread
