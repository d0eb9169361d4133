"""One received frame → stored frame + detections (what an Ack promises).

    bitstream ─► stored? ──same CRC──► StoredFrame(duplicate=True)
                   │    └──other CRC──► SequenceReused (never acked)
                   │ no
                   ▼
               FrameDecoder (decode; a P-frame against LatentReferences' latent)
                   ─► DetectorTail (nn_part_2) ─► FrameStore (store) ─► remembered as
                      the camera's next reference

The early look saves a replay its decode; it is only a shortcut: another ingest may
store the same sequence while this one decodes, and ``FrameStore.store_frame`` makes
the same decision again, atomically, in the transaction of its insert.

Blocking work (ORT, SQLite, fsync): the servicer calls ``ingest`` in a thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cloud.detector_tail import Detection
from cloud.frame_decoder import FrameDecoder, InvalidFrame
from cloud.latent_references import LatentReferences
from cloud.metrics import CloudMetrics
from cloud.store.frame_store import FrameStore, SequenceReused
from cloud.store.records import FrameRecord, StoredFrame
from codec.bitstream import stored_checksum
from codec.geometry import Letterbox

__all__ = ["FrameIngest", "ReceivedFrame", "SequenceReused", "check_ranges"]


@dataclass(frozen=True)
class ReceivedFrame:
    camera_id: str
    sequence: int
    capture_time_ns: int
    """edge clock"""
    rate_level: int
    bitstream: bytes


INT64_MAX = 2**63 - 1


def check_ranges(frame: ReceivedFrame, clock_offset_ns: int) -> None:
    """The database stores signed 64-bit integers: refuse what does not fit, by name."""
    if frame.sequence > INT64_MAX:
        raise InvalidFrame(f"sequence {frame.sequence} exceeds 2**63-1")
    if not -INT64_MAX <= frame.capture_time_ns + clock_offset_ns <= INT64_MAX:
        raise InvalidFrame(f"capture_time_ns {frame.capture_time_ns} is out of range")


class FrameIngest:
    def __init__(
        self,
        decoder: FrameDecoder,
        tail: Callable[[np.ndarray, Letterbox], list[Detection]],
        store: FrameStore,
        metrics: CloudMetrics,
    ) -> None:
        """``tail``: a DetectorTail, or a BatchedTail that batches it across cameras."""
        self.decoder, self.tail, self.store, self.metrics = decoder, tail, store, metrics
        self.references = LatentReferences(decoder, store)

    def ingest(self, frame: ReceivedFrame, clock_offset_ns: int) -> StoredFrame:
        check_ranges(frame, clock_offset_ns)
        crc = stored_checksum(frame.bitstream)
        # SequenceReused (other bytes under this sequence): the edge stops, spool intact.
        replay = self.store.replay_of(frame.camera_id, frame.sequence, crc)
        if replay is not None:
            self.metrics.duplicates.inc()
            return replay

        t0 = time.perf_counter()
        named = self.decoder.peek_reference(frame.bitstream)
        reference = self.references.reference_for(frame.camera_id, frame.sequence, named)
        decoded = self.decoder.decode(frame.bitstream, reference=reference)
        if decoded.bitstream.rate_level != frame.rate_level:
            raise InvalidFrame(
                f"rate_level {frame.rate_level} differs from the bitstream's "
                f"{decoded.bitstream.rate_level}"
            )
        t1 = time.perf_counter()
        found = self.tail(decoded.features, decoded.geometry)
        t2 = time.perf_counter()
        width, height = decoded.bitstream.image_size
        stored = self.store.store_frame(
            FrameRecord(
                camera_id=frame.camera_id,
                sequence=frame.sequence,
                capture_time_ns=frame.capture_time_ns + clock_offset_ns,
                received_time_ns=time.time_ns(),
                rate_level=frame.rate_level,
                num_bytes=len(frame.bitstream),
                crc32=crc,
                image_width=width,
                image_height=height,
            ),
            found,
            frame.bitstream,
        )
        t3 = time.perf_counter()

        self.references.remember(frame.camera_id, frame.sequence, decoded.as_reference)
        m = self.metrics
        for stage, seconds in (("decode", t1 - t0), ("nn_part_2", t2 - t1), ("store", t3 - t2)):
            m.stage_seconds.labels(stage).observe(seconds)
        if stored.duplicate:
            m.duplicates.inc()
        else:
            m.frames.labels(frame.camera_id).inc()
            m.bytes.inc(len(frame.bitstream))
            m.frame_types.labels("key" if named is None else "p").inc()
            for d in found:
                m.detections.labels(d.label).inc()
        return stored
