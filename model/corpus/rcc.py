"""Read Qt's binary resource files (``rcc`` output, ``.rcc``): path → file bytes.

    header  "qres" | version u32 | tree offset u32 | data offset u32 | names offset u32
            | (version ≥ 3) overall flags u32                     all integers big-endian
    tree    node 0 is the root; a node is 14 bytes (version 1) or 22 (≥ 2: + modified ms):
              name offset u32 | flags u16 | directory: child count u32 | first child u32
                                          | file:      territory u16 | language u16 | data u32
    names   length u16 (UTF-16 units) | hash u32 | UTF-16BE name
    data    size u32 | bytes: zlib-flagged ones start with their uncompressed size (u32,
            ``qCompress``); zstd-flagged ones (rcc -compress-algo zstd) are refused

The layout is Qt's own (qtbase src/corelib/io/qresource.cpp, tools/rcc/rcc.cpp); no Qt
is needed to read it. Reading never executes anything from the file.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"qres"
COMPRESSED = 0x01
DIRECTORY = 0x02
COMPRESSED_ZSTD = 0x04


class RccError(ValueError):
    """A file that is not a readable Qt resource file."""


@dataclass(frozen=True)
class RccEntry:
    path: str
    """Resource path without the leading ``:/``, e.g. ``gcompris/src/.../cat.jpg``."""
    data: bytes


@dataclass(frozen=True)
class _Header:
    version: int
    tree: int
    data: int
    names: int

    @property
    def node_size(self) -> int:
        return 14 if self.version == 1 else 22


def _header(blob: bytes, source: str) -> _Header:
    if len(blob) < 20 or blob[:4] != MAGIC:
        raise RccError(f"{source}: not a Qt resource file (no 'qres' magic)")
    version, tree, data, names = struct.unpack_from(">IIII", blob, 4)
    if version not in (1, 2, 3):
        raise RccError(f"{source}: unsupported rcc format version {version}")
    for name, offset in (("tree", tree), ("data", data), ("names", names)):
        if offset >= len(blob):
            raise RccError(f"{source}: {name} offset {offset} beyond the file ({len(blob)} bytes)")
    return _Header(version, tree, data, names)


def _name(blob: bytes, h: _Header, offset: int) -> str:
    at = h.names + offset
    (length,) = struct.unpack_from(">H", blob, at)
    return blob[at + 6 : at + 6 + 2 * length].decode("utf-16-be")


def _payload(blob: bytes, h: _Header, offset: int, flags: int, source: str) -> bytes:
    at = h.data + offset
    (size,) = struct.unpack_from(">I", blob, at)
    raw = blob[at + 4 : at + 4 + size]
    if len(raw) != size:
        raise RccError(f"{source}: entry at data offset {offset} runs past the end")
    if flags & COMPRESSED_ZSTD:
        # rcc -compress-algo zstd (format 3): none of the pinned packages uses it, and
        # decoding it would need a zstd library the project does not otherwise install.
        raise RccError(f"{source}: entry at data offset {offset} is zstd-compressed (unsupported)")
    if flags & COMPRESSED:
        (expected,) = struct.unpack_from(">I", raw, 0)
        out = zlib.decompress(raw[4:])
        if len(out) != expected:
            raise RccError(f"{source}: entry at {offset} inflates to {len(out)}, not {expected}")
        return out
    return raw


def read_rcc(blob: bytes, source: str = "<rcc>") -> Iterator[RccEntry]:
    """Every file in the resource tree, depth first, in the tree's (name-hash) order."""
    h = _header(blob, source)
    stack: list[tuple[int, str]] = [(0, "")]
    seen: set[int] = set()
    while stack:
        node, prefix = stack.pop()
        if node in seen:  # a corrupt tree must not loop forever
            raise RccError(f"{source}: tree node {node} is reached twice")
        seen.add(node)
        at = h.tree + node * h.node_size
        if at + 14 > len(blob):
            raise RccError(f"{source}: tree node {node} beyond the file")
        name_offset, flags = struct.unpack_from(">IH", blob, at)
        name = "" if node == 0 else _name(blob, h, name_offset)
        path = f"{prefix}/{name}" if prefix else name
        if flags & DIRECTORY:
            count, first = struct.unpack_from(">II", blob, at + 6)
            stack += [(first + i, path) for i in reversed(range(count))]
        else:
            (data_offset,) = struct.unpack_from(">I", blob, at + 10)
            yield RccEntry(path, _payload(blob, h, data_offset, flags, source))


def read_rcc_file(path: Path) -> Iterator[RccEntry]:
    return read_rcc(path.read_bytes(), str(path))
