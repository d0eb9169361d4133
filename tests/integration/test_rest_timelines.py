"""REST for a dashboard, on SQLite and on the loopback PostgreSQL server: camera status,
several cameras and labels in one query, counts per time bucket, and listing and
deleting view jobs.

Frames are real (tiny bundle → codec → detector tail → store); expected values are
computed here from the Detection objects the tail produced, not from the store.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from cloud.api.params import Bucket
from cloud.store.api_keys import ApiKeyStore
from cloud.store.frame_store import FrameStore
from cloud.store.schema import cameras
from codec.bundle import Bundle
from tests.conftest import sample_images
from tests.integration.stored_frames import T0_NS, FrameMaker, StoredSample
from tests.integration.test_rest_api import rest_client, walk

S = 1_000_000_000
OLD_STEP_NS = 4 * S  # cam-a, cam-b: 6 frames 4 s apart from T0, long ago
LIVE = "cam-live"  # frames over the last seconds, at rate level 2


@dataclass
class Site:
    client: TestClient
    store: FrameStore
    samples: list[StoredSample]
    live_bytes: int

    def rows(self, keep: Any = lambda s, d: True) -> list[tuple[StoredSample, Any]]:
        return [
            (s, d) for s in self.samples if s.camera != LIVE for d in s.detections if keep(s, d)
        ]


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tiny_bundle: Bundle, tmp_path: Path) -> Iterator[Site]:
    url = (
        f"sqlite:///{tmp_path / 'fchm.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    store = FrameStore.open(url, tmp_path / "blobs")
    maker = FrameMaker(tiny_bundle)
    samples = []
    for camera in ("cam-a", "cam-b", LIVE):
        store.register_camera(camera, tiny_bundle.hash, 0, "test")
    for seq in range(6):
        for camera in ("cam-a", "cam-b"):
            image = sample_images()[(seq + (camera == "cam-b")) % 2]
            t = T0_NS + seq * OLD_STEP_NS
            samples.append(maker.store(store, camera, seq, t, image, level=1))
    now = time.time_ns()
    for seq in range(5):  # 1 s apart, the newest 1 s ago: all inside a 60 s window
        t = now - (5 - seq) * S
        samples.append(maker.store(store, LIVE, seq, t, sample_images()[0], level=2))
    live_bytes = sum(len(s.bitstream) for s in samples if s.camera == LIVE)
    # cam-a and cam-b last spoke long ago: offline.
    with store.engine.begin() as conn:
        conn.execute(
            update(cameras).where(cameras.c.camera_id != LIVE).values(last_seen_ns=T0_NS + 60 * S)
        )
    with rest_client(store, tiny_bundle, tmp_path) as (client, _):
        yield Site(client, store, samples, live_bytes)
    store.engine.dispose()


def test_cameras_carry_their_status(site: Site) -> None:
    items = {c["camera_id"]: c for c in site.client.get("/v1/cameras").json()["items"]}
    live = items[LIVE]["status"]
    assert live["online"] is True
    assert live["rate_level"] == 2
    assert live["window_s"] == 60
    assert live["fps"] == pytest.approx(5 / 60, abs=1e-3)
    assert live["kbit_s"] == pytest.approx(site.live_bytes * 8 / 1000 / 60, abs=1e-3)
    newest = max(s.capture_time_ns for s in site.samples if s.camera == LIVE)
    assert live["last_frame_ns"] == newest and live["last_frame_ns_str"] == str(newest)
    old = items["cam-a"]["status"]
    assert old["online"] is False
    assert old["fps"] == 0 and old["kbit_s"] == 0 and old["rate_level"] == 1
    assert old["last_frame_ns"] == T0_NS + 5 * OLD_STEP_NS
    # One camera by id; an unknown one is a 404 naming it.
    one = site.client.get(f"/v1/cameras/{LIVE}").json()
    assert one["camera_id"] == LIVE and one["num_frames"] == 5 and one["status"]["online"]
    missing = site.client.get("/v1/cameras/nobody")
    assert missing.status_code == 404 and "'nobody'" in missing.json()["detail"]


def test_several_cameras_and_labels_in_one_query(site: Site) -> None:
    old = {"since_ns": T0_NS, "until_ns": T0_NS + 60 * S}
    both = walk(site.client, "/v1/detections", camera=["cam-a", "cam-b"], limit=3, **old)
    got = sorted((d["frame_id"], d["label"], round(d["score"], 4)) for d in both)
    assert got == sorted((s.frame_id, d.label, round(d.score, 4)) for s, d in site.rows())
    assert len({d["id"] for d in both}) == len(both)  # no row twice across pages
    labels = walk(site.client, "/v1/detections", label=["person", "fall"], **old)
    assert len(labels) == len(site.rows(lambda s, d: d.label in ("person", "fall")))
    # Both filters at once, repeated values collapsed.
    picked = walk(site.client, "/v1/detections", camera=["cam-a", "cam-a"], label=["fall"], **old)
    expected = site.rows(lambda s, d: s.camera == "cam-a" and d.label == "fall")
    assert len(picked) == len(expected) > 0
    bad = site.client.get("/v1/detections", params={"label": ["person", "dog", "cat"]})
    assert bad.status_code == 400
    assert bad.json()["field"] == "label" and "'dog', 'cat' are not classes" in bad.json()["detail"]


def test_a_key_limited_to_one_camera_may_not_ask_for_another(site: Site) -> None:
    key = ApiKeyStore(site.store.engine).create("a-only", ["read"], ("cam-a",))[1]
    headers = {"Authorization": f"Bearer {key}"}
    r = site.client.get("/v1/detections", params={"camera": ["cam-a", "cam-b"]}, headers=headers)
    assert r.status_code == 403 and "'cam-b'" in r.json()["detail"]
    window = {"since_ns": T0_NS, "until_ns": T0_NS + 60 * S}
    mine = site.client.get("/v1/detections/counts", params=window, headers=headers)
    assert mine.json()["total"] == len(site.rows(lambda s, d: s.camera == "cam-a"))


def test_counts_per_bucket_match_the_stored_detections(site: Site) -> None:
    params = {"since_ns": T0_NS, "until_ns": T0_NS + 30 * S, "bucket": "10s"}
    body = site.client.get("/v1/detections/counts", params=params).json()
    expected = Counter(
        T0_NS + (s.capture_time_ns - T0_NS) // (10 * S) * 10 * S for s, _ in site.rows()
    )
    assert {b["start_ns"]: b["count"] for b in body["buckets"]} == expected
    assert body["total"] == sum(expected.values()) and len(body["buckets"]) == 3
    assert [b["start_ns"] for b in body["buckets"]] == sorted(expected)
    assert body["buckets"][0]["start"] == "2023-11-14T22:13:20.000000Z"
    assert all(b["labels"] is None for b in body["buckets"])
    # Split by label, filtered by camera and score.
    split = site.client.get(
        "/v1/detections/counts",
        params={**params, "by_label": "true", "camera": "cam-b", "min_score": 0.3},
    ).json()
    keep = site.rows(lambda s, d: s.camera == "cam-b" and d.score >= 0.3)
    by_label = Counter(
        (T0_NS + (s.capture_time_ns - T0_NS) // (10 * S) * 10 * S, d.label) for s, d in keep
    )
    got = {(b["start_ns"], lab): n for b in split["buckets"] for lab, n in b["labels"].items()}
    assert got == by_label
    assert all(b["count"] == sum(b["labels"].values()) for b in split["buckets"])


def test_counts_default_to_the_last_day_and_refuse_too_many_buckets(site: Site) -> None:
    body = site.client.get("/v1/detections/counts", params={"bucket": "1h"}).json()
    assert body["until_ns"] - body["since_ns"] == 24 * 3600 * S
    assert body["total"] == sum(len(s.detections) for s in site.samples if s.camera == LIVE)
    assert Bucket.d1.ns == 86400 * S
    week = site.client.get(
        "/v1/detections/counts",
        params={"bucket": "10s", "since_ns": T0_NS, "until_ns": T0_NS + 7 * 86400 * S},
    )
    assert week.status_code == 400 and week.json()["field"] == "bucket"
    wrong = site.client.get("/v1/detections/counts", params={"bucket": "7m"})
    assert wrong.status_code == 422 and wrong.json()["field"] == "bucket"


def _request_views(site: Site, n: int) -> list[dict[str, Any]]:
    made = []
    for s in site.samples[:n]:
        r = site.client.post("/v1/views", json={"frame_id": s.frame_id})
        assert r.status_code == 202, r.text
        made.append(r.json())
    return made


def test_views_list_newest_first_in_pages_with_filters(site: Site) -> None:
    made = _request_views(site, 5)
    listed = walk(site.client, "/v1/views", limit=2)
    assert [v["id"] for v in listed] == [v["id"] for v in reversed(made)]
    oldest = walk(site.client, "/v1/views", limit=2, order="oldest")
    assert [v["id"] for v in oldest] == [v["id"] for v in made]
    cam_b = walk(site.client, "/v1/views", camera="cam-b")
    assert {v["frame_id"] for v in cam_b} == {
        s.frame_id for s in site.samples[:5] if s.camera == "cam-b"
    }
    one = site.client.get("/v1/views", params={"frame_id": made[0]["frame_id"]}).json()
    assert [v["id"] for v in one["items"]] == [made[0]["id"]]
    assert site.client.get("/v1/views", params={"status": "done"}).json()["items"] == []
    assert site.client.get("/v1/views", params={"status": "lost"}).status_code == 422
    # A frames cursor is not a views cursor.
    frames_cursor = site.client.get("/v1/frames", params={"limit": 1}).json()["next_cursor"]
    bad = site.client.get("/v1/views", params={"cursor": frames_cursor, "order": "oldest"})
    assert bad.status_code == 400 and bad.json()["field"] == "cursor"


def test_delete_view_cancels_queued_keeps_running_and_removes_images(site: Site) -> None:
    queued, running, done = _request_views(site, 3)
    assert site.client.delete(f"/v1/views/{queued['id']}").status_code == 204
    assert site.client.get(f"/v1/views/{queued['id']}").status_code == 404
    assert site.client.delete(f"/v1/views/{queued['id']}").status_code == 404

    assert site.store.start_view(running["id"])
    busy = site.client.delete(f"/v1/views/{running['id']}")
    assert busy.status_code == 409 and busy.json()["view_status"] == "running"
    assert site.client.get(f"/v1/views/{running['id']}").json()["status"] == "running"

    key = f"views/{done['id']}.png"
    site.store.blobs.put(key, b"\x89PNG fake")
    site.store.update_view(done["id"], status="done", image_key=key, finished_ns=time.time_ns())
    assert site.client.delete(f"/v1/views/{done['id']}").status_code == 204
    assert not site.store.blobs.exists(key)
    # A deleted job is never started by a worker that still holds its id.
    assert site.store.start_view(queued["id"]) is False


def test_openapi_lists_enums_and_the_frame_rule(site: Site) -> None:
    doc = site.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert schemas["ViewStatus"]["enum"] == ["queued", "running", "done", "failed"]
    assert schemas["Bucket"]["enum"] == [b.value for b in Bucket]
    kinds = schemas["ViewRequest"]["properties"]["kind"]["enum"]
    assert kinds == ["preview", "diffusion", "enhanced"]
    assert "**either** `frame_id`" in schemas["ViewRequest"]["description"]
    assert {"get", "delete"} <= set(doc["paths"]["/v1/views/{view_id}"])
    assert "get" in doc["paths"]["/v1/detections/counts"]
    camera = next(
        p for p in doc["paths"]["/v1/detections"]["get"]["parameters"] if p["name"] == "camera"
    )
    assert camera["schema"]["anyOf"][0]["type"] == "array"
    for path in ("/v1/detections", "/v1/detections/counts"):
        label = next(p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == "label")
        assert label["schema"]["anyOf"][0]["items"]["enum"] == ["person", "fall"]
