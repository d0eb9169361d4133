"""Enhancement requests in, durable answers out: the edge side of an enhanced view.

    uplink reader ─► EnhancementRequest ─► EnhancementCoder (its own thread: an AVIF at a
        budget takes ~1 s, which the encode loop must not wait for)
            ─► FrameRetention.get(sequence) ─► encode_enhancement(frame, budget)
            ─► Spool.append_enhancement (durable) ─► uplink sends it, the cloud acks

Every request gets an answer, also a negative one (the frame left the retention buffer,
the budget fits nothing): the cloud's view then falls back at once instead of waiting
out its deadline. Answers are idempotent on request_id: a request repeated on a new
stream (its answer not yet stored) is not coded twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from codec.enhancement import EnhancementError, encode_enhancement
from edge.frame_retention import FrameRetention
from edge.metrics import EdgeMetrics
from edge.spool import Spool, SpooledEnhancement
from edge.uplink import UplinkListener

log = logging.getLogger(__name__)

MAX_WAITING = 64
_ANSWERED_MEMORY = 1024


@dataclass(frozen=True)
class EnhancementRequest:
    request_id: str
    sequence: int
    byte_budget: int


class EnhancementCoder:
    def __init__(
        self, retention: FrameRetention, spool: Spool, metrics: EdgeMetrics | None = None
    ) -> None:
        self.retention, self.spool, self.metrics = retention, spool, metrics
        self._waiting: queue.Queue[EnhancementRequest | None] = queue.Queue(MAX_WAITING)
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._unbilled = 0
        self._thread = threading.Thread(target=self._run, name="enhancements", daemon=True)
        self._thread.start()

    def request(self, request: EnhancementRequest) -> None:
        """Take a request from the cloud (never blocks the uplink's reader)."""
        with self._lock:
            if request.request_id in self._answered:
                return
        try:
            self._waiting.put_nowait(request)
        except queue.Full:
            self._answer(request, b"", f"the camera has {MAX_WAITING} enhancements waiting; "
                                       "request it again later")  # fmt: skip

    def take_coded_bytes(self) -> int:
        """Payload bytes coded since the last call: the encode loop charges them to the
        camera's bandwidth budget (RateController.charge)."""
        with self._lock:
            taken, self._unbilled = self._unbilled, 0
        return taken

    def close(self, timeout_s: float = 5.0) -> None:
        self._waiting.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (request := self._waiting.get()) is not None:
            try:
                self._code(request)
            except Exception:  # one bad request must not end the service of the next
                log.exception("enhancement %s of frame %d failed", request.request_id,
                              request.sequence)  # fmt: skip

    def _code(self, request: EnhancementRequest) -> None:
        if self.spool.has_enhancement(request.request_id):
            return  # answered, not yet acked: the uplink resends it
        if not self.retention.enabled:
            self._answer(request, b"", "this camera keeps no retention buffer (retention_s 0)")
            return
        image = self.retention.get(request.sequence)
        if image is None:
            self._answer(
                request,
                b"",
                f"frame {request.sequence} is no longer in the camera's retention buffer "
                f"(it reaches back {self.retention.oldest_age_s():.0f} s)",
            )
            return
        started = time.perf_counter()
        try:
            payload = encode_enhancement(image, request.byte_budget)
        except EnhancementError as exc:
            self._answer(request, b"", str(exc))
            return
        log.info(
            "enhancement of frame %d: %d B (%s q%d, %dx%d) in %.0f ms",
            request.sequence, len(payload.data), payload.codec, payload.quality, *payload.size,
            (time.perf_counter() - started) * 1000,
        )  # fmt: skip
        self._answer(request, payload.data, "")

    def _answer(self, request: EnhancementRequest, payload: bytes, unavailable: str) -> None:
        if unavailable:
            log.warning("enhancement of frame %d unavailable: %s", request.sequence, unavailable)
        stored = self.spool.append_enhancement(
            SpooledEnhancement(request.request_id, request.sequence, payload, unavailable)
        )
        with self._lock:
            self._answered[request.request_id] = None
            while len(self._answered) > _ANSWERED_MEMORY:
                self._answered.popitem(last=False)
            if stored:
                self._unbilled += len(payload)
        if stored and self.metrics is not None:
            self.metrics.on_enhancement(len(payload) if not unavailable else None)


class EnhancementListener(UplinkListener):
    """Hands the cloud's enhancement requests from the uplink to a coder (the agent's own
    listener adds its metrics on top)."""

    def __init__(self, coder: EnhancementCoder) -> None:
        self.coder = coder

    def on_enhancement_request(self, request_id: str, sequence: int, byte_budget: int) -> None:
        self.coder.request(EnhancementRequest(request_id, sequence, byte_budget))
