"""Enhancement requests and their answers: what an enhanced view waits for.

    POST /v1/views {kind: enhanced} ─► request(frame, budget) ─► row "requested"
    ingest (each live stream of the camera) ─► pending() ─► EnhancementRequest ─► mark_sent
    edge's Enhancement ─► answer(): payload blob first, then the row "stored"
                                    (or "unavailable" with the edge's reason)
    restore worker ─► get(id) until it is no longer "requested" (or its wait runs out)

In the database, not in memory: the API, the ingest replica holding the camera's stream
and the view worker may be three processes, and a request outlives any of them (a camera
offline now is sent its request when it reconnects).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from cloud.store.blobs import BlobStore
from cloud.store.records import EnhancementRecord, FrameRecord, enhancement_key
from cloud.store.schema import enhancements

PENDING_LIMIT = 1000


class EnhancementStore:
    def __init__(self, engine: Engine, blobs: BlobStore) -> None:
        self.engine, self.blobs = engine, blobs

    def request(self, frame: FrameRecord, byte_budget: int, now_ns: int) -> EnhancementRecord:
        """The request for this frame and budget: an existing one (stored: its payload is
        reused; unavailable: asked again, the edge may hold the frame now), else a new one."""
        assert frame.id is not None
        e = enhancements.c
        row = self._find(frame.id, byte_budget)
        if row is None:
            record = EnhancementRecord(
                id=str(uuid.uuid4()), frame_id=frame.id, camera_id=frame.camera_id,
                sequence=frame.sequence, byte_budget=byte_budget, status="requested",
                requested_ns=now_ns,
            )  # fmt: skip
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(enhancements).values(**record.__dict__))
                return record
            except IntegrityError:  # another API process asked for the same at once
                row = self._find(frame.id, byte_budget)
                assert row is not None
        if row.status == "unavailable":
            with self.engine.begin() as conn:
                conn.execute(
                    update(enhancements)
                    .where(e.id == row.id, e.status == "unavailable")
                    .values(status="requested", sent_ns=None, reason=None, requested_ns=now_ns)
                )
            return self.get(row.id) or row
        return row

    def get(self, request_id: str) -> EnhancementRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(enhancements).where(enhancements.c.id == request_id)).first()
        return None if row is None else EnhancementRecord(**row._mapping)

    def _find(self, frame_id: int, byte_budget: int) -> EnhancementRecord | None:
        e = enhancements.c
        with self.engine.connect() as conn:
            row = conn.execute(
                select(enhancements).where(e.frame_id == frame_id, e.byte_budget == byte_budget)
            ).first()
        return None if row is None else EnhancementRecord(**row._mapping)

    def pending(self) -> list[EnhancementRecord]:
        """Requests not answered yet, oldest first (ix_enhancements_status_camera)."""
        e = enhancements.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(enhancements)
                .where(e.status == "requested")
                .order_by(e.requested_ns)
                .limit(PENDING_LIMIT)
            ).all()
        return [EnhancementRecord(**r._mapping) for r in rows]

    def mark_sent(self, request_ids: Sequence[str], now_ns: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(enhancements)
                .where(enhancements.c.id.in_(request_ids))
                .values(sent_ns=now_ns)
            )

    def answer(
        self,
        request: EnhancementRecord,
        payload: bytes,
        unavailable: str,
        now_ns: int,
    ) -> bool:
        """Store the edge's answer; False when it was stored already (a replay: nothing
        changes). A payload goes to the blob store before the row that points at it."""
        e = enhancements.c
        if request.status == "stored":
            return False
        if unavailable:
            values: dict[str, object] = {"status": "unavailable", "reason": unavailable[:2000]}
        else:
            key = enhancement_key(request.id)
            self.blobs.put(key, payload)
            values = {"status": "stored", "blob_key": key, "num_bytes": len(payload)}
        with self.engine.begin() as conn:
            done = conn.execute(
                update(enhancements)
                .where(e.id == request.id, e.status != "stored")
                .values(finished_ns=now_ns, **values)
            ).rowcount
        return bool(done)

    def payload(self, record: EnhancementRecord) -> bytes:
        if record.blob_key is None:
            raise LookupError(f"enhancement {record.id} has no payload ({record.status})")
        return self.blobs.get(record.blob_key)
