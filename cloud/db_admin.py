"""What ``fchm cloud db current|upgrade`` do, and the database the admin commands open.

The settings come from the same places as ``fchm cloud serve`` (--config, FCHM_CLOUD_*,
--data-dir, --database-url), so a command acts on the database the running cloud uses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from cloud.settings import CloudSettings
from cloud.store.frame_store import open_engine, safe_url
from cloud.store.migrations import current_revision, head_revision, migrate
from infra.settings_files import ConfigError, load_settings

DB_ERRORS = (ConfigError, ValueError, OSError, SQLAlchemyError)
"""What a db command reports as one line instead of a traceback."""


def open_cloud_engine(
    config: Path | None, data_dir: Path | None, database_url: str | None
) -> Engine:
    settings = load_settings(CloudSettings, config, data_dir=data_dir, database_url=database_url)
    if settings.database_url is None:  # the default SQLite file lives in data_dir
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return open_engine(settings.resolved_database_url())


def describe_revision(engine: Engine) -> str:
    current = current_revision(engine)
    state = "up to date" if current == head_revision() else "needs `fchm cloud db upgrade`"
    return (
        f"{safe_url(str(engine.url))}: revision {current or 'none'} (head {head_revision()}; "
        f"{state})"
    )


def upgrade(engine: Engine) -> str:
    before, after = migrate(engine)
    if before == after:
        return f"{safe_url(str(engine.url))}: already at {after}"
    return f"{safe_url(str(engine.url))}: {before or 'none'} → {after}"


DB_COMMANDS: dict[str, Callable[[Engine], str]] = {"current": describe_revision, "upgrade": upgrade}
"""``fchm cloud db <name>``: what each does, as the line it prints."""
