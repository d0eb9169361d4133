"""gRPC ingest on a real loopback server: acks, replays, and rejected input."""

from pathlib import Path

import cv2
import grpc
import httpx
import pytest

from codec.bitstream import FrameBitstream
from codec.bundle import Bundle
from edge.frame_encoder import EncodedFrame, FrameEncoder
from edge.sources import CapturedFrame
from edge.uplink import Uplink, UplinkError
from fchm.v1 import ingest_pb2, ingest_pb2_grpc
from tests.conftest import RunningCloud, sample_images


def encoded_frames(bundle: Bundle, level: int = 3) -> list[EncodedFrame]:
    encoder = FrameEncoder(bundle)
    images = [cv2.imread(str(p)) for p in sample_images()]
    return [encoder.encode(CapturedFrame(i, 1_000_000_000 * (i + 1), im), level)
            for i, im in enumerate(images)]  # fmt: skip


def stream(cloud: RunningCloud, bundle: Bundle, camera: str, frames: list[EncodedFrame],
           first_sequence: int | None = None) -> Uplink:  # fmt: skip
    uplink = Uplink(cloud.grpc_target, camera, bundle.hash, max_in_flight=4, timeout_s=20)
    session = uplink.open()
    start = session.next_sequence if first_sequence is None else first_sequence
    for i, frame in enumerate(frames):
        uplink.send(start + i, frame)
    uplink.close()
    return uplink


def test_frames_are_acked_stored_and_replays_are_idempotent(
    cloud: RunningCloud, tiny_bundle: Bundle
) -> None:
    frames = encoded_frames(tiny_bundle)
    first = stream(cloud, tiny_bundle, "cam-a", frames)
    assert (first.acked, first.duplicates) == (2, 0)

    replay = stream(cloud, tiny_bundle, "cam-a", frames, first_sequence=0)
    assert (replay.acked, replay.duplicates) == (2, 2)

    api = httpx.Client(base_url=cloud.http_base)
    cams = api.get("/v1/cameras").json()["items"]
    assert [(c["camera_id"], c["num_frames"]) for c in cams] == [("cam-a", 2)]
    stored = api.get("/v1/frames", params={"camera": "cam-a"}).json()["items"]
    assert [f["sequence"] for f in stored] == [0, 1]
    assert first.detections == sum(f["num_detections"] for f in stored)
    raw = api.get(f"/v1/frames/{stored[0]['id']}/bitstream").content
    assert raw == frames[0].bitstream

    # A reconnecting camera is told where to resume.
    assert Uplink(cloud.grpc_target, "cam-a", tiny_bundle.hash).open().next_sequence == 2


def raw_stream(cloud: RunningCloud, messages: list[ingest_pb2.UplinkMessage]) -> grpc.RpcError:
    with grpc.insecure_channel(cloud.grpc_target) as channel:
        stub = ingest_pb2_grpc.IngestStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            for _ in stub.Stream(iter(messages), timeout=20):
                pass
        return info.value  # type: ignore[return-value]


def hello(bundle: Bundle, camera: str = "cam-b") -> ingest_pb2.UplinkMessage:
    return ingest_pb2.UplinkMessage(
        hello=ingest_pb2.Hello(camera_id=camera, bundle_hash=bundle.hash, edge_time_ns=1)
    )


def frame(sequence: int, data: bytes, level: int = 3) -> ingest_pb2.UplinkMessage:
    return ingest_pb2.UplinkMessage(
        frame=ingest_pb2.Frame(sequence=sequence, rate_level=level, bitstream=data)
    )


def test_malformed_bitstream_is_invalid_argument_and_the_server_keeps_serving(
    cloud: RunningCloud, tiny_bundle: Bundle
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
    foreign = FrameBitstream(other.codec_id, other.rate_level, b"\x00" * 8, other.image_size,
                             other.latent_shape, other.payload).to_bytes()  # fmt: skip
    error = raw_stream(cloud, [hello(tiny_bundle, "cam-d"), frame(0, foreign)])
    assert "bundle tag" in (error.details() or "")
    error = raw_stream(cloud, [hello(tiny_bundle, "cam-d"), frame(0, good, level=5)])
    assert "rate_level 5 differs" in (error.details() or "")

    # The acknowledged frame stayed stored, the rejected ones did not, and ingest goes on.
    api = httpx.Client(base_url=cloud.http_base)
    assert [
        f["sequence"] for f in api.get("/v1/frames", params={"camera": "cam-b"}).json()["items"]
    ] == [0]
    assert stream(cloud, tiny_bundle, "cam-e", encoded_frames(tiny_bundle)).acked == 2


def test_handshake_errors_name_the_problem(cloud: RunningCloud, tiny_bundle: Bundle) -> None:
    good = encoded_frames(tiny_bundle)[0].bitstream
    error = raw_stream(cloud, [frame(0, good)])
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "first message of a stream must be Hello" in (error.details() or "")

    error = raw_stream(cloud, [hello(tiny_bundle, "bad camera!")])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "camera_id" in (error.details() or "")

    with pytest.raises(UplinkError) as info:
        Uplink(cloud.grpc_target, "cam-f", "0" * 64, timeout_s=10).open()
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "bundle_hash" in info.value.details


def test_unreachable_cloud_is_a_clear_error(tiny_bundle: Bundle, tmp_path: Path) -> None:
    from tests.conftest import free_port

    with pytest.raises(UplinkError, match="not reachable"):
        Uplink(f"127.0.0.1:{free_port()}", "cam", tiny_bundle.hash, timeout_s=1).open()
