"""Enhancements on the ingest side: requests down the camera's stream, answers into the store.

    store: requests "requested" ─► poll (every enhancement_poll_s, while streams are open)
        ─► the camera has a live stream here, not sent on it yet? ─► lease.send(Request)
    edge's Enhancement ─► receive(): checked (known request of this camera, same frame,
        within budget, a still AVIF/WebP) ─► store.enhancements.answer ─► EnhancementAck

Polled (by the servicer's upkeep task, while streams are open), not pushed: the request
is written by whichever process served POST /v1/views, and the camera's stream may be held
by any ingest replica. A request is sent again on
every new stream of its camera until answered (``sent_ns`` older than the stream), so a
link cut or a cloud restart between request and answer loses nothing; the edge answers a
repeated request once (edge/enhancements.py), and a repeated answer is acked as a
duplicate. A refused answer is acked with its error and does not end the stream: the
frames on it are worth more than one bad enhancement.
"""

from __future__ import annotations

import asyncio
import logging
import time

from cloud.camera_streams import CameraStreams
from cloud.metrics import CloudMetrics
from cloud.store.frame_store import FrameStore
from codec.enhancement import EnhancementError, decode_enhancement
from fchm.v1 import ingest_pb2

log = logging.getLogger(__name__)


class EnhancementDispatch:
    def __init__(self, store: FrameStore, streams: CameraStreams, metrics: CloudMetrics) -> None:
        self.store, self.streams, self.metrics = store, streams, metrics

    # ── requests down the streams ────────────────────────────────────────────
    async def dispatch_once(self) -> int:
        """Send every unanswered request whose camera streams here and was not sent on
        that stream yet; returns how many were sent."""
        if not self.streams.live:
            return 0
        pending = await asyncio.to_thread(self.store.enhancements.pending)
        sent = []
        for record in pending:
            lease = self.streams.live.get(record.camera_id)
            if lease is None or (record.sent_ns is not None and record.sent_ns >= lease.started_ns):
                continue
            lease.send(
                ingest_pb2.DownlinkMessage(
                    enhancement_request=ingest_pb2.EnhancementRequest(
                        request_id=record.id,
                        sequence=record.sequence,
                        byte_budget=record.byte_budget,
                    )
                )
            )
            sent.append(record.id)
        if sent:
            await asyncio.to_thread(self.store.enhancements.mark_sent, sent, time.time_ns())
            self.metrics.enhancements.labels("sent").inc(len(sent))
            log.info("sent %d enhancement requests down their streams", len(sent))
        return len(sent)

    # ── answers up ───────────────────────────────────────────────────────────
    def receive(self, camera_id: str, answer: ingest_pb2.Enhancement) -> ingest_pb2.DownlinkMessage:
        """Check and store one answer (on a worker thread); the ack for the edge."""
        duplicate, error = False, ""
        try:
            duplicate = self._store(camera_id, answer)
        except EnhancementError as exc:
            error = str(exc)
            log.warning("camera %s: enhancement %s refused: %s", camera_id,
                        answer.request_id[:64], error)  # fmt: skip
            self.metrics.enhancements.labels("refused").inc()
        return ingest_pb2.DownlinkMessage(
            enhancement_ack=ingest_pb2.EnhancementAck(
                request_id=answer.request_id, duplicate=duplicate, error=error
            )
        )

    def _store(self, camera_id: str, answer: ingest_pb2.Enhancement) -> bool:
        record = self.store.enhancements.get(answer.request_id[:64])
        if record is None or record.camera_id != camera_id:
            raise EnhancementError(
                f"no enhancement request {answer.request_id[:64]!r} for camera {camera_id}"
            )
        if answer.sequence != record.sequence:
            raise EnhancementError(
                f"enhancement {record.id} is of frame {record.sequence}, not {answer.sequence}"
            )
        if record.status == "stored":
            self.metrics.enhancements.labels("duplicate").inc()
            return True
        if not answer.unavailable:
            if not answer.payload:
                raise EnhancementError(f"enhancement {record.id}: empty payload, and no reason")
            if len(answer.payload) > record.byte_budget:
                raise EnhancementError(
                    f"enhancement {record.id}: {len(answer.payload)} B over its budget of "
                    f"{record.byte_budget} B"
                )
            decode_enhancement(answer.payload)  # EnhancementError, naming what is wrong
        stored = self.store.enhancements.answer(
            record, bytes(answer.payload), answer.unavailable, time.time_ns()
        )
        if not stored:
            self.metrics.enhancements.labels("duplicate").inc()
            return True
        if answer.unavailable:
            self.metrics.enhancements.labels("unavailable").inc()
        else:
            self.metrics.enhancements.labels("stored").inc()
            self.metrics.enhancement_bytes.inc(len(answer.payload))
        log.info("camera %s: enhancement of frame %d stored (%s)", camera_id, record.sequence,
                 answer.unavailable or f"{len(answer.payload)} B")  # fmt: skip
        return False
