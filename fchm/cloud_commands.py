"""``fchm cloud``: serve, camera tokens, REST API keys, database, retention."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fchm.cli_options import ConfigOpt, fail

if TYPE_CHECKING:
    from cloud.settings import CloudSettings

cloud_app = typer.Typer(help="The cloud service.", no_args_is_help=True)
key_app = typer.Typer(
    help="REST API keys, stored hashed in the cloud's database (cloud running or not).",
    no_args_is_help=True,
)
cloud_app.add_typer(key_app, name="key")
db_app = typer.Typer(
    help="The cloud's database schema (Alembic migrations; the cloud also applies them "
    "when it starts).",
    no_args_is_help=True,
)
cloud_app.add_typer(db_app, name="db")
retention_app = typer.Typer(
    help="Retention: frames older than retention_days (or retention_per_camera) deleted "
    "with their detections, views and blobs (the running cloud sweeps on its own).",
    no_args_is_help=True,
)
cloud_app.add_typer(retention_app, name="retention")


@cloud_app.command("serve")
def cloud_serve(
    config: ConfigOpt = None,
    bundle: Annotated[Path | None, typer.Option(help="Bundle directory")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy database URL")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC ingest port")] = None,
    http_port: Annotated[int | None, typer.Option(help="REST API port")] = None,
) -> None:
    """Run gRPC ingest, the detector tail, the REST API and view workers."""
    from cloud.server import serve

    _run_cloud(
        serve,
        config,
        bundle=bundle,
        data_dir=data_dir,
        database_url=database_url,
        grpc_port=grpc_port,
        http_port=http_port,
    )


def worker(
    config: ConfigOpt = None,
    bundle: Annotated[Path | None, typer.Option(help="Bundle directory")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy database URL")] = None,
    queue_url: Annotated[
        str | None, typer.Option(help="The shared view queue (redis://host:port/db)")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Restore workers in this process")] = None,
) -> None:
    """Render human views from the queue the cloud replicas share (CloudSettings:
    view_queue_url, database_url, blob_url, bundle)."""
    from cloud.view_worker import serve_view_workers

    _run_cloud(
        serve_view_workers,
        config,
        bundle=bundle,
        data_dir=data_dir,
        database_url=database_url,
        view_queue_url=queue_url,
        view_workers=workers,
    )


def _run_cloud(
    main: Callable[[CloudSettings], Coroutine[Any, Any, None]],
    config: Path | None,
    **overrides: Any,
) -> None:
    """CloudSettings from the file, the environment and ``overrides``, then ``main``."""
    from cloud.settings import CloudSettings
    from codec.bundle import BundleError
    from infra.settings_files import ConfigError, load_settings

    try:
        asyncio.run(main(load_settings(CloudSettings, config, **overrides)))
    except (ConfigError, BundleError, OSError, ValueError, RuntimeError) as exc:
        # A busy grpc_port/http_port, a missing database driver: one line naming the setting.
        raise fail(str(exc)) from None
    except KeyboardInterrupt:  # Ctrl-C while starting (once started, SIGINT stops cleanly)
        raise typer.Exit(130) from None


@cloud_app.command("token")
def cloud_token(
    camera: Annotated[str, typer.Option(help="Camera id the token is for")],
) -> None:
    """Print a new random token for a camera and the sha256 line for the cloud's config.

    The camera keeps the token (edge `token:` or FCHM_EDGE_TOKEN); the cloud stores
    only its hash under `camera_tokens:`. Run again to rotate a token.
    """
    from cloud.camera_auth import hash_token, new_token
    from codec.wire import CAMERA_ID

    if not CAMERA_ID.match(camera):
        raise fail(f"--camera: {camera!r} must match {CAMERA_ID.pattern}")
    token = new_token()
    typer.echo(f"# edge config of {camera} (or FCHM_EDGE_TOKEN); keep it secret")
    typer.echo(f"token: {token}")
    typer.echo("# cloud config: add under camera_tokens")
    typer.echo("camera_tokens:")
    typer.echo(f"  {camera}: {hash_token(token)}")


DataDirOpt = Annotated[Path | None, typer.Option(help="Data directory")]
DatabaseUrlOpt = Annotated[str | None, typer.Option(help="SQLAlchemy database URL")]


@key_app.command("create")
def key_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for")],
    scope: Annotated[
        list[str], typer.Option(help="read, view (implies read) or admin; repeatable")
    ],
    camera: Annotated[
        list[str] | None, typer.Option(help="Only this camera (repeatable; default: all)")
    ] = None,
    expires_days: Annotated[
        float | None, typer.Option(help="Expire after this many days (default: never)")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Create an API key; print the key (stdout, shown only now) and its id (stderr)."""
    from cloud.key_admin import KEY_ERRORS, expiry_ns, open_key_store

    try:
        keys = open_key_store(config, data_dir, database_url)
        record, key = keys.create(name, scope, camera or [], expiry_ns(expires_days))
    except KEY_ERRORS as exc:
        raise fail(str(exc)) from None
    typer.echo(
        f"created API key {record.id} ({record.name}; scope {', '.join(record.scopes)}; "
        f"cameras {', '.join(record.cameras) or 'all'}); the key is shown only now:",
        err=True,
    )
    typer.echo(key)


@key_app.command("list")
def key_list(
    config: ConfigOpt = None, data_dir: DataDirOpt = None, database_url: DatabaseUrlOpt = None
) -> None:
    """Every API key (never the key itself): id, name, scopes, cameras, times, state."""
    from cloud.key_admin import KEY_ERRORS, key_table, open_key_store

    try:
        typer.echo(key_table(open_key_store(config, data_dir, database_url).list()))
    except KEY_ERRORS as exc:
        raise fail(str(exc)) from None


@key_app.command("revoke")
def key_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (fchm cloud key list)")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Revoke a key: the next request that presents it is refused (401)."""
    from cloud.key_admin import KEY_ERRORS, open_key_store

    try:
        record = open_key_store(config, data_dir, database_url).revoke(key_id)
    except KEY_ERRORS as exc:
        raise fail(str(exc)) from None
    typer.echo(f"revoked API key {record.id} ({record.name})")


@db_app.command("current")
def db_current(
    config: ConfigOpt = None, data_dir: DataDirOpt = None, database_url: DatabaseUrlOpt = None
) -> None:
    """The database's schema revision and the newest this release knows."""
    _db_command("current", config, data_dir, database_url)


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOpt = None, data_dir: DataDirOpt = None, database_url: DatabaseUrlOpt = None
) -> None:
    """Migrate the database to this release's schema (safe while replicas run or start)."""
    _db_command("upgrade", config, data_dir, database_url)


def _db_command(
    name: str, config: Path | None, data_dir: Path | None, database_url: str | None
) -> None:
    from cloud.db_admin import DB_COMMANDS, DB_ERRORS, open_cloud_engine

    try:
        typer.echo(DB_COMMANDS[name](open_cloud_engine(config, data_dir, database_url)))
    except DB_ERRORS as exc:
        raise fail(str(exc)) from None


@retention_app.command("sweep")
def retention_sweep(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing")
    ] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Run one retention sweep now and print, per camera, what it deleted (or would)."""
    from cloud.db_admin import DB_ERRORS
    from cloud.retention_admin import sweep_command

    try:
        lines, ok = sweep_command(config, data_dir, database_url, dry_run)
    except DB_ERRORS as exc:
        raise fail(str(exc)) from None
    for line in lines:
        typer.echo(line)
    if not ok:
        raise typer.Exit(1)
