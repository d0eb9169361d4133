"""The edge's durable spool: every encoded frame waits here until the cloud acks it.

    encode loop ─► append() ─► SQLite (WAL, synchronous=FULL) ─► pending() ─► uplink
                                   ▲                                           │
                                   └──────────── ack() deletes ◄── cloud Ack ◄─┘

- Durable on return: an appended frame survives a SIGKILL or a power cut.
- Ordered: sequences are assigned here, strictly increasing; replays go oldest first.
- Bounded: beyond ``max_bytes`` the oldest frames are dropped, and so are frames older
  than ``max_age_s``. Each drop is counted and reported through ``on_drop``.
- A fresh spool starts its sequence at the wall clock in microseconds. A reinstalled
  edge then never reuses a sequence the cloud already stored for this camera, which
  would otherwise be silently treated as a duplicate.
- Resumable: it remembers the last source position it spooled, so a restarted agent
  skips frames of a recorded file that it already has.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DropHook = Callable[[str, int], None]
"""(reason, frames) — reason is spool_full, spool_age or rejected."""


MAX_ENHANCEMENTS = 256
"""Unacknowledged enhancements kept; beyond, the oldest go (their views fall back)."""


@dataclass(frozen=True)
class SpooledEnhancement:
    """The answer to one EnhancementRequest, owed to the cloud until it acks."""

    request_id: str
    sequence: int
    payload: bytes
    unavailable: str
    """non-empty: no payload, and why (the frame left the retention buffer, …)"""


@dataclass(frozen=True)
class SpooledFrame:
    sequence: int
    capture_time_ns: int
    rate_level: int
    bitstream: bytes


class Spool:
    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        max_age_s: float,
        on_drop: DropHook | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "spool.db"
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self.on_drop = on_drop
        # Appends and acks come from different threads; one connection, one lock
        # (re-entrant so the uplink can read the spool while holding ``changed``).
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        """Notified on every append and ack; the uplink waits on it."""
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS frames (
                sequence INTEGER PRIMARY KEY,
                capture_time_ns INTEGER NOT NULL,
                rate_level INTEGER NOT NULL,
                spooled_ns INTEGER NOT NULL,
                size INTEGER NOT NULL,
                bitstream BLOB NOT NULL
            );
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS enhancements (
                request_id TEXT PRIMARY KEY,
                sequence INTEGER NOT NULL,
                spooled_ns INTEGER NOT NULL,
                unavailable TEXT NOT NULL,
                payload BLOB NOT NULL
            );
            """
        )
        self._next = int(self._meta("next_sequence") or time.time_ns() // 1000)
        self._frames, self._bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM frames"
        ).fetchone()
        # Counted, so the uplink's loop (every append and ack) reads no table while none wait.
        self._enhancements = int(
            self._db.execute("SELECT count(*) FROM enhancements").fetchone()[0]
        )

    # ── state ────────────────────────────────────────────────────────────────
    @property
    def frames(self) -> int:
        return int(self._frames)

    @property
    def size_bytes(self) -> int:
        return int(self._bytes)

    @property
    def next_sequence(self) -> int:
        return self._next

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def advance_to(self, sequence: int) -> None:
        """Make the next sequence at least ``sequence`` (durably)."""
        with self._lock:
            if sequence <= self._next:
                return
            self._set_meta("next_sequence", str(sequence))
            self._next = sequence

    def resume_position(self, source: str) -> int | None:
        """Index of the last frame of ``source`` already spooled (recorded sources only)."""
        with self._lock:
            if self._meta("source") != source:
                return None
            value = self._meta("source_index")
        return None if value is None else int(value)

    # ── producer ─────────────────────────────────────────────────────────────
    def append(
        self,
        capture_time_ns: int,
        rate_level: int,
        bitstream: bytes,
        source: str | None = None,
        source_index: int | None = None,
    ) -> int:
        """Store a frame durably and return its sequence."""
        now = time.time_ns()
        with self.changed:
            sequence = self._next
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO frames VALUES (?, ?, ?, ?, ?, ?)",
                    (sequence, capture_time_ns, rate_level, now, len(bitstream), bitstream),
                )
                self._set_meta("next_sequence", str(sequence + 1))
                if source is not None and source_index is not None:
                    self._set_meta("source", source)
                    self._set_meta("source_index", str(source_index))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._next = sequence + 1
            self._frames += 1
            self._bytes += len(bitstream)
            self._enforce_bounds(now)
            self.changed.notify_all()
        return sequence

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _enforce_bounds(self, now_ns: int) -> None:
        cutoff = now_ns - int(self.max_age_s * 1e9)
        # Frames are appended in time order: the oldest row (by primary key) says
        # whether anything expired, so the full scan below runs only when it did.
        oldest = self._db.execute(
            "SELECT spooled_ns FROM frames ORDER BY sequence LIMIT 1"
        ).fetchone()
        if oldest is not None and oldest[0] < cutoff:
            old = self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM frames WHERE spooled_ns < ?",
                (cutoff,),
            ).fetchone()
            self._db.execute("DELETE FROM frames WHERE spooled_ns < ?", (cutoff,))
            self._dropped("spool_age", int(old[0]), int(old[1]))
        while self._bytes > self.max_bytes and self._frames > 1:
            # Drop oldest first, in batches, never the frame just written.
            rows = self._db.execute(
                "SELECT sequence, size FROM frames ORDER BY sequence LIMIT 64"
            ).fetchall()
            excess, victims, freed = self._bytes - self.max_bytes, [], 0
            for sequence, size in rows[: self._frames - 1]:
                victims.append(sequence)
                freed += size
                if freed >= excess:
                    break
            self._db.execute(
                f"DELETE FROM frames WHERE sequence IN ({','.join('?' * len(victims))})", victims
            )
            self._dropped("spool_full", len(victims), freed)

    def _dropped(self, reason: str, frames: int, size: int) -> None:
        self._frames -= frames
        self._bytes -= size
        log.warning("spool dropped %d frames (%s, %d bytes)", frames, reason, size)
        if self.on_drop is not None:
            self.on_drop(reason, frames)

    # ── consumer ─────────────────────────────────────────────────────────────
    def pending(self, after: int | None, limit: int) -> list[SpooledFrame]:
        """Unacknowledged frames with sequence > ``after``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sequence, capture_time_ns, rate_level, bitstream FROM frames "
                "WHERE sequence > ? ORDER BY sequence LIMIT ?",
                (-1 if after is None else after, limit),
            ).fetchall()
        return [SpooledFrame(int(s), int(t), int(r), bytes(b)) for s, t, r, b in rows]

    def ack(self, sequence: int) -> bool:
        """The cloud has it: forget the frame. False if it was already gone."""
        return self._remove(sequence, None)

    def reject(self, sequence: int, reason: str) -> bool:
        """The cloud refused the frame for good (malformed): drop it, loudly."""
        log.error("cloud rejected frame %d: %s; dropping it from the spool", sequence, reason)
        return self._remove(sequence, "rejected")

    def reject_dependents(self, sequence: int, is_keyframe: Callable[[bytes], bool]) -> int:
        """After ``sequence`` was refused: drop the frames after it up to the next keyframe.

        They are P-frames predicted (through one another) from the refused frame, which
        the cloud never stored, so it could not decode them: sending them would only get
        each refused in turn. Returns how many were dropped (reason "rejected")."""
        dropped = 0
        with self.changed:
            after = sequence
            while True:
                rows = self._db.execute(
                    "SELECT sequence, size, bitstream FROM frames WHERE sequence > ? "
                    "ORDER BY sequence LIMIT 64",
                    (after,),
                ).fetchall()
                victims = []
                for seq, size, data in rows:
                    if is_keyframe(bytes(data)):
                        break
                    victims.append((int(seq), int(size)))
                if victims:
                    marks = ",".join("?" * len(victims))
                    self._db.execute(
                        f"DELETE FROM frames WHERE sequence IN ({marks})", [v for v, _ in victims]
                    )
                    self._dropped("rejected", len(victims), sum(n for _, n in victims))
                    dropped += len(victims)
                if len(victims) < len(rows) or len(rows) < 64:
                    break
                after = victims[-1][0]
            self.changed.notify_all()
        return dropped

    def _remove(self, sequence: int, drop_reason: str | None) -> bool:
        with self.changed:
            row = self._db.execute(
                "SELECT size FROM frames WHERE sequence = ?", (sequence,)
            ).fetchone()
            if row is None:
                return False
            self._db.execute("DELETE FROM frames WHERE sequence = ?", (sequence,))
            self._frames -= 1
            self._bytes -= int(row[0])
            if drop_reason is not None and self.on_drop is not None:
                self.on_drop(drop_reason, 1)
            self.changed.notify_all()
        return True

    # ── enhancements (edge/enhancements.py): durable like frames, few and on demand ──
    def append_enhancement(self, enhancement: SpooledEnhancement) -> bool:
        """Store an answer durably; False when this request was answered already."""
        e = enhancement
        with self.changed:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO enhancements VALUES (?, ?, ?, ?, ?)",
                (e.request_id, e.sequence, time.time_ns(), e.unavailable, e.payload),
            )
            stored = bool(cursor.rowcount)
            if stored:
                evicted = self._db.execute(
                    "DELETE FROM enhancements WHERE request_id IN (SELECT request_id FROM "
                    "enhancements ORDER BY spooled_ns DESC LIMIT -1 OFFSET ?)",
                    (MAX_ENHANCEMENTS,),
                ).rowcount
                self._enhancements += 1 - evicted
            self.changed.notify_all()
        return stored

    def has_enhancement(self, request_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM enhancements WHERE request_id = ?", (request_id,)
            ).fetchone()
        return row is not None

    def pending_enhancements(self, exclude: set[str], limit: int) -> list[SpooledEnhancement]:
        """Unacknowledged answers not in ``exclude`` (in flight), oldest first."""
        with self._lock:
            if not self._enhancements:
                return []  # no query: the uplink asks on every append and ack
            marks = ",".join("?" * len(exclude))
            rows = self._db.execute(
                "SELECT request_id, sequence, payload, unavailable FROM enhancements "
                f"WHERE request_id NOT IN ({marks}) ORDER BY spooled_ns LIMIT ?",
                (*exclude, limit),
            ).fetchall()
        return [SpooledEnhancement(r, int(q), bytes(p), u) for r, q, p, u in rows]

    def ack_enhancement(self, request_id: str) -> bool:
        with self.changed:
            acked = bool(
                self._db.execute(
                    "DELETE FROM enhancements WHERE request_id = ?", (request_id,)
                ).rowcount
            )
            self._enhancements -= acked
            self.changed.notify_all()
        return acked

    def wait_empty(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while self._frames:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def close(self) -> None:
        with self._lock:
            self._db.close()
