"""The crop sampler: windows at their own scale from large images, whole-image crops
from small ones, grey and colour alike; and the training pool drawn from a corpus."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from model.corpus.manifest import MANIFEST, CorpusEntry, sha256_bytes, write_entries
from model.training_data import MAX_SIDE, CropStream, load_pool


def checkerboard(h: int, w: int, square: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (((yy // square + xx // square) % 2) * 255).astype(np.uint8)


def test_large_images_give_crops_at_their_own_scale() -> None:
    # Fine texture on a wallpaper-sized image: squeezing the whole image to the crop's
    # scale averages it away, a window keeps it.
    image = checkerboard(1800, 2048, 6)
    stream = CropStream([image], 256, seed=0)
    rng = np.random.default_rng(0)
    window = np.mean([stream.window(image, rng).std() for _ in range(40)])
    whole = np.mean([stream.whole(image, rng).std() for _ in range(40)])
    assert window > 1.4 * whole, (window, whole)


def test_crops_are_unit_range_colour_tensors_and_deterministic() -> None:
    pool = [checkerboard(1800, 2048, 6), skimage.data.astronaut(), skimage.data.camera()]
    a = CropStream(pool, 64, seed=3)
    b = CropStream(pool, 64, seed=3)
    ra, rb = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(30):
        crop = a.crop(ra)
        assert crop.shape == (3, 64, 64) and crop.dtype == np.float32
        assert 0.0 <= crop.min() and crop.max() <= 1.0
        assert np.array_equal(crop, b.crop(rb))


def make_corpus(root: Path) -> Path:
    entries = []
    for package, group, name, image in (
        ("photos-deb", "package", "astronaut.png", skimage.data.astronaut()[:, :, ::-1]),
        ("photos-deb", "package", "big.png", np.zeros((2200, 3000, 3), np.uint8)),
        ("some-wheel", "installed", "camera.png", skimage.data.camera()),
    ):
        _, data = cv2.imencode(".png", image)
        path = root / "images" / package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.tobytes())
        h, w = image.shape[:2]
        entries.append(CorpusEntry(str(path.relative_to(root)), package, "1", name, "CC0-1.0",
                                   w, h, sha256_bytes(data.tobytes()), group))  # fmt: skip
    write_entries(root / MANIFEST, entries)
    return root


def test_pool_from_a_corpus_lists_its_packages(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    pool = load_pool([], use_packaged=True, corpus=corpus)
    assert len(pool.images) == 3
    assert max(max(i.shape[:2]) for i in pool.images) == MAX_SIDE  # held at most this big
    assert pool.images[2].ndim == 2  # grey stays one channel in memory
    packages = pool.sources["corpus"]["packages"]
    assert packages["photos-deb"]["images"] == 2 and packages["some-wheel"]["images"] == 1
    json.dumps(pool.sources)  # plain data: it goes into the checkpoint
    # --no-packaged leaves out the images of installed packages, the corpus's own too.
    assert len(load_pool([], use_packaged=False, corpus=corpus).images) == 2


def test_a_missing_corpus_image_is_named(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    (corpus / "images/photos-deb/big.png").unlink()
    with pytest.raises(ValueError, match="big.png"):
        load_pool([], corpus=corpus)
