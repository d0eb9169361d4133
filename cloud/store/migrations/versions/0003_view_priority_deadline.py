"""View jobs get a priority (higher is served first) and an optional deadline (a job no
worker started by then fails instead of rendering late).

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


def downgrade() -> None:
    with op.batch_alter_table("views") as batch:
        batch.drop_column("deadline_ns")
        batch.drop_column("priority")
