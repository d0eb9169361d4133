"""Corrupted payloads with recomputed container CRCs, and what rejected streams leave behind.

    real frames ─► FrameEncoder ─► flip 1-3 payload bits, recompute the container CRC
        ├─► entropy decode alone (the old check)       ─► decodes "cleanly"? ─► tail: detections
        ├─► FrameDecoder.decode (+ the symbol CRC)      ─► accepted?
        └─► `fchm cloud serve` (child process): one stream per frame ─► RSS before / after

Frames of the packaged demo video, coded with the bundle at several levels. The old
check is the container CRC plus the entropy decoder's own errors (bad words, data
left over); the new one adds the CRC-32 of the decoded symbols (container version 2).
Resident memory is the server process's (/proc/PID/statm) after a warm-up, then after
each batch of rejected streams.

    .venv/bin/python bench/ingest_fuzz.py [--bundle bundles/default] [--corpus 2000] \
        [--streams 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.detector_tail import DetectorTail
from cloud.frame_decoder import FrameDecoder, InvalidFrame
from codec.bitstream import OVERHEAD_BYTES
from codec.bundle import Bundle
from codec.entropy_tables import EntropyCodingError
from codec.feature_codec import EncodedFeatures
from edge.frame_encoder import FrameEncoder
from edge.sources import open_source
from fchm.cloud_process import CloudProcess
from fchm.demo import packaged_video
from fchm.v1 import ingest_pb2, ingest_pb2_grpc
from tests.integration.malformed_frames import reframe


def corrupt_payload(good: bytes, rng: np.random.Generator) -> bytes:
    body = bytearray(good[:-4])
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(OVERHEAD_BYTES - 4, len(body)))  # the payload
        body[i] ^= 1 << int(rng.integers(8))
    return reframe(bytes(body))


def rss_mb(pid: int) -> float:
    return (
        int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    )


def send(
    stub: ingest_pb2_grpc.IngestStub, bundle_hash: str, n: int, level: int, data: bytes
) -> str:
    hello = ingest_pb2.Hello(camera_id=f"fuzz-{n % 8}", bundle_hash=bundle_hash,
                             edge_time_ns=time.time_ns())  # fmt: skip
    messages = [ingest_pb2.UplinkMessage(hello=hello),
                ingest_pb2.UplinkMessage(frame=ingest_pb2.Frame(sequence=n, rate_level=level,
                                                                bitstream=data))]  # fmt: skip
    try:
        for reply in stub.Stream(iter(messages), timeout=60):
            if reply.WhichOneof("kind") == "ack":
                return "ACKED"
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


def stream_memory(
    bundle_dir: Path, bundle_hash: str, rejected: list[tuple[int, bytes]], streams: int
) -> tuple[list[dict[str, object]], dict[str, int]]:
    """Server RSS after a warm-up and after each batch of ``streams`` rejected streams."""
    memory: list[dict[str, object]] = []
    statuses: dict[str, int] = {}
    work = Path(tempfile.mkdtemp(prefix="fchm-fuzz-"))
    with CloudProcess(bundle_dir, work / "cloud") as cloud:
        assert cloud.process is not None
        pid = cloud.process.pid
        memory.append({"after": "server ready", "streams": 0, "rss_mb": rss_mb(pid)})
        with grpc.insecure_channel(cloud.grpc_target) as channel, ThreadPoolExecutor(8) as pool:
            stub = ingest_pb2_grpc.IngestStub(channel)
            sent = 0
            for label, n in (("warm-up", 100), ("batch 1", streams), ("batch 2", streams)):
                batch = [(sent + i, *rejected[(sent + i) % len(rejected)]) for i in range(n)]
                for status in pool.map(lambda a: send(stub, bundle_hash, *a), batch):
                    statuses[status] = statuses.get(status, 0) + 1
                sent += n
                memory.append({"after": label, "streams": sent, "rss_mb": rss_mb(pid)})
    shutil.rmtree(work, ignore_errors=True)
    return memory, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--frames", type=int, default=8, help="real frames from the demo video")
    parser.add_argument("--corpus", type=int, default=2000, help="corrupted payloads decoded")
    parser.add_argument("--streams", type=int, default=1000, help="rejected streams per batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    bundle = Bundle.load(args.bundle)
    encoder = FrameEncoder(bundle, threads=1)
    levels = sorted({0, encoder.num_levels // 2, encoder.num_levels - 1})
    video = open_source(str(packaged_video()), max_fps=1.0, max_frames=args.frames)
    goods = [(lv, encoder.encode(f, lv).bitstream) for f in video for lv in levels]
    rng = np.random.default_rng(args.seed)
    corpus = []
    for _ in range(args.corpus):
        level, good = goods[int(rng.integers(len(goods)))]
        corpus.append((level, good, corrupt_payload(good, rng)))

    # 1. Decode each corrupted frame both ways.
    decoder, tail = FrameDecoder(bundle), DetectorTail(bundle, threads=1)
    clean_old: dict[int, int] = {}
    accepted_new: dict[int, int] = {}
    tried: dict[int, int] = {}
    garbage_detections: list[int] = []
    original_detections: list[int] = []
    t0 = time.perf_counter()
    for level, good, bad in corpus:
        tried[level] = tried.get(level, 0) + 1
        frame = decoder.parse(bad)
        geometry = decoder.geometry(frame)
        unchecked = EncodedFeatures(frame.rate_level, frame.latent_shape, frame.payload, None)
        try:
            features = decoder.codec.decompress(unchecked)
        except EntropyCodingError:
            features = None
        if features is not None:
            clean_old[level] = clean_old.get(level, 0) + 1
            garbage_detections.append(len(tail(features, geometry)))
            original = decoder.decode(good)
            original_detections.append(len(tail(original.features, original.geometry)))
        try:
            decoder.decode(bad)
            accepted_new[level] = accepted_new.get(level, 0) + 1
        except InvalidFrame:
            pass
    decode_s = time.perf_counter() - t0

    # 2. Rejected streams against a real server: its resident memory.
    rejected = [(lv, bad) for lv, _good, bad in corpus]
    memory, statuses = stream_memory(args.bundle, bundle.hash, rejected, args.streams)

    sizes = {lv: float(np.mean([len(g) for glv, g in goods if glv == lv])) for lv in levels}
    rows = [
        {"level": lv, "bytes_per_frame": sizes.get(lv, 0.0), "corrupted": tried.get(lv, 0),
         "clean_v1": clean_old.get(lv, 0), "clean_v2": accepted_new.get(lv, 0)}
        for lv in [*levels, "all"]
    ]  # fmt: skip
    rows[-1].update(bytes_per_frame=float(np.mean([len(g) for _, g in goods])),
                    corrupted=len(corpus), clean_v1=sum(clean_old.values()),
                    clean_v2=sum(accepted_new.values()))  # fmt: skip
    meta = {
        "bundle": str(args.bundle),
        "bundle_hash": bundle.hash,
        "frames": args.frames,
        "levels": levels,
        "seed": args.seed,
        "framing_bytes": OVERHEAD_BYTES,
        "symbol_crc_bytes": 4,
        "garbage_detections": garbage_detections,
        "original_detections": original_detections,
        "decode_s": decode_s,
        "memory": memory,
        "stream_statuses": statuses,
        "machine": os.uname().machine,
        "cpus": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest_fuzz.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=2))

    lines = [
        "| rate level | B/frame | corrupted payloads | decode cleanly, container CRC + "
        "entropy decoder (v1) | decode cleanly, + symbol CRC-32 (v2) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['level']} | {r['bytes_per_frame']:,.0f} | {r['corrupted']} | "
              f"{r['clean_v1']} ({r['clean_v1'] / max(r['corrupted'], 1):.2%}) | "
              f"{r['clean_v2']} |" for r in rows]  # fmt: skip
    lines += ["", "| server RSS after | streams | RSS (MB) |", "|---|---|---|"]
    lines += [f"| {m['after']} | {m['streams']} | {m['rss_mb']:.0f} |" for m in memory]
    worst = max(garbage_detections, default=0)
    lines += ["", f"{len(goods) // len(levels)} real frames of the demo video, each at "
              f"levels {levels} (B/frame includes {OVERHEAD_BYTES} B of framing, 4 of them "
              f"the symbol CRC), 1-3 payload bit flips each, container CRC recomputed; "
              f"seed {args.seed}. Garbage that decoded cleanly had up to {worst} detections. "
              f"Stream statuses: {statuses}."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    (args.out / "ingest_fuzz.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
