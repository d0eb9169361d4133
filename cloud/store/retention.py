"""Retention: a camera's frames older than its cutoff, with their detections, views and
blobs, deleted in short transactions.

    cutoff (now − days) ─► oldest kept frame F0 (lowest sequence captured at/after cutoff)
        ─► walk F0's references back to its keyframe K (bitstream headers)
        ─► expired: sequence < K.sequence and captured before the cutoff
        ─► batches of ``batch`` frames, by sequence:
             one transaction: views (not running) ─► detections, enhancements ─► frames
             ─► commit ─► then their blobs: bitstreams, enhancement payloads, view images
             (a missing one is fine)

Keyframe rule: the cutoff moves back to K, so every kept frame still decodes from its
keyframe (cloud/latent_references.py walks the same chain). That relies on what the edge
sends: a P-frame references a frame after the last keyframe before it (the edge always
references its previous frame). A frame whose chain cannot be read (a blob or a frame
missing, an unparsable bitstream) ends the walk there: that frame and everything newer
is kept.

A view that is running is a worker rendering it: its frame, the frame's detections and
the frame's chain are kept until a sweep finds it finished. Rows go before blobs, so a
crash leaves at most unreferenced blobs, never a row without its blob.

Several sweepers at once (cloud replicas on one PostgreSQL) are safe: a batch locks its
frame rows (FOR UPDATE), so a second sweeper waits and then finds them gone, and every
delete counts only the rows it removed (RETURNING). On SQLite the first delete of a batch
takes the database's write lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, exists, func, select
from sqlalchemy.engine import Connection

from cloud.store.blobs import BlobStore
from cloud.store.frame_store import FrameStore
from cloud.store.records import FrameRecord, view_preview_key
from cloud.store.schema import cameras, detections, enhancements, frames, views
from codec.bitstream import MAX_CHAIN, BitstreamError, FrameBitstream

log = logging.getLogger(__name__)

NS_PER_DAY = 86_400 * 10**9
MAX_BATCH = 10_000
"""Most frames in one batch: their ids are bound parameters of one statement."""


@dataclass(frozen=True)
class RetentionPolicy:
    """Days each camera's frames are kept: its own, else the default (None: forever)."""

    default_days: float | None = None
    per_camera: Mapping[str, float] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.default_days is not None or bool(self.per_camera)

    def days(self, camera_id: str) -> float | None:
        return self.per_camera.get(camera_id, self.default_days)

    def cutoff_ns(self, camera_id: str, now_ns: int) -> int | None:
        """Frames captured before this are expired (None: the camera keeps everything)."""
        days = self.days(camera_id)
        return None if days is None else now_ns - round(days * NS_PER_DAY)


@dataclass(frozen=True)
class Deleted:
    frames: int = 0
    detections: int = 0
    views: int = 0
    blobs: int = 0
    """blob deletes done (a blob already missing counts too)"""

    def __add__(self, other: Deleted) -> Deleted:
        return Deleted(
            self.frames + other.frames,
            self.detections + other.detections,
            self.views + other.views,
            self.blobs + other.blobs,
        )

    def counts(self) -> dict[str, int]:
        return dict(self.__dict__)

    def summary(self) -> str:
        """``"3 frames, 12 detections, 0 views, 3 blobs"``: for logs and the CLI."""
        return ", ".join(f"{n} {kind}" for kind, n in self.counts().items())


@dataclass(frozen=True)
class CameraSweep:
    """What one camera's sweep deleted (a dry run: would delete)."""

    camera_id: str
    cutoff_ns: int
    keep_from_sequence: int | None
    """the first sequence kept: the keyframe the kept frames decode from (None: no frame
    at or after the cutoff, every expired frame goes)"""
    deleted: Deleted
    held: int
    """expired frames kept for a running view (retried next sweep)"""
    batches: int
    oldest_frame_ns: int | None
    """capture time of the camera's oldest frame after the sweep (a dry run: now)"""


def camera_ids(store: FrameStore) -> list[str]:
    """Every camera the store knows (without list_cameras' frame counts: no scan)."""
    with store.engine.connect() as conn:
        return list(
            conn.execute(select(cameras.c.camera_id).order_by(cameras.c.camera_id)).scalars()
        )


def sweep_camera(
    store: FrameStore,
    camera_id: str,
    cutoff_ns: int,
    batch: int = 1000,
    *,
    dry_run: bool = False,
    stop: Callable[[], bool] | None = None,
) -> CameraSweep:
    """Delete ``camera_id``'s frames captured before ``cutoff_ns`` (moved back to the
    keyframe of the oldest kept frame), ``batch`` frames per transaction; ``stop``:
    asked between batches whether to end early (a stopping server)."""
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch {batch} outside 1..{MAX_BATCH}")
    f = frames.c

    # 1. Nothing captured before the cutoff: nothing to do (one index seek).
    with store.engine.connect() as conn:
        expired_any = conn.execute(
            select(f.id).where(f.camera_id == camera_id, f.capture_time_ns < cutoff_ns).limit(1)
        ).first()
    if expired_any is None:
        return CameraSweep(camera_id, cutoff_ns, None, Deleted(), 0, 0, _oldest(store, camera_id))

    # 2. The keyframe the oldest kept frame decodes from: the first sequence kept.
    with store.engine.connect() as conn:
        row = conn.execute(
            select(frames)
            .where(f.camera_id == camera_id, f.capture_time_ns >= cutoff_ns)
            .order_by(f.sequence)
            .limit(1)
        ).first()
    keep_from = None if row is None else chain_start(store, FrameRecord(**row._mapping))

    # 3. A frame a worker renders keeps its chain too (the worker reads it).
    with store.engine.connect() as conn:
        rendering = conn.execute(
            select(frames)
            .where(*_expired(camera_id, cutoff_ns, keep_from), _has_view(running=True))
            .order_by(f.sequence)
        ).all()
    for held_row in rendering:
        start = chain_start(store, FrameRecord(**held_row._mapping))
        keep_from = start if keep_from is None else min(keep_from, start)

    # 4. Delete (or count) in batches by sequence.
    conds = _expired(camera_id, cutoff_ns, keep_from)
    if dry_run:
        deleted, held = _count(store, conds)
        return CameraSweep(
            camera_id, cutoff_ns, keep_from, deleted, held, 0, _oldest(store, camera_id)
        )
    total, held, batches, after = Deleted(), 0, 0, -1
    while stop is None or not stop():
        done, kept, picked, after = _delete_batch(store, conds, after, batch)
        total, held, batches = total + done, held + kept, batches + 1
        if picked < batch:
            break

    # 5. What is left: the metric of how far back the camera reaches.
    return CameraSweep(
        camera_id, cutoff_ns, keep_from, total, held, batches, _oldest(store, camera_id)
    )


def chain_start(store: FrameStore, record: FrameRecord, max_chain: int = MAX_CHAIN) -> int:
    """The sequence of the keyframe ``record`` decodes from; where its chain cannot be
    followed (a frame or blob missing, a bad bitstream, too long), the oldest reached."""
    for _ in range(max_chain):
        try:
            named = FrameBitstream.peek_reference(store.read_bitstream(record))
        except (FileNotFoundError, BitstreamError):
            return record.sequence
        if named is None:
            return record.sequence
        prior = store.find_frame(record.camera_id, record.sequence - named.offset)
        if prior is None:
            return record.sequence
        record = prior
    return record.sequence


def _expired(camera_id: str, cutoff_ns: int, keep_from: int | None) -> list[Any]:
    f = frames.c
    conds: list[Any] = [f.camera_id == camera_id, f.capture_time_ns < cutoff_ns]
    if keep_from is not None:
        conds.append(f.sequence < keep_from)
    return conds


def _has_view(running: bool) -> Any:
    v = views.c
    found = select(v.id).where(v.frame_id == frames.c.id)
    return exists(found.where(v.status == "running") if running else found)


def _delete_batch(
    store: FrameStore, conds: list[Any], after: int, batch: int
) -> tuple[Deleted, int, int, int]:
    """One transaction over the next ``batch`` expired frames after sequence ``after``,
    then their blobs: (deleted, frames held by a running view, frames picked, last
    sequence picked)."""
    f, v = frames.c, views.c
    with store.engine.begin() as conn:
        picked = conn.execute(
            select(f.id, f.sequence)
            .where(*conds, f.sequence > after)
            .order_by(f.sequence)
            .limit(batch)
            .with_for_update()  # another sweeper waits, then finds them gone (PostgreSQL)
        ).all()
        if not picked:
            return Deleted(), 0, 0, after
        ids = [r.id for r in picked]
        images = conn.execute(
            delete(views)
            .where(v.frame_id.in_(ids), v.status != "running")
            .returning(v.id, v.kind, v.image_key)
        ).all()
        held = set(conn.execute(select(v.frame_id).where(v.frame_id.in_(ids))).scalars())
        gone = [i for i in ids if i not in held]
        n_detections, bitstreams, payloads = _delete_frames(conn, gone) if gone else (0, [], [])
    keys = [*bitstreams, *payloads, *(r.image_key for r in images if r.image_key is not None)]
    # A refined view's first preview (deleting a missing one is fine, and counts).
    keys += [view_preview_key(r.id) for r in images if r.kind != "preview"]
    deleted = Deleted(len(bitstreams), n_detections, len(images), delete_blobs(store.blobs, keys))
    return deleted, len(held), len(picked), int(picked[-1].sequence)


def _delete_frames(conn: Connection, ids: list[int]) -> tuple[int, list[str], list[str]]:
    """Detections, enhancements and rows of these frames: (detections, the frames' bitstream
    keys, their enhancements' payload keys) — the blobs to delete after the commit."""
    n = conn.execute(delete(detections).where(detections.c.frame_id.in_(ids))).rowcount
    e = enhancements.c
    payloads = conn.execute(
        delete(enhancements).where(e.frame_id.in_(ids)).returning(e.blob_key)
    ).scalars()
    extra = [k for k in payloads if k is not None]
    keys = conn.execute(
        delete(frames).where(frames.c.id.in_(ids)).returning(frames.c.bitstream_key)
    ).scalars()
    return int(n), list(keys), extra


def delete_blobs(blobs: BlobStore, keys: list[str]) -> int:
    """Delete ``keys`` (their rows are committed gone); how many went. One that fails is
    logged and left: an unreferenced blob, never a row without its blob."""
    n = 0
    for key in keys:
        try:
            blobs.delete(key)
        except Exception as exc:  # an S3 outage, a permission: the rows are gone anyway
            log.warning("retention: blob %s not deleted: %s", key, exc)
        else:
            n += 1
    return n


def _count(store: FrameStore, conds: list[Any]) -> tuple[Deleted, int]:
    """What the batches would delete: (deleted, frames held by a running view)."""
    f, v, d = frames.c, views.c, detections.c
    going = select(f.id).where(*conds, ~_has_view(running=True))
    with store.engine.connect() as conn:
        n_frames = conn.execute(select(func.count()).select_from(going.subquery())).scalar_one()
        held = conn.execute(
            select(func.count()).where(*conds, _has_view(running=True)).select_from(frames)
        ).scalar_one()
        n_detections = conn.execute(
            select(func.count()).select_from(detections).where(d.frame_id.in_(going))
        ).scalar_one()
        n_views, n_images = conn.execute(
            select(func.count(), func.count(v.image_key)).where(v.frame_id.in_(going))
        ).one()
    blobs = int(n_frames) + int(n_images)
    return Deleted(int(n_frames), int(n_detections), int(n_views), blobs), int(held)


def _oldest(store: FrameStore, camera_id: str) -> int | None:
    with store.engine.connect() as conn:
        oldest = conn.execute(
            select(func.min(frames.c.capture_time_ns)).where(frames.c.camera_id == camera_id)
        ).scalar()
    return None if oldest is None else int(oldest)
