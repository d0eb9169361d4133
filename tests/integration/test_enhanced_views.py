"""Enhanced views end to end, every part real: an edge's spool, retention buffer and
enhancement coder behind a real Uplink, a real CloudServer on loopback (gRPC ingest, REST,
restore worker, SQLite), the request going down the camera's live stream and the answer
coming back up.

    POST /v1/views {kind: enhanced} ─► request row ─► dispatch ─► EnhancementRequest ═► edge
    edge: retained pixels ─► AVIF ≤ budget ─► spool ═► Enhancement ─► stored ─► the view
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from PIL import Image

from cloud.restorers import view_size
from codec.bundle import Bundle
from edge.enhancements import EnhancementCoder, EnhancementListener
from edge.frame_encoder import FrameEncoder
from edge.frame_retention import FrameRetention
from edge.sources import CapturedFrame
from edge.spool import Spool, SpooledEnhancement
from edge.uplink import Uplink
from tests.conftest import RunningCloud, cloud_settings, sample_images, wait_for_view

CAMERA = "porch-1"


class _Edge:
    """The agent's uplink half: what run_agent wires, without a capture loop."""

    def __init__(self, bundle: Bundle, cloud: RunningCloud, root: Path) -> None:
        self.bundle, self.cloud = bundle, cloud
        self.encoder = FrameEncoder(bundle, "onnxruntime-cpu", 1, keyframe_interval=1)
        self.spool = Spool(root / "spool", 1 << 24, 3600)
        self.retention = FrameRetention(
            root / "retention", 60, 1 << 28, max_side=self.encoder.input_size
        )
        self.coder = EnhancementCoder(self.retention, self.spool)
        self.uplink: Uplink | None = None
        self.originals: dict[int, np.ndarray] = {}

    def connect(self) -> Uplink:
        target = self.cloud.grpc_target
        self.uplink = Uplink(self.spool, CAMERA, self.bundle.hash,
                             channel_factory=lambda: grpc.insecure_channel(target),
                             listener=EnhancementListener(self.coder))  # fmt: skip
        self.uplink.start()
        assert self.uplink.wait_connected(20) is not None
        return self.uplink

    def capture(self, bgr: np.ndarray, retain: bool = True) -> int:
        encoded = self.encoder.encode(CapturedFrame(0, time.time_ns(), bgr), 2)
        sequence = self.spool.append(time.time_ns(), 2, encoded.bitstream)
        if retain:
            self.retention.keep(sequence, bgr)
        self.originals[sequence] = bgr
        return sequence

    def drain(self, timeout_s: float = 30.0) -> None:
        assert self.spool.wait_empty(timeout_s), f"{self.spool.frames} frames unacked"

    def disconnect(self) -> None:
        assert self.uplink is not None
        self.uplink.stop(5)

    def close(self) -> None:
        if self.uplink is not None:
            self.uplink.stop(0)
        self.coder.close()
        self.spool.close()


@pytest.fixture
def cloud(tiny_bundle: Bundle, tmp_path: Path) -> Iterator[RunningCloud]:
    settings = cloud_settings(
        tiny_bundle, tmp_path, camera_online_after_s=1.5, enhancement_poll_s=0.1,
        enhancement_wait_s=20,
    )  # fmt: skip
    running = RunningCloud(settings)
    yield running
    running.stop()


@pytest.fixture
def edge(tiny_bundle: Bundle, cloud: RunningCloud, tmp_path: Path) -> Iterator[_Edge]:
    e = _Edge(tiny_bundle, cloud, tmp_path / "edge")
    yield e
    e.close()


def _post(api, sequence: int, budget: int = 8000, expect: int = 202) -> str:  # type: ignore[no-untyped-def]
    body = {"camera": CAMERA, "sequence": sequence, "kind": "enhanced",
            "enhancement_bytes": budget}  # fmt: skip
    r = api.post("/v1/views", json=body)
    assert r.status_code == expect, r.text
    return str(r.json()["id"])


def _png(api, path: str) -> Image.Image:  # type: ignore[no-untyped-def]
    r = api.get(path)
    assert r.status_code == 200, r.text
    return Image.open(io.BytesIO(r.content))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / mse)


def _frame(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path))
    assert bgr is not None
    return bgr


def test_an_enhanced_view_carries_the_cameras_own_pixels(edge: _Edge, cloud: RunningCloud) -> None:
    edge.connect()
    sequence = edge.capture(_frame(sample_images()[0]))
    edge.drain()
    time.sleep(2.5)  # past camera_online_after_s without a frame: connected is online
    api = cloud.api()
    view_id = _post(api, sequence)
    view = wait_for_view(api, view_id, timeout_s=40)
    assert view["status"] == "done" and view["fallback"] is None, view
    assert view["enhancement_bytes"] == 8000 and "own pixels" in view["description"]

    image = _png(api, f"/v1/views/{view_id}/image")
    info = image.info
    assert info["fchm:kind"] == "enhanced" and info["fchm:reconstruction"] == "false"
    frame_bytes, extra = int(info["fchm:frame_bytes"]), int(info["fchm:enhancement_bytes"])
    assert 0 < extra <= 8000 and int(info["fchm:bytes_used"]) == frame_bytes + extra
    # Far closer to the camera's frame than the preview the machine bitstream gives.
    original = edge.originals[sequence]
    size = view_size((original.shape[1], original.shape[0]), edge.encoder.input_size)
    assert image.size == size
    truth = cv2.resize(original, size, interpolation=cv2.INTER_AREA)[:, :, ::-1]
    preview = _png(api, f"/v1/views/{view_id}/preview")
    assert preview.info["fchm:kind"] == "preview"
    enhanced_db, preview_db = _psnr(truth, np.asarray(image)), _psnr(truth, np.asarray(preview))
    assert enhanced_db > preview_db + 5 and enhanced_db > 25, (enhanced_db, preview_db)

    # The same frame and budget again: the done view answers (nothing asked of the camera).
    assert _post(api, sequence, expect=200) == view_id
    # Its bytes count in the camera's bandwidth.
    (camera,) = api.get("/v1/cameras").json()["items"]
    assert camera["status"]["enhancement_kbit_s"] > 0
    assert camera["status"]["kbit_s"] >= camera["status"]["enhancement_kbit_s"]


def test_a_frame_the_edge_no_longer_holds_falls_back_saying_so(
    edge: _Edge, cloud: RunningCloud
) -> None:
    edge.connect()
    sequence = edge.capture(_frame(sample_images()[0]), retain=False)
    edge.drain()
    api = cloud.api()
    view = wait_for_view(api, _post(api, sequence), timeout_s=40)
    assert view["status"] == "done", view
    assert "no longer in the camera's retention buffer" in view["fallback"]
    image = _png(api, f"/v1/views/{view['id']}/image")
    assert "retention buffer" in image.info["fchm:fallback"]
    assert image.info["fchm:enhancement_bytes"] == "0"
    assert image.info["fchm:bytes_used"] == image.info["fchm:frame_bytes"]


def test_a_bad_answer_is_refused_by_name_and_the_stream_goes_on(
    edge: _Edge, cloud: RunningCloud
) -> None:
    edge.spool.append_enhancement(SpooledEnhancement("no-such-request", 1, b"xx", ""))
    edge.connect()
    deadline = time.monotonic() + 20
    while edge.spool.pending_enhancements(set(), 10):
        assert time.monotonic() < deadline, "the refused answer was not acked"
        time.sleep(0.05)
    edge.capture(_frame(sample_images()[1]))
    edge.drain()
    assert edge.uplink is not None and edge.uplink.connected
    metrics = cloud.api().get("/metrics").text
    assert 'fchm_enhancements_total{event="refused"} 1.0' in metrics


def test_an_offline_camera_is_asked_again_when_it_reconnects(
    edge: _Edge, cloud: RunningCloud
) -> None:
    edge.connect()
    sequence = edge.capture(_frame(sample_images()[0]))
    edge.drain()
    edge.disconnect()
    time.sleep(2.0)  # past camera_online_after_s
    api = cloud.api()
    offline = wait_for_view(api, _post(api, sequence), timeout_s=40)
    assert offline["status"] == "done" and "offline" in offline["fallback"], offline

    edge.connect()  # the new stream is sent the open request; the edge answers it
    deadline = time.monotonic() + 30
    while True:
        view_id = _post(api, sequence, expect=202)  # a fallback view is never reused
        view = wait_for_view(api, view_id, timeout_s=40)
        if view["fallback"] is None:
            break
        assert time.monotonic() < deadline, view
        time.sleep(0.5)
    assert view["status"] == "done"
    assert int(_png(api, f"/v1/views/{view_id}/image").info["fchm:enhancement_bytes"]) > 0


def test_enhanced_requests_are_checked(cloud: RunningCloud, edge: _Edge) -> None:
    edge.connect()
    sequence = edge.capture(_frame(sample_images()[0]))
    edge.drain()
    api = cloud.api()
    r = api.post("/v1/views", json={"camera": CAMERA, "sequence": sequence, "kind": "enhanced"})
    assert r.status_code == 422 and "enhancement_bytes" in r.text
    r = api.post("/v1/views", json={"camera": CAMERA, "sequence": sequence,
                                    "enhancement_bytes": 4000})  # fmt: skip
    assert r.status_code == 422 and "only there" in r.text
    r = api.post("/v1/views", json={"camera": CAMERA, "sequence": sequence, "kind": "enhanced",
                                    "enhancement_bytes": 10})  # fmt: skip
    assert r.status_code == 422


def test_threads_do_not_leak(edge: _Edge) -> None:
    edge.coder.close()
    assert not any(t.name == "enhancements" and t.is_alive() for t in threading.enumerate())
