"""Indexes for the query shapes of /v1 filters, view listings and retention:
detections by camera and label over time, views by frame (retention deletes them with
their frame) and views newest first.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"

INDEXES = {
    "ix_detections_camera_label_time": (
        "detections",
        ["camera_id", "label", "capture_time_ns", "id"],
    ),
    "ix_views_frame": ("views", ["frame_id"]),
    "ix_views_created": ("views", ["created_ns", "id"]),
}


def upgrade() -> None:
    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, (table, _) in INDEXES.items():
        op.drop_index(name, table_name=table)
