"""REST API keys over a real FrameStore (SQLite) and the real app: 401/403 with the house
error body, scopes, camera-limited keys, and the `fchm cloud key` CLI round trip."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cloud.store.api_keys import ApiKeyStore
from cloud.store.frame_store import FrameStore
from codec.bundle import Bundle
from fchm.cli import app as cli
from tests.conftest import RunningCloud, sample_images
from tests.integration.stored_frames import STEP_NS, T0_NS, FrameMaker, open_store
from tests.integration.test_rest_api import rest_app


@dataclass
class Env:
    client: TestClient
    store: FrameStore
    keys: ApiKeyStore
    frames: dict[str, int]
    """camera → the id of its first frame"""

    def key(self, *scopes: str, cameras: tuple[str, ...] = ()) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys.create('t', scopes, cameras)[1]}"}


def app_for(store: FrameStore, root: Path, bundle: Bundle) -> TestClient:
    return TestClient(rest_app(store, bundle, root)[0])


@pytest.fixture(scope="module")
def env(tiny_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("keys")
    store = open_store(root, tiny_bundle, ["cam-a", "cam-b"])
    maker = FrameMaker(tiny_bundle)
    frames = {}
    for seq in range(2):
        for camera in ("cam-a", "cam-b"):
            sample = maker.store(store, camera, seq, T0_NS + seq * STEP_NS, sample_images()[0], 5)
            frames.setdefault(camera, sample.frame_id)
    with app_for(store, root, tiny_bundle) as client:
        yield Env(client, store, ApiKeyStore(store.engine), frames)


def error(r, status: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and body["detail"]
    return body  # type: ignore[no-any-return]


PROTECTED = [
    "/v1/cameras",
    "/v1/detections",
    "/v1/frames",
    "/v1/frames/1",
    "/v1/frames/1/bitstream",
    "/v1/views/x",
    "/v1/views/x/image",
    "/metrics",
]


@pytest.mark.parametrize("path", PROTECTED)
def test_every_route_needs_a_key(env: Env, path: str) -> None:
    r = env.client.get(path)
    body = error(r, 401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer <key>" in str(body["detail"])


def test_post_view_needs_a_key(env: Env) -> None:
    error(env.client.post("/v1/views", json={"frame_id": env.frames["cam-a"]}), 401)


def test_health_and_readiness_are_open(env: Env) -> None:
    assert env.client.get("/healthz").status_code == 200
    assert env.client.get("/readyz").status_code == 200


def test_wrong_keys_are_401_and_say_why(env: Env) -> None:
    good = env.keys.create("t", ["read"])[1]
    _, key_id, secret = good.split("_", 2)
    for bad, why in [
        ("nonsense", "malformed"),
        (f"fchm_{key_id}_{secret[:-1]}x", "not valid"),  # right id, wrong secret
        (f"fchm_000000000000_{secret}", "not valid"),  # unknown id: the same answer
    ]:
        r = env.client.get("/v1/cameras", headers={"Authorization": f"Bearer {bad}"})
        assert why in str(error(r, 401)["detail"])
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    r = env.client.get("/v1/cameras", headers={"Authorization": f"Basic {good}"})
    assert "must be Bearer, not 'Basic'" in str(error(r, 401)["detail"])
    # The same key in X-API-Key works.
    assert env.client.get("/v1/cameras", headers={"X-API-Key": good}).status_code == 200


def test_revoked_and_expired_keys_are_401(env: Env) -> None:
    record, key = env.keys.create("laptop", ["read"])
    headers = {"Authorization": f"Bearer {key}"}
    assert env.client.get("/v1/cameras", headers=headers).status_code == 200
    env.keys.revoke(record.id)
    r = env.client.get("/v1/cameras", headers=headers)
    assert str(error(r, 401)["detail"]) == f"API key {record.id} (laptop) is revoked"
    old, key = env.keys.create("old", ["read"], expires_ns=time.time_ns() - 1)
    r = env.client.get("/v1/cameras", headers={"Authorization": f"Bearer {key}"})
    assert str(error(r, 401)["detail"]) == f"API key {old.id} (old) is expired"


def test_scopes(env: Env) -> None:
    read, view, admin = env.key("read"), env.key("view"), env.key("admin")
    frame_id = env.frames["cam-a"]
    body = error(env.client.post("/v1/views", json={"frame_id": frame_id}, headers=read), 403)
    assert "needs 'view'" in str(body["detail"]) and body["needed_scope"] == "view"
    assert "needs 'admin'" in str(error(env.client.get("/metrics", headers=read), 403)["detail"])
    assert "needs 'admin'" in str(error(env.client.get("/metrics", headers=view), 403)["detail"])
    # view implies read: the requester can poll its job and read frames.
    job = env.client.post("/v1/views", json={"frame_id": frame_id}, headers=view)
    assert job.status_code == 202, job.text
    assert env.client.get(f"/v1/views/{job.json()['id']}", headers=view).status_code == 200
    assert env.client.get(f"/v1/frames/{frame_id}/bitstream", headers=view).status_code == 200
    r = env.client.get("/metrics", headers=admin)
    assert r.status_code == 200 and "fchm_views_queued" in r.text


def test_a_camera_limited_key_sees_only_its_cameras(env: Env) -> None:
    mine = env.key("view", cameras=("cam-a",))
    get = env.client.get
    cams = get("/v1/cameras", headers=mine).json()["items"]
    assert [c["camera_id"] for c in cams] == ["cam-a"]
    frames = get("/v1/frames", headers=mine).json()["items"]
    assert len(frames) == 2 and {f["camera"] for f in frames} == {"cam-a"}
    found = get("/v1/detections", params={"limit": 1000}, headers=mine).json()["items"]
    assert found and {d["camera"] for d in found} == {"cam-a"}
    every = get("/v1/detections", params={"limit": 1000}, headers=env.key("read")).json()
    assert {d["camera"] for d in every["items"]} == {"cam-a", "cam-b"}

    # Naming another camera is 403, and says which camera.
    for path in ("/v1/frames", "/v1/detections"):
        body = error(get(path, params={"camera": "cam-b"}, headers=mine), 403)
        assert "may not see camera 'cam-b'" in str(body["detail"]) and body["field"] == "camera"
    body = error(
        env.client.post("/v1/views", json={"camera": "cam-b", "sequence": 0}, headers=mine), 403
    )
    assert "'cam-b'" in str(body["detail"])

    # Another camera's frame by id reads exactly like a frame that does not exist.
    other = env.frames["cam-b"]
    for path in (f"/v1/frames/{other}", f"/v1/frames/{other}/bitstream"):
        assert error(get(path, headers=mine), 404)["detail"] == f"frame {other} does not exist"
    missing = error(get("/v1/frames/999999", headers=mine), 404)
    assert missing["detail"] == "frame 999999 does not exist"
    r = env.client.post("/v1/views", json={"frame_id": other}, headers=mine)
    assert error(r, 404)["detail"] == f"frame {other} does not exist"
    # A view of another camera (requested by someone else) is hidden the same way.
    job = env.client.post("/v1/views", json={"frame_id": other}, headers=env.key("view")).json()
    assert error(get(f"/v1/views/{job['id']}", headers=mine), 404)["field"] == "view_id"
    assert error(get(f"/v1/views/{job['id']}/image", headers=mine), 404)["field"] == "view_id"
    # Its own camera works.
    mine_job = env.client.post("/v1/views", json={"camera": "cam-a", "sequence": 1}, headers=mine)
    assert mine_job.status_code == 202
    assert get(f"/v1/views/{mine_job.json()['id']}", headers=mine).status_code == 200


def test_key_fields_are_checked(env: Env) -> None:
    with pytest.raises(ValueError, match="admin key sees every camera"):
        env.keys.create("x", ["admin"], ["cam-a"])
    with pytest.raises(ValueError, match="scope 'write' is not one of read, view, admin"):
        env.keys.create("x", ["write"])
    with pytest.raises(ValueError, match="camera id 'a b'"):
        env.keys.create("x", ["read"], ["a b"])


def test_openapi_shows_the_schemes(env: Env) -> None:
    spec = env.client.get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    assert spec["paths"]["/v1/frames"]["get"]["security"] == [
        {"HTTPBearer": []},
        {"APIKeyHeader": []},
    ]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert "401" in spec["paths"]["/v1/detections"]["get"]["responses"]


def test_cli_create_list_revoke_round_trip(tiny_bundle: Bundle, tmp_path: Path) -> None:
    runner = CliRunner()
    where = ["--data-dir", str(tmp_path)]
    made = runner.invoke(
        cli,
        ["cloud", "key", "create", "--name", "dash", "--scope", "read", "--scope", "view",
         "--camera", "cam-a", "--expires-days", "30", *where],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    key_id = key.split("_")[1]
    assert key.startswith("fchm_") and f"created API key {key_id} (dash" in made.stderr

    listed = runner.invoke(cli, ["cloud", "key", "list", *where])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if line.startswith(key_id))
    assert row.split()[1:4] == ["dash", "read,view", "cam-a"] and row.endswith("active")
    assert key not in listed.stdout and key.split("_", 2)[2] not in listed.stdout

    # The cloud reads the same database: the key works, then the revocation, at once.
    store = FrameStore.open(f"sqlite:///{tmp_path / 'fchm.db'}", tmp_path / "blobs")
    with app_for(store, tmp_path, tiny_bundle) as client:
        headers = {"Authorization": f"Bearer {key}"}
        assert client.get("/v1/cameras", headers=headers).status_code == 200
        revoked = runner.invoke(cli, ["cloud", "key", "revoke", key_id, *where])
        assert revoked.exit_code == 0 and f"revoked API key {key_id} (dash)" in revoked.stdout
        assert client.get("/v1/cameras", headers=headers).status_code == 401
    listed = runner.invoke(cli, ["cloud", "key", "list", *where])
    assert listed.stdout.strip().endswith("revoked")

    unknown = runner.invoke(cli, ["cloud", "key", "revoke", "nope", *where])
    assert unknown.exit_code == 2 and "no API key with id 'nope'" in unknown.stderr
    bad = runner.invoke(cli, ["cloud", "key", "create", "--name", "x", "--scope", "all", *where])
    assert bad.exit_code == 2 and "scope 'all' is not one of" in bad.stderr


def test_running_cloud_refuses_requests_without_a_key(cloud: RunningCloud) -> None:
    import httpx

    with httpx.Client(base_url=cloud.http_base, timeout=10) as anonymous:
        assert anonymous.get("/v1/cameras").status_code == 401
        assert anonymous.get("/readyz").status_code == 200
    with cloud.api() as api:
        assert api.get("/v1/cameras").status_code == 200
    reader = cloud.api(key=cloud_key(cloud, "read"))
    assert reader.get("/metrics").status_code == 403


def cloud_key(cloud: RunningCloud, scope: str) -> str:
    from tests.conftest import create_api_key

    return create_api_key(cloud.settings, "reader", [scope])
