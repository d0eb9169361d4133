"""Ingest frames/s against the number of cameras, with the detector tail batched or not.

    fixed-camera clip at 5 fps ─► FrameEncoder (keyframe every 50, P-frames) ─► bitstreams
    K threads, one per camera (as the servicer's ingest workers run them)
        ─► FrameIngest.ingest: decode ─► tail (DetectorTail, or BatchedTail) ─► SQLite + blobs
    frames stored / wall time, per (K, max_batch)

No network: this isolates what batching changes (the tail), with decoding and durable
storage in the loop as in the cloud. The gRPC path adds the same cost either way.

    .venv/bin/python bench/tail_batching.py --bundle bundles/default
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from dev_sets import DEV_SETS, fetch, path_of

from cloud.detector_tail import DetectorTail
from cloud.frame_decoder import FrameDecoder
from cloud.frame_ingest import FrameIngest, ReceivedFrame
from cloud.metrics import CloudMetrics
from cloud.store.frame_store import FrameStore
from cloud.tail_batcher import BatchedTail
from codec.bundle import Bundle
from edge.frame_encoder import FrameEncoder
from edge.sources import video_frames


def bitstreams(bundle: Bundle, video: Path, count: int, level: int) -> list[bytes]:
    encoder = FrameEncoder(bundle, keyframe_interval=50)
    out = []
    for i, frame in enumerate(video_frames(str(video))):
        if i % 2:  # vtest.avi is 10 fps: a camera at 5 fps
            continue
        out.append(encoder.encode(frame, level).bitstream)
        if len(out) == count:
            break
    return out


def run(bundle: Bundle, streams: list[bytes], level: int, cameras: int, max_batch: int,
        delay: float, threads: int) -> dict[str, float]:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = FrameStore.open(f"sqlite:///{tmp}/fchm.db", Path(tmp) / "blobs")
        metrics = CloudMetrics()
        tail = BatchedTail(DetectorTail(bundle, threads=threads), max_batch, delay,
                           metrics.tail_batch.observe)  # fmt: skip
        ingest = FrameIngest(FrameDecoder(bundle), tail, store, metrics)
        for k in range(cameras):  # what a camera's Hello does
            store.register_camera(f"cam-{k}", bundle.hash, 0, "bench")
        failures: list[BaseException] = []

        def camera(k: int) -> None:
            try:
                for seq, data in enumerate(streams):
                    ingest.ingest(ReceivedFrame(f"cam-{k}", seq + 1, time.time_ns(), level,
                                            data), 0)  # fmt: skip
            except BaseException as exc:
                failures.append(exc)

        workers = [threading.Thread(target=camera, args=(k,)) for k in range(cameras)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - start
        tail.close()
        if failures:
            raise RuntimeError(f"ingest failed: {failures[0]!r}") from failures[0]
        if sum(c.num_frames for c in store.list_cameras()) != cameras * len(streams):
            raise RuntimeError("not every frame was stored")
        frames = cameras * len(streams)
        batch = metrics.tail_batch.collect()[0].samples
        calls = next(s.value for s in batch if s.name.endswith("_count"))
        return {"cameras": cameras, "max_batch": max_batch, "frames": frames,
                "seconds": round(seconds, 2), "frames_per_s": round(frames / seconds, 2),
                "mean_batch": round(frames / calls, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--frames", type=int, default=12, help="frames per camera")
    parser.add_argument("--level", type=int, default=4)
    parser.add_argument("--cameras", default="1,2,4,8")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    fetch()
    bundle = Bundle.load(args.bundle)
    video = path_of(next(d for d in DEV_SETS if d.name == "fixed_camera"))
    streams = bitstreams(bundle, video, args.frames, args.level)
    rows = []
    for k in (int(v) for v in args.cameras.split(",")):
        for b in (1, args.max_batch):
            rows.append(run(bundle, streams, args.level, k, b, args.delay_ms / 1000, args.threads))
            print(rows[-1], flush=True)
    mean_bytes = sum(len(s) for s in streams) / len(streams)
    lines = ["# Ingest frames/s against cameras, detector tail batched or not", "",
             f"Bundle {args.bundle}; fixed-camera clip at 5 fps, {args.frames} frames per "
             f"camera at level {args.level} ({mean_bytes:,.0f} B/frame, keyframe every 50), "
             f"decode + tail + SQLite per frame, one thread per camera, no network; "
             f"max delay {args.delay_ms} ms.", "",
             "| cameras | max batch | frames | s | frames/s | mean batch |",
             "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {r['cameras']} | {r['max_batch']} | {r['frames']} | {r['seconds']} | "
              f"{r['frames_per_s']} | {r['mean_batch']} |" for r in rows]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tail_batching.md").write_text("\n".join(lines) + "\n")
    (args.out / "tail_batching.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
