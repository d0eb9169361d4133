"""View jobs end to end with real parts: POST /v1/views → ViewQueue (SQLite rows) →
RestoreWorker (real preview.onnx) → GET the PNG; view size, failures, restarts and
the jobs that kept killing the worker."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cloud.api.app import create_app
from cloud.api.deps import Services, readiness_checks
from cloud.frame_decoder import FrameDecoder
from cloud.metrics import CloudMetrics
from cloud.restore_worker import FINISHED, RestoreWorker, start_view_workers
from cloud.restorers import PreviewRestorer, Restorer, load_restorers, view_size
from cloud.settings import CloudSettings
from cloud.store.frame_store import FrameStore
from cloud.store.records import ViewRecord
from cloud.view_queue import QueueFull, ViewQueue
from codec.bundle import Bundle
from model.human_eval import psnr
from tests.conftest import admin_headers, sample_images
from tests.integration.stored_frames import T0_NS, FrameMaker, StoredSample, open_store


@dataclass
class ViewEnv:
    root: Path
    bundle: Bundle
    store: FrameStore
    settings: CloudSettings
    metrics: CloudMetrics
    queue: ViewQueue
    decoder: FrameDecoder
    restorers: dict[str, Restorer]
    samples: list[StoredSample]

    def services(self) -> Services:
        return Services(self.store, self.queue, self.bundle, self.metrics, readiness_checks({}))

    def worker(self, max_side: int | None = None) -> RestoreWorker:
        return RestoreWorker(
            self.store, self.decoder, self.restorers, self.queue, self.metrics, max_side
        )

    def restart(self) -> None:
        """A new process: a new queue (and metrics) over the same database and blobs."""
        self.store = FrameStore.open(f"sqlite:///{self.root / 'fchm.db'}", self.root / "blobs")
        self.metrics = CloudMetrics()
        self.queue = ViewQueue(self.store, self.settings, self.metrics)


@pytest.fixture(scope="module")
def shared(tiny_bundle: Bundle) -> tuple[FrameMaker, FrameDecoder, dict[str, Restorer]]:
    return FrameMaker(tiny_bundle), FrameDecoder(tiny_bundle), load_restorers(tiny_bundle, 1)


@pytest.fixture
def env(
    tiny_bundle: Bundle,
    shared: tuple[FrameMaker, FrameDecoder, dict[str, Restorer]],
    tmp_path: Path,
) -> ViewEnv:
    maker, decoder, restorers = shared
    store = open_store(tmp_path, tiny_bundle, ["cam"])
    samples = [
        maker.store(store, "cam", seq, T0_NS + seq, image, level=5)
        for seq, image in enumerate(sample_images())
    ]
    settings = CloudSettings(data_dir=tmp_path, max_queued_views=4)
    metrics = CloudMetrics()
    queue = ViewQueue(store, settings, metrics)
    return ViewEnv(
        tmp_path, tiny_bundle, store, settings, metrics, queue, decoder, restorers, samples
    )


@pytest.fixture
def client(env: ViewEnv) -> Iterator[TestClient]:
    with TestClient(
        create_app(env.settings, env.services()), headers=admin_headers(env.store)
    ) as c:
        yield c


def next_job(queue: ViewQueue) -> str:
    return asyncio.run(asyncio.wait_for(queue.get(), 5))


def test_view_is_rendered_at_the_capped_size(env: ViewEnv, client: TestClient) -> None:
    sample = env.samples[0]
    # bus.jpg is 810x1080; views default to the network input size on the long side.
    side = env.bundle.manifest.detector.input_size
    size = view_size(sample.image_size, side)
    assert max(size) == side < max(sample.image_size)
    r = client.post("/v1/views", json={"frame_id": sample.frame_id})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and body["kind"] == "preview"
    assert r.headers["location"] == body["links"]["self"] == f"/v1/views/{body['id']}"
    assert env.metrics.views_queued._value.get() == 1

    # Not rendered yet: the image is a 409 that says the job's status.
    r = client.get(body["links"]["image"])
    assert r.status_code == 409
    assert r.json()["view_status"] == "queued"

    assert next_job(env.queue) == body["id"]
    assert env.metrics.views_queued._value.get() == 0
    done = env.worker().render_once(body["id"])
    assert done is not None and done.status == "done", done

    view = client.get(body["links"]["self"]).json()
    assert view["status"] == "done" and view["error"] is None
    assert (view["width"], view["height"], view["attempts"]) == (*size, 1)
    assert view["created_ns"] <= view["started_ns"] <= view["finished_ns"]
    assert view["finished"].endswith("Z")
    assert "not a photograph" in view["description"] and "not the diffusion" in view["description"]

    r = client.get(body["links"]["image"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(r.content))
    assert image.mode == "RGB" and image.size == size
    # The PNG says what it is to anyone who opens it: a reconstruction, from which bytes.
    frame = env.store.get_frame(sample.frame_id)
    assert frame is not None
    assert image.info["fchm:reconstruction"] == "true" and image.info["fchm:kind"] == "preview"
    assert image.info["fchm:bytes_used"] == image.info["fchm:frame_bytes"] == str(frame.num_bytes)
    assert image.info["fchm:chain_frames"] == "1"  # a keyframe: decoded from itself
    assert image.info["fchm:frame_id"] == str(sample.frame_id)
    assert image.info["fchm:model_sha256"] == env.bundle.manifest.sha256["preview.onnx"]
    assert image.info["fchm:bundle"] == env.bundle.hash
    assert "not the camera's image" in image.info["Description"]
    # Blurry, but the preview was fitted on these images: it must resemble the original.
    original = Image.open(sample.image).convert("RGB").resize(size, Image.Resampling.BOX)
    assert psnr(np.asarray(image), np.asarray(original)) > 14.0
    assert env.metrics.views.labels("done")._value.get() == 1


def test_view_is_never_larger_than_its_frame(env: ViewEnv) -> None:
    # A cap above the frame's size renders the frame's own size, not an upscaled one.
    sample = env.samples[0]
    job = env.queue.submit(sample.frame_id, "preview")
    done = env.worker(max_side=4096).render_once(job.id)
    assert done is not None and done.status == "done"
    assert (done.width, done.height) == sample.image_size
    # A smaller cap keeps the aspect: 1080 → 100 on the long side.
    job = env.queue.submit(sample.frame_id, "preview")
    done = env.worker(max_side=100).render_once(job.id)
    assert done is not None and (done.width, done.height) == (75, 100)
    png = env.store.blobs.get(done.image_key or "")
    assert Image.open(io.BytesIO(png)).size == (75, 100)


def test_view_by_camera_and_sequence(env: ViewEnv, client: TestClient) -> None:
    sample = env.samples[1]
    r = client.post("/v1/views", json={"camera": "cam", "sequence": 1, "kind": "preview"})
    assert r.status_code == 202 and r.json()["frame_id"] == sample.frame_id


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        ({"frame_id": 1, "kind": "sketch"}, 400, "kind", ["sketch", "diffusion", "preview"]),
        ({"frame_id": 99999}, 404, "frame_id", ["99999"]),
        ({"camera": "cam", "sequence": 77}, 404, "sequence", ["77", "omit 'sequence'"]),
        ({"sequence": 1}, 422, "camera", ["camera"]),
        ({"camera": "cam-z"}, 404, "camera", ["'cam-z'"]),
        ({}, 422, "frame_id", ["frame_id"]),
        ({"frame_id": 1, "camera": "cam", "sequence": 0}, 422, "frame_id", ["not both"]),
        ({"frame_id": "one"}, 422, "frame_id", ["frame_id"]),
        ({"frame_id": 1, "colour": "red"}, 422, "colour", ["colour"]),
        ({"frame_id": 2**64}, 422, "frame_id", ["frame_id"]),
        ({"camera": "cam", "sequence": 2**64}, 422, "sequence", ["sequence"]),
    ],
)
def test_bad_view_requests_name_the_field(
    client: TestClient, body: dict[str, object], status: int, field: str, words: list[str]
) -> None:
    r = client.post("/v1/views", json=body)
    assert r.status_code == status, r.text
    error = r.json()
    assert (error["status"], error["field"]) == (status, field)
    for word in words:
        assert word in error["detail"]


def test_unknown_view_is_404(client: TestClient) -> None:
    for path in ("/v1/views/nope", "/v1/views/nope/image"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["field"] == "view_id"


def test_full_queue_is_429_with_retry_after(env: ViewEnv, client: TestClient) -> None:
    for _ in range(env.settings.max_queued_views):
        body = {"frame_id": 1, "reuse": False}
        assert client.post("/v1/views", json=body).status_code == 202
    r = client.post("/v1/views", json={"frame_id": 1, "reuse": False})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0
    assert "max_queued_views" in r.json()["detail"]
    with pytest.raises(QueueFull):
        env.queue.submit(1, "preview")
    # A rejected request leaves no job behind.
    assert len(env.store.unfinished_views()) == env.settings.max_queued_views
    # A full queue still answers with the job already covering the frame.
    joined = client.post("/v1/views", json={"frame_id": 1})
    assert joined.status_code == 200 and joined.json()["status"] == "queued"


def test_a_repeated_request_joins_the_job_then_gets_the_cached_view(
    env: ViewEnv, client: TestClient
) -> None:
    frame_id = env.samples[1].frame_id
    first = client.post("/v1/views", json={"frame_id": frame_id})
    assert first.status_code == 202
    joined = client.post("/v1/views", json={"frame_id": frame_id})
    assert joined.status_code == 200 and joined.json()["id"] == first.json()["id"]
    assert env.queue.depth() == 1
    env.worker().render_once(next_job(env.queue))
    cached = client.post("/v1/views", json={"frame_id": frame_id})
    assert cached.status_code == 200
    assert cached.json()["id"] == first.json()["id"] and cached.json()["status"] == "done"
    assert cached.headers["location"] == f"/v1/views/{first.json()['id']}"
    # reuse: false renders again; another kind or frame is its own job.
    again = client.post("/v1/views", json={"frame_id": frame_id, "reuse": False})
    assert again.status_code == 202 and again.json()["id"] != first.json()["id"]
    other = client.post("/v1/views", json={"frame_id": env.samples[0].frame_id})
    assert other.status_code == 202
    assert env.metrics.views_reused.labels("queued")._value.get() == 1
    assert env.metrics.views_reused.labels("done")._value.get() == 1
    # A failed job is not reused: asking again is how to retry it.
    failed = env.store.get_view(other.json()["id"])
    assert failed is not None
    env.store.update_view(failed.id, status="failed", error="test")
    retry = client.post("/v1/views", json={"frame_id": env.samples[0].frame_id})
    assert retry.status_code == 202 and retry.json()["id"] != failed.id


def test_higher_priority_is_served_first_then_oldest(env: ViewEnv, client: TestClient) -> None:
    def post(priority: int) -> str:
        body = {"frame_id": 1, "priority": priority, "reuse": False}
        r = client.post("/v1/views", json=body)
        assert r.status_code == 202 and r.json()["priority"] == priority
        return str(r.json()["id"])

    low, normal_1, high, normal_2 = post(1), post(5), post(9), post(5)
    assert [next_job(env.queue) for _ in range(4)] == [high, normal_1, normal_2, low]
    for bad in (-1, 10, "high"):
        r = client.post("/v1/views", json={"frame_id": 1, "priority": bad})
        assert r.status_code == 422 and r.json()["field"] == "priority"
    # Order survives a restart: the queue is rebuilt from the rows.
    env.restart()
    assert [next_job(env.queue) for _ in range(4)] == [high, normal_1, normal_2, low]


def test_a_job_past_its_deadline_fails_without_rendering(env: ViewEnv, client: TestClient) -> None:
    r = client.post("/v1/views", json={"frame_id": 1, "deadline_s": 0.001})
    assert r.status_code == 202
    body = r.json()
    assert body["deadline_ns"] > body["created_ns"] and body["deadline"].endswith("Z")
    assert body["deadline_ns_str"] == str(body["deadline_ns"])
    view = env.worker().render_once(next_job(env.queue))
    assert view is not None and view.status == "failed" and view.attempts == 0
    assert view.error and view.error.startswith("expired") and view.image_key is None
    assert env.metrics.views.labels("expired")._value.get() == 1
    # A generous deadline renders; none is the default.
    ok = client.post("/v1/views", json={"frame_id": 2, "deadline_s": 600}).json()
    done = env.worker().render_once(next_job(env.queue))
    assert done is not None and done.id == ok["id"] and done.status == "done"
    assert client.post("/v1/views", json={"frame_id": 2, "deadline_s": 0}).status_code == 422


async def run_until_finished(env: ViewEnv, ids: list[str], n_workers: int = 1) -> list[ViewRecord]:
    tasks = await start_view_workers(env.services(), env.decoder, n_workers, threads=1)
    try:
        async with asyncio.timeout(60):
            while True:
                views = [env.store.get_view(i) for i in ids]
                if all(v is not None and v.status in FINISHED for v in views):
                    return [v for v in views if v is not None]
                await asyncio.sleep(0.05)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert all(t.cancelled() for t in tasks), "workers must only stop when cancelled"


def test_corrupted_bitstream_fails_and_the_worker_serves_the_next_job(env: ViewEnv) -> None:
    bad, good = env.samples
    frame = env.store.get_frame(bad.frame_id)
    assert frame is not None
    corrupted = bytearray(bad.bitstream)
    corrupted[len(corrupted) // 2] ^= 0xFF
    env.store.blobs.put(frame.bitstream_key, bytes(corrupted))

    first = env.queue.submit(bad.frame_id, "preview")
    second = env.queue.submit(good.frame_id, "preview")
    views = asyncio.run(run_until_finished(env, [first.id, second.id]))

    assert views[0].status == "failed"
    assert views[0].error and "corrupted" in views[0].error
    assert views[0].image_key is None and views[0].finished_ns is not None
    assert views[1].status == "done"
    assert views[1].image_key and env.store.blobs.exists(views[1].image_key)
    assert env.metrics.views.labels("failed")._value.get() == 1
    assert env.metrics.views.labels("done")._value.get() == 1


def test_missing_bitstream_blob_fails_with_a_message(env: ViewEnv) -> None:
    frame = env.store.get_frame(env.samples[0].frame_id)
    assert frame is not None
    (env.root / "blobs" / frame.bitstream_key).unlink()
    job = env.queue.submit(frame.id or 0, "preview")
    failed = env.worker().render_once(job.id)
    assert failed is not None and failed.status == "failed"
    assert failed.error and "missing" in failed.error
    # A finished job is not rendered again.
    assert env.worker().render_once(job.id) == failed


def test_restart_requeues_unfinished_jobs(env: ViewEnv) -> None:
    queued = env.queue.submit(env.samples[0].frame_id, "preview")
    running = env.queue.submit(env.samples[1].frame_id, "preview")
    finished = env.queue.submit(env.samples[1].frame_id, "preview")
    env.worker().render_once(finished.id)
    # The process died while rendering `running`: a worker had started it, once.
    env.store.start_view(running.id)
    assert env.settings.view_max_attempts == 2

    env.restart()
    assert env.queue.depth() == 2
    assert env.metrics.views_queued._value.get() == 2
    reset = env.store.get_view(running.id)
    assert reset is not None and reset.status == "queued" and reset.started_ns is None
    assert reset.attempts == 1

    views = asyncio.run(run_until_finished(env, [queued.id, running.id], n_workers=2))
    assert [(v.status, v.attempts) for v in views] == [("done", 1), ("done", 2)]
    assert env.queue.depth() == 0


def test_a_job_that_killed_the_worker_max_times_is_failed_not_requeued(env: ViewEnv) -> None:
    deadly = env.queue.submit(env.samples[0].frame_id, "preview")
    other = env.queue.submit(env.samples[1].frame_id, "preview")
    # Each time the process started `deadly` it died, restarted and re-queued it.
    for attempt in range(1, env.settings.view_max_attempts + 1):
        env.store.start_view(deadly.id)
        if attempt < env.settings.view_max_attempts:
            env.restart()
            assert env.store.get_view(deadly.id).status == "queued"  # type: ignore[union-attr]

    env.restart()
    failed = env.store.get_view(deadly.id)
    assert failed is not None and failed.status == "failed" and failed.finished_ns is not None
    assert failed.error == (
        "the worker died while rendering this view 2 times (view_max_attempts=2); it is not retried"
    )
    assert env.metrics.views.labels("failed")._value.get() == 1
    # Only the other job is queued, and it renders; the failed one stays failed.
    assert env.queue.depth() == 1 and next_job(env.queue) == other.id
    assert env.worker().render_once(deadly.id) == failed
    env.restart()
    assert env.queue.depth() == 1  # `other` is still queued; `deadly` is not back


def test_workers_wait_for_jobs_submitted_from_another_thread(env: ViewEnv) -> None:
    async def wait_and_stop() -> ViewRecord | None:
        tasks = await start_view_workers(env.services(), env.decoder, 2, threads=1)
        try:
            async with asyncio.timeout(30):  # both workers parked in queue.get()
                while env.queue.idle_workers() < 2:
                    await asyncio.sleep(0.01)
            job = await asyncio.to_thread(env.queue.submit, env.samples[1].frame_id, "preview")
            async with asyncio.timeout(30):
                while (view := env.store.get_view(job.id)) is None or view.status not in FINISHED:
                    await asyncio.sleep(0.05)
            return view
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    view = asyncio.run(wait_and_stop())
    assert view is not None and view.status == "done"


def test_preview_restorer_is_registered_and_described() -> None:
    assert PreviewRestorer.kind == "preview"
    assert "reconstruction" in PreviewRestorer.description
    assert "not a photograph" in PreviewRestorer.description


def test_concurrent_submits_never_overshoot_the_bound(env: ViewEnv) -> None:
    def submit(_: int) -> bool:
        try:
            env.queue.submit(env.samples[0].frame_id, "preview")
        except QueueFull:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        accepted = sum(pool.map(submit, range(20)))
    assert accepted == env.settings.max_queued_views == env.queue.depth()
    assert len(env.store.unfinished_views()) == accepted
