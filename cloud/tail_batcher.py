"""Dynamic batching of the detector tail across cameras: one ONNX Runtime call for the
frames that arrive together.

    ingest thread (camera A) ─┐                        ┌─► predictions[0] ─► NMS (thread A)
    ingest thread (camera B) ─┼─► queue ─► batcher ────┼─► predictions[1] ─► NMS (thread B)
    ingest thread (camera C) ─┘   (max_batch frames of  └─► …
                                   one latent shape, or
                                   whatever came within
                                   max_delay of the first)

Each caller still blocks until its own frame's detections are back, so nothing changes for
what an ack promises: a frame is stored after its detections, acked after it is stored.
Frames of another shape (another camera resolution) wait for the next batch, ahead of
newer arrivals. A batch that fails is run again frame by frame, so only a frame that
fails alone gets the error; the batcher goes on. ``max_batch`` 1 (the default) calls the
tail directly, with no thread.

Measured here (one run, tail.onnx of the default bundle at 640×480, 2 ORT threads, random
latents): batch 1, 138 ms a frame (7.2 frames/s); batch 2, 8.2 frames/s; 4 and 8, 8.1 and
8.2. On 2 CPU cores batching buys about 14% throughput for about one frame's extra latency;
it is meant for GPUs, where one frame leaves most of the device idle.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from cloud.detector_tail import Detection, DetectorTail
from codec.geometry import Letterbox


@dataclass
class _Request:
    features: np.ndarray
    future: Future[np.ndarray] = field(default_factory=Future)


class BatchedTail:
    """Callable like DetectorTail (features, geometry) → detections; thread-safe."""

    def __init__(
        self,
        tail: DetectorTail,
        max_batch: int = 1,
        max_delay_s: float = 0.005,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_delay_s < 0:
            raise ValueError(
                f"max_batch must be ≥ 1 and max_delay ≥ 0, got {max_batch}, {max_delay_s}"
            )
        self.tail = tail
        # A bundle whose tail takes one frame at a time is served one frame at a time.
        self.max_batch = max_batch if tail.batchable else 1
        self.max_delay_s = max_delay_s
        self.observe = observe
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._carry: deque[_Request] = deque()
        self._lock = threading.Lock()  # a request is queued before close()'s stop, or runs alone
        self._thread: threading.Thread | None = None
        if self.max_batch > 1:
            self._thread = threading.Thread(target=self._serve, name="tail-batcher", daemon=True)
            self._thread.start()

    def __call__(self, features: np.ndarray, geometry: Letterbox) -> list[Detection]:
        request = _Request(features)
        with self._lock:
            batching = self._thread is not None
            if batching:
                self._queue.put(request)
        if not batching:
            if self.observe is not None:
                self.observe(1)
            return self.tail(features, geometry)
        return self.tail.postprocess(request.future.result()[0], geometry)

    def close(self) -> None:
        """Stop the batcher thread after the frames already queued; later calls run alone."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join()

    def _serve(self) -> None:
        closing = False
        while True:
            if self._carry:
                first: _Request | None = self._carry.popleft()
            elif closing:  # close(): serve what is queued, then stop
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:
                    return
            else:
                first = self._queue.get()
            if first is None:
                closing = True
                continue
            batch, saw_close = self._gather(first)
            closing = closing or saw_close
            self._run(batch)

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """``first`` and the frames of its shape that come within max_delay of it."""
        batch = [first]
        shape = first.features.shape
        # Held-back frames of this shape first: they arrived before anything still queued.
        for held in list(self._carry):
            if len(batch) < self.max_batch and held.features.shape == shape:
                self._carry.remove(held)
                batch.append(held)
        deadline = time.monotonic() + self.max_delay_s
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:  # past the deadline, still take what is already queued
                request = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if request is None:
                return batch, True
            if request.features.shape == shape:
                batch.append(request)
            else:
                self._carry.append(request)
        return batch, False

    def _run(self, batch: list[_Request]) -> None:
        try:
            predictions = self.tail.predict(np.stack([r.features for r in batch]))
        except Exception as exc:
            if len(batch) > 1:  # one bad frame must not fail another camera's: one by one
                for request in batch:
                    self._run([request])
            else:
                batch[0].future.set_exception(exc)
            return
        if self.observe is not None:
            self.observe(len(batch))
        for i, request in enumerate(batch):
            request.future.set_result(predictions[i : i + 1])
