"""Alembic migrations on real SQLite files and a real PostgreSQL server: head is exactly
cloud/store/schema.py, an old database keeps its rows, replicas that start together
migrate once, and the CLI reports and applies revisions."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

from cloud.store.frame_store import FrameStore, open_engine
from cloud.store.migrations import alembic_config, current_revision, head_revision, migrate
from cloud.store.schema import metadata
from fchm.cli import app


def _schema_diff(url: str) -> list[object]:
    engine = open_engine(url)
    try:
        migrate(engine)
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))
    finally:
        engine.dispose()


def test_head_is_the_declared_schema_on_sqlite(tmp_path: Path) -> None:
    assert _schema_diff(f"sqlite:///{tmp_path / 'fchm.db'}") == []


def test_head_is_the_declared_schema_on_postgresql(postgres_url: str) -> None:
    assert _schema_diff(postgres_url) == []


def test_every_revision_downgrades_and_upgrades_again(postgres_url: str) -> None:
    engine = open_engine(postgres_url)
    migrate(engine)
    with engine.connect() as conn:
        command.downgrade(alembic_config(conn), "base")
        conn.commit()
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    assert migrate(engine) == (None, head_revision())
    engine.dispose()


# What the last release before Alembic made: cameras, frames and a views table from
# before attempts/width/height, with a few rows, and no alembic_version table.
PRE_ALEMBIC = """
CREATE TABLE cameras (
    camera_id VARCHAR(128) NOT NULL PRIMARY KEY, bundle_hash VARCHAR(64) NOT NULL,
    first_seen_ns BIGINT NOT NULL, last_seen_ns BIGINT NOT NULL,
    clock_offset_ns BIGINT NOT NULL, agent_version VARCHAR(64) NOT NULL);
CREATE TABLE frames (
    id INTEGER NOT NULL PRIMARY KEY,
    camera_id VARCHAR(128) NOT NULL REFERENCES cameras (camera_id),
    sequence BIGINT NOT NULL, capture_time_ns BIGINT NOT NULL, received_time_ns BIGINT NOT NULL,
    rate_level INTEGER NOT NULL, num_bytes INTEGER NOT NULL, crc32 BIGINT NOT NULL,
    image_width INTEGER NOT NULL, image_height INTEGER NOT NULL,
    num_detections INTEGER NOT NULL, bitstream_key VARCHAR(256) NOT NULL,
    CONSTRAINT uq_frames_camera_sequence UNIQUE (camera_id, sequence));
CREATE INDEX ix_frames_camera_time ON frames (camera_id, capture_time_ns, id);
CREATE TABLE views (
    id VARCHAR(36) NOT NULL PRIMARY KEY, frame_id INTEGER NOT NULL REFERENCES frames (id),
    kind VARCHAR(32) NOT NULL, status VARCHAR(16) NOT NULL, created_ns BIGINT NOT NULL,
    started_ns BIGINT, finished_ns BIGINT, error TEXT, image_key VARCHAR(256));
INSERT INTO cameras VALUES ('cam-a', 'h', 1, 1, 0, '');
INSERT INTO frames VALUES (1, 'cam-a', 7, 10, 10, 3, 100, 5, 64, 48, 0, 'k');
INSERT INTO views (id, frame_id, kind, status, created_ns) VALUES
    ('a', 1, 'preview', 'running', 1), ('b', 1, 'preview', 'queued', 2),
    ('c', 1, 'preview', 'done', 3)
"""


def test_a_database_from_before_alembic_is_upgraded_keeping_its_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fchm.db'}"
    old = create_engine(url)
    with old.begin() as conn:
        for statement in PRE_ALEMBIC.split(";"):
            conn.execute(text(statement))
    old.dispose()

    store = FrameStore.open(url, tmp_path / "blobs")
    assert current_revision(store.engine) == head_revision()
    frame = store.find_frame("cam-a", 7)
    assert frame is not None and frame.num_bytes == 100
    # The job running when the old process stopped counts as started once.
    assert {v.id: v.attempts for v in store.unfinished_views()} == {"a": 1, "b": 0}
    with store.engine.connect() as conn:
        assert list(compare_metadata(MigrationContext.configure(conn), metadata)) == []
    # Opening it again (another replica, a restart) changes nothing.
    assert migrate(store.engine) == (head_revision(), head_revision())


@pytest.mark.parametrize("engine_kind", ["sqlite", "postgresql"])
def test_replicas_starting_together_migrate_once(
    engine_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if engine_kind == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'fchm.db'}"
    results: list[tuple[str | None, str | None]] = []
    errors: list[BaseException] = []

    def start() -> None:
        engine = open_engine(url)  # each replica has its own engine and connections
        try:
            results.append(migrate(engine))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    head = head_revision()
    assert sorted(results, key=str) == sorted([(None, head)] + [(head, head)] * 3, key=str)


def test_the_cli_shows_and_applies_revisions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fchm.db'}"
    runner = CliRunner()
    shown = runner.invoke(app, ["cloud", "db", "current", "--database-url", url])
    assert shown.exit_code == 0, shown.output
    assert "none" in shown.output and f"head {head_revision()}" in shown.output
    applied = runner.invoke(app, ["cloud", "db", "upgrade", "--database-url", url])
    assert applied.exit_code == 0, applied.output
    assert f"→ {head_revision()}" in applied.output
    assert current_revision(open_engine(url)) == head_revision()
