"""FrameStore.store_frame under racing writers, on a real SQLite file: the unique
(camera, sequence) constraint decides, and no answer ever lies about what is stored."""

from __future__ import annotations

import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cloud.store.frame_store import FrameStore, SequenceReused
from cloud.store.records import FrameRecord, StoredFrame

CAMERA = "cam-race"


def record(sequence: int, data: bytes, received_ns: int = 1_000) -> FrameRecord:
    return FrameRecord(
        camera_id=CAMERA,
        sequence=sequence,
        capture_time_ns=sequence,
        received_time_ns=received_ns,
        rate_level=0,
        num_bytes=len(data),
        image_width=8,
        image_height=8,
        crc32=zlib.crc32(data),
    )


def open_store(root: Path) -> FrameStore:
    store = FrameStore.open(f"sqlite:///{root / 'fchm.db'}", root / "blobs")
    store.register_camera(CAMERA, "b" * 64, 0, "test")
    return store


def test_threads_racing_one_sequence_get_truthful_answers_and_one_blob(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    writers, sequences = 6, 12
    # Even sequences: every writer sends the same bytes. Odd ones: two contents.
    content = {
        (w, s): f"frame {s} variant {w % 2 if s % 2 else 0}".encode() * 20
        for w in range(writers)
        for s in range(sequences)
    }
    start = [threading.Barrier(writers) for _ in range(sequences)]

    def writer(w: int) -> list[tuple[int, bytes, StoredFrame | SequenceReused]]:
        out: list[tuple[int, bytes, StoredFrame | SequenceReused]] = []
        for s in range(sequences):
            data = content[w, s]
            start[s].wait()  # all writers hit the same sequence at the same moment
            try:
                out.append((s, data, store.store_frame(record(s, data), [], data)))
            except SequenceReused as exc:
                out.append((s, data, exc))
        return out

    with ThreadPoolExecutor(writers) as pool:
        results = [r for rs in pool.map(writer, range(writers)) for r in rs]

    for s in range(sequences):
        row = store.find_frame(CAMERA, s)
        assert row is not None and row.id is not None
        # The row's blob is the bitstream whose CRC the row records.
        assert zlib.crc32(store.read_bitstream(row)) == row.crc32
        answers = [(data, r) for seq, data, r in results if seq == s]
        winners = [r for _, r in answers if isinstance(r, StoredFrame) and not r.duplicate]
        assert len(winners) == 1 and winners[0].frame_id == row.id
        for data, r in answers:
            if isinstance(r, StoredFrame):  # stored or duplicate: only for the stored bytes
                assert (r.frame_id, zlib.crc32(data)) == (row.id, row.crc32)
            else:
                assert zlib.crc32(data) != row.crc32
                assert "already stored with different content" in str(r)
        if s % 2:
            assert any(isinstance(r, SequenceReused) for _, r in answers)
    # Losers deleted their blobs: one file per stored row, no temp files left.
    blobs = sorted(p.name for p in (tmp_path / "blobs" / "bitstreams" / CAMERA).iterdir())
    assert len(blobs) == sequences
    assert all(p.endswith(".fchm") and not p.startswith(".") for p in blobs)


def test_replay_of_tells_a_duplicate_from_a_reused_sequence(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store.replay_of(CAMERA, 7, zlib.crc32(b"x")) is None
    stored = store.store_frame(record(7, b"x"), [], b"x")
    assert store.replay_of(CAMERA, 7, zlib.crc32(b"x")) == StoredFrame(stored.frame_id, True, 0)
    with pytest.raises(SequenceReused, match="sequence 7 of camera cam-race"):
        store.replay_of(CAMERA, 7, zlib.crc32(b"y"))
    with pytest.raises(SequenceReused):
        store.store_frame(record(7, b"y"), [], b"y")
    row = store.find_frame(CAMERA, 7)
    assert row is not None and store.read_bitstream(row) == b"x"


def test_last_seen_moves_with_every_stored_frame_and_never_back(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    hello_ns = store.list_cameras()[0].last_seen_ns
    seen = []
    for sequence, received in ((0, hello_ns + 10), (1, hello_ns + 20), (2, hello_ns + 5)):
        store.store_frame(record(sequence, b"f%d" % sequence, received), [], b"f")
        seen.append(store.list_cameras()[0].last_seen_ns)
    # A frame received earlier than the newest (e.g. a slow replica's) does not move it back.
    assert seen == [hello_ns + 10, hello_ns + 20, hello_ns + 20]
    # Neither does a Hello whose clock reading is older than the newest frame's.
    store.store_frame(record(3, b"late", 2**62), [], b"late")
    store.register_camera(CAMERA, "b" * 64, 0, "test")
    assert store.list_cameras()[0].last_seen_ns == 2**62


def test_a_database_url_whose_driver_is_missing_names_the_setting_and_the_extra(
    tmp_path: Path,
) -> None:
    import importlib.util

    for package in ("pg8000", "psycopg"):
        if importlib.util.find_spec(package) is not None:
            pytest.skip(f"{package} is installed here")
    with pytest.raises(ValueError) as info:
        FrameStore.open("postgresql+pg8000://fchm:s3cret@db:5432/fchm", tmp_path)
    message = str(info.value)
    assert message.startswith("database_url postgresql+pg8000://fchm:***@db:5432/fchm")
    assert "s3cret" not in message
    assert message.endswith(
        "needs the Python package 'pg8000', which is not installed; install pg8000, or use "
        "postgresql+psycopg://… and install the extra: pip install 'fchm[postgres]'"
    )
    with pytest.raises(
        ValueError, match=r"'psycopg'.*install the extra: pip install 'fchm\[postgres\]'"
    ):
        FrameStore.open("postgresql+psycopg://fchm@db/fchm", tmp_path)
    with pytest.raises(ValueError, match="database_url"):
        FrameStore.open("nosuchdb://x", tmp_path)
