"""Malformed streams against a real server: none is acked, each gets a status that
names the bad field, the server stays ready, and rejected streams leave nothing
behind (resident memory stays flat)."""

from __future__ import annotations

import gc
import os
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import grpc
import numpy as np

from cloud.frame_decoder import FrameDecoder
from codec.bitstream import FrameBitstream
from codec.bundle import Bundle
from edge.frame_encoder import FrameEncoder
from edge.sources import CapturedFrame
from fchm.v1 import ingest_pb2, ingest_pb2_grpc
from tests.conftest import RunningCloud, sample_images
from tests.integration.malformed_frames import malformed

STREAMS = 1200
WARMUP = 150
FIELDS = (
    "magic", "version", "too short", "shorter than", "payload", "checksum", "latent shape",
    "zero dimension", "rate_level", "codec id", "bundle tag", "flags", "image_size",
    "ref_crc", "P-frame", "is not stored",
)  # fmt: skip


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def send(stub: ingest_pb2_grpc.IngestStub, bundle: Bundle, n: int, level: int, data: bytes):  # type: ignore[no-untyped-def]
    """One stream: Hello, one frame. Returns (acks, status code, details).

    Each stream is its own camera: a camera has one live stream, and a second one at the
    same time replaces the first (cloud/camera_streams.py).
    """
    hello = ingest_pb2.Hello(camera_id=f"fuzz-{n}", bundle_hash=bundle.hash,
                             edge_time_ns=time.time_ns())  # fmt: skip
    messages = [
        ingest_pb2.UplinkMessage(hello=hello),
        ingest_pb2.UplinkMessage(
            frame=ingest_pb2.Frame(sequence=n, rate_level=level, bitstream=data)
        ),
    ]
    acks = 0
    try:
        for reply in stub.Stream(iter(messages), timeout=30):
            acks += reply.WhichOneof("kind") == "ack"
    except grpc.RpcError as exc:
        return acks, exc.code(), exc.details() or ""
    return acks, grpc.StatusCode.OK, ""


def test_malformed_streams_are_refused_by_name_and_leave_nothing_behind(
    cloud: RunningCloud, tiny_bundle: Bundle
) -> None:
    encoder = FrameEncoder(tiny_bundle)
    images = [cv2.imread(str(p)) for p in sample_images()]
    goods = [(lv, encoder.encode(CapturedFrame(0, 0, im), lv).bitstream)
             for im in images for lv in (0, 3, encoder.num_levels - 1)]  # fmt: skip
    rng = np.random.default_rng(11)
    corpus = []
    for _ in range(WARMUP + STREAMS):
        level, good = goods[int(rng.integers(len(goods)))]
        corpus.append((level, *malformed(good, rng)))

    with grpc.insecure_channel(cloud.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        with ThreadPoolExecutor(8) as pool:

            def run(batch):  # type: ignore[no-untyped-def]
                return list(
                    pool.map(lambda a: send(stub, tiny_bundle, a[0], a[1][0], a[1][2]), batch)
                )

            run(list(enumerate(corpus[:WARMUP])))
            gc.collect()
            before = rss_mb()
            t0 = time.perf_counter()
            results = run(list(enumerate(corpus[WARMUP:], start=WARMUP)))
            elapsed = time.perf_counter() - t0
            after = rss_mb()

        assert len(results) == STREAMS >= 1000
        unnamed = []
        for (_, kind, data), (acks, code, details) in zip(corpus[WARMUP:], results, strict=True):
            assert acks == 0, f"a malformed frame ({kind}, {len(data)} bytes) was acked"
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (kind, code, details)
            if " of camera fuzz-" not in details or not any(f in details for f in FIELDS):
                unnamed.append((kind, details))
        assert not unnamed, unnamed[:5]
        kinds = {kind for _, kind, _ in corpus[WARMUP:]}
        assert len(kinds) == 9, kinds
        print(f"{STREAMS} malformed streams in {elapsed:.1f} s; RSS {before:.0f} -> {after:.0f} MB")
        assert after - before < 50, f"RSS grew {after - before:.0f} MB over {STREAMS} streams"

        # Still serving: ready, and a valid frame is acked.
        with cloud.api() as api:
            assert api.get("/readyz").status_code == 200
        level, good = goods[0]
        assert send(stub, tiny_bundle, 10**6, level, good)[:2] == (1, grpc.StatusCode.OK)


def test_a_version_1_frame_stops_the_stream_but_stored_ones_still_decode(
    cloud: RunningCloud, tiny_bundle: Bundle
) -> None:
    good = (
        FrameEncoder(tiny_bundle)
        .encode(CapturedFrame(0, 0, cv2.imread(str(sample_images()[0]))), 3)
        .bitstream
    )
    # The same frame in the version-1 layout: no symbol CRC (nor version 3's reference).
    k = FrameBitstream.from_bytes(good)
    body = struct.pack(
        "<4sBBBB8sHHHHHI", b"FCHM", 1, k.codec_id, k.rate_level, 0, k.bundle_tag,
        *k.image_size, *k.latent_shape, len(k.payload),
    ) + k.payload  # fmt: skip
    old = body + struct.pack("<I", zlib.crc32(body))
    with grpc.insecure_channel(cloud.grpc_target) as channel:
        acks, code, details = send(ingest_pb2_grpc.IngestStub(channel), tiny_bundle, 0, 3, old)
    # FAILED_PRECONDITION, not INVALID_ARGUMENT: the edge keeps the frame in its spool.
    assert (acks, code) == (0, grpc.StatusCode.FAILED_PRECONDITION)
    assert "container version 1" in details and "upgrade the edge" in details
    # What the cloud already stored in version 1 still decodes, for views.
    decoder = FrameDecoder(tiny_bundle)
    np.testing.assert_array_equal(
        decoder.decode(old, stored=True).features, decoder.decode(good).features
    )
