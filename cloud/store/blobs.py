"""Blob directory: frame bitstreams and rendered views, one file per key.

A put is durable when it returns: write a unique temp file, fsync, rename, and fsync
every directory it created or changed. Rewriting a key with the same bytes is
harmless (idempotent replays), even from two writers at once.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from infra.atomic_file import fsync_dir, write_atomically


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
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
