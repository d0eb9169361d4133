"""The frame store: cameras, frames, detections and view jobs in one database,
bitstreams and view images in a blob store (a directory, or an S3 bucket).

Ingest order for one frame (what makes an ack safe):
    bitstream blob under a key of its own (fsync)
      ─► one transaction: frame row unless (camera, sequence) exists
                          + detection rows + camera last_seen ─► ack
The unique (camera, sequence) constraint decides, inside that transaction, so it holds
across threads, processes and ingest replicas: the row is ours (stored); or another
ingest's with the same CRC (a duplicate: our blob is deleted); or with another CRC
(SequenceReused: never acked, our blob is deleted). A crash before the commit leaves at
most an unreferenced blob; no row ever points at a blob another ingest may rewrite.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    and_,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from cloud.detector_tail import Detection
from cloud.store.blobs import BlobStore, LocalBlobStore
from cloud.store.enhancements import EnhancementStore
from cloud.store.frame_rows import (
    SequenceReused,
    insert_detections,
    insert_unless_stored,
    judge_replay,
)
from cloud.store.migrations import migrate
from cloud.store.records import (
    CameraActivity,
    CameraRecord,
    CountBucket,
    DetectionQuery,
    DetectionRecord,
    FrameRecord,
    StoredFrame,
    ViewQuery,
    ViewRecord,
    view_preview_key,
)
from cloud.store.schema import cameras, detections, enhancements, frames, views

__all__ = ["FrameStore", "SequenceReused", "now_ns", "open_engine"]

# The driver each dialect is supported with: (its package, its URL scheme, the extra).
DRIVER_EXTRAS = {"postgresql": ("psycopg", "postgresql+psycopg://", "fchm[postgres]")}


def now_ns() -> int:
    return time.time_ns()


def safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


def open_engine(url: str) -> Engine:
    """The engine for ``database_url``; a bad URL or a missing driver is named, not traced."""
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except ImportError as exc:  # the dialect's driver is not installed
        missing = exc.name or str(exc)
        hint = f"install {missing}"
        supported = DRIVER_EXTRAS.get(url.split(":", 1)[0].split("+", 1)[0])
        if supported is not None:
            package, scheme, extra = supported
            hint = f"install the extra: pip install '{extra}'"
            if missing != package:
                hint = f"install {missing}, or use {scheme}… and {hint}"
        raise ValueError(
            f"database_url {safe_url(url)}: its driver needs the Python package "
            f"{missing!r}, which is not installed; {hint}"
        ) from None
    except ArgumentError as exc:
        raise ValueError(f"database_url {safe_url(url)}: {exc}") from None
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
    def __init__(self, engine: Engine, blobs: BlobStore) -> None:
        self.engine = engine
        self.blobs = blobs
        migrate(engine)  # create, or upgrade what an older release made
        self.enhancements = EnhancementStore(engine, blobs)

    @classmethod
    def open(cls, database_url: str, blobs: BlobStore | Path) -> FrameStore:
        """The store on ``database_url`` with ``blobs``, or a LocalBlobStore at that path."""
        engine = open_engine(database_url)
        try:
            return cls(engine, LocalBlobStore(blobs) if isinstance(blobs, Path) else blobs)
        except OperationalError as exc:  # server down, wrong password, unwritable file
            raise OSError(f"database_url {safe_url(database_url)}: {exc.orig}") from None

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
            values: dict[str, Any] = {
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
                # A frame stored by a stream just replaced may carry a later time: keep it.
                values["last_seen_ns"] = case(
                    (cameras.c.last_seen_ns > t, cameras.c.last_seen_ns), else_=t
                )
                conn.execute(update(cameras).where(cameras.c.camera_id == camera_id).values(values))
            top = conn.execute(
                select(func.max(frames.c.sequence)).where(frames.c.camera_id == camera_id)
            ).scalar()
        return 0 if top is None else int(top) + 1

    def touch_cameras(self, camera_ids: Sequence[str], t: int) -> None:
        """Cameras whose stream is open here were heard from at ``t`` (presence: an idle
        camera that is connected is online, and its enhanced views wait for it)."""
        if not camera_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(cameras)
                .where(cameras.c.camera_id.in_(list(camera_ids)), cameras.c.last_seen_ns < t)
                .values(last_seen_ns=t)
            )

    def list_cameras(self, camera_id: str | None = None) -> list[CameraRecord]:
        """Every camera (or just ``camera_id``) in id order, with its frame count."""
        counts = select(frames.c.camera_id, func.count().label("n")).group_by(frames.c.camera_id)
        query = select(cameras).order_by(cameras.c.camera_id)
        if camera_id is not None:
            counts = counts.where(frames.c.camera_id == camera_id)
            query = query.where(cameras.c.camera_id == camera_id)
        sub = counts.subquery()
        query = query.add_columns(func.coalesce(sub.c.n, 0).label("num_frames")).outerjoin(
            sub, sub.c.camera_id == cameras.c.camera_id
        )
        with self.engine.connect() as conn:
            return [CameraRecord(**row._mapping) for row in conn.execute(query)]

    # ── frames ───────────────────────────────────────────────────────────────
    def replay_of(self, camera_id: str, sequence: int, crc32: int) -> StoredFrame | None:
        """The stored frame that a frame with this CRC replays, or None if the sequence
        is not stored yet; SequenceReused if it is stored with other bytes."""
        with self.engine.connect() as conn:
            return judge_replay(conn, camera_id, sequence, crc32)

    def store_frame(
        self, frame: FrameRecord, found: Sequence[Detection], bitstream: bytes
    ) -> StoredFrame:
        """Store a frame once; a replay is a duplicate only if its CRC equals the stored
        row's (see the ingest order at the top). Raises SequenceReused otherwise."""
        # 1. The blob, durable, under a key no other ingest of this sequence can use.
        key = (
            f"bitstreams/{frame.camera_id}/{frame.sequence:012d}-{frame.crc32:08x}-"
            f"{secrets.token_hex(4)}.fchm"
        )
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
        # 2. One transaction: the unique constraint picks the winner; a loser reads the
        # winner's CRC in the same transaction. (An error here leaves the blob: if the
        # commit did happen, deleting it would leave a row without its bitstream.)
        replay: StoredFrame | None = None
        reused: SequenceReused | None = None
        with self.engine.begin() as conn:
            frame_id = insert_unless_stored(conn, row)
            if frame_id is None:
                try:
                    replay = judge_replay(conn, frame.camera_id, frame.sequence, frame.crc32)
                except SequenceReused as exc:
                    reused = exc
            else:
                insert_detections(conn, frame_id, frame, found)
                # last_seen moves with every stored frame, never backwards.
                conn.execute(
                    update(cameras)
                    .where(
                        cameras.c.camera_id == frame.camera_id,
                        cameras.c.last_seen_ns < frame.received_time_ns,
                    )
                    .values(last_seen_ns=frame.received_time_ns)
                )
        if frame_id is not None:
            return StoredFrame(frame_id, False, len(found))
        # 3. Lost: the row is another ingest's, so our blob is referenced by nothing.
        self.blobs.delete(key)
        if reused is not None:
            raise reused
        if replay is None:  # the winner's row vanished in between (deleted): retry later
            raise RuntimeError(
                f"frame {frame.sequence} of {frame.camera_id}: conflicted, then vanished"
            )
        return replay

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
        cameras: Sequence[str] | None = None,
    ) -> list[FrameRecord]:
        conds = _time_window(frames, since_ns, until_ns, after, newest_first)
        if camera_id is not None:
            conds.append(frames.c.camera_id == camera_id)
        if cameras is not None:
            conds.append(frames.c.camera_id.in_(cameras))
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
        conds = _time_window(detections, q.since_ns, q.until_ns, q.after, q.newest_first)
        query = (
            select(detections)
            .where(and_(True, *conds, *_detection_filters(q)))
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

    def count_detections(
        self, q: DetectionQuery, origin_ns: int, bucket_ns: int, by_label: bool = False
    ) -> list[CountBucket]:
        """Detections matching ``q`` counted per ``bucket_ns`` from ``origin_ns`` (which is
        ``q.since_ns``: bucket numbers stay non-negative, so integer division floors on
        both engines); empty buckets are left out. Served by the (…, time, id) indexes."""
        if q.since_ns is None or q.since_ns != origin_ns:
            raise ValueError("counts start at the window's since_ns")
        d = detections.c
        # ``//`` is integer division on both engines (``/`` would be true division).
        bucket = ((d.capture_time_ns - origin_ns) // bucket_ns).label("bucket")
        group: list[Any] = [bucket, d.label] if by_label else [bucket]
        conds = _time_window(detections, q.since_ns, q.until_ns, None)
        query = (
            select(*group, func.count().label("n"))
            .where(and_(True, *conds, *_detection_filters(q)))
            .group_by(*group)
            .order_by(*group)
        )
        with self.engine.connect() as conn:
            return [
                CountBucket(
                    start_ns=origin_ns + int(r.bucket) * bucket_ns,
                    label=r.label if by_label else None,
                    count=int(r.n),
                )
                for r in conn.execute(query)
            ]

    def camera_activity(self, camera_ids: Sequence[str], window_ns: int) -> list[CameraActivity]:
        """Newest frame and the frames of the last ``window_ns`` of each camera, and the
        enhancement bytes it sent in that window: one index range per camera and table
        (ix_frames_camera_time, ix_enhancements_camera_finished), not a scan."""
        f, e = frames.c, enhancements.c
        since = now_ns() - window_ns
        out = []
        with self.engine.connect() as conn:
            for camera_id in camera_ids:
                newest = conn.execute(
                    select(f.capture_time_ns, f.received_time_ns, f.rate_level)
                    .where(f.camera_id == camera_id)
                    .order_by(f.capture_time_ns.desc(), f.id.desc())
                    .limit(1)
                ).first()
                n, total = conn.execute(
                    select(func.count(), func.coalesce(func.sum(f.num_bytes), 0)).where(
                        f.camera_id == camera_id, f.capture_time_ns >= since
                    )
                ).one()
                extra = conn.execute(
                    select(func.coalesce(func.sum(e.num_bytes), 0)).where(
                        e.camera_id == camera_id, e.finished_ns >= since, e.status == "stored"
                    )
                ).scalar_one()
                out.append(
                    CameraActivity(
                        camera_id=camera_id,
                        last_frame_ns=None if newest is None else newest.capture_time_ns,
                        last_received_ns=None if newest is None else newest.received_time_ns,
                        rate_level=None if newest is None else newest.rate_level,
                        frames=int(n),
                        num_bytes=int(total),
                        enhancement_bytes=int(extra),
                    )
                )
        return out

    # ── view jobs ────────────────────────────────────────────────────────────
    def create_view(self, view: ViewRecord) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(views).values(**view.__dict__))

    def get_view(self, view_id: str) -> ViewRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(views).where(views.c.id == view_id)).first()
        return None if row is None else ViewRecord(**row._mapping)

    def list_views(self, q: ViewQuery) -> list[ViewRecord]:
        """Views by (created_ns, id), newest first unless ``q.newest_first`` is False
        (ix_views_created); ``q.camera_ids`` joins the frames they show."""
        v = views.c
        conds: list[Any] = []
        if q.frame_id is not None:
            conds.append(v.frame_id == q.frame_id)
        if q.status is not None:
            conds.append(v.status == q.status)
        if q.kind is not None:
            conds.append(v.kind == q.kind)
        if q.camera_ids is not None:
            conds.append(
                v.frame_id.in_(select(frames.c.id).where(frames.c.camera_id.in_(q.camera_ids)))
            )
        if q.after is not None:
            keyset = tuple_(v.created_ns, v.id)
            conds.append(keyset < tuple_(*q.after) if q.newest_first else keyset > tuple_(*q.after))
        order = (v.created_ns.desc(), v.id.desc()) if q.newest_first else (v.created_ns, v.id)
        query = select(views).where(and_(True, *conds)).order_by(*order).limit(q.limit)
        with self.engine.connect() as conn:
            return [ViewRecord(**row._mapping) for row in conn.execute(query)]

    def reusable_view(
        self, frame_id: int, kind: str, enhancement_bytes: int | None = None
    ) -> ViewRecord | None:
        """A job that answers a new request for this frame, kind and enhancement budget:
        its newest done view (a cached result; not one that fell back), else one queued or
        running (the same work, pending)."""
        v = views.c
        rank = case((v.status == "done", 0), else_=1)
        budget = (
            v.enhancement_bytes.is_(None)
            if enhancement_bytes is None
            else v.enhancement_bytes == enhancement_bytes
        )
        with self.engine.connect() as conn:
            row = conn.execute(
                select(views)
                .where(
                    v.frame_id == frame_id,
                    v.kind == kind,
                    budget,
                    v.fallback.is_(None),
                    v.status.in_(("done", "queued", "running")),
                )
                .order_by(rank, v.created_ns.desc())
                .limit(1)
            ).first()
        return None if row is None else ViewRecord(**row._mapping)

    def delete_view(self, view_id: str) -> ViewRecord | None:
        """Delete a view unless a worker is rendering it; returns the row as it was (None:
        no such view). A running view is returned undeleted: the caller says 409. The
        image blob goes after the commit: a row must never point at a missing blob."""
        with self.engine.begin() as conn:
            row = conn.execute(select(views).where(views.c.id == view_id)).first()
            if row is None:
                return None
            view = ViewRecord(**row._mapping)
            if view.status == "running":
                return view
            gone = conn.execute(
                delete(views).where(views.c.id == view_id, views.c.status != "running")
            ).rowcount
        if not gone:  # a worker started it in between
            return self.get_view(view_id)
        if view.image_key is not None:
            self.blobs.delete(view.image_key)
        if view.kind != "preview":
            self.blobs.delete(view_preview_key(view.id))  # missing is fine: not rendered yet
        return view

    def start_view(
        self, view_id: str, worker: str | None = None, lease_s: float | None = None
    ) -> bool:
        """Claim a queued job for ``worker``: running, the attempt counted (in the database,
        so it survives us), leased for ``lease_s``. False if another worker claimed it, or
        it is gone (deleted while queued) or finished: one job, one renderer."""
        now = now_ns()
        lease = None if lease_s is None else now + round(lease_s * 1e9)
        with self.engine.begin() as conn:
            claimed = conn.execute(
                update(views)
                .where(views.c.id == view_id, views.c.status == "queued")
                .values(
                    status="running",
                    started_ns=now,
                    attempts=views.c.attempts + 1,
                    worker=worker,
                    lease_until_ns=lease,
                )
            ).rowcount
        return bool(claimed)

    def renew_view_lease(self, view_ids: Sequence[str], worker: str, lease_s: float) -> int:
        """Extend ``worker``'s leases on these running jobs; how many it still holds."""
        if not view_ids:
            return 0
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    update(views)
                    .where(
                        views.c.id.in_(view_ids),
                        views.c.status == "running",
                        views.c.worker == worker,
                    )
                    .values(lease_until_ns=now_ns() + round(lease_s * 1e9))
                ).rowcount
            )

    def lapsed_views(self, now: int) -> list[ViewRecord]:
        """Running jobs whose lease ran out at ``now``: their worker died (or hung)."""
        v = views.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(views).where(
                    v.status == "running", v.lease_until_ns.is_not(None), v.lease_until_ns < now
                )
            )
            return [ViewRecord(**row._mapping) for row in rows]

    def reclaim_view(self, view: ViewRecord, **values: object) -> bool:
        """Set ``values`` on a lapsed job only if it is still the same lapsed lease (another
        process may have re-queued it, or the worker renewed it, in between)."""
        v = views.c
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(views)
                    .where(
                        v.id == view.id,
                        v.status == "running",
                        v.lease_until_ns == view.lease_until_ns,
                    )
                    .values(**values)
                ).rowcount
            )

    def update_view(self, view_id: str, **values: object) -> None:
        self._update_view([views.c.id == view_id], values)

    def update_view_if(self, view_id: str, while_status: str, **values: object) -> bool:
        """Set ``values`` on a job only while its status is ``while_status``; whether it was."""
        return self._update_view([views.c.id == view_id, views.c.status == while_status], values)

    def _update_view(self, where: list[Any], values: dict[str, object]) -> bool:
        unknown = set(values) - set(views.c.keys())
        if unknown:
            raise ValueError(f"unknown view fields {sorted(unknown)}")
        with self.engine.begin() as conn:
            return bool(conn.execute(update(views).where(*where).values(**values)).rowcount)

    def unfinished_views(self, statuses: Sequence[str] = ("queued", "running")) -> list[ViewRecord]:
        """Jobs queued or running (or only ``statuses``), oldest first: re-queued at start."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(views).where(views.c.status.in_(statuses)).order_by(views.c.created_ns)
            )
            return [ViewRecord(**row._mapping) for row in rows]


def _detection_filters(q: DetectionQuery) -> list[Any]:
    d = detections.c
    conds: list[Any] = []
    if q.camera_id is not None:
        conds.append(d.camera_id == q.camera_id)
    if q.cameras is not None:
        conds.append(d.camera_id.in_(q.cameras))
    if q.label is not None:
        conds.append(d.label == q.label)
    if q.labels is not None:
        conds.append(d.label.in_(q.labels))
    if q.min_score is not None:
        conds.append(d.score >= q.min_score)
    if q.frame_id is not None:
        conds.append(d.frame_id == q.frame_id)
    return conds


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
        # A row-value comparison: both engines use it as a bound on the (…, time, id)
        # index, where ``t < T OR (t = T AND id < I)`` was a filter over every row passed.
        keyset = tuple_(c.capture_time_ns, c.id)
        conds.append(keyset < tuple_(*after) if newest_first else keyset > tuple_(*after))
    return conds


def _keyset_order(table: Any, newest_first: bool) -> tuple[Any, Any]:
    """(capture time, id): the id breaks ties, so pages neither skip nor repeat a row.
    The (…, capture_time_ns, id) indexes serve both directions."""
    c = table.c
    if newest_first:
        return c.capture_time_ns.desc(), c.id.desc()
    return c.capture_time_ns, c.id
