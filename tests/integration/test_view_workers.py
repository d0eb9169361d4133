"""The view queue shared by processes, on the loopback PostgreSQL and Redis servers:
priority and bound in Redis, a Redis that lost everything, leases that lapse, and
`fchm worker` processes SIGKILLed mid-job beside a cloud replica that renders nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from cloud.metrics import CloudMetrics
from cloud.settings import CloudSettings
from cloud.store.frame_store import FrameStore
from cloud.store.records import ViewRecord
from cloud.view_queue import QueueFull, open_view_queue
from cloud.view_queue_redis import RedisViewQueue
from codec.bundle import Bundle
from fchm.cloud_process import WorkerProcess
from tests.conftest import RunningCloud, cloud_settings, sample_images, wait_for_view
from tests.integration.stored_frames import T0_NS, FrameMaker


def store_frames(store: FrameStore, bundle: Bundle, n: int) -> list[int]:
    store.register_camera("cam", bundle.hash, 0, "test")
    maker, images = FrameMaker(bundle), sample_images()
    return [
        maker.store(store, "cam", seq, T0_NS + seq, images[seq % len(images)], level=5).frame_id
        for seq in range(n)
    ]


@pytest.fixture
def shared(
    tiny_bundle: Bundle, tmp_path: Path, postgres_url: str, redis_url: str
) -> tuple[FrameStore, CloudSettings, list[int]]:
    settings = cloud_settings(
        tiny_bundle,
        tmp_path,
        database_url=postgres_url,
        view_queue_url=redis_url,
        view_workers=0,
        view_lease_s=1.0,
        max_queued_views=6,
    )
    store = FrameStore.open(postgres_url, settings.data_dir / "blobs")
    return store, settings, store_frames(store, tiny_bundle, 4)


def next_ids(queue: RedisViewQueue, n: int) -> list[str]:
    async def take() -> list[str]:
        return [await asyncio.wait_for(queue.get(), 5) for _ in range(n)]

    return asyncio.run(take())


def test_redis_queue_serves_by_priority_bounds_and_outlives_redis(
    shared: tuple[FrameStore, CloudSettings, list[int]], redis_url: str
) -> None:
    store, settings, frames = shared
    queue = open_view_queue(settings, store, CloudMetrics())
    assert isinstance(queue, RedisViewQueue) and queue.ping()
    low = queue.submit(frames[0], "preview", priority=1)
    normal = queue.submit(frames[1], "preview")
    high = queue.submit(frames[2], "preview", priority=9)
    later = queue.submit(frames[3], "preview")
    assert queue.depth() == 4
    assert next_ids(queue, 4) == [high.id, normal.id, later.id, low.id]

    # The bound counts what waits in Redis, whichever replica put it there.
    for _ in range(settings.max_queued_views):
        queue.submit(frames[0], "preview")
    with pytest.raises(QueueFull, match="max_queued_views"):
        queue.submit(frames[0], "preview")
    # Reuse joins a queued job, full queue or not.
    joined, reused = queue.request(frames[0], "preview")
    assert reused and joined.status == "queued"

    # Redis loses everything (ours keeps nothing on disk): upkeep puts the queued rows
    # back from the database, the popped ones too; a claim has one winner.
    redis.Redis.from_url(redis_url).flushdb()
    assert queue.depth() == 0
    requeued, queued = queue.maintain_once()
    assert requeued == 0 and queued == queue.depth() == settings.max_queued_views + 4
    twice = next_ids(queue, 1)[0]
    assert store.start_view(twice, "worker-a", 5.0) is True
    assert store.start_view(twice, "worker-b", 5.0) is False
    queue.close()


def test_a_lapsed_lease_is_requeued_then_given_up(
    shared: tuple[FrameStore, CloudSettings, list[int]],
) -> None:
    store, settings, frames = shared
    metrics = CloudMetrics()
    queue = open_view_queue(settings, store, metrics)
    other = open_view_queue(settings, store, CloudMetrics())  # a second replica
    assert isinstance(queue, RedisViewQueue) and isinstance(other, RedisViewQueue)
    job = queue.submit(frames[0], "preview")
    kept = queue.submit(frames[1], "preview")
    assert next_ids(queue, 2) == [job.id, kept.id]

    # A worker claims `job` and dies; another renews `kept` as it renders.
    assert store.start_view(job.id, "dead", 0.2)
    assert store.start_view(kept.id, "alive", 0.2)
    time.sleep(0.3)
    assert store.renew_view_lease([kept.id], "alive", 30.0) == 1
    assert store.renew_view_lease([job.id], "alive", 30.0) == 0  # not its job
    assert queue.requeue_lapsed() == 1
    assert other.requeue_lapsed() == 0  # two replicas reaping at once: one re-queues
    back = store.get_view(job.id)
    assert back is not None and back.status == "queued" and back.attempts == 1
    assert back.worker is None and back.lease_until_ns is None
    assert next_ids(queue, 1) == [job.id]
    assert store.get_view(kept.id).status == "running"  # type: ignore[union-attr]

    # It kills its second worker too: view_max_attempts (2) reached, it fails.
    assert store.start_view(job.id, "dead-again", 0.1)
    time.sleep(0.2)
    assert queue.maintain_once()[0] == 0
    failed = store.get_view(job.id)
    assert failed is not None and failed.status == "failed" and failed.attempts == 2
    assert failed.error == (
        "the worker died while rendering this view 2 times (view_max_attempts=2); it is not retried"
    )
    assert metrics.views.labels("failed")._value.get() == 1
    queue.close()
    other.close()


def running_of(store: FrameStore, pid: int) -> list[ViewRecord]:
    return [
        v
        for v in store.unfinished_views(("running",))
        if v.worker is not None and v.worker.split(":")[1] == str(pid)
    ]


def test_worker_processes_share_the_queue_and_a_sigkill_loses_no_job(
    shared: tuple[FrameStore, CloudSettings, list[int]],
    tiny_bundle: Bundle,
    tmp_path: Path,
) -> None:
    store, settings, frames = shared
    env = {
        "FCHM_CLOUD_DATABASE_URL": str(settings.database_url),
        "FCHM_CLOUD_VIEW_QUEUE_URL": str(settings.view_queue_url),
        "FCHM_CLOUD_VIEW_LEASE_S": "1.5",
        "FCHM_CLOUD_MAX_QUEUED_VIEWS": "64",
    }
    log = tmp_path / "workers.log"

    def worker() -> WorkerProcess:
        return WorkerProcess(tiny_bundle.path, settings.data_dir, log, env).start()

    # A replica that renders nothing itself (view_workers 0): requests over REST.
    replica = RunningCloud(settings.model_copy(update={"max_queued_views": 64}))
    try:
        api = replica.api()
        assert api.get("/readyz").json()["checks"] == {"database": True, "view_queue": True}

        def request_all() -> list[str]:
            ids = []
            for frame_id in frames * 5:
                r = api.post("/v1/views", json={"frame_id": frame_id, "reuse": False})
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            return ids

        # 1. Kill a worker while it renders: its job must be re-queued, not lost.
        killed: list[ViewRecord] = []
        ids: list[str] = []
        killed_pid = 0
        for _ in range(3):  # SIGKILL may land between two jobs; then try again
            ids += request_all()
            a = worker()
            assert a.process is not None
            deadline = time.monotonic() + 30
            while not running_of(store, a.process.pid) and time.monotonic() < deadline:
                time.sleep(0.002)
            a.kill()
            killed_pid, killed = a.process.pid, running_of(store, a.process.pid)
            if killed:
                break
        assert killed, "never caught the worker mid-job"

        # 2. Two more workers share what is left, the killed job included, once its
        #    lease lapses; a SIGTERM lets one finish its job and exit 0.
        b, c = worker(), worker()
        views = [wait_for_view(api, i, timeout_s=90) for i in ids]
        assert [v["status"] for v in views] == ["done"] * len(ids), views
        assert b.stop() == 0
        c.kill()
    finally:
        replica.stop()

    again = store.get_view(killed[0].id)
    assert again is not None and again.status == "done" and again.attempts == 2
    assert again.worker is not None and again.worker.split(":")[1] != str(killed_pid)
    # One image per job, each where its row says.
    for v in views:
        assert store.blobs.exists(f"views/{v['id']}.png")


def test_a_worker_without_a_shared_queue_says_what_is_missing(
    tiny_bundle: Bundle, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FCHM_CLOUD_")}
    run = subprocess.run(
        [sys.executable, "-m", "fchm", "worker", "--bundle", str(tiny_bundle.path),
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0
    assert "view_queue_url" in run.stderr and "redis://" in run.stderr, run.stderr
    with pytest.raises(ValueError, match="view_workers 0 leaves views to `fchm worker`"):
        CloudSettings(view_workers=0)
    with pytest.raises(ValueError, match="expected redis://"):
        CloudSettings(view_queue_url="amqp://127.0.0.1")
