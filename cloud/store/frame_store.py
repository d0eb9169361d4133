"""The frame store: cameras, frames, detections and view jobs in one database,
bitstreams and view images in a blob directory.

Ingest order for one frame (what makes an ack safe):
    bitstream blob (fsync) ─► one transaction: frame row + detection rows ─► ack
A replay of (camera, sequence) finds the row and is reported as a duplicate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import and_, create_engine, event, func, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from cloud.detector_tail import Detection
from cloud.store.blobs import LocalBlobStore
from cloud.store.records import (
    CameraRecord,
    DetectionQuery,
    DetectionRecord,
    FrameRecord,
    StoredFrame,
    ViewRecord,
)
from cloud.store.schema import cameras, detections, frames, metadata, views


def now_ns() -> int:
    return time.time_ns()


def open_engine(url: str) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            # WAL lets the API read while ingest writes; FULL sync makes commits durable.
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


class FrameStore:
    def __init__(self, engine: Engine, blobs: LocalBlobStore) -> None:
        self.engine = engine
        self.blobs = blobs
        metadata.create_all(engine)

    @classmethod
    def open(cls, database_url: str, blob_dir: Path) -> FrameStore:
        return cls(open_engine(database_url), LocalBlobStore(blob_dir))

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))

    # ── cameras ──────────────────────────────────────────────────────────────
    def register_camera(
        self, camera_id: str, bundle_hash: str, clock_offset_ns: int, agent_version: str
    ) -> int:
        """Create or refresh a camera; return the next sequence it should send."""
        t = now_ns()
        with self.engine.begin() as conn:
            exists = (
                conn.execute(
                    select(cameras.c.camera_id).where(cameras.c.camera_id == camera_id)
                ).first()
                is not None
            )
            values = {
                "bundle_hash": bundle_hash,
                "last_seen_ns": t,
                "clock_offset_ns": clock_offset_ns,
                "agent_version": agent_version,
            }
            if not exists:
                try:
                    with conn.begin_nested():  # two first Hellos at once: one inserts
                        conn.execute(
                            insert(cameras).values(camera_id=camera_id, first_seen_ns=t, **values)
                        )
                except IntegrityError:
                    exists = True
            if exists:
                conn.execute(update(cameras).where(cameras.c.camera_id == camera_id).values(values))
            top = conn.execute(
                select(func.max(frames.c.sequence)).where(frames.c.camera_id == camera_id)
            ).scalar()
        return 0 if top is None else int(top) + 1

    def list_cameras(self) -> list[CameraRecord]:
        counts = (
            select(frames.c.camera_id, func.count().label("n"))
            .group_by(frames.c.camera_id)
            .subquery()
        )
        query = (
            select(cameras, func.coalesce(counts.c.n, 0).label("num_frames"))
            .outerjoin(counts, counts.c.camera_id == cameras.c.camera_id)
            .order_by(cameras.c.camera_id)
        )
        with self.engine.connect() as conn:
            return [CameraRecord(**row._mapping) for row in conn.execute(query)]

    # ── frames ───────────────────────────────────────────────────────────────
    def store_frame(
        self, frame: FrameRecord, found: Sequence[Detection], bitstream: bytes
    ) -> StoredFrame:
        existing = self._frame_id(frame.camera_id, frame.sequence)
        if existing is not None:
            return StoredFrame(existing[0], True, existing[1])
        key = f"bitstreams/{frame.camera_id}/{frame.sequence:012d}.fchm"
        self.blobs.put(key, bitstream)
        row = {
            "camera_id": frame.camera_id,
            "sequence": frame.sequence,
            "capture_time_ns": frame.capture_time_ns,
            "received_time_ns": frame.received_time_ns,
            "rate_level": frame.rate_level,
            "num_bytes": frame.num_bytes,
            "crc32": frame.crc32,
            "image_width": frame.image_width,
            "image_height": frame.image_height,
            "num_detections": len(found),
            "bitstream_key": key,
        }
        try:
            with self.engine.begin() as conn:
                result = conn.execute(insert(frames).values(row))
                frame_id = int(result.inserted_primary_key[0])  # type: ignore[index]
                if found:
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
        except IntegrityError:
            # Another replica stored the same (camera, sequence) first.
            existing = self._frame_id(frame.camera_id, frame.sequence)
            if existing is None:
                raise
            return StoredFrame(existing[0], True, existing[1])
        return StoredFrame(frame_id, False, len(found))

    def _frame_id(self, camera_id: str, sequence: int) -> tuple[int, int] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(frames.c.id, frames.c.num_detections).where(
                    frames.c.camera_id == camera_id, frames.c.sequence == sequence
                )
            ).first()
        return None if row is None else (int(row[0]), int(row[1]))

    def get_frame(self, frame_id: int) -> FrameRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(frames).where(frames.c.id == frame_id)).first()
        return None if row is None else FrameRecord(**row._mapping)

    def find_frame(self, camera_id: str, sequence: int) -> FrameRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(frames).where(frames.c.camera_id == camera_id, frames.c.sequence == sequence)
            ).first()
        return None if row is None else FrameRecord(**row._mapping)

    def list_frames(
        self,
        camera_id: str | None,
        since_ns: int | None,
        until_ns: int | None,
        limit: int,
        after: tuple[int, int] | None,
        newest_first: bool = False,
    ) -> list[FrameRecord]:
        conds = _time_window(frames, since_ns, until_ns, after, newest_first)
        if camera_id is not None:
            conds.append(frames.c.camera_id == camera_id)
        query = (
            select(frames)
            .where(and_(True, *conds))
            .order_by(*_keyset_order(frames, newest_first))
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [FrameRecord(**row._mapping) for row in conn.execute(query)]

    def read_bitstream(self, frame: FrameRecord) -> bytes:
        return self.blobs.get(frame.bitstream_key)

    # ── detections ───────────────────────────────────────────────────────────
    def query_detections(self, q: DetectionQuery) -> list[DetectionRecord]:
        d = detections.c
        conds = _time_window(detections, q.since_ns, q.until_ns, q.after, q.newest_first)
        if q.camera_id is not None:
            conds.append(d.camera_id == q.camera_id)
        if q.label is not None:
            conds.append(d.label == q.label)
        if q.min_score is not None:
            conds.append(d.score >= q.min_score)
        if q.frame_id is not None:
            conds.append(d.frame_id == q.frame_id)
        query = (
            select(detections)
            .where(and_(True, *conds))
            .order_by(*_keyset_order(detections, q.newest_first))
            .limit(q.limit)
        )
        with self.engine.connect() as conn:
            return [
                DetectionRecord(
                    id=r.id,
                    frame_id=r.frame_id,
                    camera_id=r.camera_id,
                    capture_time_ns=r.capture_time_ns,
                    class_id=r.class_id,
                    label=r.label,
                    score=r.score,
                    box=(r.x1, r.y1, r.x2, r.y2),
                )
                for r in conn.execute(query)
            ]

    # ── view jobs ────────────────────────────────────────────────────────────
    def create_view(self, view: ViewRecord) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(views).values(**view.__dict__))

    def get_view(self, view_id: str) -> ViewRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(views).where(views.c.id == view_id)).first()
        return None if row is None else ViewRecord(**row._mapping)

    def update_view(self, view_id: str, **values: object) -> None:
        unknown = set(values) - set(views.c.keys())
        if unknown:
            raise ValueError(f"unknown view fields {sorted(unknown)}")
        with self.engine.begin() as conn:
            conn.execute(update(views).where(views.c.id == view_id).values(**values))

    def unfinished_views(self) -> list[ViewRecord]:
        """Jobs queued or running when the process stopped; re-queued at start."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(views)
                .where(views.c.status.in_(("queued", "running")))
                .order_by(views.c.created_ns)
            )
            return [ViewRecord(**row._mapping) for row in rows]


def _time_window(
    table: Any,
    since_ns: int | None,
    until_ns: int | None,
    after: tuple[int, int] | None,
    newest_first: bool = False,
) -> list[Any]:
    """Conditions for a time window and the rows past the keyset ``after`` in this order."""
    c = table.c
    conds: list[Any] = []
    if since_ns is not None:
        conds.append(c.capture_time_ns >= since_ns)
    if until_ns is not None:
        conds.append(c.capture_time_ns < until_ns)
    if after is not None:
        t, i = after
        if newest_first:
            conds.append(or_(c.capture_time_ns < t, and_(c.capture_time_ns == t, c.id < i)))
        else:
            conds.append(or_(c.capture_time_ns > t, and_(c.capture_time_ns == t, c.id > i)))
    return conds


def _keyset_order(table: Any, newest_first: bool) -> tuple[Any, Any]:
    """(capture time, id): the id breaks ties, so pages neither skip nor repeat a row.
    The (…, capture_time_ns, id) indexes serve both directions."""
    c = table.c
    if newest_first:
        return c.capture_time_ns.desc(), c.id.desc()
    return c.capture_time_ns, c.id
