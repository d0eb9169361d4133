"""The REST API over a real FrameStore (SQLite) holding frames coded by the tiny bundle.

Expected results come from the Detection objects the detector tail produced when the
frames were stored, filtered here in plain Python, not from the store's own queries.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.api.deps import Services, readiness_checks
from cloud.api.params import Order, decode_cursor, encode_cursor, iso_utc
from cloud.metrics import CloudMetrics
from cloud.settings import CloudSettings
from cloud.store.frame_store import FrameStore
from cloud.view_queue import ViewQueue
from codec.bundle import Bundle
from tests.conftest import admin_headers, sample_images
from tests.integration.stored_frames import (
    STEP_NS,
    T0_NS,
    FrameMaker,
    StoredSample,
    open_store,
)

CAMERAS = ["cam-a", "cam-b"]
FRAMES_PER_CAMERA = 6


@dataclass
class Api:
    client: TestClient
    store: FrameStore
    services: Services
    samples: list[StoredSample]

    def rows(self) -> list[dict[str, Any]]:
        """Every stored detection with its frame's camera and capture time."""
        return [
            {"frame_id": s.frame_id, "camera": s.camera, "time_ns": s.capture_time_ns, "d": d}
            for s in self.samples
            for d in s.detections
        ]


@pytest.fixture(scope="module")
def api(tiny_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("rest")
    store = open_store(root, tiny_bundle, CAMERAS)
    maker = FrameMaker(tiny_bundle)
    samples = []
    # Both cameras share capture times, so the (time, id) keyset must break ties.
    for seq in range(FRAMES_PER_CAMERA):
        for camera in CAMERAS:
            image = sample_images()[seq % 2]
            t = T0_NS + seq * STEP_NS
            samples.append(maker.store(store, camera, seq, t, image, level=seq))
    with rest_client(store, tiny_bundle, root) as (client, services):
        yield Api(client, store, services, samples)


@contextlib.contextmanager
def rest_client(
    store: FrameStore, bundle: Bundle, root: Path
) -> Iterator[tuple[TestClient, Services]]:
    """The real REST app over ``store`` (in-process queue, no workers), with an admin key."""
    app, services = rest_app(store, bundle, root)
    with TestClient(app, headers=admin_headers(store)) as client:
        yield client, services


def rest_app(store: FrameStore, bundle: Bundle, root: Path) -> tuple[FastAPI, Services]:
    """The real REST app over ``store``: an in-process view queue, no workers, no key."""
    settings = CloudSettings(data_dir=root)
    metrics = CloudMetrics()
    services = Services(
        store=store,
        views=ViewQueue(store, settings, metrics),
        bundle=bundle,
        metrics=metrics,
        readiness=readiness_checks({"database": store.ping}),
    )
    return create_app(settings, services), services


def walk(client: TestClient, path: str, **params: Any) -> list[dict[str, Any]]:
    """Follow next_cursor to the end; return every item."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = client.get(path, params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


def test_fixture_has_both_labels_on_both_cameras(api: Api) -> None:
    labels = {(r["camera"], r["d"].label) for r in api.rows()}
    assert labels == {(c, lab) for c in CAMERAS for lab in ("person", "fall")}


def test_cameras_lists_each_with_its_frame_count(api: Api) -> None:
    r = api.client.get("/v1/cameras")
    assert r.status_code == 200
    items = r.json()["items"]
    assert [c["camera_id"] for c in items] == CAMERAS
    for c in items:
        assert c["num_frames"] == FRAMES_PER_CAMERA
        assert c["bundle_hash"] == api.services.bundle.hash
        assert c["agent_version"] == "test"
        assert c["first_seen"].endswith("Z")
        assert datetime.fromisoformat(c["last_seen"]).timestamp() == pytest.approx(
            c["last_seen_ns"] / 1e9, abs=1e-3
        )


@pytest.mark.parametrize(
    ("params", "keep"),
    [
        ({"camera": "cam-b"}, lambda r: r["camera"] == "cam-b"),
        ({"label": "fall"}, lambda r: r["d"].label == "fall"),
        ({"min_score": 0.4}, lambda r: r["d"].score >= 0.4),
        (
            {"camera": "cam-a", "label": "person", "min_score": 0.3},
            lambda r: r["camera"] == "cam-a" and r["d"].label == "person" and r["d"].score >= 0.3,
        ),
        (
            # since inclusive, until exclusive; a naive time is UTC
            {"since": iso_utc(T0_NS + 2 * STEP_NS), "until": "2023-11-14T22:13:24"},
            lambda r: T0_NS + 2 * STEP_NS <= r["time_ns"] < T0_NS + 4 * STEP_NS,
        ),
    ],
)
def test_detection_filters(api: Api, params: dict[str, Any], keep: Any) -> None:
    expected = sorted(
        (
            (r["time_ns"], r["frame_id"], r["d"].label, round(r["d"].score, 5))
            for r in api.rows()
            if keep(r)
        ),
    )
    items = walk(api.client, "/v1/detections", limit=1000, **params)
    got = sorted((i["time_ns"], i["frame_id"], i["label"], round(i["score"], 5)) for i in items)
    assert expected and got == expected


def test_detection_item_shape(api: Api) -> None:
    sample = api.samples[0]  # cam-a at T0; its first detection is the first row
    d = sample.detections[0]
    r = api.client.get("/v1/detections", params={"camera": sample.camera, "limit": 1})
    item = r.json()["items"][0]
    assert set(item) == {
        "id", "frame_id", "camera", "time", "time_ns", "label", "class_id", "score", "box",
        "id_str", "frame_id_str", "time_ns_str",
    }  # fmt: skip
    assert item["time"] == "2023-11-14T22:13:20.000000Z" and item["time_ns"] == T0_NS
    assert item["time_ns_str"] == str(T0_NS) and item["id_str"] == str(item["id"])
    assert item["frame_id"] == sample.frame_id and item["camera"] == sample.camera
    assert (item["label"], item["class_id"]) == (d.label, d.class_id)
    assert item["score"] == pytest.approx(d.score)
    box = item["box"]
    assert (box["x1"], box["y1"], box["x2"], box["y2"]) == pytest.approx(d.box)


@pytest.mark.parametrize("limit", [1, 7, 50])
def test_cursor_pagination_walks_every_detection_once(api: Api, limit: int) -> None:
    items = walk(api.client, "/v1/detections", limit=limit)
    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids)) == len(api.rows())
    keys = [(i["time_ns"], i["id"]) for i in items]
    assert keys == sorted(keys)


def test_pages_have_limit_rows_and_last_page_has_no_cursor(api: Api) -> None:
    total = len(api.rows())
    r = api.client.get("/v1/detections", params={"limit": total})
    assert len(r.json()["items"]) == total and r.json()["next_cursor"] is None
    r = api.client.get("/v1/detections", params={"limit": total - 1})
    assert len(r.json()["items"]) == total - 1 and r.json()["next_cursor"] is not None


def test_cursor_is_opaque_round_trip() -> None:
    assert decode_cursor(encode_cursor(T0_NS, 42)) == (T0_NS, 42)
    newest = encode_cursor(T0_NS, 42, Order.newest)
    assert decode_cursor(newest, Order.newest) == (T0_NS, 42)


def test_frames_list_pages_and_filters(api: Api) -> None:
    items = walk(api.client, "/v1/frames", limit=5)
    assert sorted(i["id"] for i in items) == sorted(s.frame_id for s in api.samples)
    cam_b = walk(api.client, "/v1/frames", camera="cam-b", since=iso_utc(T0_NS + STEP_NS))
    assert [i["sequence"] for i in cam_b] == list(range(1, FRAMES_PER_CAMERA))
    first = cam_b[0]
    sample = next(s for s in api.samples if s.frame_id == first["id"])
    assert first["num_bytes"] == len(sample.bitstream)
    assert (first["image_width"], first["image_height"]) == sample.image_size
    assert first["num_detections"] == len(sample.detections)
    assert first["links"]["bitstream"] == f"/v1/frames/{first['id']}/bitstream"


def test_frame_detail_has_its_detections(api: Api) -> None:
    sample = max(api.samples, key=lambda s: len(s.detections))
    r = api.client.get(f"/v1/frames/{sample.frame_id}")
    assert r.status_code == 200
    body = r.json()
    assert body["camera"] == sample.camera and body["sequence"] == sample.sequence
    assert sorted(d["score"] for d in body["detections"]) == pytest.approx(
        sorted(d.score for d in sample.detections)
    )


def test_bitstream_endpoint_returns_the_stored_bytes(api: Api) -> None:
    for sample in api.samples[:3]:
        r = api.client.get(f"/v1/frames/{sample.frame_id}/bitstream")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.content == sample.bitstream


@pytest.mark.parametrize(
    ("path", "params", "status", "field", "words"),
    [
        ("/v1/detections", {"min_score": 2}, 422, "min_score", ["min_score", "1"]),
        ("/v1/detections", {"since": "garbage"}, 422, "since", ["since"]),
        ("/v1/detections", {"limit": 0}, 422, "limit", ["limit"]),
        ("/v1/detections", {"limit": 1001}, 422, "limit", ["limit"]),
        ("/v1/detections", {"cursor": "garbage!!"}, 400, "cursor", ["cursor"]),
        ("/v1/detections", {"cursor": encode_cursor(1, 2)[:-3] + "x"}, 400, "cursor", ["cursor"]),
        ("/v1/frames", {"cursor": "WzEsMiwzXQ"}, 400, "cursor", ["cursor"]),  # [1,2,3]
        ("/v1/detections", {"label": "dog"}, 400, "label", ["'dog'", "person", "fall"]),
        (
            "/v1/detections",
            {"since": "2024-01-02T00:00:00Z", "until": "2024-01-01T00:00:00Z"},
            400,
            "since",
            ["since", "until"],
        ),
        (
            "/v1/frames",
            {"since": "2024-01-01T00:00:00", "until": "2024-01-01T00:00:00"},
            400,
            "since",
            ["since", "until"],
        ),
        ("/v1/frames/99999", {}, 404, "frame_id", ["99999"]),
        ("/v1/frames/abc", {}, 422, "frame_id", ["frame_id"]),
        ("/v1/frames/99999/bitstream", {}, 404, "frame_id", ["99999"]),
        # Values a signed 64-bit column cannot hold are the caller's error, not a 500.
        ("/v1/frames/99999999999999999999999", {}, 422, "frame_id", ["frame_id"]),
        ("/v1/detections", {"since": "0001-01-01T00:00:00"}, 400, "since", ["since"]),
        ("/v1/frames", {"until": "9999-12-31T23:59:59"}, 400, "until", ["until"]),
    ],
)
def test_bad_requests_name_the_parameter(
    api: Api, path: str, params: dict[str, Any], status: int, field: str, words: list[str]
) -> None:
    r = api.client.get(path, params=params)
    assert r.status_code == status, r.text
    error = r.json()
    assert error["status"] == status
    assert error["field"] == field
    for word in words:
        assert word in error["detail"]


def test_unknown_route_has_the_same_error_shape(api: Api) -> None:
    r = api.client.get("/v1/nothing")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json() == {
        "type": "https://fchm.dev/problems/not-found",
        "title": "Not Found",
        "status": 404,
        "detail": "Not Found",
        "instance": "/v1/nothing",
        "field": None,
    }


def test_camera_filter_for_a_camera_with_no_frames_is_empty(api: Api) -> None:
    r = api.client.get("/v1/detections", params={"camera": "cam-z"})
    assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}


def test_health_and_readiness(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    r = api.client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"ready": True, "checks": {"database": True}}

    def broken() -> None:
        raise ConnectionError("database is gone")

    services = dataclasses.replace(
        api.services, readiness=readiness_checks({"database": api.store.ping, "ingest": broken})
    )
    with TestClient(create_app(CloudSettings(), services)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"ready": False, "checks": {"database": True, "ingest": False}}


def test_metrics_endpoint(api: Api) -> None:
    api.services.metrics.frames.labels("cam-a").inc()
    r = api.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert 'fchm_ingest_frames_total{camera="cam-a"} 1.0' in r.text
    assert "fchm_views_queued 0.0" in r.text


def test_openapi_documents_every_route(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    assert spec["info"]["title"] == "FCHM cloud"
    assert spec["info"]["version"]
    paths = spec["paths"]
    for path in (
        "/v1/cameras",
        "/v1/detections",
        "/v1/frames",
        "/v1/frames/{frame_id}",
        "/v1/frames/{frame_id}/bitstream",
        "/v1/views",
        "/v1/views/{view_id}",
        "/v1/views/{view_id}/image",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths
        for op in paths[path].values():
            assert op.get("summary"), f"{path} has no summary"
    assert api.client.get("/docs").status_code == 200


def test_times_are_utc(api: Api) -> None:
    item = api.client.get("/v1/frames", params={"limit": 1}).json()["items"][0]
    parsed = datetime.fromisoformat(item["time"])
    assert parsed.tzinfo is not None and parsed.utcoffset() == UTC.utcoffset(None)
    assert item["time_ns"] == T0_NS
