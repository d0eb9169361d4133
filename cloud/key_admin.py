"""What ``fchm cloud key create|list|revoke`` do, on the cloud's own database.

The settings come from the same places as ``fchm cloud serve`` (--config, FCHM_CLOUD_*,
--data-dir, --database-url), so the keys land where the running cloud reads them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from cloud.db_admin import open_cloud_engine
from cloud.store.api_keys import ApiKey, ApiKeyStore
from infra.settings_files import ConfigError


class KeyCommandError(Exception):
    """A key command that cannot be done; the message names why."""


def open_key_store(
    config: Path | None, data_dir: Path | None, database_url: str | None
) -> ApiKeyStore:
    try:
        return ApiKeyStore(open_cloud_engine(config, data_dir, database_url))
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0]
        raise KeyCommandError(f"database_url: cannot open the key table: {first}") from None


def expiry_ns(days: float | None) -> int | None:
    if days is None:
        return None
    if not days > 0:
        raise ValueError(f"--expires-days {days:g} must be more than 0")
    return time.time_ns() + int(days * 86_400 * 1e9)


def _time(ns: int | None) -> str:
    if ns is None:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_table(keys: list[ApiKey]) -> str:
    """One line per key, aligned; never the key itself (only its hash is stored)."""
    now = time.time_ns()
    rows = [("ID", "NAME", "SCOPES", "CAMERAS", "CREATED", "EXPIRES", "STATE")]
    rows += [
        (k.id, k.name, ",".join(k.scopes), ",".join(k.cameras) or "all",
         _time(k.created_ns), _time(k.expires_ns), k.state(now))
        for k in keys
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


# Everything a key command reports as "error: …" instead of a traceback.
KEY_ERRORS = (ConfigError, KeyCommandError, ValueError, LookupError, OSError)
