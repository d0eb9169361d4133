"""Corrupted payloads with recomputed container CRCs, and what rejected streams leave behind.

    real frames ─► encoder backend + codec ─► keyframes, and P-frames against them
        flip 1-3 payload bits, recompute the container CRC
        ├─► entropy decode alone (the old check)       ─► decodes "cleanly"? ─► tail: detections
        ├─► FrameDecoder.decode (+ the symbol CRC)      ─► accepted?
        └─► `fchm cloud serve` (child process): one stream per keyframe ─► RSS before / after

Frames of the packaged demo video, coded with the bundle at several levels, as keyframes
and as P-frames: each P-frame is the frame 1/--p-fps s after a keyframe, predicted from
that keyframe's decoded latent at the same level, and decoded with the right reference
(the keyframe as the cloud decoded it). The old check is the container CRC plus the
entropy decoder's own errors (bad words, data left over); the new one adds the CRC-32 of
the decoded symbols (container versions 2 and 3). Resident memory is the server
process's (/proc/PID/statm) after a warm-up, then after each batch of rejected streams
(keyframes only: a P-frame on a stream of its own has no reference to decode against).

    .venv/bin/python bench/ingest_fuzz.py [--bundle bundles/default] [--corpus 2000] \
        [--p-corpus 2000] [--p-fps 5] [--streams 1000] [--seed 0]
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.detector_tail import DetectorTail
from cloud.frame_decoder import DecodedFrame, FrameDecoder, InvalidFrame, ReferenceFrame
from codec.bitstream import (
    KEYFRAME_OVERHEAD_BYTES,
    OVERHEAD_BYTES,
    FrameBitstream,
    FrameReference,
    payload_start,
)
from codec.bundle import Bundle
from codec.entropy_tables import EntropyCodingError
from codec.feature_codec import EncodedFeatures
from edge.frame_encoder import FrameEncoder
from edge.preprocess import letterbox
from edge.sources import CapturedFrame, open_source
from fchm.cloud_process import CloudProcess
from fchm.demo import packaged_video
from fchm.v1 import ingest_pb2, ingest_pb2_grpc
from tests.integration.malformed_frames import reframe


def corrupt_payload(good: bytes, rng: np.random.Generator) -> bytes:
    body = bytearray(good[:-4])
    start = payload_start(good)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(start, len(body)))  # the payload
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
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Server RSS after a warm-up and after each batch of ``streams`` rejected streams."""
    memory: list[dict[str, Any]] = []
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


def container(bundle: Bundle, codec_id: int, image_size: tuple[int, int],
              encoded: EncodedFeatures) -> bytes:  # fmt: skip
    """The codec's output in the edge's container (a P-frame references frame n − 1)."""
    ref = encoded.reference_crc
    return FrameBitstream(
        codec_id, encoded.rate_level, bundle.tag, image_size, encoded.latent_shape,
        encoded.payload, encoded.symbol_crc, None if ref is None else FrameReference(1, ref),
    ).to_bytes()  # fmt: skip


def video_pairs(frames: int, p_fps: float) -> list[tuple[CapturedFrame, CapturedFrame]]:
    """(keyframe source, P-frame source): one a second, and the frame 1/p_fps s after it."""
    keys = list(open_source(str(packaged_video()), max_fps=1.0, max_frames=frames))
    wanted = [(k.media_time_s or 0.0) + 1.0 / p_fps for k in keys]
    nexts: list[CapturedFrame] = []
    for f in open_source(str(packaged_video())):
        if len(nexts) < len(keys) and (f.media_time_s or 0.0) >= wanted[len(nexts)] - 1e-6:
            nexts.append(f)
        if len(nexts) == len(keys):
            break
    return list(zip(keys, nexts, strict=True))


def coded_frames(
    encoder: FrameEncoder, decoder: FrameDecoder, frames: int, levels: list[int], p_fps: float
) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes, ReferenceFrame]]]:
    """Keyframes [(level, bytes)] and P-frames [(level, bytes, the cloud's reference)].

    Coded with the encoder's backend and codec directly (what FrameEncoder.encode does for
    a keyframe), so P-frames need nothing from the edge agent's reference keeping."""
    codec, info = encoder.codec, encoder.bundle.manifest.detector
    keys: list[tuple[int, bytes]] = []
    inter: list[tuple[int, bytes, ReferenceFrame]] = []
    for first, second in video_pairs(frames, p_fps):
        features = []
        for f in (first, second):
            image, geometry = letterbox(f.image, info.input_size, info.pad_multiple)
            features.append((encoder.backend(image), geometry.image_size))
        for lv in levels:
            key = codec.compress(features[0][0], lv)
            key_bytes = container(encoder.bundle, codec.codec_id, features[0][1], key)
            keys.append((lv, key_bytes))
            if codec.supports_inter:
                p = codec.compress(features[1][0], lv, reference=key.symbols)
                p_bytes = container(encoder.bundle, codec.codec_id, features[1][1], p)
                reference = decoder.decode(key_bytes).as_reference  # as the cloud holds it
                assert p.symbols is not None and reference.symbols.crc == p.reference_crc
                inter.append((lv, p_bytes, reference))
    return keys, inter


@dataclass
class FuzzResult:
    tried: dict[int, int] = field(default_factory=dict)
    clean_old: dict[int, int] = field(default_factory=dict)
    """decoded without an error under the old check (container CRC + entropy decoder)"""
    garbage_old: dict[int, int] = field(default_factory=dict)
    """... and to other symbols than the edge coded"""
    accepted_new: dict[int, int] = field(default_factory=dict)
    """accepted by FrameDecoder.decode (+ the symbol CRC)"""
    garbage_new: dict[int, int] = field(default_factory=dict)
    """... and to other symbols than the edge coded"""
    garbage_detections: list[int] = field(default_factory=list)
    original_detections: list[int] = field(default_factory=list)
    decode_s: float = 0.0

    def rows(
        self, kind: str, levels: list[int], goods: list[tuple[int, bytes]]
    ) -> list[dict[str, Any]]:
        counts = ("tried", "clean_old", "garbage_old", "accepted_new", "garbage_new")

        def row(level: int | str, sizes: list[int], values: list[int]) -> dict[str, Any]:
            tried, old, old_garbage, new, new_garbage = values
            return {"frame": kind, "level": level, "bytes_per_frame": float(np.mean(sizes)),
                    "corrupted": tried, "clean_v1": old, "garbage_v1": old_garbage,
                    "clean_v2": new, "garbage_v2": new_garbage}  # fmt: skip

        rows = [
            row(lv, [len(g) for glv, g in goods if glv == lv],
                [getattr(self, c).get(lv, 0) for c in counts])
            for lv in levels
        ]  # fmt: skip
        rows.append(row("all", [len(g) for _, g in goods],
                        [sum(getattr(self, c).values()) for c in counts]))  # fmt: skip
        return rows


def _count(counts: dict[int, int], level: int) -> None:
    counts[level] = counts.get(level, 0) + 1


def fuzz_decode(
    decoder: FrameDecoder,
    tail: DetectorTail,
    corpus: list[tuple[int, bytes, bytes, ReferenceFrame | None]],
) -> FuzzResult:
    """Decode each corrupted frame with and without the symbol CRC (a P-frame against
    its right reference); run the tail on the garbage that decodes cleanly without it.

    A corrupted frame can decode to exactly the symbols the edge coded (a flipped bit in
    a P-frame's header that no replenished cell reads): clean, but no garbage."""
    r = FuzzResult()
    originals: dict[bytes, DecodedFrame] = {}
    t0 = time.perf_counter()
    for level, good, bad, reference in corpus:
        _count(r.tried, level)
        if good not in originals:
            originals[good] = decoder.decode(good, reference=reference)
        original = originals[good]
        frame = decoder.parse(bad, None if reference is None else reference.header)
        geometry = decoder.geometry(frame)
        ref_crc = None if frame.reference is None else frame.reference.symbol_crc
        unchecked = EncodedFeatures(frame.rate_level, frame.latent_shape, frame.payload, None,
                                    ref_crc, p_format=frame.p_format)  # fmt: skip
        try:
            symbols = decoder.codec.decompress_symbols(
                unchecked, None if reference is None else reference.symbols
            )
        except EntropyCodingError:
            symbols = None
        if symbols is not None:
            _count(r.clean_old, level)
            if not np.array_equal(symbols.q, original.symbols.q):
                _count(r.garbage_old, level)
                features = decoder.codec.dequantize(symbols.q, frame.rate_level)
                r.garbage_detections.append(len(tail(features, geometry)))
                r.original_detections.append(len(tail(original.features, original.geometry)))
        try:
            accepted = decoder.decode(bad, reference=reference)
        except InvalidFrame:
            continue
        _count(r.accepted_new, level)
        if not np.array_equal(accepted.symbols.q, original.symbols.q):
            _count(r.garbage_new, level)
    r.decode_s = time.perf_counter() - t0
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--frames", type=int, default=8, help="real frames from the demo video")
    parser.add_argument("--corpus", type=int, default=2000, help="corrupted keyframes decoded")
    parser.add_argument("--p-corpus", type=int, default=2000, help="corrupted P-frames decoded")
    parser.add_argument("--p-fps", type=float, default=5.0,
                        help="a P-frame is the frame 1/p-fps s after its keyframe")  # fmt: skip
    parser.add_argument("--streams", type=int, default=1000, help="rejected streams per batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    bundle = Bundle.load(args.bundle)
    encoder = FrameEncoder(bundle, threads=1)
    decoder, tail = FrameDecoder(bundle), DetectorTail(bundle, threads=1)
    levels = sorted({0, encoder.num_levels // 2, encoder.num_levels - 1})
    goods, p_goods = coded_frames(encoder, decoder, args.frames, levels, args.p_fps)
    rng = np.random.default_rng(args.seed)
    corpus: list[tuple[int, bytes, bytes, ReferenceFrame | None]] = []
    for _ in range(args.corpus):
        level, good = goods[int(rng.integers(len(goods)))]
        corpus.append((level, good, corrupt_payload(good, rng), None))
    p_rng = np.random.default_rng([args.seed, 1])  # the keyframe corpus stays as it was
    p_corpus: list[tuple[int, bytes, bytes, ReferenceFrame | None]] = []
    for _ in range(args.p_corpus if p_goods else 0):
        level, good, reference = p_goods[int(p_rng.integers(len(p_goods)))]
        p_corpus.append((level, good, corrupt_payload(good, p_rng), reference))

    # 1. Decode each corrupted frame both ways.
    key_result = fuzz_decode(decoder, tail, corpus)
    p_result = fuzz_decode(decoder, tail, p_corpus)

    # 2. Rejected streams against a real server: its resident memory.
    rejected = [(lv, bad) for lv, _good, bad, _ref in corpus]
    memory, statuses = stream_memory(args.bundle, bundle.hash, rejected, args.streams)

    rows = key_result.rows("key", levels, goods)
    if p_goods:
        rows += p_result.rows("P", levels, [(lv, g) for lv, g, _ in p_goods])
    meta = {
        "bundle": str(args.bundle),
        "bundle_hash": bundle.hash,
        "frames": args.frames,
        "levels": levels,
        "seed": args.seed,
        "framing_bytes": {"keyframe": KEYFRAME_OVERHEAD_BYTES, "p_frame": OVERHEAD_BYTES},
        "symbol_crc_bytes": 4,
        "garbage_detections": key_result.garbage_detections,
        "original_detections": key_result.original_detections,
        "decode_s": key_result.decode_s,
        "p_fps": args.p_fps,
        "p_frames": len(p_goods),
        "p_garbage_detections": p_result.garbage_detections,
        "p_original_detections": p_result.original_detections,
        "p_decode_s": p_result.decode_s,
        "memory": memory,
        "stream_statuses": statuses,
        "machine": os.uname().machine,
        "cpus": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest_fuzz.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=2))

    lines = [
        "| frame | rate level | B/frame | corrupted payloads | decode cleanly, container CRC + "
        "entropy decoder (version 1: no symbol check) | … to other symbols | decode cleanly, "
        "+ symbol CRC-32 (version 2 on) | … to other symbols |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['frame']} | {r['level']} | {r['bytes_per_frame']:,.0f} | {r['corrupted']} | "
              f"{r['clean_v1']} ({r['clean_v1'] / max(r['corrupted'], 1):.2%}) | "
              f"{r['garbage_v1']} ({r['garbage_v1'] / max(r['corrupted'], 1):.2%}) | "
              f"{r['clean_v2']} | {r['garbage_v2']} |" for r in rows]  # fmt: skip
    lines += ["", "| server RSS after | streams | RSS (MB) |", "|---|---|---|"]
    lines += [f"| {m['after']} | {m['streams']} | {m['rss_mb']:.0f} |" for m in memory]
    worst = max(key_result.garbage_detections, default=0)
    p_worst = max(p_result.garbage_detections, default=0)
    lines += ["", f"{len(goods) // len(levels)} real frames of the demo video, each at "
              f"levels {levels} (B/frame includes the framing: {KEYFRAME_OVERHEAD_BYTES} B a "
              f"keyframe, {OVERHEAD_BYTES} B a P-frame, 4 of them the symbol CRC; a P-frame's "
              f"reference takes 5 B of its framing); P-frames: the frame {1 / args.p_fps:.2f} s "
              f"after each, predicted from its keyframe at the same level and decoded with "
              f"that reference. 1-3 payload bit flips each, container CRC recomputed; "
              f"seed {args.seed}. \"Other symbols\": not the ones the edge coded (a flip can "
              f"leave them as they were, e.g. in a P-frame header field no coded cell "
              f"reads). Garbage that decoded cleanly had up to {worst} detections "
              f"(P-frames: {p_worst}). Streams: keyframes only; statuses: {statuses}."]  # fmt: skip
    text = "\n".join(lines) + "\n"
    (args.out / "ingest_fuzz.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
