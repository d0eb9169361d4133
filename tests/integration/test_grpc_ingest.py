"""gRPC ingest on a real loopback server: acks, replays, and rejected input."""

import time
from dataclasses import replace
from pathlib import Path

import cv2
import grpc
import pytest

from codec.bitstream import FrameBitstream
from codec.bundle import Bundle
from edge.backoff import Backoff
from edge.frame_encoder import EncodedFrame, FrameEncoder
from edge.sources import CapturedFrame
from edge.spool import Spool
from edge.uplink import Uplink
from fchm.v1 import ingest_pb2, ingest_pb2_grpc
from tests.conftest import RunningCloud, sample_images


def encoded_frames(bundle: Bundle, level: int = 3) -> list[EncodedFrame]:
    encoder = FrameEncoder(bundle)
    images = [cv2.imread(str(p)) for p in sample_images()]
    return [
        encoder.encode(CapturedFrame(i, 1_000_000_000 * (i + 1), im), level)
        for i, im in enumerate(images)
    ]


def stream(cloud: RunningCloud, bundle: Bundle, camera: str, frames: list[EncodedFrame],
           spool_dir: Path, bundle_hash: str | None = None) -> Uplink:  # fmt: skip
    spool = Spool(spool_dir / camera, max_bytes=1 << 30, max_age_s=3600)
    for f in frames:
        spool.append(f.capture_time_ns, f.rate_level, f.bitstream)
    uplink = Uplink(
        spool,
        camera,
        bundle_hash or bundle.hash,
        channel_factory=lambda: grpc.insecure_channel(cloud.grpc_target),
        max_in_flight=4,
        connect_timeout_s=5,
        backoff=Backoff(0.05, 0.2),
    )
    uplink.start()
    uplink.stop(flush_timeout_s=30)
    return uplink


def test_frames_are_acked_stored_and_replays_are_idempotent(
    cloud: RunningCloud, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    frames = encoded_frames(tiny_bundle)
    first = stream(cloud, tiny_bundle, "cam-a", frames, tmp_path)
    assert (first.stats.acked, first.stats.duplicates, first.fatal) == (2, 0, None)

    api = cloud.api()
    cams = api.get("/v1/cameras").json()["items"]
    assert [(c["camera_id"], c["num_frames"]) for c in cams] == [("cam-a", 2)]
    stored = api.get("/v1/frames", params={"camera": "cam-a"}).json()["items"]
    assert first.stats.detections == sum(f["num_detections"] for f in stored)
    raw = api.get(f"/v1/frames/{stored[0]['id']}/bitstream").content
    assert raw == frames[0].bitstream

    # The same (camera, sequence) again: acked as a duplicate, stored once.
    replay = [frame(f["sequence"], frames[i].bitstream) for i, f in enumerate(stored)]
    acks = acked(cloud, [hello(tiny_bundle, "cam-a"), *replay])
    assert [(a.sequence, a.duplicate) for a in acks] == [(f["sequence"], True) for f in stored]
    assert len(api.get("/v1/frames", params={"camera": "cam-a"}).json()["items"]) == 2

    # A reconnecting camera is told where to resume.
    welcome = next(iter(welcome_stream(cloud, hello(tiny_bundle, "cam-a"))))
    assert welcome.welcome.next_sequence == stored[-1]["sequence"] + 1


def acked(cloud: RunningCloud, messages: list[ingest_pb2.UplinkMessage]) -> list[ingest_pb2.Ack]:
    with grpc.insecure_channel(cloud.grpc_target) as channel:
        replies = ingest_pb2_grpc.IngestStub(channel).Stream(iter(messages), timeout=20)
        return [r.ack for r in replies if r.WhichOneof("kind") == "ack"]


def welcome_stream(cloud: RunningCloud, first: ingest_pb2.UplinkMessage):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(cloud.grpc_target) as channel:
        yield from ingest_pb2_grpc.IngestStub(channel).Stream(iter([first]), timeout=20)


def raw_stream(cloud: RunningCloud, messages: list[ingest_pb2.UplinkMessage]) -> grpc.RpcError:
    with grpc.insecure_channel(cloud.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            for _ in stub.Stream(iter(messages), timeout=20):
                pass
        return info.value  # type: ignore[return-value]


def hello(bundle: Bundle, camera: str = "cam-b") -> ingest_pb2.UplinkMessage:
    return ingest_pb2.UplinkMessage(
        hello=ingest_pb2.Hello(
            camera_id=camera, bundle_hash=bundle.hash, edge_time_ns=time.time_ns()
        )
    )


def frame(sequence: int, data: bytes, level: int = 3) -> ingest_pb2.UplinkMessage:
    return ingest_pb2.UplinkMessage(
        frame=ingest_pb2.Frame(sequence=sequence, rate_level=level, bitstream=data)
    )


def test_malformed_bitstream_is_invalid_argument_and_the_server_keeps_serving(
    cloud: RunningCloud, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    good = encoded_frames(tiny_bundle)[0].bitstream
    corrupt = good[:40] + bytes([good[40] ^ 0xFF]) + good[41:]
    error = raw_stream(cloud, [hello(tiny_bundle), frame(0, good), frame(1, corrupt)])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "frame 1 of camera cam-b: checksum mismatch" in (error.details() or "")

    truncated = raw_stream(cloud, [hello(tiny_bundle, "cam-c"), frame(0, b"FCHM\x01")])
    assert truncated.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "shorter than" in (truncated.details() or "")

    # Another bundle's frame, and a rate level that disagrees with the container.
    other = FrameBitstream.from_bytes(good)
    foreign = replace(other, bundle_tag=b"\x00" * 8).to_bytes()
    error = raw_stream(cloud, [hello(tiny_bundle, "cam-d"), frame(0, foreign)])
    assert "bundle tag" in (error.details() or "")
    error = raw_stream(cloud, [hello(tiny_bundle, "cam-d"), frame(0, good, level=5)])
    assert "rate_level 5 differs" in (error.details() or "")

    # The acknowledged frame stayed stored, the rejected ones did not, and ingest goes on.
    api = cloud.api()
    assert [
        f["sequence"] for f in api.get("/v1/frames", params={"camera": "cam-b"}).json()["items"]
    ] == [0]
    assert (
        stream(cloud, tiny_bundle, "cam-e", encoded_frames(tiny_bundle), tmp_path).stats.acked == 2
    )


def test_handshake_errors_name_the_problem(
    cloud: RunningCloud, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    good = encoded_frames(tiny_bundle)[0].bitstream
    error = raw_stream(cloud, [frame(0, good)])
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "first message of a stream must be Hello" in (error.details() or "")

    error = raw_stream(cloud, [hello(tiny_bundle, "bad camera!")])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "camera_id" in (error.details() or "")

    other_bundle = stream(
        cloud, tiny_bundle, "cam-f", encoded_frames(tiny_bundle), tmp_path, bundle_hash="0" * 64
    )
    assert other_bundle.fatal is not None
    assert other_bundle.fatal.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "bundle_hash" in other_bundle.fatal.details
    assert other_bundle.spool.frames == 2, "nothing is lost: the frames stay spooled"


def test_an_unreachable_cloud_means_retrying_with_frames_kept(
    tiny_bundle: Bundle, tmp_path: Path
) -> None:
    from tests.conftest import free_port

    spool = Spool(tmp_path / "spool", max_bytes=1 << 20, max_age_s=3600)
    spool.append(0, 0, b"frame")
    port = free_port()
    uplink = Uplink(spool, "cam", tiny_bundle.hash,
                    channel_factory=lambda: grpc.insecure_channel(f"127.0.0.1:{port}"),
                    connect_timeout_s=0.2, backoff=Backoff(0.05, 0.1))  # fmt: skip
    uplink.start()
    assert uplink.wait_connected(1.0) is None
    assert not uplink.stop(flush_timeout_s=0.2)
    assert uplink.fatal is None and spool.frames == 1


def test_capture_times_are_corrected_for_a_skewed_edge_clock(
    cloud: RunningCloud, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    import time

    skew_ns = -3_600 * 10**9  # the camera's clock is an hour behind
    frame0 = encoded_frames(tiny_bundle)[0]
    spool = Spool(tmp_path / "skew", max_bytes=1 << 20, max_age_s=3600)
    captured_true_ns = time.time_ns()
    spool.append(captured_true_ns + skew_ns, frame0.rate_level, frame0.bitstream)
    uplink = Uplink(
        spool, "skewed-cam", tiny_bundle.hash,
        channel_factory=lambda: grpc.insecure_channel(cloud.grpc_target),
        clock_ns=lambda: time.time_ns() + skew_ns,
    )  # fmt: skip
    uplink.start()
    assert uplink.stop(flush_timeout_s=20)
    assert uplink.stats.acked == 1
    api = cloud.api()
    (stored,) = api.get("/v1/frames", params={"camera": "skewed-cam"}).json()["items"]
    error_ms = abs(stored["time_ns"] - captured_true_ns) / 1e6
    assert error_ms < 250, f"stored capture time is off by {error_ms:.0f} ms"


def test_out_of_range_frames_and_clocks_are_refused_by_name(
    cloud: RunningCloud, tiny_bundle: Bundle
) -> None:
    good = encoded_frames(tiny_bundle)[0]
    huge = frame(2**64 - 1, good.bitstream, good.rate_level)
    error = raw_stream(cloud, [hello(tiny_bundle, "cam-g"), huge])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds 2**63-1" in (error.details() or "")
    assert dict(error.trailing_metadata() or ())["fchm-rejected-sequence"] == str(2**64 - 1)

    far_future = ingest_pb2.UplinkMessage(
        hello=ingest_pb2.Hello(camera_id="cam-h", bundle_hash=tiny_bundle.hash,
                               edge_time_ns=-(2**63) + 1)
    )  # fmt: skip
    error = raw_stream(cloud, [far_future])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "edge_time_ns" in (error.details() or "")


def test_a_sequence_reused_with_other_bytes_is_refused_not_acked(
    cloud: RunningCloud, tiny_bundle: Bundle
) -> None:
    first, second = encoded_frames(tiny_bundle)
    acks = acked(cloud, [hello(tiny_bundle, "cam-r"), frame(5, first.bitstream, first.rate_level)])
    assert [a.sequence for a in acks] == [5]
    error = raw_stream(
        cloud, [hello(tiny_bundle, "cam-r"), frame(5, second.bitstream, second.rate_level)]
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already stored with different content" in (error.details() or "")
