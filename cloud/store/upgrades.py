"""In-place schema upgrades for databases created by an older release.

``metadata.create_all`` creates missing tables but never adds a column to a table that
exists, so a column added to an existing table needs its own step here. Each step is
idempotent (it checks the live schema first) and safe when two replicas start at once.
This is a stop-gap: Alembic migrations replace it in a later issue.
"""

from __future__ import annotations

import logging

from sqlalchemy import inspect, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from cloud.store.schema import views

log = logging.getLogger(__name__)

VIEWS_ADDED_COLUMNS = {
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "width": "INTEGER",
    "height": "INTEGER",
}
"""Columns of ``schema.views`` that databases created before them lack, with their DDL."""


def upgrade_schema(engine: Engine) -> list[str]:
    """Add the columns a database lacks; return the ones added."""
    added = [name for name, ddl in VIEWS_ADDED_COLUMNS.items() if _add_column(engine, name, ddl)]
    if "attempts" in added:
        # A job running when the old process stopped was started once already.
        with engine.begin() as conn:
            conn.execute(update(views).where(views.c.status == "running").values(attempts=1))
    if added:
        log.info("database upgraded: added views columns %s", ", ".join(added))
    return added


def _columns(engine: Engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def _add_column(engine: Engine, name: str, ddl: str) -> bool:
    if name in _columns(engine, views.name):
        return False
    try:
        with engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE {views.name} ADD COLUMN {name} {ddl}"))
    except DBAPIError:
        if name in _columns(engine, views.name):
            return False  # another replica added it first
        raise
    return True
