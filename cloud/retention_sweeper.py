"""The retention sweeper: every ``retention_sweep_interval_s``, each camera's expired
frames, detections, views and blobs deleted (cloud/store/retention.py), with metrics.

    CloudServer ─► RetentionSweeper.run() ─┬─► sweep_once() in a thread, at start and
                                           │   every interval: each camera in turn
                                           └─► an error is logged and counted; the
                                               next sweep tries again

Several cloud replicas may each run one on the same database: the deletes are
idempotent and count only what each removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cloud.metrics import CloudMetrics
from cloud.settings import CloudSettings
from cloud.store.frame_store import FrameStore
from cloud.store.retention import CameraSweep, RetentionPolicy, camera_ids, sweep_camera

log = logging.getLogger(__name__)


def policy_of(settings: CloudSettings) -> RetentionPolicy:
    return RetentionPolicy(settings.retention_days, dict(settings.retention_per_camera))


@dataclass
class SweepReport:
    sweeps: list[CameraSweep] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """camera id → the error its sweep stopped on"""


class RetentionSweeper:
    def __init__(
        self,
        store: FrameStore,
        policy: RetentionPolicy,
        metrics: CloudMetrics,
        interval_s: float = 300.0,
        batch: int = 1000,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """``clock``: now in Unix ns, what the cutoffs are taken from."""
        self.store, self.policy, self.metrics = store, policy, metrics
        self.clock = clock
        self.interval_s, self.batch = interval_s, batch
        self._stopping = threading.Event()  # ends a sweep between batches

    def sweep_once(self, dry_run: bool = False, now_ns: int | None = None) -> SweepReport:
        """One pass over every camera with a retention; a dry run deletes nothing and
        records no metrics."""
        t0 = time.perf_counter()
        now = self.clock() if now_ns is None else now_ns
        report = SweepReport()
        for camera in camera_ids(self.store):
            cutoff = self.policy.cutoff_ns(camera, now)
            if cutoff is None or self._stopping.is_set():
                continue
            try:
                done = sweep_camera(
                    self.store,
                    camera,
                    cutoff,
                    self.batch,
                    dry_run=dry_run,
                    stop=self._stopping.is_set,
                )
            except Exception as exc:  # a database or blob store error: next sweep retries
                log.exception("retention sweep of camera %s failed", camera)
                report.failed[camera] = str(exc) or type(exc).__name__
                if not dry_run:
                    self.metrics.retention_failures.inc()
                continue
            report.sweeps.append(done)
            if not dry_run:
                self._record(done, now)
        if not dry_run:
            self.metrics.retention_sweep_seconds.observe(time.perf_counter() - t0)
            self.metrics.retention_last_sweep.set(time.time())
        return report

    def _record(self, done: CameraSweep, now_ns: int) -> None:
        m = self.metrics
        for kind, n in done.deleted.counts().items():
            if n:
                m.retention_deleted.labels(done.camera_id, kind).inc(n)
        if done.oldest_frame_ns is None:
            with contextlib.suppress(KeyError):  # never set: nothing to remove
                m.retention_oldest_age.remove(done.camera_id)
        else:
            age = max(0, now_ns - done.oldest_frame_ns) / 1e9
            m.retention_oldest_age.labels(done.camera_id).set(age)
        if done.deleted.frames or done.held:
            log.info(
                "retention: camera %s: deleted %s (kept from sequence %s; %d frames held "
                "by running views)",
                done.camera_id,
                done.deleted.summary(),
                done.keep_from_sequence,
                done.held,
            )

    async def run(self) -> None:
        """Sweep at start, then every interval, until cancelled; never ends on an error."""
        try:
            while True:
                try:
                    await asyncio.to_thread(self.sweep_once)
                except Exception:  # camera_ids failed (database down): try again later
                    log.exception("retention sweep failed")
                    self.metrics.retention_failures.inc()
                await asyncio.sleep(self.interval_s)
        finally:
            self._stopping.set()  # a sweep still in its thread ends after its batch


def start_retention_sweeper(
    settings: CloudSettings, store: FrameStore, metrics: CloudMetrics
) -> asyncio.Task[None] | None:
    """The sweeper's task, or None when no retention is configured (keep forever)."""
    policy = policy_of(settings)
    if not policy.enabled:
        return None
    sweeper = RetentionSweeper(
        store, policy, metrics, settings.retention_sweep_interval_s, settings.retention_batch
    )
    log.info(
        "retention: %s days by default, %d cameras of their own; sweep every %g s",
        policy.default_days if policy.default_days is not None else "forever",
        len(policy.per_camera),
        settings.retention_sweep_interval_s,
    )
    return asyncio.create_task(sweeper.run(), name="retention-sweeper")
