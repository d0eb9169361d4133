"""P-frames through the real system: edge encoder → spool → gRPC → cloud → store → views.

Every guarantee of keyframe-only streams holds with references between frames: a cloud
restarted mid-chain rebuilds the reference from stored bitstreams, a P-frame whose
reference the cloud never stored is refused by name (and the P-frames after it are
dropped by the edge, which restarts on a keyframe), a view of a P-frame decodes from its
keyframe, and replays stay idempotent.
"""

import io
import time
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from cloud.detector_tail import DetectorTail
from cloud.frame_decoder import FrameDecoder
from codec.bitstream import FrameBitstream
from codec.bundle import Bundle
from edge.backoff import Backoff
from edge.frame_encoder import EncodedFrame, FrameEncoder
from edge.spool import Spool
from edge.uplink import Uplink
from tests.conftest import RunningCloud, cloud_settings
from tests.integration.test_codec_bit_exact import frames_of_a_real_video
from tests.integration.test_grpc_ingest import acked, frame, hello

KEYFRAME_INTERVAL = 5


def p_frame_stream(bundle: Bundle, n: int, interval: int = KEYFRAME_INTERVAL) -> list[EncodedFrame]:
    encoder = FrameEncoder(bundle, keyframe_interval=interval)
    return [encoder.encode(f, 3) for f in frames_of_a_real_video(n)]


def uplink_for(cloud: RunningCloud, bundle: Bundle, spool: Spool, camera: str) -> Uplink:
    return Uplink(
        spool,
        camera,
        bundle.hash,
        channel_factory=lambda: grpc.insecure_channel(cloud.grpc_target),
        max_in_flight=4,
        connect_timeout_s=5,
        backoff=Backoff(0.05, 0.2),
    )


def send(cloud: RunningCloud, bundle: Bundle, spool: Spool, camera: str) -> Uplink:
    uplink = uplink_for(cloud, bundle, spool, camera)
    uplink.start()
    uplink.stop(flush_timeout_s=60)
    return uplink


def stored_frames(cloud: RunningCloud, camera: str) -> list[dict]:  # type: ignore[type-arg]
    with cloud.api() as api:
        r = api.get("/v1/frames", params={"camera": camera, "limit": 100})
        assert r.status_code == 200, r.text
        return list(r.json()["items"])


def test_p_frames_are_stored_viewed_and_replayed_like_keyframes(
    cloud: RunningCloud, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    frames = p_frame_stream(tiny_bundle, 12)
    kinds = [FrameBitstream.peek_reference(f.bitstream) is None for f in frames]
    assert kinds == [i % KEYFRAME_INTERVAL == 0 for i in range(12)]
    assert [f.keyframe for f in frames] == kinds
    spool = Spool(tmp_path / "spool", 1 << 30, 3600)
    sequences = [spool.append(f.capture_time_ns, f.rate_level, f.bitstream) for f in frames]
    uplink = send(cloud, tiny_bundle, spool, "cam-p")
    assert (uplink.stats.acked, uplink.stats.rejected, uplink.fatal) == (12, 0, None)

    # What the cloud stored is what the edge sent, and it detected what a decoder
    # walking the chain from the keyframe gets.
    stored = stored_frames(cloud, "cam-p")
    assert [s["sequence"] for s in stored] == sequences
    decoder = FrameDecoder(tiny_bundle)
    s = cloud.settings
    tail = DetectorTail(tiny_bundle, s.detector_conf, s.detector_iou, threads=1)
    reference = None
    for f, row in zip(frames, stored, strict=True):
        decoded = decoder.decode(f.bitstream, reference=reference)
        reference = decoded.as_reference
        assert decoded.bitstream.is_keyframe == f.keyframe
        assert row["num_bytes"] == len(f.bitstream)
        assert row["num_detections"] == len(tail(decoded.features, decoded.geometry))
    assert sum(row["num_detections"] for row in stored) > 0, "a test that sees no box"

    # A view of the last P-frame (the one after keyframe 10) renders from the chain.
    with cloud.api() as api:
        r = api.post("/v1/views", json={"camera": "cam-p", "sequence": sequences[-1]})
        assert r.status_code == 202, r.text
        view_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while (job := api.get(f"/v1/views/{view_id}").json())["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["status"] == "done", job
        png = api.get(f"/v1/views/{view_id}/image")
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    # It says it was rendered from the keyframe on: those are the bytes it used.
    info = Image.open(io.BytesIO(png.content)).info
    chain = frames[(len(frames) - 1) // KEYFRAME_INTERVAL * KEYFRAME_INTERVAL :]
    assert not FrameBitstream.peek_reference(chain[0].bitstream) and len(chain) == 2
    assert info["fchm:chain_frames"] == str(len(chain))
    assert info["fchm:bytes_used"] == str(sum(len(f.bitstream) for f in chain))
    assert info["fchm:frame_bytes"] == str(len(frames[-1].bitstream))

    # Replaying the whole chain: every frame acked as a duplicate, nothing stored twice.
    replay = [frame(q, f.bitstream) for q, f in zip(sequences, frames, strict=True)]
    acks = acked(cloud, [hello(tiny_bundle, "cam-p"), *replay])
    assert [(a.sequence, a.duplicate) for a in acks] == [(q, True) for q in sequences]
    assert len(stored_frames(cloud, "cam-p")) == 12


def test_a_restarted_cloud_rebuilds_references_from_stored_frames(
    tiny_bundle: Bundle, tmp_path: Path
) -> None:
    frames = p_frame_stream(tiny_bundle, 9)
    spool = Spool(tmp_path / "spool", 1 << 30, 3600)
    for f in frames[:7]:  # keyframes 0 and 5; P-frames 1-4 and 6
        spool.append(f.capture_time_ns, f.rate_level, f.bitstream)
    settings = cloud_settings(tiny_bundle, tmp_path)
    first = RunningCloud(settings)
    try:
        assert send(first, tiny_bundle, spool, "cam-r").stats.acked == 7
    finally:
        first.stop()

    # A new process on the same database and blobs: frames 7 and 8 are P-frames whose
    # reference (6) only the store holds; it rebuilds it from keyframe 5.
    for f in frames[7:]:
        spool.append(f.capture_time_ns, f.rate_level, f.bitstream)
    second = RunningCloud(settings)
    try:
        uplink = send(second, tiny_bundle, spool, "cam-r")
        assert (uplink.stats.acked, uplink.stats.rejected) == (2, 0)
        assert len(stored_frames(second, "cam-r")) == 9
    finally:
        second.stop()


def test_a_p_frame_without_its_reference_is_refused_and_the_edge_rekeys(
    cloud: RunningCloud, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    frames = p_frame_stream(tiny_bundle, 11)  # keyframes 0, 5, 10
    spool = Spool(tmp_path / "spool", 1 << 30, 3600)
    sequences = [spool.append(f.capture_time_ns, f.rate_level, f.bitstream) for f in frames]
    # Frame 2 is lost before it reached the cloud (a spool bound dropped it, say).
    assert spool.reject(sequences[2], "test: lost")
    uplink = send(cloud, tiny_bundle, spool, "cam-m")

    # Frame 3 names frame 2 as its reference: refused by name; frame 4 hangs off it and
    # is dropped by the edge without a round trip; keyframe 5 restarts the chain.
    assert uplink.fatal is None
    stored = [s["sequence"] for s in stored_frames(cloud, "cam-m")]
    assert stored == [sequences[i] for i in (0, 1, 5, 6, 7, 8, 9, 10)]
    assert uplink.stats.rejected == 2
    assert spool.frames == 0
    # The encoder is told its next frame must be a keyframe.
    assert uplink.take_keyframe_request() and not uplink.take_keyframe_request()


def test_a_restarted_edge_starts_on_a_keyframe(tiny_bundle: Bundle) -> None:
    video = list(frames_of_a_real_video(4))
    first = FrameEncoder(tiny_bundle, keyframe_interval=50)
    assert [first.encode(f, 3).keyframe for f in video[:3]] == [True, False, False]
    again = FrameEncoder(tiny_bundle, keyframe_interval=50)  # a new process
    assert again.encode(video[3], 3).keyframe
    # A requested keyframe interrupts the chain.
    assert first.encode(video[3], 3, keyframe=True).keyframe


def test_p_frames_decode_to_the_same_symbols_at_any_level_switch(tiny_bundle: Bundle) -> None:
    encoder = FrameEncoder(tiny_bundle, keyframe_interval=50)
    decoder = FrameDecoder(tiny_bundle)
    reference = None
    levels = [3, 5, 1, 1, 4, encoder.num_levels - 1, 0, 2]
    for f, level in zip(frames_of_a_real_video(len(levels)), levels, strict=True):
        encoded = encoder.encode(f, level)
        decoded = decoder.decode(encoded.bitstream, reference=reference)
        assert decoded.symbols.crc == decoded.bitstream.symbol_crc
        np.testing.assert_array_equal(
            decoded.features, decoder.codec.dequantize(decoded.symbols.q, level)
        )
        reference = decoded.as_reference
