"""Alembic's entry point: run the revisions on the connection ``migrate`` passes in."""

from __future__ import annotations

from alembic import context

from cloud.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `migrate` and the tests run Alembic
    raise RuntimeError("run migrations through cloud.store.migrations.migrate(engine)")
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things: Alembic's batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
