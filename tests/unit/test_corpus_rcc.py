"""The Qt .rcc reader, on files written here to Qt's documented layout (qresource.cpp),
and (opt-in, slow) on a real GCompris resource file from the corpus's cached .deb."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from model.corpus.rcc import (
    COMPRESSED,
    COMPRESSED_ZSTD,
    DIRECTORY,
    RccError,
    read_rcc,
    read_rcc_file,
)

Tree = dict[str, "bytes | tuple[bytes, bool] | Tree"]


def qt_hash(name: str) -> int:
    """qt_hash (qresource.cpp): the order rcc sorts siblings in."""
    h = 0
    for ch in name:
        h = ((h << 4) + ord(ch)) & 0xFFFFFFFF
        h = (h ^ ((h & 0xF0000000) >> 23)) & 0x0FFFFFFF
    return h


def write_rcc(tree: Tree, version: int = 3) -> bytes:
    """A resource file as rcc writes it: breadth-first tree, siblings by name hash;
    a (bytes, True) value is stored zlib-compressed (qCompress: size prefix)."""
    names, data = bytearray(), bytearray()
    name_at: dict[str, int] = {}
    nodes: list[bytes] = []
    node_size = 14 if version == 1 else 22

    def name_offset(name: str) -> int:
        if name not in name_at:
            name_at[name] = len(names)
            names.extend(struct.pack(">HI", len(name), qt_hash(name)) + name.encode("utf-16-be"))
        return name_at[name]

    def node(name: str, value: bytes | tuple[bytes, bool] | Tree, first_child: int) -> bytes:
        offset = name_offset(name) if name else 0
        if isinstance(value, dict):
            head = struct.pack(">IHII", offset, DIRECTORY, len(value), first_child)
        else:
            raw, compress = value if isinstance(value, tuple) else (value, False)
            payload = struct.pack(">I", len(raw)) + zlib.compress(raw) if compress else raw
            head = struct.pack(">IHHHI", offset, COMPRESSED if compress else 0, 0, 0, len(data))
            data.extend(struct.pack(">I", len(payload)) + payload)
        return head + (b"\0" * 8 if version > 1 else b"")

    # Breadth first: every directory's children are consecutive nodes.
    queue: list[tuple[str, bytes | tuple[bytes, bool] | Tree]] = [("", tree)]
    next_free = 1
    while queue:
        name, value = queue.pop(0)
        children = (
            sorted(value.items(), key=lambda kv: qt_hash(kv[0])) if isinstance(value, dict) else []
        )
        nodes.append(node(name, value, next_free))
        next_free += len(children)
        queue += children
    header = 24 if version >= 3 else 20
    tree_blob = b"".join(nodes)
    assert all(len(n) == node_size for n in nodes)
    data_at, names_at = header, header + len(data)
    tree_at = names_at + len(names)
    head = b"qres" + struct.pack(">IIII", version, tree_at, data_at, names_at)
    head += struct.pack(">I", 0) if version >= 3 else b""
    return head + bytes(data) + bytes(names) + tree_blob


PHOTO = bytes(range(256)) * 40
FILES: Tree = {
    "gcompris": {
        "src": {
            "activities": {
                "erase": {"resource": {"back.webp": (PHOTO, True), "readme": b"GPL-3"}},
                "menu": {"icon.svg": b"<svg/>"},
            }
        }
    },
    "top.txt": b"",
}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_reads_every_file_with_its_path_and_bytes(version: int) -> None:
    entries = {e.path: e.data for e in read_rcc(write_rcc(FILES, version))}
    assert entries == {
        "gcompris/src/activities/erase/resource/back.webp": PHOTO,
        "gcompris/src/activities/erase/resource/readme": b"GPL-3",
        "gcompris/src/activities/menu/icon.svg": b"<svg/>",
        "top.txt": b"",
    }


def test_rejects_what_is_not_a_resource_file() -> None:
    with pytest.raises(RccError, match="no 'qres' magic"):
        list(read_rcc(b"PK\x03\x04" + b"\0" * 40, "x.zip"))
    blob = bytearray(write_rcc(FILES))
    blob[4:8] = struct.pack(">I", 9)
    with pytest.raises(RccError, match="version 9"):
        list(read_rcc(bytes(blob)))


def test_a_truncated_entry_is_an_error_not_garbage() -> None:
    blob = bytearray(write_rcc({"a.bin": PHOTO}))
    struct.pack_into(">I", blob, 24, len(blob))  # the entry claims more than the file
    with pytest.raises(RccError, match="runs past the end"):
        list(read_rcc(bytes(blob)))


def test_a_tree_that_loops_is_an_error() -> None:
    blob = bytearray(write_rcc({"d": {"x": b"1"}}, version=2))
    (tree_at,) = struct.unpack_from(">I", blob, 8)
    struct.pack_into(">I", blob, tree_at + 22 + 10, 0)  # directory d's first child → root
    with pytest.raises(RccError, match="reached twice"):
        list(read_rcc(bytes(blob)))


@pytest.mark.slow
def test_reads_a_real_gcompris_resource_file(tmp_path: Path) -> None:
    debs = sorted(Path("var/corpus/downloads").glob("gcompris-qt-data_*.deb"))
    if not debs or not shutil.which("dpkg-deb"):
        pytest.skip("needs `make corpus` (its cached gcompris .deb) and dpkg-deb")
    member = "./usr/share/gcompris-qt/rcc/erase.rcc"
    tar = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(debs[0])], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tmp_path), member], input=tar.stdout, check=True)
    import cv2
    import numpy as np

    entries = list(read_rcc_file(tmp_path / member))
    photos = [e for e in entries if e.path.endswith(".webp")]
    assert any(e.path.endswith("ActivityInfo.qml") for e in entries)
    assert len(photos) >= 30  # the erase game's backgrounds
    image = cv2.imdecode(np.frombuffer(photos[0].data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (1080, 1920)


def test_a_zstd_compressed_entry_is_refused_by_name() -> None:
    blob = bytearray(write_rcc({"a.jpg": (PHOTO, True)}))
    (tree_at,) = struct.unpack_from(">I", blob, 8)
    file_node = tree_at + 22  # the root's one child, version-3 nodes of 22 bytes
    struct.pack_into(">H", blob, file_node + 4, COMPRESSED_ZSTD)
    with pytest.raises(RccError, match="zstd-compressed"):
        list(read_rcc(bytes(blob)))
