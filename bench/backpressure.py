"""Capture → stored latency of a live camera offered 1.5x what the cloud can store,
with and without the cloud's backpressure hints.

    stream_server (HTTP MPEG-TS, 1.5 x capacity) ─► run_agent (live) ═gRPC═► `fchm cloud serve`
                       ▲ thins capture to RateHint.max_fps  ◄── hints while lag > max_ingest_lag_s

First the cloud's capacity is measured on this machine: the demo video as a file, sent
flat out, stored frames per second (edge and cloud share the cores, as they do below).
Then, for each mode, a fresh cloud and one live camera at 1.5x that rate for
``--seconds``: the cloud with its default ``max_ingest_lag_s`` (backpressure), and
with the threshold out of reach (1e9 s: no hints, as before). Latency per stored frame
comes from the REST API (received_time_ns - time_ns), binned by capture time.

    .venv/bin/python bench/backpressure.py --bundle bundles/default [--seconds 90]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from cloud.settings import CloudSettings
from edge.agent import AgentReport, run_agent
from edge.settings import EdgeSettings
from fchm.cloud_process import CloudProcess, free_port
from fchm.demo import packaged_video

REPO = Path(__file__).resolve().parents[1]
BIN_S = 10.0


def edge(cloud: CloudProcess, bundle: Path, spool: Path, camera: str, source: str, **kw: Any):  # type: ignore[no-untyped-def]
    return EdgeSettings(
        source=source, camera_id=camera, cloud=cloud.grpc_target, bundle=bundle,
        rate_level=6, threads=1, spool_dir=spool, progress_interval_s=10, **kw,
    )  # fmt: skip


def stored(cloud: CloudProcess, camera: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    with cloud.api(timeout=60) as api:  # its admin key: REST needs one
        while True:
            params = {"camera": camera, "limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = api.get("/v1/frames", params=params).json()
            items += page["items"]
            if (cursor := page["next_cursor"]) is None:
                return items


def capacity_fps(args: argparse.Namespace, work: Path) -> float:
    with CloudProcess(args.bundle, work / "probe-cloud") as cloud:
        settings = edge(cloud, args.bundle, work / "probe-spool", "probe",
                        str(packaged_video()), max_frames=args.probe_frames)  # fmt: skip
        report = run_agent(settings)
        assert report.acked == report.frames, report
        received = sorted(f["received_time_ns"] for f in stored(cloud, "probe"))
    return (len(received) - 1) / ((received[-1] - received[0]) / 1e9)


def offer(args: argparse.Namespace, work: Path, fps: float, max_lag_s: float) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.stream_server", str(port),
         str(packaged_video()), "--fps", f"{fps:.1f}"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    name = f"lag{max_lag_s:g}"
    cloud = CloudProcess(args.bundle, work / f"cloud-{name}")
    cloud.env["FCHM_CLOUD_MAX_INGEST_LAG_S"] = str(max_lag_s)
    result: list[AgentReport] = []
    try:
        with cloud:
            settings = edge(cloud, args.bundle, work / f"spool-{name}", "live",
                            f"http://127.0.0.1:{port}/live.ts", queue_frames=64)  # fmt: skip
            stop = threading.Event()
            runner = threading.Thread(target=lambda: result.append(run_agent(settings, stop)))
            started = time.time_ns()
            runner.start()
            time.sleep(args.seconds)
            stop.set()
            server.kill()
            runner.join()
            frames = stored(cloud, "live")
    finally:
        server.kill()
        server.wait(10)
    report = result[0]
    bins: list[dict[str, Any]] = []
    t = np.array([(f["time_ns"] - started) / 1e9 for f in frames])
    lag = np.array([(f["received_time_ns"] - f["time_ns"]) / 1e9 for f in frames])
    for lo in np.arange(0.0, args.seconds, BIN_S):
        sel = lag[(t >= lo) & (t < lo + BIN_S)]
        if sel.size:
            bins.append({"from_s": float(lo), "frames": int(sel.size),
                         "median_s": round(float(np.median(sel)), 2),
                         "p95_s": round(float(np.percentile(sel, 95)), 2)})  # fmt: skip
    return {
        "max_ingest_lag_s": max_lag_s,
        "offered_fps": round(fps, 1),
        "stored": len(frames),
        "acked": report.acked,
        "spooled_left": report.spooled_left,
        "dropped": report.dropped,
        "kept_fps": round(len(frames) / args.seconds, 1),
        "bins": bins,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--overload", type=float, default=1.5)
    parser.add_argument("--probe-frames", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fchm-backpressure-"))

    capacity = capacity_fps(args, work)
    print(f"capacity {capacity:.1f} frames/s", flush=True)
    default_lag = CloudSettings.model_fields["max_ingest_lag_s"].default
    runs = [offer(args, work, args.overload * capacity, lag) for lag in (1e9, default_lag)]
    meta = {"capacity_fps": round(capacity, 1), "overload": args.overload,
            "seconds": args.seconds, "bundle": str(args.bundle),
            "machine": f"{os.cpu_count()} cores"}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backpressure.json").write_text(json.dumps({"rows": runs, "meta": meta}, indent=2))
    lines = ["| capture time (s) | " + " | ".join(
        f"{'no hints' if r['max_ingest_lag_s'] >= 1e9 else 'backpressure'} median / p95 (s)"
        for r in runs) + " |", "|---|---|---|"]  # fmt: skip
    for i, b in enumerate(runs[0]["bins"]):
        cells = [f"{r['bins'][i]['median_s']:.2f} / {r['bins'][i]['p95_s']:.2f}"
                 if i < len(r["bins"]) else "-" for r in runs]  # fmt: skip
        lines.append(f"| {b['from_s']:g}-{b['from_s'] + BIN_S:g} | " + " | ".join(cells) + " |")
    lines.append("")
    for r in runs:
        mode = (
            "no hints"
            if r["max_ingest_lag_s"] >= 1e9
            else f"max_ingest_lag_s {r['max_ingest_lag_s']:g}"
        )
        lines.append(f"- {mode}: offered {r['offered_fps']} fps, stored {r['stored']} "
                     f"({r['acked']} acked, {r['spooled_left']} left in the spool), "
                     f"edge dropped {r['dropped'] or 'none'}")  # fmt: skip
    lines.append(f"\nCapacity {capacity:.1f} frames/s (demo.mp4 as a file, flat out), "
                 f"offered {args.overload:g}x for {args.seconds:g} s, {meta['machine']}, "
                 "loopback.")  # fmt: skip
    (args.out / "backpressure.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
