"""Frames that declare a huge image size, on a real cloud: refused at ingest over gRPC,
refused on the edge before encoding, and never rendered at their declared size.

The frames are real: a square image encoded by the tiny bundle, its container rewritten
to declare another size (the latent shape still matches, since Letterbox.fit maps any
square to the same 320x320 network input), so the size is the only thing wrong."""

from __future__ import annotations

import dataclasses
import io
import time
import tracemalloc

import cv2
import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from cloud.store.frame_store import FrameStore
from cloud.store.records import FrameRecord
from codec.bitstream import FrameBitstream
from codec.bundle import Bundle
from codec.wire import MAX_IMAGE_SIDE, REJECTED_SEQUENCE_KEY
from edge.frame_encoder import FrameEncoder, FrameTooLarge
from edge.sources import CapturedFrame
from fchm.v1 import ingest_pb2, ingest_pb2_grpc
from tests.conftest import RunningCloud, sample_images

MB = 1 << 20
LEVEL = 3


def declaring(bundle: Bundle, size: tuple[int, int]) -> bytes:
    """A real frame of a square crop of bus.jpg whose container declares ``size``."""
    square = cv2.imread(str(sample_images()[0]))[:810, :810]
    real = FrameEncoder(bundle).encode(CapturedFrame(0, time.time_ns(), square), LEVEL)
    frame = FrameBitstream.from_bytes(real.bitstream)
    return dataclasses.replace(frame, image_size=size).to_bytes()


def uplink(bundle: Bundle, camera: str, data: bytes) -> list[ingest_pb2.UplinkMessage]:
    hello = ingest_pb2.Hello(camera_id=camera, bundle_hash=bundle.hash, edge_time_ns=time.time_ns())
    frame = ingest_pb2.Frame(sequence=0, rate_level=LEVEL, bitstream=data)
    return [ingest_pb2.UplinkMessage(hello=hello), ingest_pb2.UplinkMessage(frame=frame)]


def send(cloud: RunningCloud, messages: list[ingest_pb2.UplinkMessage]) -> list[ingest_pb2.Ack]:
    with grpc.insecure_channel(cloud.grpc_target) as channel:
        replies = ingest_pb2_grpc.IngestStub(channel).Stream(iter(messages), timeout=20)
        return [r.ack for r in replies if r.WhichOneof("kind") == "ack"]


def finished_view(api: httpx.Client, frame_id: int) -> dict[str, object]:
    r = api.post("/v1/views", json={"frame_id": frame_id})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view: dict[str, object] = api.get(f"/v1/views/{r.json()['id']}").json()
        if view["status"] in ("done", "failed"):
            return view
        time.sleep(0.05)
    raise AssertionError(f"view of frame {frame_id} did not finish: {view}")


def test_a_65535_squared_frame_is_invalid_argument_and_the_cloud_stays_ready(
    cloud: RunningCloud, tiny_bundle: Bundle
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        send(cloud, uplink(tiny_bundle, "cam-huge", declaring(tiny_bundle, (65535, 65535))))
    error: grpc.RpcError = info.value  # type: ignore[assignment]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert "image_size 65535x65535" in details and f"MAX_IMAGE_SIDE {MAX_IMAGE_SIDE}" in details
    # The edge is told which frame to drop, so it does not replay it forever.
    assert dict(error.trailing_metadata() or ())[REJECTED_SEQUENCE_KEY] == "0"

    with cloud.api() as api:
        assert api.get("/readyz").status_code == 200
        assert api.get("/v1/frames", params={"camera": "cam-huge"}).json()["items"] == []
    # At the ceiling the same frame is valid, and the cloud still ingests.
    at_limit = declaring(tiny_bundle, (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    assert [a.sequence for a in send(cloud, uplink(tiny_bundle, "cam-8k", at_limit))] == [0]


def test_a_frame_at_the_ceiling_renders_a_capped_view_in_bounded_memory(
    cloud: RunningCloud, tiny_bundle: Bundle
) -> None:
    data = declaring(tiny_bundle, (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    assert len(send(cloud, uplink(tiny_bundle, "cam-8k", data))) == 1
    with cloud.api() as api:
        (stored,) = api.get("/v1/frames", params={"camera": "cam-8k"}).json()["items"]
        tracemalloc.start()
        try:
            view = finished_view(api, stored["id"])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert view["status"] == "done", view
        side = tiny_bundle.manifest.detector.input_size  # view_max_side's default
        assert (view["width"], view["height"], view["attempts"]) == (side, side, 1)
        png = api.get(f"/v1/views/{view['id']}/image").content
        assert Image.open(io.BytesIO(png)).size == (side, side)
    # At the declared size the RGB alone would be 8192² x 3 = 192 MiB.
    assert peak < 48 * MB, f"rendering peaked at {peak / MB:.0f} MiB of Python/numpy memory"


def test_a_legacy_65535_squared_frame_view_fails_with_a_clear_error(
    cloud: RunningCloud, tiny_bundle: Bundle
) -> None:
    # Stored before the ceiling existed: straight into the cloud's own database and blobs.
    settings = cloud.settings
    store = FrameStore.open(settings.resolved_database_url(), settings.data_dir / "blobs")
    store.register_camera("legacy", tiny_bundle.hash, 0, "old")
    data = declaring(tiny_bundle, (65535, 65535))
    t = time.time_ns()
    record = FrameRecord("legacy", 0, t, t, LEVEL, len(data), 65535, 65535)
    frame_id = store.store_frame(record, [], data).frame_id

    with cloud.api() as api:
        tracemalloc.start()
        try:
            view = finished_view(api, frame_id)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert view["status"] == "failed", view
        assert "image_size 65535x65535" in str(view["error"])
        assert f"MAX_IMAGE_SIDE {MAX_IMAGE_SIDE}" in str(view["error"])
        r = api.get(f"/v1/views/{view['id']}/image")
        assert r.status_code == 409 and "MAX_IMAGE_SIDE" in r.json()["detail"]
        assert api.get("/readyz").status_code == 200
    assert peak < 48 * MB, f"the failed view peaked at {peak / MB:.0f} MiB"


def test_the_edge_refuses_a_frame_over_the_ceiling_before_encoding(tiny_bundle: Bundle) -> None:
    encoder = FrameEncoder(tiny_bundle)
    wide = np.zeros((16, MAX_IMAGE_SIDE + 1, 3), np.uint8)
    with pytest.raises(FrameTooLarge, match="8193x16: a side exceeds MAX_IMAGE_SIDE 8192"):
        encoder.encode(CapturedFrame(7, 0, wide), LEVEL)
    # One pixel less is a valid (if odd) frame.
    at_limit = encoder.encode(CapturedFrame(8, 0, wide[:, :MAX_IMAGE_SIDE]), LEVEL)
    assert FrameBitstream.from_bytes(at_limit.bitstream).image_size == (MAX_IMAGE_SIDE, 16)
