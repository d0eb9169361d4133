"""What the corpus holds: one line per image, and where each came from.

    var/corpus/manifest.jsonl   one CorpusEntry per line (file, package, version,
                                path inside the package, licence, size, sha256)
    var/corpus/sources.json     each fetched artifact (.deb, sdist) with its sha256
    var/corpus/parts/PKG.jsonl  one package's entries, written when it is complete
                                (what makes a build resumable and a rebuild a no-op)

Licences of Debian packages come from the package's ``usr/share/doc/PKG/copyright``
(machine-readable DEP-5: the last ``Files:`` stanza matching the path wins).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.atomic_file import write_atomically

MANIFEST = "manifest.jsonl"
SOURCES_FILE = "sources.json"


@dataclass(frozen=True)
class CorpusEntry:
    file: str
    """Path of the image under the corpus root, e.g. ``images/visp-images-data/…``."""
    package: str
    version: str
    source: str
    """Path inside the package (``a.rcc:/inner/path`` inside a Qt resource file,
    ``video.mpg#t=12.0`` for a frame of a video)."""
    licence: str
    width: int
    height: int
    sha256: str
    group: str = "package"
    """``package`` (fetched) or ``installed`` (images inside the installed Python
    packages training used before the corpus; ``--no-packaged`` drops them)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_entries(path: Path, entries: Iterable[CorpusEntry]) -> bool:
    """Write JSON lines atomically; False (and nothing written) when the file already
    holds exactly these entries."""
    text = "".join(json.dumps(asdict(e), sort_keys=True) + "\n" for e in entries)
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text.encode())
    return True


def read_entries(path: Path) -> list[CorpusEntry]:
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entries.append(CorpusEntry(**json.loads(line)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: not a corpus entry ({exc})") from None
    return entries


def read_manifest(root: Path) -> list[CorpusEntry]:
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no corpus manifest at {path}: run `make corpus`")
    return read_entries(path)


def package_summary(entries: Iterable[CorpusEntry]) -> dict[str, dict[str, object]]:
    """Per package: version, licences, images and pixels (what a checkpoint records)."""
    by_package: dict[str, list[CorpusEntry]] = {}
    for e in entries:
        by_package.setdefault(e.package, []).append(e)
    return {
        package: {
            "version": group[0].version,
            "images": len(group),
            "pixels": sum(e.width * e.height for e in group),
            "licences": list(dict.fromkeys(e.licence for e in group)),
        }
        for package, group in by_package.items()
    }


@dataclass(frozen=True)
class CopyrightStanza:
    patterns: tuple[str, ...]
    licence: str


def parse_copyright(text: str) -> list[CopyrightStanza]:
    """The ``Files:``/``License:`` pairs of a DEP-5 copyright file, in order."""
    stanzas: list[CopyrightStanza] = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields and "license" in fields:
            licence = fields["license"].split(" ", 1)[0] if fields["license"] else "unknown"
            stanzas.append(CopyrightStanza(tuple(fields["files"].split()), licence))
    return stanzas


def licence_for(stanzas: list[CopyrightStanza], path: str) -> str:
    """The licence of ``path``, a path in the package's source tree (DEP-5 patterns are
    anchored there); a pattern without wildcards also matches by file name, since
    installed paths differ from source paths. The last match wins; unknown if none."""
    name = path.rsplit("/", 1)[-1]
    found = "unknown"
    for stanza in stanzas:
        for pattern in stanza.patterns:
            literal = not any(c in pattern for c in "*?[")
            if fnmatch.fnmatchcase(path, pattern) or (literal and pattern.split("/")[-1] == name):
                found = stanza.licence
                break
    return found
