"""Durable state: the relational database (SQLite or PostgreSQL) and the blob store."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud.settings import CloudSettings
    from cloud.store.frame_store import FrameStore


def open_store(s: CloudSettings) -> FrameStore:
    """The database and blob store a cloud process's settings name (``data_dir`` made if
    missing; an S3 bucket is checked reachable now, not at the first frame)."""
    # Imported here: every module of this package imports this file first.
    from cloud.store.blobs import open_blob_store
    from cloud.store.frame_store import FrameStore

    s.data_dir.mkdir(parents=True, exist_ok=True)
    blobs = open_blob_store(
        s.blob_url, s.data_dir / "blobs", endpoint_url=s.s3_endpoint_url, region=s.s3_region
    )
    return FrameStore.open(s.resolved_database_url(), blobs)
