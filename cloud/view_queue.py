"""View jobs: the in-process queue between ``POST /v1/views`` and the restore workers.

    POST /v1/views ─► ViewQueue.request ─► same frame+kind done, queued or running? ─► that job
                                       └► submit ─► store.create_view (status "queued", durable)
                                                 └► pending ids (bounded, by priority)
                                                     ─► await get() ─► RestoreWorker

The database row is the job; the queue only holds its id. A job is persisted
before it is enqueued, and a new ViewQueue re-enqueues every job the store still
has queued or running, so a restart loses no requested view. A job found running
that was already started ``view_max_attempts`` times took the process down that
often: it is marked failed instead, so one bad job cannot crash-loop the cloud.

Pending ids are served highest ``priority`` first, oldest first within one. A request
for a frame and kind that already has a job is answered with that job: a done one is a
cached result, a queued or running one is the same work (de-duplication; best effort,
two requests at the same instant may both queue). A job's deadline is checked when a
worker takes it (``RestoreWorker``): too late, it fails without rendering.

This is the embedded default, for a cloud alone on its database. Several replicas and
``fchm worker`` processes share ``RedisViewQueue`` (cloud/view_queue_redis.py,
``view_queue_url``) behind the same ``ViewJobQueue`` protocol; the producer side and the
handling of jobs whose worker died (``DurableViewQueue``) are common to both. A worker
holds a lease on the job it renders and renews it; a lapsed lease is a dead worker.

Thread model: ``submit`` is called from FastAPI's worker threads (sync routes),
``get`` from asyncio tasks, possibly on another loop. One lock guards the pending
ids; a waiting ``get`` is woken with ``call_soon_threadsafe`` on its own loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Collection
from typing import Protocol

from cloud.metrics import CloudMetrics
from cloud.restorers import RESTORERS, wants_enhancement
from cloud.settings import CloudSettings
from cloud.store.frame_store import FrameStore, now_ns
from cloud.store.records import ViewRecord

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """Too many view jobs are waiting; the caller should retry later."""


class UnknownViewKind(ValueError):
    def __init__(self, kind: str, known: Collection[str]) -> None:
        super().__init__(f"unknown view kind {kind!r}; known kinds: {sorted(known)}")
        self.kind, self.known = kind, sorted(known)


class UnknownFrame(LookupError):
    def __init__(self, frame_id: int) -> None:
        super().__init__(f"frame {frame_id} does not exist")
        self.frame_id = frame_id


class ViewJobQueue(Protocol):
    """What the API and the workers need from any view queue backend (``VIEW_QUEUES``)."""

    @property
    def kinds(self) -> Collection[str]:
        """View kinds this queue accepts (``RESTORERS``' keys)."""
        ...

    def submit(
        self,
        frame_id: int,
        kind: str,
        priority: int = 5,
        deadline_s: float | None = None,
        enhancement_bytes: int | None = None,
    ) -> ViewRecord: ...

    def request(
        self,
        frame_id: int,
        kind: str,
        priority: int = 5,
        deadline_s: float | None = None,
        reuse: bool = True,
        enhancement_bytes: int | None = None,
    ) -> tuple[ViewRecord, bool]: ...

    async def get(self) -> str: ...

    def depth(self) -> int: ...

    async def maintain(self) -> None:
        """Until cancelled: re-queue jobs whose worker's lease ran out (a no-op where the
        queue lives and dies with its only process)."""
        ...

    def ping(self) -> bool:
        """The queue's backend answers (readiness)."""
        ...

    def close(self) -> None: ...


class DurableViewQueue:
    """The producer side every backend shares: checks, de-duplication, the job row
    written before its id is enqueued, and what to do with a job whose worker died.
    A backend adds where pending ids wait (``_reserve``, ``_release``, ``_push``)."""

    def __init__(
        self,
        store: FrameStore,
        settings: CloudSettings,
        metrics: CloudMetrics,
        kinds: Collection[str] = tuple(RESTORERS),
    ) -> None:
        self.store = store
        self.metrics = metrics
        self._kinds = tuple(kinds)
        self.max_queued = settings.max_queued_views
        self.max_attempts = settings.view_max_attempts
        self.lease_s = settings.view_lease_s

    @property
    def kinds(self) -> tuple[str, ...]:
        return self._kinds

    # ── producers ────────────────────────────────────────────────────────────
    def request(
        self,
        frame_id: int,
        kind: str,
        priority: int = 5,
        deadline_s: float | None = None,
        reuse: bool = True,
        enhancement_bytes: int | None = None,
    ) -> tuple[ViewRecord, bool]:
        """The job that answers a request, and whether it is an existing one (``reuse``:
        a done view of this frame, kind and enhancement budget, or one queued or running;
        not one that fell back to the machine bitstream); else ``submit``."""
        if kind not in self.kinds:
            raise UnknownViewKind(kind, self.kinds)
        if reuse:
            found = self.store.reusable_view(frame_id, kind, enhancement_bytes)
            if found is not None:
                self.metrics.views_reused.labels(found.status).inc()
                return found, True
        return self.submit(frame_id, kind, priority, deadline_s, enhancement_bytes), False

    def submit(
        self,
        frame_id: int,
        kind: str,
        priority: int = 5,
        deadline_s: float | None = None,
        enhancement_bytes: int | None = None,
    ) -> ViewRecord:
        """Persist a queued job and enqueue it; raises UnknownViewKind, UnknownFrame, QueueFull.

        An enhanced job (``enhancement_bytes``) first files its enhancement request, so the
        camera is asked at once (cloud/store/enhancements.py), not when a worker gets to it."""
        # 1. Check inputs.
        if kind not in self.kinds:
            raise UnknownViewKind(kind, self.kinds)
        if not 0 <= priority <= 9:
            raise ValueError(f"priority {priority} outside 0..9")
        if wants_enhancement(kind) != (enhancement_bytes is not None):
            raise ValueError("enhancement_bytes goes with kind enhanced, and only there")
        frame = self.store.get_frame(frame_id)
        if frame is None:
            raise UnknownFrame(frame_id)
        # 2. Reserve a slot, so concurrent submits cannot overshoot the bound.
        self._reserve()
        # 3. Persist, then enqueue: an enqueued id always has a row.
        created_ns = now_ns()
        enhancement = (
            None
            if enhancement_bytes is None
            else self.store.enhancements.request(frame, enhancement_bytes, created_ns)
        )
        view = ViewRecord(
            id=str(uuid.uuid4()),
            frame_id=frame_id,
            kind=kind,
            status="queued",
            created_ns=created_ns,
            priority=priority,
            deadline_ns=None if deadline_s is None else created_ns + round(deadline_s * 1e9),
            enhancement_bytes=enhancement_bytes,
            enhancement_id=None if enhancement is None else enhancement.id,
        )
        try:
            self.store.create_view(view)
        except BaseException:
            self._release()
            raise
        self._push(view, reserved=True)
        log.info("view %s queued (frame %d, %s, priority %d)", view.id, frame_id, kind, priority)
        return view

    def _full(self) -> QueueFull:
        return QueueFull(f"{self.max_queued} view jobs are already waiting (max_queued_views)")

    # ── jobs whose worker died ───────────────────────────────────────────────
    def requeue_lapsed(self) -> int:
        """Re-queue running jobs whose lease ran out (their worker died mid-job), or fail
        the ones that already took ``max_attempts`` workers down; safe to run in every
        process at once (each change is conditional on the lapsed lease)."""
        requeued = 0
        for view in self.store.lapsed_views(now_ns()):
            if view.attempts >= self.max_attempts:
                if self.store.reclaim_view(view, **self._give_up_values(view)):
                    self._gave_up(view)
            elif self.store.reclaim_view(
                view, status="queued", started_ns=None, worker=None, lease_until_ns=None
            ):
                log.warning(
                    "view %s: worker %s stopped renewing its lease; re-queued (attempt %d of %d)",
                    view.id,
                    view.worker,
                    view.attempts + 1,
                    self.max_attempts,
                )
                self._push(view)
                requeued += 1
        return requeued

    def _give_up_values(self, view: ViewRecord) -> dict[str, object]:
        error = (
            f"the worker died while rendering this view {view.attempts} "
            f"time{'s' if view.attempts != 1 else ''} "
            f"(view_max_attempts={self.max_attempts}); it is not retried"
        )
        return {"status": "failed", "finished_ns": now_ns(), "error": error, "lease_until_ns": None}

    def _gave_up(self, view: ViewRecord) -> None:
        log.error(
            "view %s (frame %d): gave up after %d attempts", view.id, view.frame_id, view.attempts
        )
        self.metrics.views.labels("failed").inc()

    # ── what a backend provides ──────────────────────────────────────────────
    def _reserve(self) -> None:
        """Take a pending slot or raise QueueFull."""
        raise NotImplementedError

    def _release(self) -> None:
        """Give back a slot whose job row could not be written."""

    def _push(self, view: ViewRecord, reserved: bool = False) -> None:
        raise NotImplementedError


class ViewQueue(DurableViewQueue):
    """Bounded in-process queue of view job ids over durable job rows: the embedded
    default, for a cloud that is the only process on its database."""

    def __init__(
        self,
        store: FrameStore,
        settings: CloudSettings,
        metrics: CloudMetrics,
        kinds: Collection[str] = tuple(RESTORERS),
    ) -> None:
        super().__init__(store, settings, metrics, kinds)
        self._lock = threading.Lock()
        self._pending: list[tuple[int, int, str]] = []  # heap of (-priority, order, id)
        self._order = itertools.count()
        self._reserved = 0  # slots taken by submits whose row is being written
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self._recover()

    def _reserve(self) -> None:
        with self._lock:
            if len(self._pending) + self._reserved >= self.max_queued:
                raise self._full()
            self._reserved += 1

    def _release(self) -> None:
        with self._lock:
            self._reserved -= 1

    def _recover(self) -> None:
        # Jobs a previous process accepted. This process is the database's only one, so
        # "running" ones died with the last: run them again at once, lease or not,
        # unless they died every time they ran.
        requeued = 0
        for view in self.store.unfinished_views():
            if view.status == "running":
                if view.attempts >= self.max_attempts:
                    self.store.update_view(view.id, **self._give_up_values(view))
                    self._gave_up(view)
                    continue
                self.store.update_view(
                    view.id, status="queued", started_ns=None, worker=None, lease_until_ns=None
                )
            self._push(view)  # already accepted: not subject to the bound
            requeued += 1
        if requeued:
            log.info("re-queued %d unfinished view jobs", requeued)
        self._update_gauge()

    def _push(self, view: ViewRecord, reserved: bool = False) -> None:
        with self._lock:
            # Slot and id change hands in one step, so the bound is never overshot.
            self._reserved -= reserved
            heapq.heappush(self._pending, (-view.priority, next(self._order), view.id))
            self._wake_one()
        self._update_gauge()

    def _wake_one(self) -> None:
        # Caller holds the lock.
        while self._waiters:
            loop, fut = self._waiters.popleft()
            if not fut.done() and not loop.is_closed():
                loop.call_soon_threadsafe(_set_if_pending, fut)
                return

    # ── consumers ────────────────────────────────────────────────────────────
    async def get(self) -> str:
        """Wait for the next job id (highest priority, then oldest, first)."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._pending:
                    view_id = heapq.heappop(self._pending)[2]
                    break
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.append((loop, fut))
            try:
                await fut
            except asyncio.CancelledError:
                with self._lock:
                    if (loop, fut) in self._waiters:
                        self._waiters.remove((loop, fut))
                    elif self._pending:
                        self._wake_one()  # we were woken but leave: pass the wake-up on
                raise
        self._update_gauge()
        return view_id

    async def maintain(self) -> None:
        # One process: its dead workers' jobs were re-queued when it started.
        await asyncio.Event().wait()

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def idle_workers(self) -> int:
        """Workers parked in get(), waiting for a job."""
        with self._lock:
            return len(self._waiters)

    def depth(self) -> int:
        with self._lock:
            return len(self._pending)

    def _update_gauge(self) -> None:
        self.metrics.views_queued.set(self.depth())


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _redis_queue(
    url: str, store: FrameStore, settings: CloudSettings, metrics: CloudMetrics
) -> ViewJobQueue:
    from cloud.view_queue_redis import RedisViewQueue  # redis only where it is used

    return RedisViewQueue(url, store, settings, metrics)


# view_queue_url scheme → backend; no URL: the in-process ViewQueue.
VIEW_QUEUES: dict[str, Callable[[str, FrameStore, CloudSettings, CloudMetrics], ViewJobQueue]] = {
    "redis": _redis_queue,
    "rediss": _redis_queue,
}


def open_view_queue(
    settings: CloudSettings, store: FrameStore, metrics: CloudMetrics
) -> ViewJobQueue:
    """The queue ``settings.view_queue_url`` names (shared by processes), or the embedded one."""
    url = settings.view_queue_url
    if url is None:
        return ViewQueue(store, settings, metrics)
    return VIEW_QUEUES[url.split("://", 1)[0]](url, store, settings, metrics)
