"""View jobs get a priority (higher is served first), an optional deadline (a job no
worker started by then fails instead of rendering late), and a lease: the worker rendering
a job and until when it holds it (renewed while it renders; a job whose lease ran out is
re-queued by another process, so a killed worker loses no job).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    # Batch mode: SQLite rebuilds the table (env.py turns it on for SQLite only).
    with op.batch_alter_table("views") as batch:
        batch.add_column(sa.Column("priority", sa.Integer, nullable=False, server_default="5"))
        batch.add_column(sa.Column("deadline_ns", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("worker", sa.String(128), nullable=True))
        batch.add_column(sa.Column("lease_until_ns", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("views") as batch:
        batch.drop_column("lease_until_ns")
        batch.drop_column("worker")
        batch.drop_column("deadline_ns")
        batch.drop_column("priority")
