"""Edge throughput and memory: frames per second per encoder backend, and the agent's RSS.

    demo.mp4 ─► frames (decoded once) ─► FrameEncoder.encode: letterbox ─► backend
              (nn_part_1) ─► quantize + ANS + container (encode) ─► bytes      = 1 frame

    fps:    every backend in BACKENDS × thread counts (and ONNX Runtime with its default
            spinning workers, for comparison), same frames, same run; a backend that
            cannot run here (no GPU, no TensorRT) is a row with the reason
    memory: peak resident memory (ru_maxrss from os.wait4) of child processes, each a
            fresh interpreter:
              imports            python + numpy + onnxruntime + av + cv2 + the edge modules
              encode path        source ─► capture thread ─► FrameQueue ─► FrameEncoder
              fchm edge run      the whole agent (+ spool + gRPC uplink) against a local
                                 `fchm cloud serve`; the cloud's memory is not counted

Run it (60 frames, bundles/default; see bench/README.md):

.venv/bin/python bench/edge_throughput.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RSS_TARGET_MB = 300.0
BLOCK = 5  # frames timed per backend before moving on to the next
CONFIGS = (  # (backend, threads, ORT workers spin); threads only matter to ONNX Runtime
    ("onnxruntime-cpu", 1, False),
    ("onnxruntime-cpu", 2, False),
    # ONNX Runtime's own default, for comparison: worker threads spin after each run.
    ("onnxruntime-cpu", 2, True),
    ("onnxruntime-cuda", 2, False),
    ("tensorrt", 0, False),
)


def default_video() -> Path:
    # Found like fchm.demo.packaged_video(), without importing fchm.demo (and httpx)
    # into this process before the memory runs (see main()).
    import importlib.util

    spec = importlib.util.find_spec("iscc_samples")
    if spec is None or spec.origin is None:
        raise SystemExit("no --video and no iscc-samples: install the 'demo' extra")
    return Path(spec.origin).parent / "files" / "video" / "demo.mp4"


def peak_rss_line() -> str:
    """This process's own peak RSS (VmHWM; Linux), as a line the parent parses."""
    status = Path("/proc/self/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    return f"VmHWM_MB={kib / 1024:.1f}"


# ── frames per second ───────────────────────────────────────────────────────────


def measure_fps(
    bundle_dir: Path,
    video: Path,
    frames: int,
    warmup: int,
    level: int,
    configs: tuple[tuple[str, int, bool], ...] = CONFIGS,
    load: str = "idle",
) -> list[dict[str, Any]]:
    from codec.bundle import Bundle
    from edge.encoder_backends import BackendUnavailable, OnnxRuntimeEncoder
    from edge.frame_encoder import FrameEncoder
    from edge.sources import open_source

    bundle = Bundle.load(bundle_dir)
    # 5 fps of the video: frames with motion between them, decoded once for all backends.
    captured = list(open_source(str(video), max_fps=5.0, max_frames=frames + warmup))
    rows: list[dict[str, Any]] = []
    encoders: dict[int, FrameEncoder] = {}
    with tempfile.TemporaryDirectory() as cache:
        for i, (backend, threads, spinning) in enumerate(configs):
            rows.append({"backend": backend, "threads": threads, "spinning": spinning})
            rows[i]["other_load"] = load
            try:
                t0 = time.perf_counter()
                encoder = FrameEncoder(bundle, backend, threads, engine_cache=Path(cache))
                if spinning:
                    encoder.backend = OnnxRuntimeEncoder(bundle.file("encoder"), threads, True)
                for frame in captured[:warmup]:  # first runs allocate, tune, build engines
                    encoder.encode(frame, level)
                rows[i]["open_and_warmup_s"] = round(time.perf_counter() - t0, 2)
                encoders[i] = encoder
            except (BackendUnavailable, ImportError) as exc:
                rows[i]["status"] = f"skipped: {exc}"
        # Round robin in blocks of BLOCK frames: every backend sees the same frames under
        # the same load, so the ratios hold when something else runs on the machine. The
        # pause between blocks lets one backend's spinning threads die down before the
        # next backend is timed.
        elapsed = dict.fromkeys(encoders, 0.0)
        stages: dict[int, dict[str, float]] = {i: {} for i in encoders}
        nbytes = dict.fromkeys(encoders, 0)
        timed = captured[warmup:]
        for start in range(0, len(timed), BLOCK):
            for i, encoder in encoders.items():
                time.sleep(0.05)
                for frame in timed[start : start + BLOCK]:
                    t0 = time.perf_counter()
                    encoded = encoder.encode(frame, level)
                    elapsed[i] += time.perf_counter() - t0
                    nbytes[i] += len(encoded.bitstream)
                    for stage, ms in encoded.stage_ms.items():
                        stages[i][stage] = stages[i].get(stage, 0.0) + ms
    n = len(captured) - warmup
    for i in encoders:
        rows[i] |= {
            "status": "ok",
            "frames": n,
            "fps": round(n / elapsed[i], 2),
            "ms_per_frame": round(1000 * elapsed[i] / n, 1),
            **{f"{k}_ms": round(v / n, 1) for k, v in stages[i].items()},
            "bytes_per_frame": round(nbytes[i] / n),
        }
    return rows


@contextlib.contextmanager
def one_core_busy(video: Path) -> Iterator[None]:
    """A process decoding ``video`` in a loop on one thread: the load of a camera stream."""
    code = (
        "import av, sys\n"
        "while True:\n"
        "    with av.open(sys.argv[1]) as c:\n"
        "        c.streams.video[0].thread_count = 1\n"
        "        for _ in c.decode(video=0): pass\n"
    )
    busy = subprocess.Popen([sys.executable, "-c", code, str(video)])
    try:
        time.sleep(1.0)  # let it get going
        yield
    finally:
        busy.kill()
        busy.wait(10)


# ── resident memory ─────────────────────────────────────────────────────────────


def child_max_rss_mb(args: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a child to completion; its own peak RSS (MB) and the tail of its output."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        # os.wait4 reports this child's own rusage (RUSAGE_CHILDREN would mix in the cloud).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        tail = log.read()[-1500:]
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {tail}")
    return usage.ru_maxrss / 1024, tail  # Linux reports KiB


def encode_path_child(bundle_dir: Path, video: Path, frames: int, threads: int) -> None:
    """Child: the agent's capture + encode path, without the uplink."""
    from codec.bundle import Bundle
    from edge.frame_encoder import FrameEncoder
    from edge.frame_queue import FrameQueue, start_capture
    from edge.sources import open_source

    encoder = FrameEncoder(Bundle.load(bundle_dir), "onnxruntime-cpu", threads)
    queue = FrameQueue(8, drop_oldest=False)
    start_capture(open_source(str(video), max_frames=frames), queue)
    count = 0
    for frame in queue:
        encoder.encode(frame, 3)
        count += 1
    print(json.dumps({"frames": count}))
    print(peak_rss_line())


def agent_rss_mb(bundle_dir: Path, video: Path, frames: int, threads: int) -> tuple[float, str]:
    """Peak RSS of `fchm edge run` streaming to a real `fchm cloud serve` on loopback."""
    from fchm.cloud_process import CloudProcess  # httpx: kept out of the process until now

    with (
        tempfile.TemporaryDirectory() as tmp,
        CloudProcess(bundle_dir, Path(tmp) / "cloud") as cloud,
    ):
        return child_max_rss_mb(
            [sys.executable, "-m", "fchm", "edge", "run", "--source", str(video),
             "--camera", "bench-rss", "--cloud", cloud.grpc_target, "--rate", "3",
             "--bundle", str(bundle_dir), "--max-frames", str(frames),
             "--spool-dir", f"{tmp}/spool"],
            env={"FCHM_EDGE_THREADS": str(threads)},
        )  # fmt: skip


def measure_memory(
    bundle_dir: Path, video: Path, frames: int, threads: int
) -> list[dict[str, Any]]:
    imports = (
        "import numpy, onnxruntime, av, cv2; "
        "import edge.frame_encoder, edge.frame_queue, edge.sources, edge.encoder_backends; "
        "from bench.edge_throughput import peak_rss_line; print(peak_rss_line())"
    )
    encode_path = [sys.executable, str(Path(__file__).resolve()), "--child-encode-path"]
    encode_path += ["--bundle", str(bundle_dir), "--video", str(video)]
    encode_path += ["--memory-frames", str(frames), "--threads", str(threads)]
    runs = {
        "imports only": lambda: child_max_rss_mb([sys.executable, "-c", imports]),
        f"encode path, {frames} frames": lambda: child_max_rss_mb(encode_path),
        f"fchm edge run, {frames} frames": lambda: agent_rss_mb(bundle_dir, video, frames, threads),
    }
    rows = []
    for what, run in runs.items():
        row: dict[str, Any] = {"process": what, "backend": "onnxruntime-cpu", "threads": threads}
        try:
            rss, output = run()
            row |= {"status": "ok", "max_rss_mb": round(rss, 1), "target_mb": RSS_TARGET_MB}
            hwm = [line for line in output.splitlines() if line.startswith("VmHWM_MB=")]
            if hwm:  # the child's own count, a cross-check of ru_maxrss
                row["vm_hwm_mb"] = float(hwm[-1].split("=")[1])
        except RuntimeError as exc:
            row["status"] = f"failed: {str(exc)[-400:]}"
        rows.append(row)
    return rows


# ── report ──────────────────────────────────────────────────────────────────────


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"Edge encode path on {meta['machine']}: {meta['frames']} frames of "
        f"{Path(meta['video']).name} (sampled at 5 fps), bundle `{meta['bundle']}`, "
        f"rate level {meta['rate_level']}, after {meta['warmup']} warm-up frames; backends"
        f" interleaved in blocks of {BLOCK} frames. Load average (1 min) before/after: "
        f"{meta['load_average_1_5_15_min']['before'][0]} / "
        f"{meta['load_average_1_5_15_min']['after'][0]}.",
        "",
        "| backend | threads | other load | fps | ms/frame | preprocess | nn_part_1 | encode |"
        " status |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        name = r["backend"] + (" (spinning workers, ORT's default)" if r["spinning"] else "")
        if r["status"] == "ok":
            lines.append(
                f"| {name} | {r['threads']} | {r['other_load']} | {r['fps']:.1f} |"
                f" {r['ms_per_frame']:.1f} |"
                f" {r['preprocess_ms']:.1f} | {r['nn_part_1_ms']:.1f} | {r['encode_ms']:.1f} | ok |"
            )
        else:
            lines.append(
                f"| {name} | {r['threads']} | {r['other_load']} | – | – | – | – | – |"
                f" {r['status']} |"
            )
    lines += [
        "",
        f"Peak resident memory (ru_maxrss of the process; target ≤ {RSS_TARGET_MB:.0f} MB with"
        " ONNX Runtime CPU):",
        "",
        "| process | threads | max RSS (MB) | child's own VmHWM (MB) | status |",
        "|---|---:|---:|---:|---|",
    ]
    for r in result["memory"]:
        rss = f"{r['max_rss_mb']:.1f}" if r["status"] == "ok" else "–"
        hwm = f"{r['vm_hwm_mb']:.1f}" if "vm_hwm_mb" in r else "–"
        lines.append(f"| {r['process']} | {r['threads']} | {rss} | {hwm} | {r['status']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "bundles/default")
    parser.add_argument("--video", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=60, help="timed frames per backend")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rate-level", type=int, default=3)
    parser.add_argument("--memory-frames", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (memory)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results")
    parser.add_argument("--child-encode-path", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    video = args.video or default_video()
    if args.child_encode_path:
        encode_path_child(args.bundle, video, args.memory_frames, args.threads)
        return

    started = time.perf_counter()
    load_before = os.getloadavg()
    # Memory first, while this process is still small: a child's ru_maxrss starts from
    # the RSS of the parent it was forked from, so a big parent would inflate it.
    memory = measure_memory(args.bundle, video, args.memory_frames, args.threads)
    rows = measure_fps(args.bundle, video, args.frames, args.warmup, args.rate_level)
    # Again with one core taken, as on a camera box that also decodes its stream: what
    # threads and spinning cost when the encoder does not have the machine to itself.
    cpu_configs = tuple(c for c in CONFIGS if c[0] == "onnxruntime-cpu")
    with one_core_busy(video):
        rows += measure_fps(
            args.bundle, video, args.frames, args.warmup, args.rate_level, cpu_configs,
            load="1 core busy decoding video",
        )  # fmt: skip
    result: dict[str, Any] = {
        "rows": rows,
        "memory": memory,
        "meta": {
            "bundle": os.path.relpath(args.bundle.resolve(), REPO),
            "video": str(video),
            "frames": args.frames,
            "warmup": args.warmup,
            "rate_level": args.rate_level,
            "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python "
            f"{platform.python_version()}",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "load_average_1_5_15_min": {
                "before": [round(x, 2) for x in load_before],
                "after": [round(x, 2) for x in os.getloadavg()],
            },
            "run_seconds": round(time.perf_counter() - started, 1),
        },
    }
    text = markdown(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "edge_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "edge_throughput.md").write_text("# Edge throughput and memory\n\n" + text)
    seconds = result["meta"]["run_seconds"]
    print(f"wrote {args.out}/edge_throughput.json and .md in {seconds} s")


if __name__ == "__main__":
    main()
