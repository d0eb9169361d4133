"""Frame rows written once: the insert that the unique (camera, sequence) constraint
decides, and the judgment of a replay against the stored row's CRC (the ingest order
is in cloud/store/frame_store.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Table, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from cloud.detector_tail import Detection
from cloud.store.records import FrameRecord, StoredFrame
from cloud.store.schema import detections, frames

# INSERT … ON CONFLICT DO NOTHING: the unique constraint decides, no error to recover from.
UPSERT_INSERTS: dict[str, Callable[[Table], sqlite.Insert | postgresql.Insert]] = {
    "sqlite": sqlite.insert,
    "postgresql": postgresql.insert,
}


class SequenceReused(RuntimeError):
    """A (camera, sequence) already stored with other bytes."""


def insert_unless_stored(conn: Connection, row: dict[str, Any]) -> int | None:
    """Insert the frame row; None when (camera, sequence) is already stored."""
    make_insert = UPSERT_INSERTS.get(conn.dialect.name)
    if make_insert is not None:
        stmt = (
            make_insert(frames)
            .values(row)
            .on_conflict_do_nothing(index_elements=["camera_id", "sequence"])
            .returning(frames.c.id)
        )
        frame_id = conn.execute(stmt).scalar()
        return None if frame_id is None else int(frame_id)
    try:  # other dialects: a savepoint keeps the transaction usable after the conflict
        with conn.begin_nested():
            result = conn.execute(insert(frames).values(row))
    except IntegrityError:
        return None
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def judge_replay(conn: Connection, camera_id: str, sequence: int, crc32: int) -> StoredFrame | None:
    stored = conn.execute(
        select(frames.c.id, frames.c.crc32, frames.c.num_detections).where(
            frames.c.camera_id == camera_id, frames.c.sequence == sequence
        )
    ).first()
    if stored is None:
        return None
    if int(stored.crc32) != crc32:
        raise SequenceReused(reused_message(camera_id, sequence))
    return StoredFrame(int(stored.id), True, int(stored.num_detections))


def reused_message(camera_id: str, sequence: int) -> str:
    # Acking this as a duplicate would make the edge delete a frame we never stored.
    return (
        f"sequence {sequence} of camera {camera_id} is already stored with different "
        "content (was the edge's spool reset or restored?)"
    )


def insert_detections(
    conn: Connection, frame_id: int, frame: FrameRecord, found: Sequence[Detection]
) -> None:
    if not found:
        return
    conn.execute(
        insert(detections),
        [
            {
                "frame_id": frame_id,
                "camera_id": frame.camera_id,
                "capture_time_ns": frame.capture_time_ns,
                "class_id": d.class_id,
                "label": d.label,
                "score": d.score,
                "x1": d.box[0],
                "y1": d.box[1],
                "x2": d.box[2],
                "y2": d.box[3],
            }
            for d in found
        ],
    )
