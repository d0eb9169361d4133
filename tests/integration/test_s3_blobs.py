"""The S3 blob store against a real S3 server on loopback (moto's server mode, over
HTTP through boto3): the blob contract, key checks, prefixes, clear errors at start, and
a cloud whose frame bitstreams and view PNGs live in the bucket."""

from __future__ import annotations

import asyncio
import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image
from pydantic import ValidationError

from cloud.server import CloudServer
from cloud.settings import CloudSettings
from cloud.store.blobs import BlobStore, LocalBlobStore, S3Url, open_blob_store
from cloud.store.s3_blobs import S3BlobStore
from codec.bundle import Bundle
from tests.conftest import RunningCloud, cloud_settings, free_port, wait_for_view
from tests.integration.test_grpc_ingest import encoded_frames, stream

REGION = "us-east-1"

ESCAPING_KEYS = ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", "..", "a\\b"]


@dataclass
class S3Server:
    endpoint: str
    client: Any  # a boto3 S3 client, to look into buckets behind the store's back

    def new_bucket(self) -> str:
        bucket = f"fchm-{secrets.token_hex(4)}"
        self.client.create_bucket(Bucket=bucket)
        return bucket

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        listed = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def store(self, bucket: str, prefix: str = "") -> S3BlobStore:
        return S3BlobStore(bucket, prefix, endpoint_url=self.endpoint, region=REGION)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # boto3's standard chain reads these; moto takes any credentials.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "fchm-test")
        env.setenv("AWS_SECRET_ACCESS_KEY", "fchm-test-secret")
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=REGION)
        yield S3Server(endpoint, client)
    server.stop()


def test_put_get_exists_delete_round_trip(s3: S3Server) -> None:
    bucket = s3.new_bucket()
    blobs: BlobStore = s3.store(bucket)
    key = "bitstreams/cam-a/000000000001-deadbeef-0011.fchm"
    assert not blobs.exists(key)
    blobs.put(key, b"frame one")
    assert blobs.exists(key) and blobs.get(key) == b"frame one"
    blobs.put(key, b"frame one")  # an idempotent replay rewrites the same bytes
    assert blobs.get(key) == b"frame one"
    assert s3.keys(bucket) == [key]

    payload = secrets.token_bytes(3 << 20)  # a large bitstream, in one PutObject
    blobs.put("views/big.png", payload)
    assert blobs.get("views/big.png") == payload

    blobs.delete(key)
    assert not blobs.exists(key)
    blobs.delete(key)  # a missing key is fine, as in the local store
    assert s3.keys(bucket) == ["views/big.png"]


def test_missing_key_raises_file_not_found(s3: S3Server) -> None:
    blobs = s3.store(s3.new_bucket())
    with pytest.raises(FileNotFoundError, match="views/nothing.png"):
        blobs.get("views/nothing.png")


@pytest.mark.parametrize("key", ESCAPING_KEYS)
def test_escaping_keys_are_refused_by_both_stores(s3: S3Server, tmp_path: Path, key: str) -> None:
    bucket = s3.new_bucket()
    stores: list[BlobStore] = [s3.store(bucket, "inner"), LocalBlobStore(tmp_path / "blobs")]
    for blobs in stores:
        with pytest.raises(ValueError, match="escapes the store"):
            blobs.put(key, b"x")
        with pytest.raises(ValueError, match="escapes the store"):
            blobs.get(key)
        with pytest.raises(ValueError, match="escapes the store"):
            blobs.exists(key)
        with pytest.raises(ValueError, match="escapes the store"):
            blobs.delete(key)
    assert s3.keys(bucket) == []
    assert list((tmp_path / "blobs").iterdir()) == []


def test_prefixes_keep_stores_apart(s3: S3Server) -> None:
    bucket = s3.new_bucket()
    site_a, site_b, bare = s3.store(bucket, "site-a"), s3.store(bucket, "site-b/"), s3.store(bucket)
    key = "views/v1.png"
    site_a.put(key, b"a")
    site_b.put(key, b"b")
    assert (site_a.get(key), site_b.get(key)) == (b"a", b"b")
    assert not bare.exists(key)
    assert s3.keys(bucket) == ["site-a/views/v1.png", "site-b/views/v1.png"]

    site_a.delete(key)
    assert not site_a.exists(key) and site_b.get(key) == b"b"


def test_open_blob_store_takes_the_url_and_checks_the_bucket(s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    blobs = open_blob_store(
        f"s3://{bucket}/fleet/one", tmp_path, endpoint_url=s3.endpoint, region=REGION
    )
    assert isinstance(blobs, S3BlobStore) and blobs.prefix == "fleet/one/"
    blobs.put("k", b"v")
    assert s3.keys(bucket) == ["fleet/one/k"]
    assert not (tmp_path / "blobs").exists()

    local = open_blob_store(None, tmp_path / "blobs")
    assert isinstance(local, LocalBlobStore) and (tmp_path / "blobs").is_dir()


def test_missing_bucket_stops_the_open_naming_bucket_and_endpoint(
    s3: S3Server, tmp_path: Path
) -> None:
    with pytest.raises(OSError) as failed:
        open_blob_store("s3://no-such-bucket/x", tmp_path, endpoint_url=s3.endpoint, region=REGION)
    message = str(failed.value)
    assert "'no-such-bucket'" in message and s3.endpoint in message
    assert "does not exist" in message


def test_unreachable_endpoint_is_named(s3: S3Server) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    blobs = S3BlobStore(
        "fchm-anything", endpoint_url=endpoint, region=REGION, connect_timeout_s=1, max_attempts=1
    )
    with pytest.raises(OSError) as failed:
        blobs.check()
    message = str(failed.value)
    assert "'fchm-anything'" in message and endpoint in message and "cannot be reached" in message


def test_missing_credentials_are_named(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    blobs = S3BlobStore("fchm-anything", endpoint_url=s3.endpoint, region=REGION, max_attempts=1)
    with pytest.raises(OSError, match="AWS_ACCESS_KEY_ID"):
        blobs.check()


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"blob_url": "/var/lib/blobs"}, "expected s3://bucket/prefix"),
        ({"blob_url": "http://minio:9000/bucket"}, "expected s3://bucket/prefix"),
        ({"blob_url": "s3://Upper_Case"}, "not an S3 bucket name"),
        ({"blob_url": "s3:///prefix"}, "not an S3 bucket name"),
        ({"blob_url": "s3://bucket/a/../b"}, "must be plain segments"),
        ({"blob_url": "s3://AKIA:secret@bucket/x"}, "no credentials in the URL"),
        ({"s3_endpoint_url": "minio:9000"}, "expected http(s)://host"),
        ({"s3_region": ""}, "at least 1 character"),
    ],
)
def test_bad_blob_settings_name_the_field(fields: dict[str, str], complaint: str) -> None:
    with pytest.raises(ValidationError) as failed:
        CloudSettings(**fields)
    error = failed.value.errors()[0]
    assert error["loc"] == (next(iter(fields)),)
    assert complaint in error["msg"] and "secret@" not in error["msg"]


def test_s3_settings_without_an_s3_blob_url_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="blob_url"):
        open_blob_store(None, tmp_path, endpoint_url="http://127.0.0.1:9000")


def test_s3_url_parses_bucket_and_prefix() -> None:
    assert S3Url.parse("s3://bucket") == S3Url("bucket", "")
    assert S3Url.parse("s3://my.bucket/a/b/") == S3Url("my.bucket", "a/b/")
    assert str(S3Url.parse("s3://bucket/a")) == "s3://bucket/a/"


# ── a whole cloud on the bucket ─────────────────────────────────────────────────────────


def test_cloud_stores_bitstreams_and_views_in_the_bucket(
    s3: S3Server, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    settings = cloud_settings(
        tiny_bundle,
        tmp_path,
        blob_url=f"s3://{bucket}/fchm",
        s3_endpoint_url=s3.endpoint,
        s3_region=REGION,
    )
    cloud = RunningCloud(settings)
    try:
        frames = encoded_frames(tiny_bundle)
        uplink = stream(cloud, tiny_bundle, "cam-s3", frames, tmp_path / "spool")
        assert (uplink.stats.acked, uplink.fatal) == (2, None)
        bitstreams = s3.keys(bucket, "fchm/bitstreams/cam-s3/")
        assert len(bitstreams) == 2 and all(k.endswith(".fchm") for k in bitstreams)
        assert not (settings.data_dir / "blobs").exists()

        api = cloud.api()
        stored = api.get("/v1/frames", params={"camera": "cam-s3"}).json()["items"]
        first = min(stored, key=lambda f: f["sequence"])
        raw = api.get(f"/v1/frames/{first['id']}/bitstream")
        assert raw.status_code == 200 and raw.content == frames[0].bitstream

        job = api.post("/v1/views", json={"frame_id": first["id"]})
        assert job.status_code == 202, job.text
        view_id = job.json()["id"]
        view = wait_for_view(api, view_id)
        assert view["status"] == "done", view
        png = api.get(f"/v1/views/{view_id}/image")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (view["width"], view["height"])
        assert s3.keys(bucket, "fchm/views/") == [f"fchm/views/{view_id}.png"]

        # The image gone from the bucket: the API says so (500), as for the local store.
        s3.client.delete_object(Bucket=bucket, Key=f"fchm/views/{view_id}.png")
        gone = api.get(f"/v1/views/{view_id}/image")
        assert gone.status_code == 500 and "missing from storage" in gone.json()["detail"]
    finally:
        cloud.stop()


def test_cloud_refuses_to_start_on_a_missing_bucket(
    s3: S3Server, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    settings = cloud_settings(
        tiny_bundle,
        tmp_path,
        blob_url="s3://fchm-never-made/x",
        s3_endpoint_url=s3.endpoint,
        s3_region=REGION,
    )
    with pytest.raises(OSError, match="'fchm-never-made' at http://127.0.0.1:.* does not exist"):
        asyncio.run(CloudServer(settings).start())
