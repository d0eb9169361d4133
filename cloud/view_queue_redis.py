"""The view queue shared by every cloud replica and ``fchm worker`` process, on Redis.

    POST /v1/views (any replica) ─► job row (the job; in the shared database)
                                 └► ZADD fchm:views:pending {id: priority, then age}
    fchm worker / a replica's workers ─► BZPOPMIN ─► store.start_view (claim: one winner)
        ─► render, renewing the job's lease ─► done │ failed
    every process, every lease_s/2 ─► jobs whose lease ran out: re-queued (or failed after
        view_max_attempts) ─► queued rows missing from Redis: added again

The database row is the truth and Redis only orders ids, so Redis may lose everything
(ours keeps nothing on disk): ``maintain`` puts every queued row back. An id may then be
popped twice; the conditional claim in ``start_view`` lets one worker have it. A worker
killed mid-job stops renewing its lease, and the first process to see the lease lapse
re-queues the job.

The bound (``max_queued_views``) is checked against the set's size before a job is
written, so replicas submitting at the same instant may overshoot it by a few.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

import redis
import redis.asyncio as aredis

from cloud.metrics import CloudMetrics
from cloud.restorers import RESTORERS
from cloud.settings import CloudSettings
from cloud.store.frame_store import FrameStore
from cloud.store.records import ViewRecord
from cloud.view_queue import DurableViewQueue

log = logging.getLogger(__name__)

BLOCK_S = 1.0  # one BZPOPMIN's wait: bounds how long a cancelled get() lingers


def pending_score(view: ViewRecord) -> float:
    """Lower is served first: priority 9 before 0, then older before newer (ms). Below
    2^53, so a double holds it exactly."""
    return (9 - view.priority) * 1e13 + view.created_ns // 1_000_000


class RedisViewQueue(DurableViewQueue):
    def __init__(
        self,
        url: str,
        store: FrameStore,
        settings: CloudSettings,
        metrics: CloudMetrics,
        kinds: Collection[str] = tuple(RESTORERS),
        prefix: str = "fchm:views",
    ) -> None:
        super().__init__(store, settings, metrics, kinds)
        self.url = url
        self.key = f"{prefix}:pending"
        # Producers run in FastAPI's threads: a sync client (its pool is thread-safe).
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=5)
        self._async: tuple[asyncio.AbstractEventLoop, aredis.Redis] | None = None
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise OSError(f"view_queue_url: cannot reach Redis at {url}: {exc}") from exc
        self.restore_pending()

    # ── producers ────────────────────────────────────────────────────────────
    def _reserve(self) -> None:
        if self._redis.zcard(self.key) >= self.max_queued:
            raise self._full()

    def _push(self, view: ViewRecord, reserved: bool = False) -> None:
        self._redis.zadd(self.key, {view.id: pending_score(view)}, nx=True)
        self._update_gauge()

    def restore_pending(self) -> int:
        """Add every queued row to the set (those Redis lost; NX leaves the rest)."""
        queued = self.store.unfinished_views(("queued",))
        if queued:
            self._redis.zadd(self.key, {v.id: pending_score(v) for v in queued}, nx=True)
        return len(queued)

    # ── consumers ────────────────────────────────────────────────────────────
    async def get(self) -> str:
        """Wait for the next job id (highest priority, then oldest, first)."""
        client = self._async_client()
        while True:
            item = await client.bzpopmin(self.key, timeout=BLOCK_S)
            if item is not None:
                self._update_gauge()
                member = item[1]
                return member.decode() if isinstance(member, bytes) else str(member)

    def _async_client(self) -> aredis.Redis:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, aredis.Redis.from_url(self.url, socket_connect_timeout=5))
        return self._async[1]

    async def maintain(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.maintain_once)
            except Exception:  # Redis or the database away for a moment: next round
                log.exception("view queue upkeep failed; retrying in %.1f s", self.lease_s / 2)
            await asyncio.sleep(self.lease_s / 2)

    def maintain_once(self) -> tuple[int, int]:
        """Lapsed jobs re-queued, and queued rows put back in the set: (requeued, queued)."""
        requeued = self.requeue_lapsed()
        queued = self.restore_pending()
        self._update_gauge()
        return requeued, queued

    def depth(self) -> int:
        return int(self._redis.zcard(self.key))

    def ping(self) -> bool:
        return bool(self._redis.ping())

    def close(self) -> None:
        self._redis.close()
        self._async = None  # its connections close with their loop

    def _update_gauge(self) -> None:
        self.metrics.views_queued.set(self.depth())
