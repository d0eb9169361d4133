"""Baseline: the schema of the last release before Alembic.

A database that release made has these tables already (maybe with a views table that
lacks attempts/width/height, from before them): only what is missing is created or
added, so upgrading it keeps every row. A new database gets everything.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import SchemaItem

revision = "0001"
down_revision = None

# Frozen here: later schema changes are later revisions, never edits of this one.
Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")
VIEWS_LATER_COLUMNS = ("attempts", "width", "height")


def _tables() -> dict[str, tuple[list[SchemaItem], list[tuple[str, list[str]]]]]:
    """Each table: its columns and constraints, and its indexes (name, columns)."""
    return {
        "cameras": (
            [
                sa.Column("camera_id", sa.String(128), primary_key=True),
                sa.Column("bundle_hash", sa.String(64), nullable=False),
                sa.Column("first_seen_ns", sa.BigInteger, nullable=False),
                sa.Column("last_seen_ns", sa.BigInteger, nullable=False),
                sa.Column("clock_offset_ns", sa.BigInteger, nullable=False),
                sa.Column("agent_version", sa.String(64), nullable=False),
            ],
            [],
        ),
        "frames": (
            [
                sa.Column("id", Id, primary_key=True, autoincrement=True),
                sa.Column(
                    "camera_id", sa.String(128), sa.ForeignKey("cameras.camera_id"), nullable=False
                ),
                sa.Column("sequence", sa.BigInteger, nullable=False),
                sa.Column("capture_time_ns", sa.BigInteger, nullable=False),
                sa.Column("received_time_ns", sa.BigInteger, nullable=False),
                sa.Column("rate_level", sa.Integer, nullable=False),
                sa.Column("num_bytes", sa.Integer, nullable=False),
                sa.Column("crc32", sa.BigInteger, nullable=False),
                sa.Column("image_width", sa.Integer, nullable=False),
                sa.Column("image_height", sa.Integer, nullable=False),
                sa.Column("num_detections", sa.Integer, nullable=False),
                sa.Column("bitstream_key", sa.String(256), nullable=False),
                sa.UniqueConstraint("camera_id", "sequence", name="uq_frames_camera_sequence"),
            ],
            [("ix_frames_camera_time", ["camera_id", "capture_time_ns", "id"])],
        ),
        "detections": (
            [
                sa.Column("id", Id, primary_key=True, autoincrement=True),
                sa.Column("frame_id", Id, sa.ForeignKey("frames.id"), nullable=False),
                sa.Column("camera_id", sa.String(128), nullable=False),
                sa.Column("capture_time_ns", sa.BigInteger, nullable=False),
                sa.Column("class_id", sa.Integer, nullable=False),
                sa.Column("label", sa.String(128), nullable=False),
                sa.Column("score", sa.Float, nullable=False),
                sa.Column("x1", sa.Float, nullable=False),
                sa.Column("y1", sa.Float, nullable=False),
                sa.Column("x2", sa.Float, nullable=False),
                sa.Column("y2", sa.Float, nullable=False),
            ],
            [
                ("ix_detections_time", ["capture_time_ns", "id"]),
                ("ix_detections_camera_time", ["camera_id", "capture_time_ns", "id"]),
                ("ix_detections_label_time", ["label", "capture_time_ns", "id"]),
                ("ix_detections_frame", ["frame_id"]),
            ],
        ),
        "views": (
            [
                sa.Column("id", sa.String(36), primary_key=True),
                sa.Column("frame_id", Id, sa.ForeignKey("frames.id"), nullable=False),
                sa.Column("kind", sa.String(32), nullable=False),
                sa.Column("status", sa.String(16), nullable=False),
                sa.Column("created_ns", sa.BigInteger, nullable=False),
                sa.Column("started_ns", sa.BigInteger),
                sa.Column("finished_ns", sa.BigInteger),
                sa.Column("error", sa.Text),
                sa.Column("image_key", sa.String(256)),
                sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
                sa.Column("width", sa.Integer),
                sa.Column("height", sa.Integer),
            ],
            [("ix_views_status", ["status", "created_ns"])],
        ),
        "api_keys": (
            [
                sa.Column("id", sa.String(32), primary_key=True),
                sa.Column("name", sa.String(128), nullable=False),
                sa.Column("key_sha256", sa.String(64), nullable=False),
                sa.Column("scopes", sa.JSON, nullable=False),
                sa.Column("cameras", sa.JSON, nullable=False),
                sa.Column("created_ns", sa.BigInteger, nullable=False),
                sa.Column("expires_ns", sa.BigInteger),
                sa.Column("revoked_ns", sa.BigInteger),
            ],
            [],
        ),
    }


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    for name, (items, indexes) in _tables().items():
        if name not in existing:
            op.create_table(name, *items)
            for index, columns in indexes:
                op.create_index(index, name, columns)
            continue
        if name == "views":
            _add_later_views_columns(inspector, items)
        have = {ix["name"] for ix in inspector.get_indexes(name)}
        for index, columns in indexes:
            if index not in have:
                op.create_index(index, name, columns)


def _add_later_views_columns(inspector: sa.Inspector, items: list[SchemaItem]) -> None:
    have = {c["name"] for c in inspector.get_columns("views")}
    missing = [c for c in items if isinstance(c, sa.Column) and c.name not in have]
    for column in missing:
        op.add_column("views", column)
    if any(c.name == "attempts" for c in missing):
        # A job running when the old process stopped had been started once already.
        op.execute("UPDATE views SET attempts = 1 WHERE status = 'running'")


def downgrade() -> None:
    for name in reversed(list(_tables())):
        op.drop_table(name)
