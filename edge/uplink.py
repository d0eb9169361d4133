"""The edge's uplink: drains the spool to the cloud, one gRPC stream at a time.

    Spool ─► request iterator: Hello, then unacked frames oldest first (≤ max_in_flight)
      ▲        and unacked enhancements (before frames: a person waits for those)
      │                                                              │ gRPC stream
      └─ ack(seq) ◄── reader: Welcome, Ack, RateHint, EnhancementAck ◄┘
                          EnhancementRequest ─► on_enhancement_request (edge/enhancements.py)

A broken stream (link cut, cloud restarted) ends the session; the next session
replays everything still in the spool, after an exponential backoff with jitter.
The cloud deduplicates on (camera, sequence), so a replay costs bytes, never data.
Statuses that retrying cannot fix (another bundle, bad credentials) stop the uplink
and leave the spool intact. A frame the cloud rejects as malformed is dropped from the
spool, counted, and logged, so that it cannot block the stream forever.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import grpc

from codec.bitstream import is_keyframe
from codec.wire import REJECTED_SEQUENCE_KEY
from edge.backoff import Backoff
from edge.spool import Spool
from fchm.v1 import ingest_pb2, ingest_pb2_grpc

log = logging.getLogger(__name__)

AGENT_VERSION = "fchm-edge/0.2"

FATAL_CODES = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


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
    connected_at: float


@dataclass
class UplinkStats:
    acked: int = 0
    duplicates: int = 0
    detections: int = 0
    bytes_acked: int = 0
    sessions: int = 0
    rejected: int = 0


class UplinkListener:
    """Hooks for metrics; the defaults do nothing."""

    def on_connected(self, session: Session) -> None: ...

    def on_disconnected(self, error: Exception | None) -> None: ...

    def on_sent(self, sequence: int, nbytes: int) -> None: ...

    def on_acked(self, sequence: int, nbytes: int, duplicate: bool) -> None: ...

    def on_enhancement_request(self, request_id: str, sequence: int, byte_budget: int) -> None:
        """The cloud asks to code frame ``sequence`` again at a budget; the default refuses
        nothing and codes nothing (an agent without a retention buffer never answers)."""


@dataclass
class _SessionState:
    closed: bool = False
    in_flight: dict[int, int] = field(default_factory=dict)  # sequence → bytes
    enhancements_in_flight: set[str] = field(default_factory=set)  # request ids


class Uplink:
    def __init__(
        self,
        spool: Spool,
        camera_id: str,
        bundle_hash: str,
        channel_factory: Callable[[], grpc.Channel],
        metadata: Sequence[tuple[str, str]] = (),
        max_in_flight: int = 32,
        connect_timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        listener: UplinkListener | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.spool, self.camera_id, self.bundle_hash = spool, camera_id, bundle_hash
        self.channel_factory, self.metadata = channel_factory, tuple(metadata)
        self.max_in_flight, self.connect_timeout_s = max_in_flight, connect_timeout_s
        self.backoff = backoff or Backoff()
        self.listener = listener or UplinkListener()
        self.clock_ns = clock_ns
        """the edge's wall clock; the cloud measures its offset from the Hello"""
        self.stats = UplinkStats()
        self.session: Session | None = None
        self.rate_hint: int | None = None
        self.max_fps_hint: float | None = None
        """the cloud's backpressure: capture at most this many frames/s (None: no limit)"""
        self.fatal: UplinkError | None = None
        self._keyframe_requested = threading.Event()
        self._stopping = threading.Event()
        self._call: grpc.RpcContext | None = None
        self._thread: threading.Thread | None = None

    def take_keyframe_request(self) -> bool:
        """Whether the next frame must be a keyframe (the cloud refused a frame, so the
        P-frames predicted from it are gone); reading it clears it."""
        if not self._keyframe_requested.is_set():
            return False
        self._keyframe_requested.clear()
        return True

    # ── lifecycle ────────────────────────────────────────────────────────────
    @property
    def connected(self) -> bool:
        return self.session is not None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout_s: float) -> Session | None:
        deadline = time.monotonic() + timeout_s
        while self.session is None and self.fatal is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.session

    def stop(
        self,
        flush_timeout_s: float | None,
        stall_s: float | None = None,
        give_up: threading.Event | None = None,
    ) -> bool:
        """Wait for the spool to drain, then end the stream.

        The wait ends after ``flush_timeout_s`` (None: no limit), after ``stall_s``
        without an ack (the cloud unreachable or not answering; None: no limit), or
        when ``give_up`` is set. Returns True when every frame was acknowledged;
        otherwise the rest stays spooled.
        """
        started = time.monotonic()
        deadline = math.inf if flush_timeout_s is None else started + flush_timeout_s
        seen, progress_at = -1, started
        # Wait in slices: a fatal status ends the wait early (nothing more will drain).
        while self.fatal is None and not (give_up is not None and give_up.is_set()):
            now = time.monotonic()
            done = self.stats.acked + self.stats.rejected
            if done != seen:
                seen, progress_at = done, now
            if now >= deadline or (stall_s is not None and now - progress_at >= stall_s):
                break
            if self.spool.wait_empty(min(0.2, deadline - now)):
                break
        drained = self.fatal is None and self.spool.frames == 0
        self._stopping.set()
        with self.spool.changed:
            self.spool.changed.notify_all()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(self.connect_timeout_s + 5)
        return drained

    # ── the reconnect loop ───────────────────────────────────────────────────
    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            error: Exception | None = None
            try:
                self._session()
            except UplinkError as exc:
                error = exc
                if exc.code in FATAL_CODES or self._is_bad_hello(exc):
                    self._die(exc)
                    return
            except Exception as exc:  # a bug or a broken spool: stop loudly, never silently
                log.exception("uplink failed")
                self._die(UplinkError(grpc.StatusCode.INTERNAL, f"uplink failed: {exc}"))
                return
            if self.session is not None:
                attempt = 0  # the last session got as far as a Welcome
            self.session = None
            self.listener.on_disconnected(error)
            if self._stopping.is_set():
                return
            delay = self.backoff.delay_s(attempt)
            attempt += 1
            log.warning("uplink down (%s); reconnecting in %.2f s", error or "stream ended", delay)
            self._stopping.wait(delay)

    def _die(self, error: UplinkError) -> None:
        log.error("uplink stopped: %s", error)
        self.fatal = error
        with self.spool.changed:
            self.spool.changed.notify_all()  # wake a stop() waiting for the spool to drain

    def _is_bad_hello(self, exc: UplinkError) -> bool:
        # A rejected *frame* was handled in _on_rpc_error (it names its sequence); an
        # INVALID_ARGUMENT that gets here is about the Hello (camera id, clock).
        return exc.code == grpc.StatusCode.INVALID_ARGUMENT

    def _session(self) -> None:
        channel = self.channel_factory()
        state = _SessionState()
        try:
            try:
                grpc.channel_ready_future(channel).result(timeout=self.connect_timeout_s)
            except grpc.FutureTimeoutError:
                raise UplinkError(grpc.StatusCode.UNAVAILABLE, "cloud not reachable") from None
            if self._stopping.is_set():
                return
            stub = ingest_pb2_grpc.IngestStub(channel)
            call = stub.Stream(self._requests(state), metadata=self.metadata)
            self._call = call
            try:
                replies = iter(call)
                first = next(replies)
                if first.WhichOneof("kind") != "welcome":
                    raise UplinkError(grpc.StatusCode.INTERNAL, "cloud did not answer with Welcome")
                self._welcome(first.welcome)
                for message in replies:
                    self._on_message(message, state)
            except grpc.RpcError as exc:
                self._on_rpc_error(exc)
            except StopIteration:
                pass
        finally:
            with self.spool.changed:
                state.closed = True
                self.spool.changed.notify_all()
            self._call = None
            channel.close()

    def _welcome(self, welcome: ingest_pb2.Welcome) -> None:
        # A hint lasts one session; the cloud repeats it if it stands.
        self.rate_hint, self.max_fps_hint = None, None
        # The cloud may have stored higher sequences for this camera (a restored or
        # reinstalled spool): new frames continue above them, never reusing one.
        self.spool.advance_to(welcome.next_sequence)
        self.session = Session(
            welcome.next_sequence,
            welcome.clock_offset_ns,
            welcome.num_rate_levels,
            time.monotonic(),
        )
        self.stats.sessions += 1
        log.info(
            "camera %s connected; %d frames spooled (clock offset %.1f ms)",
            self.camera_id, self.spool.frames, welcome.clock_offset_ns / 1e6,
        )  # fmt: skip
        self.listener.on_connected(self.session)

    def _on_rpc_error(self, exc: grpc.RpcError) -> None:
        code = exc.code()
        details = exc.details() or ""
        if code == grpc.StatusCode.CANCELLED and self._stopping.is_set():
            return
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            metadata = exc.trailing_metadata() or ()
            pairs = cast(tuple[tuple[str, str], ...], metadata)  # (key, value) at run time
            rejected = next((v for k, v in pairs if k == REJECTED_SEQUENCE_KEY), None)
            if rejected is not None:
                self.stats.rejected += 1
                # Before the drops: a frame encoded meanwhile would extend the broken chain.
                self._keyframe_requested.set()
                self.spool.reject(int(rejected), details)
                dependents = self.spool.reject_dependents(int(rejected), is_keyframe)
                if dependents:
                    self.stats.rejected += dependents
                    log.error(
                        "dropped %d P-frames predicted from refused frame %s; the next frame "
                        "is a keyframe", dependents, rejected,
                    )  # fmt: skip
                return
        raise UplinkError(code, details)

    # ── the two directions of one session ────────────────────────────────────
    def _requests(self, state: _SessionState) -> Iterator[ingest_pb2.UplinkMessage]:
        yield ingest_pb2.UplinkMessage(
            hello=ingest_pb2.Hello(
                camera_id=self.camera_id,
                bundle_hash=self.bundle_hash,
                edge_time_ns=self.clock_ns(),
                agent_version=AGENT_VERSION,
            )
        )
        last: int | None = None
        while True:
            with self.spool.changed:
                while not state.closed and not self._stopping.is_set():
                    room = self.max_in_flight - len(state.in_flight)
                    answers = self.spool.pending_enhancements(state.enhancements_in_flight, 4)
                    batch = self.spool.pending(last, room) if room > 0 else []
                    if batch or answers:
                        break
                    self.spool.changed.wait(0.5)
                if state.closed or self._stopping.is_set():
                    return
                for frame in batch:
                    state.in_flight[frame.sequence] = len(frame.bitstream)
                state.enhancements_in_flight.update(a.request_id for a in answers)
            for answer in answers:
                yield ingest_pb2.UplinkMessage(
                    enhancement=ingest_pb2.Enhancement(
                        request_id=answer.request_id,
                        sequence=answer.sequence,
                        payload=answer.payload,
                        unavailable=answer.unavailable,
                    )
                )
            for frame in batch:
                last = frame.sequence
                self.listener.on_sent(frame.sequence, len(frame.bitstream))
                yield ingest_pb2.UplinkMessage(
                    frame=ingest_pb2.Frame(
                        sequence=frame.sequence,
                        capture_time_ns=frame.capture_time_ns,
                        rate_level=frame.rate_level,
                        bitstream=frame.bitstream,
                    )
                )

    def _on_message(self, message: ingest_pb2.DownlinkMessage, state: _SessionState) -> None:
        kind = message.WhichOneof("kind")
        if kind == "ack":
            ack = message.ack
            with self.spool.changed:
                nbytes = state.in_flight.pop(ack.sequence, 0)
                self.spool.ack(ack.sequence)
            self.stats.acked += 1
            self.stats.duplicates += int(ack.duplicate)
            self.stats.detections += ack.num_detections
            self.stats.bytes_acked += nbytes
            self.listener.on_acked(ack.sequence, nbytes, ack.duplicate)
        elif kind == "rate_hint":
            hint = message.rate_hint
            log.info(
                "cloud rate hint: level %d, max_fps %g (%s)",
                hint.rate_level, hint.max_fps, hint.reason,
            )  # fmt: skip
            self.rate_hint = hint.rate_level
            self.max_fps_hint = hint.max_fps if hint.max_fps > 0 else None
        elif kind == "enhancement_request":
            r = message.enhancement_request
            log.info("cloud asks for an enhancement of frame %d (%d B)", r.sequence, r.byte_budget)
            self.listener.on_enhancement_request(r.request_id, r.sequence, r.byte_budget)
        elif kind == "enhancement_ack":
            a = message.enhancement_ack
            if a.error:
                log.error("cloud refused enhancement %s: %s; dropping it", a.request_id, a.error)
            with self.spool.changed:
                state.enhancements_in_flight.discard(a.request_id)
                self.spool.ack_enhancement(a.request_id)
