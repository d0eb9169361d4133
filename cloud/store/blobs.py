"""Blob stores: frame bitstreams and rendered views, one object per key.

    FrameStore / RestoreWorker ─► BlobStore ─┬─► LocalBlobStore: <data_dir>/blobs/<key>
                                             └─► S3BlobStore:    s3://bucket/prefix/<key>

Every store keeps the same contract: a put is durable when it returns, rewriting a key
with the same bytes is harmless (idempotent replays, even from two writers at once),
get of a missing key raises FileNotFoundError, delete of a missing key is fine.

The local store writes a unique temp file, fsyncs, renames, and fsyncs every directory
it created or changed.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from infra.atomic_file import fsync_dir, write_atomically

# S3's bucket naming rules (lowercase, digits, dots, hyphens; 3-63 characters).
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class BlobStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...


def check_key(key: str) -> str:
    """A key is a relative path of plain segments, so it means the same in every store
    and none reaches outside its directory or prefix."""
    segments = key.split("/")
    if any(s in ("", ".", "..") for s in segments) or "\\" in key or "\0" in key:
        raise ValueError(
            f"blob key {key!r} escapes the store: keys are relative paths of plain "
            "segments (no leading '/', no '.', '..' or empty segments, no backslash)"
        )
    return key


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root.resolve() not in path.parents:  # a symlink inside the root
            raise ValueError(f"blob key {key!r} escapes the store")
        return path

    def _make_dirs(self, directory: Path) -> None:
        # Create missing parents one by one and fsync each parent, so a new camera's
        # directory survives a power cut along with its first acknowledged frame.
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                d.mkdir()
            fsync_dir(d.parent)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self._make_dirs(path.parent)
        # Two ingests of one replayed frame may overlap: unique temp names, same result.
        write_atomically(path, data, durable_dir=True)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def delete(self, key: str) -> None:
        """Remove a blob nothing references (a lost ingest race); missing is fine."""
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


@dataclass(frozen=True)
class S3Url:
    """``s3://bucket/prefix``: blobs as objects ``<prefix>/<key>`` in one bucket."""

    bucket: str
    prefix: str  # "" or "a/b/": prepended to every key

    @classmethod
    def parse(cls, url: str, field: str = "blob_url") -> S3Url:
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise ValueError(
                f"{field} {url!r}: expected s3://bucket/prefix (none: a directory under data_dir)"
            )
        if "@" in parts.netloc:  # do not echo what may be a secret
            raise ValueError(
                f"{field}: no credentials in the URL; boto3 reads them from "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws or the instance role"
            )
        if not BUCKET.match(parts.netloc):
            raise ValueError(
                f"{field} {url!r}: bucket {parts.netloc!r} is not an S3 bucket name "
                "(3-63 lowercase letters, digits, '.' and '-')"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"{field} {url!r}: takes no query or fragment")
        prefix = parts.path.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except ValueError:
                raise ValueError(
                    f"{field} {url!r}: prefix {prefix!r} must be plain segments "
                    "(no '.', '..' or empty segments)"
                ) from None
            prefix += "/"
        return cls(parts.netloc, prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def check_blob_url(url: str | None) -> str | None:
    """A settings validator: None, or a URL S3Url.parse takes."""
    if url is not None:
        S3Url.parse(url)
    return url


def check_endpoint_url(url: str | None) -> str | None:
    """A settings validator: None, or http(s)://host[:port] of an S3-compatible server."""
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"s3_endpoint_url {url!r}: expected http(s)://host[:port], e.g. "
                "http://127.0.0.1:9000 for MinIO"
            )
    return url


def open_blob_store(
    blob_url: str | None,
    local_root: Path,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> BlobStore:
    """The store ``blob_url`` names (None: the directory ``local_root``), checked reachable.

    Raises OSError naming the bucket and endpoint when an S3 bucket cannot be used.
    """
    if blob_url is None:
        if endpoint_url is not None or region is not None:  # else blobs go to disk silently
            raise ValueError(
                "s3_endpoint_url and s3_region are for an S3 blob_url, which is not set: "
                "set blob_url to s3://bucket/prefix, or unset them"
            )
        return LocalBlobStore(local_root)
    url = S3Url.parse(blob_url)
    try:
        from cloud.store.s3_blobs import S3BlobStore
    except ImportError as exc:
        raise ValueError(
            f"blob_url {blob_url!r} needs the Python package {exc.name!r}; install the "
            "extra: pip install 'fchm[cloud]'"
        ) from None
    store = S3BlobStore(url.bucket, url.prefix, endpoint_url=endpoint_url, region=region)
    store.check()
    return store
