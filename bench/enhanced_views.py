"""Enhanced views end to end: a person's request, the camera's answer, the view, timed.

    Spool + FrameRetention + EnhancementCoder ─► Uplink ═gRPC═► `fchm cloud serve` (child)
    POST /v1/views {kind: enhanced, enhancement_bytes: B} ─► request down the live stream
        ─► AVIF of the retained frame ≤ B ─► stored ─► restore worker ─► PNG ─► done

For each budget B and each frame: the time from POST to done (the API's own created and
finished times), the enhancement's bytes, PSNR and MS-SSIM of the view and of the same
job's preview against the frame (both at the view size), the edge's coding time for the
same frame and budget (timed apart, in this process), and the retention buffer's cost per
frame on the encode loop. Frames: consecutive frames of the fixed-camera dev clip at 5 fps
and the photos dev set (bench/dev_sets.py), none of them in training.

    .venv/bin/python bench/enhanced_views.py [--bundle bundles/default] [--level 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
from dev_sets import DEV_SETS, path_of
from PIL import Image

from codec.bundle import Bundle
from codec.enhancement import encode_enhancement
from edge.enhancements import EnhancementCoder, EnhancementListener
from edge.frame_encoder import FrameEncoder
from edge.frame_retention import FrameRetention
from edge.sources import CapturedFrame, open_source
from edge.spool import Spool
from edge.uplink import Uplink
from fchm.cloud_process import CloudProcess
from model.human_eval import ms_ssim, psnr

BUDGETS = (4000, 8000, 16000, 32000)
CAMERA = "bench-porch"


def _frames(per_set: int) -> list[tuple[str, np.ndarray]]:
    sets = {d.name: d for d in DEV_SETS}
    clip = path_of(sets["fixed_camera"])
    out = [("fixed_camera", f.image) for f in open_source(str(clip), 5.0)][:per_set]
    photos = sorted(path_of(sets["photos"]).iterdir())
    for path in photos[:: max(1, len(photos) // per_set)][:per_set]:
        image = cv2.imread(str(path))
        if image is not None:
            out.append(("photos", image))
    return out


def _png(api: Any, path: str) -> Image.Image:
    r = api.get(path)
    r.raise_for_status()
    return Image.open(io.BytesIO(r.content))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--level", type=int, default=3, help="the frames' machine rate level")
    parser.add_argument("--frames", type=int, default=6, help="frames per set")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    bundle = Bundle.load(args.bundle)
    encoder = FrameEncoder(bundle, threads=1, keyframe_interval=1)
    frames = _frames(args.frames)
    work = Path(tempfile.mkdtemp(prefix="fchm-enhanced-"))
    spool = Spool(work / "spool", 1 << 30, 3600)
    retention = FrameRetention(work / "retention", 3600, 1 << 32, max_side=encoder.input_size)
    coder = EnhancementCoder(retention, spool)

    # Edge side first: machine bitstreams, the retention buffer's cost per frame.
    sequences, keep_ms = [], []
    for i, (_, image) in enumerate(frames):
        coded = encoder.encode(CapturedFrame(i, time.time_ns(), image), args.level)
        sequence = spool.append(time.time_ns(), args.level, coded.bitstream)
        t0 = time.perf_counter()
        retention.keep(sequence, image)
        keep_ms.append((time.perf_counter() - t0) * 1000)
        sequences.append(sequence)

    rows = []
    with CloudProcess(args.bundle, work / "cloud") as cloud:
        uplink = Uplink(spool, CAMERA, bundle.hash,
                        channel_factory=lambda: grpc.insecure_channel(cloud.grpc_target),
                        listener=EnhancementListener(coder))  # fmt: skip
        uplink.start()
        if not spool.wait_empty(120):
            raise RuntimeError("the cloud did not ack the frames")
        api = cloud.api()
        for budget in BUDGETS:
            for (name, image), sequence in zip(frames, sequences, strict=True):
                body = {"camera": CAMERA, "sequence": sequence, "kind": "enhanced",
                        "enhancement_bytes": budget, "reuse": False}  # fmt: skip
                view = api.post("/v1/views", json=body).raise_for_status().json()
                while view["status"] not in ("done", "failed"):
                    time.sleep(0.05)
                    view = api.get(f"/v1/views/{view['id']}").raise_for_status().json()
                if view["status"] != "done" or view["fallback"]:
                    raise RuntimeError(f"view {view['id']}: {view['error'] or view['fallback']}")
                enhanced = _png(api, f"/v1/views/{view['id']}/image")
                preview = _png(api, f"/v1/views/{view['id']}/preview")
                truth = cv2.resize(image, enhanced.size, interpolation=cv2.INTER_AREA)
                as_bgr = [np.asarray(im)[:, :, ::-1] for im in (enhanced, preview)]
                kept = retention.get(sequence)
                assert kept is not None
                t0 = time.perf_counter()
                encode_enhancement(kept, budget)
                code_ms = (time.perf_counter() - t0) * 1000
                rows.append({
                    "set": name, "budget": budget,
                    "frame_bytes": int(enhanced.info["fchm:frame_bytes"]),
                    "enhancement_bytes": int(enhanced.info["fchm:enhancement_bytes"]),
                    "request_to_done_s": (view["finished_ns"] - view["created_ns"]) / 1e9,
                    "edge_code_ms": code_ms,
                    "psnr": psnr(truth, as_bgr[0]), "ms_ssim": ms_ssim(truth, as_bgr[0]),
                    "preview_psnr": psnr(truth, as_bgr[1]),
                    "preview_ms_ssim": ms_ssim(truth, as_bgr[1]),
                })  # fmt: skip
                print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()},
                      flush=True)  # fmt: skip
        uplink.stop(5)
    coder.close()
    spool.close()

    table = _table(rows)
    meta = {"level": args.level, "frames": len(frames), "machine": f"{os.cpu_count()} cores",
            "retention_keep_ms": statistics.mean(keep_ms)}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "enhanced_views.json").write_text(json.dumps({"rows": rows, "meta": meta},
                                                             indent=2))  # fmt: skip
    text = "\n".join(table) + (
        f"\n\nMachine bitstream at level {args.level}; {args.frames} frames per set; the "
        f"retention buffer's write took {meta['retention_keep_ms']:.1f} ms a frame on the "
        f"encode loop; {meta['machine']}, loopback.\n"
    )
    (args.out / "enhanced_views.md").write_text(text)
    print(text)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| set | budget B | machine B/frame | enhancement B | total B | request → done s "
        "(median, max) | edge coding ms | PSNR dB (preview) | MS-SSIM (preview) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, budget in sorted({(r["set"], r["budget"]) for r in rows}):
        g = [r for r in rows if r["set"] == name and r["budget"] == budget]
        mean = {k: statistics.mean(r[k] for r in g) for k in g[0] if k not in ("set", "budget")}
        waits = [r["request_to_done_s"] for r in g]
        lines.append(
            f"| {name} | {budget:,} | {mean['frame_bytes']:,.0f} | "
            f"{mean['enhancement_bytes']:,.0f} | "
            f"{mean['frame_bytes'] + mean['enhancement_bytes']:,.0f} | "
            f"{statistics.median(waits):.2f}, {max(waits):.2f} | {mean['edge_code_ms']:,.0f} | "
            f"{mean['psnr']:.2f} ({mean['preview_psnr']:.2f}) | "
            f"{mean['ms_ssim']:.3f} ({mean['preview_ms_ssim']:.3f}) |"
        )
    return lines


if __name__ == "__main__":
    main()
