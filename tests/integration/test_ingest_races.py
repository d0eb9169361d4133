"""Ingest under contention, over real gRPC to a real cloud: two streams claiming one
camera, a stream replaced while half-open, and a second cloud on a bound port."""

from __future__ import annotations

import queue
import random
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from cloud.store.frame_store import FrameStore
from codec.bitstream import stored_checksum
from codec.bundle import Bundle
from fchm.cli import app
from fchm.v1 import ingest_pb2, ingest_pb2_grpc
from tests.conftest import RunningCloud, free_port
from tests.integration.test_grpc_ingest import encoded_frames, frame, hello


def cloud_store(cloud: RunningCloud) -> FrameStore:
    """A second connection to the cloud's own database and blobs, to check the truth."""
    data = cloud.settings.data_dir
    return FrameStore.open(f"sqlite:///{data / 'fchm.db'}", data / "blobs")


def test_two_streams_racing_one_camera_never_get_a_wrong_ack(
    cloud: RunningCloud, tiny_bundle: Bundle
) -> None:
    bus, zidane = (f.bitstream for f in encoded_frames(tiny_bundle))
    sequences = range(10)
    # Both send the bus for even sequences; for odd ones the second sends another frame.
    contents = [{s: bus for s in sequences}, {s: zidane if s % 2 else bus for s in sequences}]
    acks: list[tuple[int, int, bool]] = []  # (sequence, CRC of what was sent, duplicate)
    refused: list[tuple[int, int]] = []  # (sequence, CRC of what was sent)
    codes: list[grpc.StatusCode] = []
    lock, start = threading.Lock(), threading.Barrier(2)

    def edge(content: dict[int, bytes]) -> None:
        pending = list(sequences)
        start.wait()
        for _ in range(60):  # reconnect like an edge until every frame has an answer
            if not pending:
                return
            messages = [hello(tiny_bundle, "cam-race"), *(frame(s, content[s]) for s in pending)]
            try:
                with grpc.insecure_channel(cloud.grpc_target) as channel:
                    for reply in ingest_pb2_grpc.IngestStub(channel).Stream(
                        iter(messages), timeout=30
                    ):
                        if reply.WhichOneof("kind") == "ack":
                            a = reply.ack
                            with lock:
                                acks.append((a.sequence, stored_checksum(content[a.sequence]),
                                             a.duplicate))  # fmt: skip
                            pending.remove(a.sequence)
            except grpc.RpcError as exc:
                with lock:
                    codes.append(exc.code())
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    # Another stream stored other bytes under this sequence: a real edge
                    # stops here; this one notes the refusal and goes on with the rest.
                    found = re.search(r"sequence (\d+) of camera", exc.details() or "")
                    assert found is not None, exc.details()
                    s = int(found.group(1))
                    with lock:
                        refused.append((s, stored_checksum(content[s])))
                    pending.remove(s)
                else:
                    assert exc.code() == grpc.StatusCode.ABORTED, exc.details()
                    assert "replaced by a newer stream" in (exc.details() or "")
            threading.Event().wait(random.uniform(0.02, 0.1))  # the edge's backoff
        raise AssertionError(f"frames {pending} never answered")

    threads = [threading.Thread(target=edge, args=(c,)) for c in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    store = cloud_store(cloud)
    rows = {s: store.find_frame("cam-race", s) for s in sequences}
    for s, row in rows.items():
        assert row is not None, f"sequence {s} not stored"
        # The stored blob is the bitstream whose CRC the row records.
        blob = store.read_bitstream(row)
        assert stored_checksum(blob) == row.crc32 and blob in (bus, zidane)
    # An ack, duplicate or not, only for the bytes stored; a refusal only for others.
    assert all(rows[s].crc32 == crc for s, crc, _ in acks)  # type: ignore[union-attr]
    assert all(rows[s].crc32 != crc for s, crc in refused)  # type: ignore[union-attr]
    assert sorted(s for s, _ in refused) == [s for s in sequences if s % 2]
    assert len(acks) == 2 * len(sequences) - len(refused)
    assert grpc.StatusCode.ABORTED in codes  # the streams did replace each other


class OpenStream:
    """One live Ingest stream driven message by message (a queue feeds the requests)."""

    def __init__(self, cloud: RunningCloud) -> None:
        self.channel = grpc.insecure_channel(cloud.grpc_target)
        self.requests: queue.Queue[ingest_pb2.UplinkMessage | None] = queue.Queue()
        stub = ingest_pb2_grpc.IngestStub(self.channel)
        self.replies = stub.Stream(self._iterate(), timeout=30)

    def _iterate(self) -> Iterator[ingest_pb2.UplinkMessage]:
        while (message := self.requests.get()) is not None:
            yield message

    def send(self, message: ingest_pb2.UplinkMessage) -> ingest_pb2.DownlinkMessage:
        self.requests.put(message)
        return next(self.replies)

    def close(self) -> None:
        self.requests.put(None)
        self.channel.close()


def last_seen_ns(cloud: RunningCloud, camera: str) -> int:
    with cloud.api() as api:
        items = api.get("/v1/cameras").json()["items"]
    return int(next(c["last_seen_ns"] for c in items if c["camera_id"] == camera))


def test_a_reconnecting_camera_replaces_its_half_open_stream(
    cloud: RunningCloud, tiny_bundle: Bundle
) -> None:
    bus, zidane = (f.bitstream for f in encoded_frames(tiny_bundle))
    old = OpenStream(cloud)
    assert old.send(hello(tiny_bundle, "cam-h")).welcome.next_sequence == 0
    at_hello = last_seen_ns(cloud, "cam-h")
    assert old.send(frame(0, bus)).ack.sequence == 0
    after_frame = last_seen_ns(cloud, "cam-h")
    assert after_frame > at_hello  # last_seen moves with every stored frame

    # The link is cut; the server still holds the old stream when the camera comes back.
    new = OpenStream(cloud)
    assert new.send(hello(tiny_bundle, "cam-h")).welcome.next_sequence == 1
    with pytest.raises(grpc.RpcError) as info:
        next(old.replies)
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert "camera cam-h: replaced by a newer stream" in (info.value.details() or "")
    ack = new.send(frame(1, zidane)).ack
    assert (ack.sequence, ack.duplicate) == (1, False)
    assert last_seen_ns(cloud, "cam-h") > after_frame
    old.close()
    new.close()


def test_a_second_cloud_on_a_bound_port_exits_with_the_setting_named(
    cloud: RunningCloud, tiny_bundle: Bundle, tmp_path: Path
) -> None:
    def serve(grpc_port: int, http_port: int):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(app, [
            "cloud", "serve", "--bundle", str(tiny_bundle.path), "--data-dir",
            str(tmp_path / "second"), "--grpc-port", str(grpc_port), "--http-port", str(http_port),
        ])  # fmt: skip

    busy_grpc = serve(cloud.server.grpc_port, free_port())
    assert busy_grpc.exit_code == 2, busy_grpc.output
    assert f"error: grpc_port {cloud.server.grpc_port}: cannot bind" in busy_grpc.output
    assert "Traceback" not in busy_grpc.output

    grpc_port = free_port()
    busy_http = serve(grpc_port, cloud.settings.http_port)
    assert busy_http.exit_code == 2, busy_http.output
    assert f"error: http_port {cloud.settings.http_port}: cannot bind" in busy_http.output
    assert "Traceback" not in busy_http.output
    # The refused cloud let go of the gRPC port it had already bound.
    with socket.socket() as s:
        s.bind(("127.0.0.1", grpc_port))

    # The first cloud kept both its ports and serves on.
    bus = encoded_frames(tiny_bundle)[0].bitstream
    stream = OpenStream(cloud)
    stream.send(hello(tiny_bundle, "cam-p"))
    assert stream.send(frame(0, bus)).ack.sequence == 0
    stream.close()
