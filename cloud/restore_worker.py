"""Restore worker: one view job id in, one PNG in the blob store out.

    queue.get() ─► job row (past its deadline: failed, "expired"; else running,
        attempts + 1) ─► frame row ─► bitstream blob(s)
        ─► LatentReferences.decode_stored (a P-frame: from its keyframe on)
        ─► (kind enhanced: the preview first, then wait for the camera's enhancement, up
            to enhancement_wait_s; none: the preview, with ``fallback`` saying why)
        ─► RESTORERS[kind] at view_size (ORT, in a thread) ─► PNG
        ─► blobs.put("views/<id>.png") ─► job row (done, image_key, size) │ (failed, error)

A job that fails (missing frame, corrupted bitstream, a restorer error) is marked
"failed" with the error text and the worker takes the next job: one bad frame never
stops the view service. A view is never larger than ``max_side`` on its long side,
whatever size the frame declares, so no frame can make a render exhaust memory; and
a job that does take the process down is retried only ``view_max_attempts`` times
(``ViewQueue`` counts them at restart).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, PngImagePlugin

from cloud.frame_decoder import FrameDecoder, InvalidFrame
from cloud.latent_references import DecodedChain, LatentReferences
from cloud.metrics import CloudMetrics
from cloud.restorers import (
    Restorer,
    RestorerOptions,
    UnavailableRestorer,
    load_restorers,
    view_size,
)
from cloud.settings import CloudSettings
from cloud.store.frame_store import FrameStore, now_ns
from cloud.store.records import FrameRecord, ViewRecord, view_image_key, view_preview_key
from cloud.view_queue import ViewJobQueue
from codec.enhancement import EnhancementError

if TYPE_CHECKING:
    from cloud.api.deps import Services

log = logging.getLogger(__name__)

FINISHED = ("done", "failed")
ENHANCEMENT_POLL_S = 0.2
EXPECTED = (InvalidFrame, LookupError, FileNotFoundError, EnhancementError)


def encode_png(rgb: np.ndarray, text: Mapping[str, str]) -> bytes:
    """PNG bytes; ``text`` goes into tEXt chunks (what the image is, for whoever opens it)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 HxWx3 image, got {rgb.dtype} {rgb.shape}")
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def view_metadata(
    job: ViewRecord,
    frame: FrameRecord,
    restorer: Restorer,
    bundle_hash: str,
    chain: DecodedChain,
    enhancement: Enhancement | None = None,
) -> dict[str, str]:
    """What a view PNG says about itself: a reconstruction, of which frame, from how many
    bytes, by which model (readable with any PNG tool: Pillow's ``Image.info``).

    ``fchm:bytes_used`` counts every bitstream the view was decoded from (``chain``): a
    P-frame of 300 B is rendered from its keyframe and the P-frames between, and saying 300
    B would flatter it. ``fchm:frame_bytes`` is the frame's own. An enhanced view adds its
    enhancement's bytes (``fchm:enhancement_bytes``), or says why it has none."""
    extra_bytes = 0 if enhancement is None else enhancement.nbytes
    meta = {
        "Description": (
            f"FCHM {job.kind} view: a reconstruction from the machine bitstream, not the "
            "camera's image"
        ),
        "Software": "FCHM",
        "fchm:reconstruction": "true",
        "fchm:kind": job.kind,
        "fchm:camera": frame.camera_id,
        "fchm:sequence": str(frame.sequence),
        "fchm:frame_id": str(frame.id),
        "fchm:bytes_used": str(chain.nbytes + extra_bytes),
        "fchm:frame_bytes": str(frame.num_bytes),
        "fchm:chain_frames": str(chain.frames),
        "fchm:rate_level": str(frame.rate_level),
        "fchm:bundle": bundle_hash,
        "fchm:model_sha256": restorer.model_sha256,
        "fchm:seed": restorer.seed_text,
    }
    if enhancement is not None:
        meta["fchm:enhancement_bytes"] = str(extra_bytes)
        if enhancement.payload is not None:
            meta["Description"] = (
                "FCHM enhanced view: the camera's own pixels, coded lossily on request at "
                f"{job.enhancement_bytes} B (not a reconstruction from features)"
            )
            meta["fchm:reconstruction"] = "false"
        else:
            meta["fchm:fallback"] = enhancement.fallback or ""
    return meta


@dataclass(frozen=True)
class Enhancement:
    """What an enhanced view got: the payload, or why there is none."""

    payload: bytes | None
    fallback: str | None = None

    @property
    def nbytes(self) -> int:
        return 0 if self.payload is None else len(self.payload)


class RestoreWorker:
    def __init__(
        self,
        store: FrameStore,
        decoder: FrameDecoder,
        restorers: Mapping[str, Restorer],
        queue: ViewJobQueue,
        metrics: CloudMetrics,
        max_side: int | None = None,
        worker_id: str | None = None,
        lease_s: float = 30.0,
        options: RestorerOptions | None = None,
    ) -> None:
        self.store = store
        self.options = options or RestorerOptions()
        self.decoder = decoder
        self.references = LatentReferences(decoder, store)
        self.restorers = restorers
        self.queue = queue
        self.metrics = metrics
        # The restorer cannot show more detail than the network input it rebuilds.
        self.max_side = max_side or decoder.input_size
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.lease_s = lease_s

    async def run(self) -> None:
        """Serve jobs until cancelled; a job in hand is finished first (up to a lease)."""
        while True:
            view_id = await self.queue.get()
            # Everything blocks (database, blob file, ORT): keep it off the event loop.
            render = asyncio.ensure_future(asyncio.to_thread(self.render_once, view_id))
            try:
                await self._renewing_lease(view_id, render)
            except asyncio.CancelledError:
                await asyncio.wait({render}, timeout=self.lease_s)
                raise
            except Exception:
                # render_once records job failures itself; this is the store failing.
                log.exception("view %s: could not record the job's outcome", view_id)

    async def _renewing_lease(
        self, view_id: str, render: asyncio.Future[ViewRecord | None]
    ) -> None:
        # Renew every third of the lease: two missed renewals still leave it held.
        while not (await asyncio.wait({render}, timeout=self.lease_s / 3))[0]:
            try:
                await asyncio.to_thread(
                    self.store.renew_view_lease, [view_id], self.worker_id, self.lease_s
                )
            except Exception:
                log.warning("view %s: could not renew its lease", view_id, exc_info=True)
        render.result()

    def render_once(self, view_id: str) -> ViewRecord | None:
        """Render one job synchronously and record the outcome; return the final row."""
        # 1. Load the job; a finished or unknown one is left alone (idempotent replays).
        job = self.store.get_view(view_id)
        if job is None:
            log.warning("view %s: no such job", view_id)
            return None
        if job.status in FINISHED:
            return job
        if job.deadline_ns is not None and now_ns() > job.deadline_ns:
            return self._expire(job)
        if not self.store.start_view(view_id, self.worker_id, self.lease_s):
            # Deleted (DELETE /v1/views) since, or another worker has it (an id popped twice).
            log.info("view %s: taken by another worker, or deleted", view_id)
            return None

        try:
            # 2. Frame and its exact stored bytes.
            frame = self.store.get_frame(job.frame_id)
            if frame is None:
                raise LookupError(f"frame {job.frame_id} does not exist")
            restorer = self.restorers.get(job.kind)
            if restorer is None:
                raise LookupError(
                    f"view kind {job.kind!r} is not served here (have {sorted(self.restorers)})"
                )
            # 3. Decode (bit-exact; a P-frame from its keyframe on) and render the view.
            chain = self.references.decode_chain(frame.camera_id, frame.sequence, frame)
            decoded = chain.decoded
            size = view_size(decoded.geometry.image_size, self.max_side)
            # A refined kind shows the preview first (GET …/preview), while it renders.
            preview = self.restorers.get("preview")
            if (
                job.kind != "preview"
                and preview is not None
                and not isinstance(restorer, UnavailableRestorer)
            ):
                with self.metrics.stage_seconds.labels("view_preview").time():
                    first = preview(decoded, size)
                meta = view_metadata(job, frame, preview, self.decoder.bundle.hash, chain)
                meta |= {"fchm:kind": "preview", "fchm:stage": f"preview of a {job.kind} view"}
                self.store.blobs.put(view_preview_key(view_id), encode_png(first, meta))
            enhancement = (
                self._await_enhancement(job, frame) if restorer.wants_enhancement else None
            )
            payload = None if enhancement is None else enhancement.payload
            with self.metrics.stage_seconds.labels(f"view_{job.kind}").time():
                image = restorer(decoded, size, payload)
            if image.shape[1::-1] != size:
                raise RuntimeError(f"restorer {job.kind} returned {image.shape}, not {size}")
            # 4. Durable image first, then the row that points at it.
            key = view_image_key(view_id)
            text = view_metadata(job, frame, restorer, self.decoder.bundle.hash, chain, enhancement)
            self.store.blobs.put(key, encode_png(image, text))
        except Exception as exc:
            # Bad data is expected and explained by the message; anything else gets a trace.
            log.warning("view %s failed: %s", view_id, exc, exc_info=not isinstance(exc, EXPECTED))
            self.store.update_view(
                view_id, status="failed", finished_ns=now_ns(), error=_error_text(exc)
            )
            self.metrics.views.labels("failed").inc()
        else:
            self.store.update_view(
                view_id,
                status="done",
                finished_ns=now_ns(),
                image_key=key,
                width=size[0],
                height=size[1],
                fallback=None if enhancement is None else enhancement.fallback,
            )
            self.metrics.views.labels("done").inc()
            log.info("view %s done (frame %d, %dx%d)", view_id, frame.id, *image.shape[1::-1])
        return self.store.get_view(view_id)

    def _await_enhancement(self, job: ViewRecord, frame: FrameRecord) -> Enhancement:
        """The camera's answer to the view's enhancement request, polled from the store (the
        camera's stream may be held by another process), or why the view goes without."""
        if job.enhancement_id is None:
            raise LookupError(f"view {job.id} of kind {job.kind} has no enhancement request")
        deadline = time.monotonic() + self.options.enhancement_wait_s
        checked_online = False
        while True:
            record = self.store.enhancements.get(job.enhancement_id)
            if record is None:
                raise LookupError(f"enhancement request {job.enhancement_id} is gone")
            if record.status == "stored":
                self.metrics.enhancements.labels("used").inc()
                return Enhancement(self.store.enhancements.payload(record))
            if record.status == "unavailable":
                self.metrics.enhancements.labels("unavailable").inc()
                return Enhancement(None, f"camera {frame.camera_id} could not send it: "
                                         f"{record.reason}")  # fmt: skip
            if not checked_online:
                checked_online = True
                offline = self._offline_for_s(frame.camera_id)
                if offline is not None:
                    self.metrics.enhancements.labels("offline").inc()
                    return Enhancement(None, f"camera {frame.camera_id} is offline (not heard "
                                             f"from for {offline:.0f} s); the request stays "
                                             "and is sent when it reconnects")  # fmt: skip
            if time.monotonic() >= deadline:
                self.metrics.enhancements.labels("timeout").inc()
                return Enhancement(None, f"no enhancement from camera {frame.camera_id} within "
                                         f"{self.options.enhancement_wait_s:g} s; the request "
                                         "stays, and a new view request uses it once it is "
                                         "stored")  # fmt: skip
            time.sleep(ENHANCEMENT_POLL_S)

    def _offline_for_s(self, camera_id: str) -> float | None:
        cameras = self.store.list_cameras(camera_id)
        if not cameras:
            return None
        silent_s = (now_ns() - cameras[0].last_seen_ns) / 1e9
        return silent_s if silent_s > self.options.camera_online_after_s else None

    def _expire(self, job: ViewRecord) -> ViewRecord | None:
        late_s = (now_ns() - (job.deadline_ns or 0)) / 1e9
        error = f"expired: no worker started it before its deadline ({late_s:.1f} s late)"
        if self.store.update_view_if(
            job.id, "queued", status="failed", finished_ns=now_ns(), error=error
        ):
            log.info("view %s %s", job.id, error)
            self.metrics.views.labels("expired").inc()
        return self.store.get_view(job.id)


def _error_text(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        text = f"bitstream blob is missing: {exc.filename}"
    return text[:2000]


def restorer_options(settings: CloudSettings) -> RestorerOptions:
    s = settings
    return RestorerOptions(s.diffusion_prior_dir, s.diffusion_steps, s.diffusion_strength,
                           s.diffusion_seed, s.enhancement_wait_s,
                           s.camera_online_after_s)  # fmt: skip


async def start_view_workers(
    services: Services,
    decoder: FrameDecoder,
    n: int,
    threads: int = 0,
    max_side: int | None = None,
    lease_s: float = 30.0,
    options: RestorerOptions | None = None,
) -> list[asyncio.Task[None]]:
    """Start ``n`` restore workers on the running loop; cancel the tasks to stop them.

    ``max_side`` caps a view's long side (None: the bundle's network input size);
    ``options``: what the restorers take from the settings (``restorer_options``).
    """
    if n < 1:
        raise ValueError(f"view_workers must be ≥ 1, got {n}")
    # Loading sessions is slow and blocking; one set of restorers serves every worker.
    restorers = await asyncio.to_thread(load_restorers, services.bundle, threads, None, options)
    tasks = []
    for i in range(n):
        worker = RestoreWorker(
            services.store,
            decoder,
            restorers,
            services.views,
            services.metrics,
            max_side,
            worker_id=f"{socket.gethostname()}:{os.getpid()}:{i}",
            lease_s=lease_s,
            options=options,
        )
        tasks.append(asyncio.create_task(worker.run(), name=f"restore-worker-{i}"))
    log.info("%d restore workers started", n)
    return tasks
