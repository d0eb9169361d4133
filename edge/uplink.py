"""The edge's uplink: one gRPC stream to the cloud's Ingest service.

    send(frame) ─► outbox ─► request iterator (Hello, Frame, Frame, …) ─► cloud
    reader thread ◄─ Welcome, Ack, RateHint ◄───────────────────────────┘

At most ``max_in_flight`` frames are unacknowledged; ``send`` blocks beyond that,
which is the backpressure that keeps a slow link from growing memory. A frame
leaves ``pending`` only when the cloud acks it (the ack means durable).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from edge.frame_encoder import EncodedFrame
from fchm.v1 import ingest_pb2, ingest_pb2_grpc

log = logging.getLogger(__name__)

AGENT_VERSION = "fchm-edge/0.1"


class UplinkError(RuntimeError):
    """The cloud ended the stream; ``code`` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class Session:
    next_sequence: int
    clock_offset_ns: int
    num_rate_levels: int


class Uplink:
    def __init__(
        self,
        target: str,
        camera_id: str,
        bundle_hash: str,
        max_in_flight: int = 32,
        timeout_s: float = 30.0,
        max_message_bytes: int = 8 << 20,
    ) -> None:
        self.target, self.camera_id, self.bundle_hash = target, camera_id, bundle_hash
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", max_message_bytes)]
        )
        self._outbox: queue.Queue[ingest_pb2.UplinkMessage | None] = queue.Queue()
        self._window = threading.Semaphore(max_in_flight)
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}  # sequence → bytes
        self._drained = threading.Condition(self._lock)
        self._error: UplinkError | None = None
        self._reader: threading.Thread | None = None
        self.rate_hint: int | None = None
        self.acked = 0
        self.duplicates = 0
        self.bytes_acked = 0
        self.detections = 0

    # ── lifecycle ────────────────────────────────────────────────────────────
    def open(self) -> Session:
        stub = ingest_pb2_grpc.IngestStub(self._channel)
        try:
            grpc.channel_ready_future(self._channel).result(timeout=self.timeout_s)
        except grpc.FutureTimeoutError:
            raise UplinkError(
                grpc.StatusCode.UNAVAILABLE, f"cloud {self.target} not reachable"
            ) from None
        self._call = stub.Stream(self._requests())
        try:
            first = next(iter(self._call))
        except grpc.RpcError as exc:
            raise UplinkError(exc.code(), exc.details() or "") from None
        if first.WhichOneof("kind") != "welcome":
            raise UplinkError(grpc.StatusCode.INTERNAL, "cloud did not answer Hello with Welcome")
        w = first.welcome
        self._reader = threading.Thread(target=self._read, name="uplink-acks", daemon=True)
        self._reader.start()
        return Session(w.next_sequence, w.clock_offset_ns, w.num_rate_levels)

    def close(self) -> None:
        """Wait for every pending ack, then end the stream."""
        deadline = time.monotonic() + self.timeout_s
        with self._drained:
            while self._pending and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._drained.wait(left)
            unacked = len(self._pending)
        self._outbox.put(None)
        if self._reader is not None:
            self._reader.join(self.timeout_s)
        self._channel.close()
        if self._error is not None:
            raise self._error
        if unacked:
            raise UplinkError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{unacked} frames unacknowledged at close"
            )

    # ── sending ──────────────────────────────────────────────────────────────
    def send(self, sequence: int, frame: EncodedFrame) -> None:
        while not self._window.acquire(timeout=0.5):
            self._raise_if_failed()
        self._raise_if_failed()
        with self._lock:
            self._pending[sequence] = len(frame.bitstream)
        self._outbox.put(
            ingest_pb2.UplinkMessage(
                frame=ingest_pb2.Frame(
                    sequence=sequence,
                    capture_time_ns=frame.capture_time_ns,
                    rate_level=frame.rate_level,
                    bitstream=frame.bitstream,
                )
            )
        )

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _requests(self) -> Iterator[ingest_pb2.UplinkMessage]:
        yield ingest_pb2.UplinkMessage(
            hello=ingest_pb2.Hello(
                camera_id=self.camera_id,
                bundle_hash=self.bundle_hash,
                edge_time_ns=time.time_ns(),
                agent_version=AGENT_VERSION,
            )
        )
        while (message := self._outbox.get()) is not None:
            yield message

    # ── receiving ────────────────────────────────────────────────────────────
    def _read(self) -> None:
        try:
            for message in self._call:
                kind = message.WhichOneof("kind")
                if kind == "ack":
                    self._on_ack(message.ack)
                elif kind == "rate_hint":
                    log.info(
                        "cloud rate hint: level %d (%s)",
                        message.rate_hint.rate_level,
                        message.rate_hint.reason,
                    )
                    self.rate_hint = message.rate_hint.rate_level
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self._fail(UplinkError(exc.code(), exc.details() or ""))
        finally:
            with self._drained:
                self._drained.notify_all()

    def _on_ack(self, ack: ingest_pb2.Ack) -> None:
        with self._drained:
            size = self._pending.pop(ack.sequence, None)
            if size is None:
                return
            self.acked += 1
            self.duplicates += int(ack.duplicate)
            self.bytes_acked += size
            self.detections += ack.num_detections
            if not self._pending:
                self._drained.notify_all()
        self._window.release()

    def _fail(self, error: UplinkError) -> None:
        log.error("uplink to %s failed: %s", self.target, error)
        self._error = error
        with self._drained:
            self._drained.notify_all()
