"""The user's path, as processes: ``fchm cloud serve`` + ``fchm edge run`` on a folder
of real images → detections over REST → a human view PNG."""

import io
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from cloud.restorers import view_size
from codec.bundle import Bundle
from fchm.cloud_process import CloudProcess
from tests.conftest import sample_images, wait_for_view


def test_edge_to_cloud_to_rest_to_view(tiny_bundle: Bundle, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, path in enumerate(sample_images() * 2):
        shutil.copy(path, frames / f"{i:03d}{path.suffix}")
    cloud = CloudProcess(tiny_bundle.path, tmp_path / "cloud", log=tmp_path / "cloud.log")
    cloud.start()
    api = cloud.api(timeout=10)
    try:
        edge = subprocess.run(
            [sys.executable, "-m", "fchm", "edge", "run", "--source", str(frames),
             "--camera", "gate-1", "--cloud", cloud.grpc_target, "--rate", "6",
             "--bundle", str(tiny_bundle.path), "--spool-dir", str(tmp_path / "spool")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert edge.returncode == 0, edge.stderr
        assert "4 frames, 4 acked" in edge.stdout

        items = api.get("/v1/detections", params={"camera": "gate-1", "limit": 1000}).json()
        detections = items["items"]
        assert detections, "the tiny detector finds objects in bus.jpg"
        assert {d["label"] for d in detections} <= {"person", "fall"}
        frames_page = api.get("/v1/frames", params={"camera": "gate-1"}).json()["items"]
        sizes = {f["id"]: (f["image_width"], f["image_height"]) for f in frames_page}
        for d in detections:
            w, h = sizes[d["frame_id"]]
            b = d["box"]
            assert 0 <= b["x1"] <= b["x2"] <= w and 0 <= b["y1"] <= b["y2"] <= h

        job = api.post(
            "/v1/views", json={"camera": "gate-1", "sequence": frames_page[0]["sequence"]}
        )
        assert job.status_code == 202
        view_id = job.json()["id"]
        status = wait_for_view(api, view_id)
        assert status["status"] == "done", status
        png = api.get(f"/v1/views/{view_id}/image")
        assert png.headers["content-type"] == "image/png"
        # The frame's size, capped to the network input size on the long side (the default).
        side = tiny_bundle.manifest.detector.input_size
        expected = view_size(sizes[min(sizes)], side)
        assert Image.open(io.BytesIO(png.content)).size == expected
        assert (status["width"], status["height"]) == expected
    finally:
        assert cloud.stop() == 0
