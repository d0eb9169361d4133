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

This is the embedded default. Redis or NATS JetStream queues come later behind the
same small ``ViewJobQueue`` protocol.

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
from collections.abc import Collection
from typing import Protocol

from cloud.metrics import CloudMetrics
from cloud.restorers import RESTORERS
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
    """What the API and the workers need from any view queue backend."""

    @property
    def kinds(self) -> Collection[str]:
        """View kinds this queue accepts (``RESTORERS``' keys)."""
        ...

    def submit(
        self, frame_id: int, kind: str, priority: int = 5, deadline_s: float | None = None
    ) -> ViewRecord: ...

    def request(
        self,
        frame_id: int,
        kind: str,
        priority: int = 5,
        deadline_s: float | None = None,
        reuse: bool = True,
    ) -> tuple[ViewRecord, bool]: ...

    async def get(self) -> str: ...

    def depth(self) -> int: ...


class ViewQueue:
    """Bounded in-process queue of view job ids over durable job rows."""

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
        self._lock = threading.Lock()
        self._pending: list[tuple[int, int, str]] = []  # heap of (-priority, order, id)
        self._order = itertools.count()
        self._reserved = 0  # slots taken by submits whose row is being written
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self._recover()

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
    ) -> tuple[ViewRecord, bool]:
        """The job that answers a request, and whether it is an existing one (``reuse``:
        a done view of this frame and kind, or one queued or running); else ``submit``."""
        if kind not in self.kinds:
            raise UnknownViewKind(kind, self.kinds)
        if reuse:
            found = self.store.reusable_view(frame_id, kind)
            if found is not None:
                self.metrics.views_reused.labels(found.status).inc()
                return found, True
        return self.submit(frame_id, kind, priority, deadline_s), False

    def submit(
        self, frame_id: int, kind: str, priority: int = 5, deadline_s: float | None = None
    ) -> ViewRecord:
        """Persist a queued job and enqueue it; raises UnknownViewKind, UnknownFrame, QueueFull."""
        # 1. Check inputs.
        if kind not in self.kinds:
            raise UnknownViewKind(kind, self.kinds)
        if not 0 <= priority <= 9:
            raise ValueError(f"priority {priority} outside 0..9")
        if self.store.get_frame(frame_id) is None:
            raise UnknownFrame(frame_id)
        # 2. Reserve a slot, so concurrent submits cannot overshoot the bound.
        with self._lock:
            if len(self._pending) + self._reserved >= self.max_queued:
                raise QueueFull(
                    f"{self.max_queued} view jobs are already waiting (max_queued_views)"
                )
            self._reserved += 1
        # 3. Persist, then enqueue: an enqueued id always has a row.
        created_ns = now_ns()
        view = ViewRecord(
            id=str(uuid.uuid4()),
            frame_id=frame_id,
            kind=kind,
            status="queued",
            created_ns=created_ns,
            priority=priority,
            deadline_ns=None if deadline_s is None else created_ns + round(deadline_s * 1e9),
        )
        try:
            self.store.create_view(view)
        except BaseException:
            with self._lock:
                self._reserved -= 1
            raise
        self._push(view.id, priority, reserved=True)
        log.info("view %s queued (frame %d, %s, priority %d)", view.id, frame_id, kind, priority)
        return view

    def _recover(self) -> None:
        # Jobs a previous process accepted; "running" ones died with it, so run them again,
        # unless they died every time they ran.
        requeued = 0
        for view in self.store.unfinished_views():
            if view.status == "running":
                if view.attempts >= self.max_attempts:
                    self._give_up(view)
                    continue
                self.store.update_view(view.id, status="queued", started_ns=None)
            self._push(view.id, view.priority)  # already accepted: not subject to the bound
            requeued += 1
        if requeued:
            log.info("re-queued %d unfinished view jobs", requeued)
        self._update_gauge()

    def _give_up(self, view: ViewRecord) -> None:
        error = (
            f"the worker died while rendering this view {view.attempts} "
            f"time{'s' if view.attempts != 1 else ''} "
            f"(view_max_attempts={self.max_attempts}); it is not retried"
        )
        log.error("view %s (frame %d): %s", view.id, view.frame_id, error)
        self.store.update_view(view.id, status="failed", finished_ns=now_ns(), error=error)
        self.metrics.views.labels("failed").inc()

    def _push(self, view_id: str, priority: int, reserved: bool = False) -> None:
        with self._lock:
            # Slot and id change hands in one step, so the bound is never overshot.
            self._reserved -= reserved
            heapq.heappush(self._pending, (-priority, next(self._order), view_id))
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
