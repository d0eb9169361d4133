"""Retention on SQLite and on the loopback PostgreSQL server: expired frames go with their
detections, views and blobs, in batches; the kept frames still decode from their
keyframe; running views hold their frames; per-camera overrides, dry runs, metrics, two
sweepers at once, a sweeper that outlives a failing sweep, the CLI and the running cloud.

Frames are real: a real video → the edge encoder (a keyframe every 4 frames, P-frames
between) → FrameIngest (decoder, detector tail) → the store.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from cloud.detector_tail import DetectorTail
from cloud.frame_decoder import FrameDecoder
from cloud.frame_ingest import FrameIngest, ReceivedFrame
from cloud.latent_references import LatentReferences
from cloud.metrics import CloudMetrics
from cloud.retention_sweeper import RetentionSweeper
from cloud.settings import CloudSettings
from cloud.store.blobs import LocalBlobStore
from cloud.store.frame_store import FrameStore
from cloud.store.records import DetectionQuery, FrameRecord, ViewRecord
from cloud.store.retention import NS_PER_DAY, RetentionPolicy, sweep_camera
from codec.bitstream import FrameBitstream
from codec.bundle import Bundle
from edge.frame_encoder import FrameEncoder
from fchm.cli import app
from tests.conftest import RunningCloud, cloud_settings
from tests.integration.test_codec_bit_exact import frames_of_a_real_video
from tests.integration.test_rest_api import rest_client

S = 1_000_000_000
T0 = 1_700_000_000 * S
N = 14  # frames per camera, 1 s apart from T0: keyframes 0, 4, 8, 12
KEYFRAME_INTERVAL = 4
NOW = T0 + NS_PER_DAY + 6 * S + S // 2  # 1 day after frame 6.5: frames 0-6 are a day old
POLICY = RetentionPolicy(1.0, {"cam-b": 3.0})  # cam-a 1 day, cam-b 3 days


@pytest.fixture(scope="module")
def stream(tiny_bundle: Bundle) -> list[bytes]:
    encoder = FrameEncoder(tiny_bundle, keyframe_interval=KEYFRAME_INTERVAL)
    return [encoder.encode(f, 3).bitstream for f in frames_of_a_real_video(N)]


@dataclass
class Site:
    store: FrameStore
    root: Path
    bundle: Bundle
    stream: list[bytes]

    def frame(self, camera: str, sequence: int) -> FrameRecord | None:
        return self.store.find_frame(camera, sequence)

    def sequences(self, camera: str) -> list[int]:
        return [f.sequence for f in self.store.list_frames(camera, None, None, 1000, None)]

    def add_view(self, camera: str, sequence: int, status: str, image: bool) -> ViewRecord:
        record = self.frame(camera, sequence)
        assert record is not None and record.id is not None
        key = None
        if image:
            key = f"views/{secrets.token_hex(8)}.png"
            self.store.blobs.put(key, b"\x89PNG fake image")
        view = ViewRecord(
            id=secrets.token_hex(8),
            frame_id=record.id,
            kind="preview",
            status=status,
            created_ns=T0,
            image_key=key,
        )
        self.store.create_view(view)
        return view


def _url(request: pytest.FixtureRequest, path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{path / 'fchm.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["sqlite", "postgresql"])
def site(
    request: pytest.FixtureRequest, tiny_bundle: Bundle, stream: list[bytes], tmp_path: Path
) -> Iterator[Site]:
    store = FrameStore.open(_url(request, tmp_path), tmp_path / "blobs")
    fill(store, tiny_bundle, stream, ["cam-a", "cam-b"])
    yield Site(store, tmp_path, tiny_bundle, stream)
    store.engine.dispose()


def fill(store: FrameStore, bundle: Bundle, stream: list[bytes], cameras: list[str]) -> None:
    ingest = FrameIngest(FrameDecoder(bundle), DetectorTail(bundle), store, CloudMetrics())
    for camera in cameras:
        store.register_camera(camera, bundle.hash, 0, "test")
        for seq, data in enumerate(stream):
            ingest.ingest(ReceivedFrame(camera, seq, T0 + seq * S, 3, data), 0)


def sample(metrics: CloudMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_the_stream_has_keyframes_and_p_frames(stream: list[bytes]) -> None:
    kinds = [FrameBitstream.peek_reference(b) is None for b in stream]
    assert kinds == [i % KEYFRAME_INTERVAL == 0 for i in range(N)]


def test_expired_frames_go_with_detections_views_and_blobs(site: Site) -> None:
    store = site.store
    old = [site.frame("cam-a", s) for s in range(4)]
    old_view = site.add_view("cam-a", 1, "done", image=True)
    queued = site.add_view("cam-a", 3, "queued", image=False)
    kept_view = site.add_view("cam-a", 9, "done", image=True)
    detections = sum(f.num_detections for f in old if f is not None)
    assert sum(f.num_detections for f in _frames(site, "cam-a")) > 0, "a test that sees no box"

    metrics = CloudMetrics()
    report = RetentionSweeper(store, POLICY, metrics, batch=2).sweep_once(now_ns=NOW)
    assert not report.failed
    a, b = sorted(report.sweeps, key=lambda x: x.camera_id)

    # cam-a: frames 0-6 are older than a day; 7 is a P-frame whose keyframe is 4, so
    # 0-3 go (two batches of 2, then an empty one) and 4-13 stay.
    assert a.keep_from_sequence == 4
    assert (a.deleted.frames, a.deleted.detections, a.deleted.views) == (4, detections, 2)
    assert a.deleted.blobs == 4 + 1  # four bitstreams, one view image
    assert a.batches == 3 and a.held == 0
    assert site.sequences("cam-a") == list(range(4, N))
    assert site.sequences("cam-b") == list(range(N))  # 3 days: nothing expired
    assert b.deleted.frames == 0
    for f in old:
        assert f is not None
        assert not store.blobs.exists(f.bitstream_key)
        assert store.query_detections(DetectionQuery(frame_id=f.id)) == []
    assert store.get_view(old_view.id) is None and store.get_view(queued.id) is None
    assert old_view.image_key is not None and not store.blobs.exists(old_view.image_key)
    assert store.get_view(kept_view.id) is not None
    assert kept_view.image_key is not None and store.blobs.exists(kept_view.image_key)

    # Every kept P-frame still decodes from its keyframe, to what ingest decoded.
    decoder = FrameDecoder(site.bundle)
    references = LatentReferences(decoder, store)
    reference = None
    for seq, data in enumerate(site.stream):
        expected = decoder.decode(data, reference=reference)
        reference = expected.as_reference
        if seq >= 4:
            got = references.decode_stored("cam-a", seq)
            assert np.array_equal(got.features, expected.features), seq

    # Metrics: per camera and kind, the sweep's time and end, the oldest frame's age.
    for kind, n in a.deleted.counts().items():
        assert sample(metrics, "fchm_retention_deleted_total", camera="cam-a", kind=kind) == n
    assert sample(metrics, "fchm_retention_deleted_total", camera="cam-b", kind="frames") == 0
    assert sample(metrics, "fchm_retention_sweep_seconds_count") == 1
    assert sample(metrics, "fchm_retention_last_sweep_timestamp_seconds") > time.time() - 60
    age = sample(metrics, "fchm_retention_oldest_frame_age_seconds", camera="cam-a")
    assert age == pytest.approx((NOW - (T0 + 4 * S)) / S)

    # Swept again: nothing more goes (the kept chain starts at a keyframe).
    again = RetentionSweeper(store, POLICY, metrics, batch=2).sweep_once(now_ns=NOW)
    assert [s.deleted.frames for s in again.sweeps] == [0, 0]

    # The REST API no longer has them.
    with rest_client(store, site.bundle, site.root) as (client, _):
        r = client.get("/v1/frames", params={"camera": "cam-a", "limit": 100})
        assert [f["sequence"] for f in r.json()["items"]] == list(range(4, N))
        assert client.get(f"/v1/frames/{old[0].id if old[0] else 0}").status_code == 404
        r = client.get("/v1/detections", params={"camera": "cam-a", "limit": 1000})
        assert {d["frame_id"] for d in r.json()["items"]} <= {
            f.id for s in range(4, N) if (f := site.frame("cam-a", s))
        }


def test_a_later_sweep_moves_on_to_the_next_keyframe(site: Site) -> None:
    # 10.5 s after T0 + 1 day: 11 (a P-frame of keyframe 8) is the oldest kept.
    report = RetentionSweeper(site.store, POLICY, CloudMetrics(), batch=3).sweep_once(
        now_ns=NOW + 4 * S
    )
    a = next(s for s in report.sweeps if s.camera_id == "cam-a")
    assert (a.keep_from_sequence, a.deleted.frames) == (8, 8)
    assert site.sequences("cam-a") == list(range(8, N))
    decoded = LatentReferences(FrameDecoder(site.bundle), site.store).decode_stored("cam-a", 11)
    assert decoded.bitstream.reference is not None
    # Per camera: cam-b alone at 1 day (no default) keeps from keyframe 8 too.
    per_camera = RetentionPolicy(None, {"cam-b": 1.0})
    report = RetentionSweeper(site.store, per_camera, CloudMetrics()).sweep_once(now_ns=NOW + 4 * S)
    assert [(s.camera_id, s.deleted.frames) for s in report.sweeps] == [("cam-b", 8)]


def test_everything_expired_goes(site: Site) -> None:
    report = RetentionSweeper(site.store, POLICY, CloudMetrics(), batch=5).sweep_once(
        now_ns=T0 + 4 * NS_PER_DAY
    )
    assert [(s.keep_from_sequence, s.deleted.frames) for s in report.sweeps] == [(None, N)] * 2
    assert site.sequences("cam-a") == [] and site.sequences("cam-b") == []
    assert not any(p.is_file() for p in (site.root / "blobs").rglob("*"))


def test_a_running_view_holds_its_frame_and_chain_until_done(site: Site) -> None:
    running = site.add_view("cam-a", 2, "running", image=False)
    done = site.add_view("cam-a", 1, "done", image=True)
    sweeper = RetentionSweeper(site.store, POLICY, CloudMetrics(), batch=2)
    a = sweeper.sweep_once(now_ns=NOW).sweeps[0]
    # Frame 2 decodes from keyframe 0: 0-3 all stay, and the views with them.
    assert (a.keep_from_sequence, a.deleted.frames) == (0, 0)
    assert site.sequences("cam-a") == list(range(N))
    assert site.store.get_view(running.id) is not None and site.store.get_view(done.id)
    # The worker finished: the next sweep takes them.
    site.store.update_view(running.id, status="done")
    a = sweeper.sweep_once(now_ns=NOW).sweeps[0]
    assert (a.keep_from_sequence, a.deleted.frames, a.deleted.views) == (4, 4, 2)
    assert site.store.get_view(running.id) is None


def test_a_dry_run_counts_what_a_sweep_deletes_and_deletes_nothing(site: Site) -> None:
    site.add_view("cam-a", 1, "done", image=True)
    site.add_view("cam-a", 2, "failed", image=False)
    metrics = CloudMetrics()
    sweeper = RetentionSweeper(site.store, POLICY, metrics, batch=2)
    dry = sweeper.sweep_once(dry_run=True, now_ns=NOW)
    assert site.sequences("cam-a") == list(range(N))
    assert all(site.store.blobs.exists(f.bitstream_key) for f in _frames(site, "cam-a"))
    assert sample(metrics, "fchm_retention_sweep_seconds_count") == 0
    real = sweeper.sweep_once(now_ns=NOW)
    assert [s.deleted for s in dry.sweeps] == [s.deleted for s in real.sweeps]
    assert dry.sweeps[0].deleted.frames == 4 and dry.sweeps[0].deleted.blobs == 5


def test_two_sweepers_at_once_delete_each_frame_once(site: Site) -> None:
    cutoff = NOW - NS_PER_DAY
    results: list[int] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            results.append(sweep_camera(site.store, "cam-a", cutoff, batch=1).deleted.frames)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and sum(results) == 4
    assert site.sequences("cam-a") == list(range(4, N))


def test_the_sweeper_outlives_a_failing_sweep(site: Site) -> None:
    # Frame 7's bitstream (the walk to its keyframe reads it) becomes unreadable.
    blobs = site.store.blobs
    assert isinstance(blobs, LocalBlobStore)
    seventh = site.frame("cam-a", 7)
    assert seventh is not None
    path = blobs.root / seventh.bitstream_key
    data = path.read_bytes()
    path.unlink()
    path.mkdir()  # IsADirectoryError: not a missing blob, an error
    metrics = CloudMetrics()
    policy = RetentionPolicy(None, {"cam-a": (NOW - (T0 + 6 * S + S // 2)) / NS_PER_DAY})
    sweeper = RetentionSweeper(site.store, policy, metrics, interval_s=0.05, clock=lambda: NOW)

    async def scenario() -> None:
        task = asyncio.create_task(sweeper.run())
        while sample(metrics, "fchm_retention_failures_total") < 2:
            await asyncio.sleep(0.02)
        assert not task.done() and site.sequences("cam-a") == list(range(N))
        path.rmdir()
        path.write_bytes(data)
        deadline = time.monotonic() + 30
        while site.sequences("cam-a") != list(range(4, N)):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert sample(metrics, "fchm_retention_deleted_total", camera="cam-a", kind="frames") == 4


def test_the_cli_sweeps_once(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FCHM_CLOUD_RETENTION_DAYS", "1")  # T0 is long ago: all expired
    args = ["cloud", "retention", "sweep", "--data-dir", str(site.root)]
    args += ["--database-url", str(site.store.engine.url.render_as_string(hide_password=False))]
    runner = CliRunner()
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"cam-a: would delete {N} frames" in dry.output
    assert site.sequences("cam-a") == list(range(N))
    real = runner.invoke(app, args)
    assert real.exit_code == 0, real.output
    assert f"cam-a: deleted {N} frames" in real.output and "cam-b: deleted" in real.output
    assert site.sequences("cam-a") == []
    monkeypatch.delenv("FCHM_CLOUD_RETENTION_DAYS")
    none = runner.invoke(app, args)
    assert none.exit_code == 2 and "no retention configured" in none.output


def test_the_running_cloud_sweeps(tiny_bundle: Bundle, stream: list[bytes], tmp_path: Path) -> None:
    settings = cloud_settings(tiny_bundle, tmp_path, retention_days=1.0)
    settings.data_dir.mkdir(parents=True)
    store = FrameStore.open(settings.resolved_database_url(), settings.data_dir / "blobs")
    fill(store, tiny_bundle, stream[:5], ["cam-a"])
    store.engine.dispose()
    cloud = RunningCloud(settings)
    try:
        with cloud.api() as api:
            deadline = time.monotonic() + 30
            while api.get("/v1/frames", params={"camera": "cam-a"}).json()["items"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            text = api.get("/metrics").text
        assert 'fchm_retention_deleted_total{camera="cam-a",kind="frames"} 5.0' in text
    finally:
        cloud.stop()


def test_retention_settings_are_checked() -> None:
    for bad in ({"retention_days": 0}, {"retention_per_camera": {"cam/1": 3}}):
        with pytest.raises(ValidationError):
            CloudSettings(**bad)
    with pytest.raises(ValidationError, match="cam1: retention 0.0 days"):
        CloudSettings(retention_per_camera={"cam1": 0})
    s = CloudSettings(retention_days=30, retention_per_camera={"cam1": 2.5})
    assert RetentionPolicy(s.retention_days, s.retention_per_camera).days("cam1") == 2.5


def _frames(site: Site, camera: str) -> list[FrameRecord]:
    return site.store.list_frames(camera, None, None, 1000, None)
