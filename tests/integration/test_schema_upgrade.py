"""A database made before views had attempts/width/height: opening it adds the columns,
once, and its stuck "running" job counts as started once (real SQLite file)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from cloud.metrics import CloudMetrics
from cloud.settings import CloudSettings
from cloud.store.frame_store import FrameStore
from cloud.store.schema import views
from cloud.store.upgrades import VIEWS_ADDED_COLUMNS, upgrade_schema
from cloud.view_queue import ViewQueue

# The views table as the previous release created it.
OLD_VIEWS = """
CREATE TABLE views (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    frame_id INTEGER NOT NULL,
    kind VARCHAR(32) NOT NULL,
    status VARCHAR(16) NOT NULL,
    created_ns BIGINT NOT NULL,
    started_ns BIGINT,
    finished_ns BIGINT,
    error TEXT,
    image_key VARCHAR(256)
)
"""


def test_an_old_views_table_gains_the_new_columns_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fchm.db'}"
    old = create_engine(url)
    with old.begin() as conn:
        conn.execute(text(OLD_VIEWS))
        for view_id, status in (("a", "running"), ("b", "queued"), ("c", "done")):
            conn.execute(
                text(
                    "INSERT INTO views (id, frame_id, kind, status, created_ns) "
                    "VALUES (:id, 1, 'preview', :status, 1)"
                ),
                {"id": view_id, "status": status},
            )
    old.dispose()

    store = FrameStore.open(url, tmp_path / "blobs")
    columns = {c["name"] for c in inspect(store.engine).get_columns("views")}
    assert set(VIEWS_ADDED_COLUMNS) <= set(views.c.keys())
    assert columns == set(views.c.keys())
    attempts = {v.id: v.attempts for v in store.unfinished_views()}
    assert attempts == {"a": 1, "b": 0}  # the stuck job had been started once
    # Idempotent: a second open (or a second replica) changes nothing.
    assert upgrade_schema(store.engine) == []
    again = FrameStore.open(url, tmp_path / "blobs")
    assert {v.id: v.attempts for v in again.unfinished_views()} == attempts

    # With one attempt allowed, the job an old release kept crash-looping on is given up.
    settings = CloudSettings(data_dir=tmp_path, view_max_attempts=1)
    queue = ViewQueue(again, settings, CloudMetrics())
    assert queue.depth() == 1
    stuck = again.get_view("a")
    assert stuck is not None and stuck.status == "failed"
    assert "rendering this view 1 time " in (stuck.error or "")
