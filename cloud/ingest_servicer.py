"""gRPC Ingest servicer: thin, over FrameIngest and FrameStore.

Protocol per stream: Hello → Welcome (+ RateHint) → (Frame → Ack)*, and at any time
EnhancementRequest ─► … Enhancement → EnhancementAck (a refused answer is acked with its
error; it does not end the stream: cloud/enhancement_dispatch.py). Errors end the
stream with a status: FAILED_PRECONDITION for a missing Hello or another bundle,
INVALID_ARGUMENT for a bad camera id or a malformed frame, UNAUTHENTICATED or
PERMISSION_DENIED for a camera whose token does not check out (cloud/camera_auth.py),
ABORTED for a stream replaced by a newer one of the same camera (cloud/camera_streams.py).
FAILED_PRECONDITION for a frame in a container version ingest no longer takes.
A rejected frame is not stored; what was acknowledged before stays stored, and
the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn

import grpc

from cloud.camera_auth import AuthRefused, CameraAuth
from cloud.camera_streams import CameraStreams, Outgoing, StreamLease, StreamReplaced
from cloud.enhancement_dispatch import EnhancementDispatch
from cloud.frame_decoder import InvalidFrame, OutdatedBitstream
from cloud.frame_ingest import FrameIngest, ReceivedFrame, SequenceReused
from cloud.ingest_lag import IngestLag
from cloud.store.records import StoredFrame
from codec.wire import CAMERA_ID, REJECTED_SEQUENCE_KEY
from fchm.v1 import ingest_pb2, ingest_pb2_grpc

log = logging.getLogger(__name__)


HELLO_TIMEOUT_S = 30.0
"""A connection that says nothing is closed: streams are not free to hold open."""

MAX_CLOCK_OFFSET_NS = 366 * 24 * 3600 * 10**9


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    def __init__(
        self,
        ingest: FrameIngest,
        bundle_hash: str,
        num_levels: int,
        rate_hint: int | None,
        auth: CameraAuth | None = None,
        streams: CameraStreams | None = None,
        lag: IngestLag | None = None,
        workers: int = 0,
        backpressure_level: int | None = None,
        enhancement_poll_s: float = 0.5,
        presence_every_s: float = 10.0,
    ) -> None:
        self.ingest = ingest
        self.bundle_hash = bundle_hash
        self.num_levels = num_levels
        self.rate_hint = rate_hint
        self.auth = auth
        self.streams = streams or CameraStreams()
        self.lag = lag
        """None: no backpressure hints"""
        self.backpressure_level = backpressure_level
        self._workers = ThreadPoolExecutor(workers, "ingest") if workers else None
        self._open_streams = 0
        self.enhancements = EnhancementDispatch(ingest.store, self.streams, ingest.metrics)
        self.enhancement_poll_s, self.presence_every_s = enhancement_poll_s, presence_every_s
        self._upkeep: asyncio.Task[None] | None = None

    async def Stream(
        self,
        request_iterator: AsyncIterator[ingest_pb2.UplinkMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ingest_pb2.DownlinkMessage]:
        metrics = self.ingest.metrics
        metrics.streams.inc()
        lease: StreamLease | None = None
        self._open_streams += 1
        hinted_fps = 0.0  # the max_fps this stream was last told (0: none)
        replaced: str | None = None
        try:
            try:
                first = await asyncio.wait_for(
                    anext(aiter(request_iterator), None), HELLO_TIMEOUT_S
                )
            except TimeoutError:
                await self._abort(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"no Hello within {HELLO_TIMEOUT_S:g} s")  # fmt: skip
            hello = await self._check_hello(first, context)
            offset = time.time_ns() - hello.edge_time_ns
            if abs(offset) > MAX_CLOCK_OFFSET_NS:
                await self._abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"edge_time_ns {hello.edge_time_ns} is more than a year off the cloud's "
                    "clock; set the camera's clock",
                )
            # A valid Hello takes the camera over (after its older stream's last frame).
            lease = await self.streams.claim(hello.camera_id, context.peer())
            if self._upkeep is None or self._upkeep.done():
                self._upkeep = asyncio.create_task(self._stream_upkeep(), name="stream-upkeep")
            next_sequence = await asyncio.to_thread(
                self.ingest.store.register_camera,
                hello.camera_id,
                hello.bundle_hash,
                offset,
                hello.agent_version[:64],
            )
            log.info("camera %s connected (next sequence %d)", hello.camera_id, next_sequence)
            yield ingest_pb2.DownlinkMessage(
                welcome=ingest_pb2.Welcome(
                    cloud_time_ns=time.time_ns(),
                    clock_offset_ns=offset,
                    next_sequence=next_sequence,
                    num_rate_levels=self.num_levels,
                )
            )
            if self.rate_hint is not None:
                yield ingest_pb2.DownlinkMessage(
                    rate_hint=ingest_pb2.RateHint(rate_level=self.rate_hint, reason="operator")
                )
            async for message in lease.messages(request_iterator):
                if isinstance(message, Outgoing):
                    yield message.message
                    continue
                if message.WhichOneof("kind") == "enhancement":
                    yield await asyncio.to_thread(
                        self.enhancements.receive, hello.camera_id, message.enhancement
                    )
                    continue
                if message.WhichOneof("kind") != "frame":
                    await self._abort(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "Hello may only be sent once, as the first message",
                    )
                f = message.frame
                received = ReceivedFrame(
                    hello.camera_id, f.sequence, f.capture_time_ns, f.rate_level, f.bitstream
                )
                # Abort outside the except blocks: an abort raised while handling the error
                # would chain it (__context__), and the RPC's state would keep the failed
                # decode's frames and arrays alive (a reference cycle through grpc's state).
                rejection: tuple[grpc.StatusCode, str] | None = None
                try:
                    submitted = time.perf_counter()
                    outcome = await lease.run(
                        self._ingest_now, received, offset, submitted, executor=self._workers
                    )
                    if not isinstance(outcome, StoredFrame):
                        raise outcome
                    stored = outcome
                    self._observe_lag(stored, received, offset)
                except OutdatedBitstream as exc:
                    # Not the frame's fault: no rejected sequence, so the edge keeps it.
                    rejection = (grpc.StatusCode.FAILED_PRECONDITION, str(exc))
                except InvalidFrame as exc:
                    # Name the frame so the edge can drop it instead of replaying it forever.
                    context.set_trailing_metadata(((REJECTED_SEQUENCE_KEY, str(f.sequence)),))
                    rejection = (
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"frame {f.sequence} of camera {hello.camera_id}: {exc}",
                    )
                except SequenceReused as exc:
                    rejection = (grpc.StatusCode.FAILED_PRECONDITION, str(exc))
                except StreamReplaced:
                    raise
                except Exception:
                    # Not the frame's fault (a database hiccup, a bug): no ack, the edge
                    # retries; internals stay in our log, not in the edge's.
                    log.exception("storing frame %d of %s failed", f.sequence, hello.camera_id)
                    rejection = (
                        grpc.StatusCode.INTERNAL,
                        f"internal error storing frame {f.sequence}; it was not acknowledged",
                    )
                if rejection is not None:
                    # The abort's traceback holds this frame until the cycle collector runs:
                    # let it hold no frame bytes.
                    del message, f, received
                    await self._abort(context, *rejection)
                yield ingest_pb2.DownlinkMessage(
                    ack=ingest_pb2.Ack(
                        sequence=f.sequence,
                        duplicate=stored.duplicate,
                        num_detections=stored.num_detections,
                    )
                )
                if (hint := self._backpressure(hinted_fps)) is not None:
                    hinted_fps = hint.rate_hint.max_fps
                    yield hint
        except StreamReplaced as exc:
            replaced = str(exc)
        finally:
            self._open_streams -= 1
            if lease is not None:
                self.streams.release(lease)
            if not self.streams.live and self._upkeep is not None:
                self._upkeep.cancel()  # no stream to send a request down, nobody present
                self._upkeep = None
            metrics.streams.dec()
        if replaced is not None:
            # As for rejected frames: abort outside the except block, holding no frame
            # (a stream replaced mid-frame kept its bytes and decode alive until a full GC).
            with contextlib.suppress(NameError):  # unbound: replaced before its first frame
                del message, f, received
            await self._abort(context, grpc.StatusCode.ABORTED, replaced)

    # ── while streams are open ────────────────────────────────────────────────
    async def _stream_upkeep(self) -> None:
        """Enhancement requests down the live streams (cloud/enhancement_dispatch.py), and
        presence: a connected camera is heard from, frames or not (GET /v1/cameras shows it
        online, and an enhanced view waits for its answer)."""
        touched = 0.0
        while True:
            try:
                await self.enhancements.dispatch_once()
                if time.monotonic() - touched >= self.presence_every_s:
                    touched = time.monotonic()
                    await asyncio.to_thread(
                        self.ingest.store.touch_cameras, list(self.streams.live), time.time_ns()
                    )
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup: the next round tries again
                log.warning("stream upkeep failed", exc_info=True)
            await asyncio.sleep(self.enhancement_poll_s)

    # ── ingest lag and backpressure (cloud/ingest_lag.py) ────────────────────
    def _ingest_now(
        self, frame: ReceivedFrame, offset_ns: int, submitted: float
    ) -> StoredFrame | InvalidFrame | SequenceReused:
        """FrameIngest.ingest, on a worker thread: how long the frame waited for one.

        A refused frame is *returned*, as a fresh exception with the same message, for the
        stream to raise. Raised across the executor, the original would carry a traceback
        into the failed decode's frames (its symbol arrays, up to ~1 MB a frame) and the
        worker's frame holding the frame bytes, in a reference cycle with the future that
        carries it: freed only by a full collection, so the cloud's memory grew with every
        rejected stream (tracemalloc: 158 MB held after 600 rejected frames, 0.15 MB after
        gc.collect())."""
        self.ingest.metrics.ingest_wait.observe(time.perf_counter() - submitted)
        try:
            return self.ingest.ingest(frame, offset_ns)
        except (InvalidFrame, SequenceReused) as exc:
            return type(exc)(*exc.args)

    def _observe_lag(self, stored: StoredFrame, frame: ReceivedFrame, offset_ns: int) -> None:
        """Capture → stored latency of a newly stored frame, into metrics and IngestLag."""
        if stored.duplicate:
            return
        metrics = self.ingest.metrics
        lag_s = (time.time_ns() - frame.capture_time_ns - offset_ns) / 1e9
        metrics.ingest_lag.observe(max(lag_s, 0.0))
        if self.lag is not None:
            self.lag.observe(lag_s, time.monotonic())
            metrics.ingest_lag_smoothed.set(self.lag.lag_s)
            metrics.ingest_behind.set(int(self.lag.behind))

    def _backpressure(self, hinted_fps: float) -> ingest_pb2.DownlinkMessage | None:
        """A RateHint when this stream's max_fps should change (set while the cloud is
        behind, lifted to 0 once it caught up); None when what it was told still holds."""
        if self.lag is None:
            return None
        wanted = self.lag.hint(self._open_streams)
        max_fps = 0.0 if wanted is None else wanted.max_fps
        if abs(max_fps - hinted_fps) < 0.05:  # float32 on the wire; shares are 0.1-rounded
            return None
        caps = [] if self.rate_hint is None else [self.rate_hint]
        if wanted is not None and self.backpressure_level is not None:
            caps.append(self.backpressure_level)
        level = min(caps, default=self.num_levels - 1)
        reason = "caught up" if wanted is None else wanted.reason
        self.ingest.metrics.rate_hints.labels("lifted" if wanted is None else "backpressure").inc()
        log.info("rate hint: max_fps %g, level %d (%s)", max_fps, level, reason)
        return ingest_pb2.DownlinkMessage(
            rate_hint=ingest_pb2.RateHint(rate_level=level, reason=reason, max_fps=max_fps)
        )

    async def _check_hello(
        self, first: ingest_pb2.UplinkMessage | None, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.Hello:
        if first is None or first.WhichOneof("kind") != "hello":
            await self._abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "the first message of a stream must be Hello",
            )
        assert first is not None
        hello = first.hello
        if not CAMERA_ID.match(hello.camera_id):
            await self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"camera_id {hello.camera_id!r} must match {CAMERA_ID.pattern}",
            )
        # Before the bundle check: a stranger learns nothing about the deployment.
        if self.auth is not None:
            try:
                self.auth.verify(hello.camera_id, context.invocation_metadata())
            except AuthRefused as exc:
                await self._abort(context, exc.code, str(exc))
        if hello.bundle_hash != self.bundle_hash:
            await self._abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"bundle_hash {hello.bundle_hash[:16]}… differs from the cloud's "
                f"{self.bundle_hash[:16]}…; deploy the same bundle to edge and cloud",
            )
        return hello

    async def _abort(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str
    ) -> NoReturn:
        self.ingest.metrics.rejected.labels(code.name).inc()
        log.warning("rejecting stream: %s: %s", code.name, message)
        await context.abort(code, message)
