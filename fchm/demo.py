"""``fchm demo``: the whole path on embedded defaults, on a real video.

1. bundle      export the default bundle if none exists: the shipped learned
               bottleneck (model/checkpoints/) on the packaged person detector
2. cloud       ``fchm cloud serve`` as a child process on free loopback ports, and a
               REST API key of its own: scopes read + view, camera stage-cam only
3. edge        the agent streams sampled frames of a real video over gRPC
4. REST        read cameras and detections back over HTTP, print them
5. view        request a human view of the busiest frame, save the PNG
6. rate        bytes per frame next to JPEG of the same frames, and how many of the
               full detector's detections on the uncompressed frames survived
7. stop        SIGTERM the cloud; it must exit cleanly
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from fchm.cloud_process import CloudProcess

DEMO_CAMERA = "stage-cam"


@dataclass(frozen=True)
class DemoConfig:
    out: Path
    bundle: Path
    frames: int = 48
    fps: float = 2.0
    rate_level: int | None = None
    """None: the bundle's middle level"""


def package_file(module: str, relative: str, package: str) -> Path:
    """A data file shipped inside an installed package, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{relative} comes from {package}: install the 'demo' extra")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise RuntimeError(f"{path} missing from the {package} package")
    return path


def packaged_video() -> Path:
    """The 1441-frame video of people on a stage shipped by the PyPI package iscc-samples."""
    return package_file("iscc_samples", "files/video/demo.mp4", "iscc-samples")


DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "model/checkpoints/person-fchm.pt"
"""The trained bottleneck shipped in the repository for the packaged person detector."""


def export_default_bundle(out: Path) -> None:
    from model.default_weights import default_weights

    if DEFAULT_CHECKPOINT.is_file():
        from model.learned_export import LearnedExportConfig, export_learned_bundle

        export_learned_bundle(LearnedExportConfig(DEFAULT_CHECKPOINT, default_weights(), out))
    else:  # a checkout without the trained checkpoint still runs, on the baseline codec
        from model.bundle_export import ExportConfig, export_bundle

        export_bundle(ExportConfig(weights=default_weights(), out=out))


def run_demo(cfg: DemoConfig) -> None:
    cfg.out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    video = packaged_video()

    # 1. Bundle.
    if not (cfg.bundle / "manifest.json").is_file():
        print(f"[1/7] exporting the default bundle to {cfg.bundle} …", flush=True)

        export_default_bundle(cfg.bundle)
    from codec.bundle import Bundle

    manifest = Bundle.load(cfg.bundle).manifest
    if cfg.rate_level is None:
        cfg = replace(cfg, rate_level=manifest.num_levels // 2)
    print(f"[1/7] bundle {cfg.bundle}: {manifest.codec} codec, {manifest.num_levels} rate levels")

    # 2. Cloud, as its own process.
    data_dir = cfg.out / "cloud"
    for stale in data_dir.glob("fchm.db*"):
        stale.unlink()
    log = cfg.out / "cloud.log"
    log.write_text("")
    cloud = CloudProcess(cfg.bundle, data_dir, log=log)
    try:
        cloud.start()
        print(f"[2/7] cloud up: gRPC {cloud.grpc_target}, REST {cloud.http_base}")
        # What a dashboard for this camera would hold (`fchm cloud key create` does the same).
        key = cloud.create_key("demo", ["read", "view"], [DEMO_CAMERA])
        print(f"      REST API key 'demo': scopes read, view; camera {DEMO_CAMERA} only")
        api = cloud.api(key)
        _run_edge_rest_view(cfg, video, cloud.grpc_target, api)
    finally:
        # 7. Stop.
        code = cloud.stop()
    if code != 0:
        raise RuntimeError(f"cloud exited with {code}; see {log}")
    print("[7/7] cloud stopped cleanly")


def _run_edge_rest_view(cfg: DemoConfig, video: Path, grpc_target: str, api: httpx.Client) -> None:
    from edge.agent import run_agent
    from edge.settings import EdgeSettings

    # 3. Edge, with a fresh spool: a spool remembers how far into the video it got.
    spool_dir = cfg.out / "edge-spool"
    shutil.rmtree(spool_dir, ignore_errors=True)
    settings = EdgeSettings(
        bundle=cfg.bundle,
        source=str(video),
        camera_id=DEMO_CAMERA,
        cloud=grpc_target,
        rate_level=cfg.rate_level,
        max_fps=cfg.fps,
        max_frames=cfg.frames,
        threads=1,
        spool_dir=spool_dir,
    )
    report = run_agent(settings)
    stages = ", ".join(f"{k} {v:.1f} ms" for k, v in report.stage_ms.items())
    print(
        f"[3/7] edge streamed {report.frames} frames of {video.name} "
        f"({report.acked} acked, {report.elapsed_s:.1f} s; per frame: {stages})"
    )

    # 4. REST: read back what the cloud stored.
    cameras = api.get("/v1/cameras").raise_for_status().json()["items"]
    print(f"[4/7] GET /v1/cameras → {[(c['camera_id'], c['num_frames']) for c in cameras]}")
    detections = _all_detections(api)
    print(f"      GET /v1/detections?camera={DEMO_CAMERA} → {len(detections)} detections")
    print(f"      {'time (UTC)':<27} {'frame':>5} {'label':<8} {'score':>5}  box (x1, y1, x2, y2)")
    for d in detections[:10]:
        b = d["box"]
        print(
            f"      {d['time']:<27} {d['frame_id']:>5} {d['label']:<8} {d['score']:>5.2f}  "
            f"({b['x1']:.0f}, {b['y1']:.0f}, {b['x2']:.0f}, {b['y2']:.0f})"
        )
    if not detections:
        raise RuntimeError("the cloud stored no detections for the demo video")

    # 5. A human view of the frame with the most detections.
    counts: dict[int, int] = {}
    for d in detections:
        counts[d["frame_id"]] = counts.get(d["frame_id"], 0) + 1
    frame_id = max(counts, key=lambda k: counts[k])
    job = api.post("/v1/views", json={"frame_id": frame_id}).raise_for_status().json()
    status = _wait_view(api, job["id"])
    image = api.get(f"/v1/views/{job['id']}/image").raise_for_status().content
    view_path = cfg.out / f"view-frame{frame_id}.png"
    view_path.write_bytes(image)
    print(f"[5/7] POST /v1/views → {job['id']} ({status['kind']}): {status['description']}")
    print(f"      wrote {view_path} ({len(image)} bytes)")

    # 6. Rate against JPEG of the very same frames; fidelity against the full detector.
    _print_rate(cfg, video, report.frames, report.bytes_per_frame, detections)


def _all_detections(api: httpx.Client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"camera": DEMO_CAMERA, "limit": 200}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/detections", params=params).raise_for_status().json()
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items


def _wait_view(api: httpx.Client, view_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = api.get(f"/v1/views/{view_id}").raise_for_status().json()
        if status["status"] == "done":
            return status
        if status["status"] == "failed":
            raise RuntimeError(f"view {view_id} failed: {status.get('error')}")
        time.sleep(0.2)
    raise RuntimeError(f"view {view_id} not done after 120 s")


def _print_rate(
    cfg: DemoConfig,
    video: Path,
    frames: int,
    ours: float,
    received: list[dict[str, Any]],
) -> None:
    import cv2

    from codec.bundle import Bundle
    from codec.geometry import Letterbox
    from edge.sources import open_source
    from model.eval_signals import FullDetector
    from model.reference_detector import reference_detector

    bundle = Bundle.load(cfg.bundle, verify=False)
    info = bundle.manifest.detector
    reference_onnx = reference_detector(bundle)  # the plain detector, for a learned bundle
    detector = FullDetector(bundle, conf=0.25, pred_conf=0.25, threads=0, reference=reference_onnx)
    jpeg_full, jpeg_small, reference = [], [], 0
    for frame in open_source(str(video), cfg.fps, cfg.frames):
        h, w = frame.image.shape[:2]
        geometry = Letterbox.fit((w, h), info.input_size, info.pad_multiple)
        reference += len(detector(frame.image).reference)  # the whole detector, nothing coded
        small = cv2.resize(frame.image, geometry.resized_size, interpolation=cv2.INTER_AREA)
        jpeg_full.append(len(cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]))
        jpeg_small.append(len(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]))
    small_kb = sum(jpeg_small) / len(jpeg_small)
    full_kb = sum(jpeg_full) / len(jpeg_full)
    print(f"[6/7] bytes per frame over the same {frames} frames ({w}x{h} source):")
    name = f"fchm {bundle.manifest.codec} codec, level {cfg.rate_level}"
    print(f"      {name + ' (whole bitstream):':<47}{ours:10,.0f}")
    print(f"      JPEG q90 at the network's {info.input_size} px long side:  {small_kb:10,.0f}")
    print(f"      JPEG q90 at the source resolution:             {full_kb:10,.0f}")
    print(
        f"      detections: {len(received)} from the bitstreams, {reference} from the full "
        "detector on the uncompressed frames"
    )
    if bundle.manifest.codec == "uniform":
        print("      (the uniform codec is the untrained baseline; the learned codec replaces it)")
