"""``fchm worker``: restore workers in a process of their own, beside the cloud replicas.

    settings (database_url, blob_url, view_queue_url, bundle)
        ─► FrameStore + BlobStore (the replicas' own) ─► RedisViewQueue (shared)
        ─► view_workers × RestoreWorker ─► PNGs in the blob store, rows in the database
        ─► queue upkeep (lapsed leases re-queued) │ /metrics on worker_metrics_port

Any number of these run against one database and queue, on CPU or on a GPU machine
(the restorers pick ONNX Runtime's providers). SIGTERM finishes the job in hand and
stops; SIGKILL loses nothing either: the job's lease lapses and another process
re-queues it.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import start_http_server

from cloud.api.deps import Services, readiness_checks
from cloud.frame_decoder import FrameDecoder
from cloud.metrics import CloudMetrics
from cloud.restore_worker import restorer_options, start_view_workers
from cloud.settings import CloudSettings
from cloud.store import open_store
from cloud.view_queue import open_view_queue
from codec.bundle import Bundle

log = logging.getLogger(__name__)


async def serve_view_workers(settings: CloudSettings) -> None:
    s = settings
    if s.view_queue_url is None:
        raise ValueError(
            "view_queue_url: `fchm worker` takes jobs from the queue the cloud replicas share "
            "(redis://…); without one, `fchm cloud serve` renders views itself (view_workers)"
        )
    # 1. The same bundle, database and blobs as the replicas.
    bundle = Bundle.load(s.bundle)
    metrics = CloudMetrics()
    store = open_store(s)
    queue = open_view_queue(s, store, metrics)
    if s.worker_metrics_port is not None:
        start_http_server(s.worker_metrics_port, addr=s.http_host, registry=metrics.registry)

    # 2. Workers and the queue's upkeep until SIGTERM/SIGINT.
    services = Services(store, queue, bundle, metrics, readiness_checks({}))
    n = max(1, s.view_workers)
    tasks = [asyncio.create_task(queue.maintain(), name="view-queue-upkeep")]
    tasks += await start_view_workers(
        services,
        FrameDecoder(bundle),
        n,
        s.onnx_threads,
        s.view_max_side,
        s.view_lease_s,
        restorer_options(s),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fchm worker ready: {n} restore workers on {s.view_queue_url}", flush=True)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping: finishing the jobs in hand")
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    queue.close()
    store.engine.dispose()
    for task, result in zip(tasks, results, strict=True):
        if not stop.is_set() and not isinstance(result, asyncio.CancelledError):
            raise RuntimeError(f"{task.get_name()} stopped") from (
                result if isinstance(result, BaseException) else None
            )
