"""On-demand enhancements: a table of requests sent down camera streams and the payloads
their edges answered with, and three view columns (the enhancement's budget, the request
an enhanced view waits for, why a view fell back to the machine bitstream alone).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

Id = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "enhancements",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("frame_id", Id, sa.ForeignKey("frames.id"), nullable=False),
        sa.Column("camera_id", sa.String(128), nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("byte_budget", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requested_ns", sa.BigInteger, nullable=False),
        sa.Column("sent_ns", sa.BigInteger),
        sa.Column("finished_ns", sa.BigInteger),
        sa.Column("reason", sa.Text),
        sa.Column("blob_key", sa.String(256)),
        sa.Column("num_bytes", sa.Integer),
        sa.UniqueConstraint("frame_id", "byte_budget", name="uq_enhancements_frame_budget"),
    )
    op.create_index("ix_enhancements_status_camera", "enhancements", ["status", "camera_id"])
    op.create_index("ix_enhancements_camera_finished", "enhancements", ["camera_id", "finished_ns"])
    with op.batch_alter_table("views") as batch:
        batch.add_column(sa.Column("enhancement_bytes", sa.Integer, nullable=True))
        batch.add_column(sa.Column("enhancement_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("fallback", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("views") as batch:
        batch.drop_column("fallback")
        batch.drop_column("enhancement_id")
        batch.drop_column("enhancement_bytes")
    op.drop_index("ix_enhancements_camera_finished", "enhancements")
    op.drop_index("ix_enhancements_status_camera", "enhancements")
    op.drop_table("enhancements")
