"""The registry of what the corpus is made of, and how each source yields its images.

    SOURCES: (package, pinned version, pinned sha256 of the fetched artifact, kind)
        deb        apt-get download PKG=VERSION ─► dpkg-deb -x ─► select(root)
        sdist      pip download --no-binary :all: PKG==VERSION ─► tar members ─► select
        installed  images inside the installed Python packages (what trained before)

Each ``select`` yields ``Item``s: encoded image bytes (the package's own encoding, never
re-encoded; video frames become PNG) and the path inside the package.
"""

from __future__ import annotations

import importlib.metadata
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from model.corpus.photos import in_photo_activity, is_photo, photo_stats
from model.corpus.rcc import read_rcc_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".pgm", ".ppm")
KIVY_FPS = 2.0
"""Frames a second taken from Kivy's city video (consecutive frames are near copies)."""


@dataclass(frozen=True)
class Item:
    source: str
    """Path inside the package (``x.rcc:/inner`` in a resource file, ``v.mpg#t=1.5``)."""
    data: bytes
    suffix: str
    licence_path: str = ""
    """The path in the package's source tree that its copyright file names (DEP-5)."""


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    kind: Literal["deb", "sdist", "installed"]
    sha256: str
    """Of the fetched .deb or sdist (empty for installed packages)."""
    select: Callable[[Path], Iterator[Item]]
    licence: str = ""
    """Fixed licence (sdists, installed packages); Debian packages read their copyright."""


def _files(root: Path, under: str, pattern: str = "*") -> list[Path]:
    return sorted(p for p in (root / under).rglob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES)


def _item(root: Path, path: Path, licence_path: str = "") -> Item:
    rel = str(path.relative_to(root))
    return Item(rel, path.read_bytes(), path.suffix.lower(), licence_path or rel)


def select_gcompris(root: Path) -> Iterator[Item]:
    """Photos inside the activities' .rcc files (model/corpus/photos.py says which)."""
    for rcc in sorted((root / "usr/share/gcompris-qt/rcc").glob("*.rcc")):
        for entry in read_rcc_file(rcc):
            if not in_photo_activity(entry.path):
                continue
            image = cv2.imdecode(np.frombuffer(entry.data, np.uint8), cv2.IMREAD_UNCHANGED)
            if image is None or not is_photo(photo_stats(image)):
                continue
            source_path = entry.path.split("/", 1)[1]  # "gcompris/src/…" → "src/…"
            yield Item(f"{rcc.relative_to(root)}:/{entry.path}", entry.data,
                       Path(entry.path).suffix.lower(), source_path)  # fmt: skip


# Not camera frames: depth maps, warped copies of one painting, raw Bayer mosaics.
_VISP_SKIP = re.compile(r"/(Depth|warp|Bayer)/")


def select_visp(root: Path) -> Iterator[Item]:
    base = "usr/share/visp-images-data/ViSP-images"
    for path in _files(root, base):
        rel = str(path.relative_to(root / base))
        if not _VISP_SKIP.search("/" + rel):
            yield _item(root, path, rel)


def select_lomiri(root: Path) -> Iterator[Item]:
    for path in _files(root, "usr/share/backgrounds"):
        if path.name != "warty-final-ubuntu.png":  # Ubuntu's logo drawing, not a photo
            yield _item(root, path)


def select_plasma(root: Path) -> Iterator[Item]:
    """The largest rendering of each wallpaper (light and dark), not its screenshot."""
    for images in sorted((root / "usr/share/wallpapers").glob("*/contents/images*")):
        sizes = [(int(m[1]) * int(m[2]), p) for p in _files(images, ".")
                 if (m := re.fullmatch(r"(\d+)x(\d+)", p.stem))]  # fmt: skip
        if sizes:
            path = max(sizes)[1]
            yield _item(root, path, str(path.relative_to(root / "usr/share/wallpapers")))


KIVY_PICTURES = "examples/demo/pictures/images/"
KIVY_VIDEO = "examples/widgets/cityCC0.mpg"


def select_kivy(sdist: Path) -> Iterator[Item]:
    """The demo's pictures and the city video at KIVY_FPS (only these members are read)."""
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            name = member.name.split("/", 1)[1] if "/" in member.name else member.name
            f = tar.extractfile(member) if member.isfile() else None
            if f is None:
                continue
            if name.startswith(KIVY_PICTURES) and name.lower().endswith(IMAGE_SUFFIXES):
                yield Item(name, f.read(), Path(name).suffix.lower(), name)
            elif name == KIVY_VIDEO:
                yield from video_frames(f.read(), name, KIVY_FPS)


def video_frames(video: bytes, name: str, fps: float) -> Iterator[Item]:
    """The frames a camera at ``fps`` would send (the edge's own thinning, by the file's
    timestamps: edge/sources.py), each as PNG."""
    from edge.sources import open_source

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        path.write_bytes(video)
        for frame in open_source(str(path), max_fps=fps, reconnect=False):
            ok, png = cv2.imencode(".png", frame.image)
            if ok:
                t = frame.media_time_s or 0.0
                yield Item(f"{name}#t={t:.2f}", png.tobytes(), ".png", name)


def _installed(
    distribution: str, paths: Callable[[], list[Path]]
) -> Callable[[Path], Iterator[Item]]:
    def select(_: Path) -> Iterator[Item]:
        base = Path(str(importlib.metadata.distribution(distribution).locate_file("")))
        for path in paths():
            rel = str(path.relative_to(base)) if path.is_relative_to(base) else str(path)
            yield Item(rel, path.read_bytes(), path.suffix.lower(), rel)

    return select


def _installed_images(module: str) -> Callable[[], list[Path]]:
    def paths() -> list[Path]:
        from model.sample_images import packaged_image_paths
        from model.training_data import extra_packaged_image_paths

        every = packaged_image_paths() + extra_packaged_image_paths()
        return [p for p in every if f"/{module}/" in str(p)]

    return paths


def installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


SOURCES: tuple[Source, ...] = (
    Source("gcompris-qt-data", "3.1-2", "deb",
           "e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f", select_gcompris),
    Source("visp-images-data", "3.5.0-1", "deb",
           "8d78de2b5d0ff5536ae5c281b11a5011fd6e95cd717c2e0ebf38bacf57723a9d", select_visp),
    Source("lomiri-wallpapers-16.04", "20.04.0-2", "deb",
           "a99ff6a3bfe451e4cc0682ecb3cc82e71740626d59e4845ae34a0a0e45421eab", select_lomiri),
    Source("lomiri-wallpapers-20.04", "20.04.0-2", "deb",
           "d44e89b8473aafe64a5b678f014862dc31335aaaf18665c544d985d854f1a709", select_lomiri),
    Source("plasma-workspace-wallpapers", "4:5.27.5-2", "deb",
           "32cd18b71c8c938a18b3b351f217c02ac590e323caa3cf322fbb875ce8892f8b", select_plasma),
    Source("Kivy", "2.3.1", "sdist",
           "0833949e3502cdb4abcf9c1da4384674045ad7d85644313aa1ee7573f3b4f9d9", select_kivy,
           licence="MIT"),
    # What trained before the corpus (model/sample_images.py, model/training_data.py):
    # the package's licence; scikit-image's data/README lists each image's own terms.
    Source("ultralytics", installed_version("ultralytics"), "installed", "",
           _installed("ultralytics", _installed_images("ultralytics")), licence="AGPL-3.0"),
    Source("scikit-image", installed_version("scikit-image"), "installed", "",
           _installed("scikit-image", _installed_images("skimage")), licence="BSD-3-Clause"),
    Source("matplotlib", installed_version("matplotlib"), "installed", "",
           _installed("matplotlib", _installed_images("matplotlib")), licence="PSF-like"),
    Source("scikit-learn", installed_version("scikit-learn"), "installed", "",
           _installed("scikit-learn", _installed_images("sklearn")), licence="BSD-3-Clause"),
)  # fmt: skip
