"""Schema migrations (Alembic) for SQLite and PostgreSQL, run when the cloud opens its
database and by ``fchm cloud db upgrade``.

    FrameStore / ApiKeyStore / `fchm cloud db upgrade`
        ─► migrate(engine) ─► lock (PostgreSQL advisory lock │ SQLite: a lock file)
                          ─► alembic upgrade head on that connection ─► unlock

Replicas that start together serialise on the lock: the first migrates, the others find
the database at head. A database made before Alembic (no ``alembic_version`` table) is
brought to the baseline by ``0001``, which adds only what is missing.
New revision: add ``versions/NNNN_<what>.py`` (copy the newest one: its ``down_revision``
is the previous ``revision``); ``tests/integration/test_migrations.py`` checks that head
equals ``cloud/store/schema.py`` on both engines.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
# Any constant: the PostgreSQL advisory lock every fchm replica takes to migrate.
PG_LOCK_KEY = 0x46434D4D  # "FCMM"


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine, target: str = "head") -> tuple[str | None, str | None]:
    """Bring the database to ``target``; (revision before, revision after)."""
    with _migration_lock(engine) as conn:
        before = MigrationContext.configure(conn).get_current_revision()
        command.upgrade(alembic_config(conn), target)
        after = MigrationContext.configure(conn).get_current_revision()
        conn.commit()
    if before != after:
        log.info("database migrated: %s → %s", before or "empty", after)
    return before, after


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_KEY})
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
                conn.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        with engine.connect() as conn:  # one process owns it: nothing to race
            yield conn
        return
    # SQLite has no advisory lock; a lock file beside the database serialises processes.
    with open(f"{database}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
