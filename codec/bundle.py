"""The model bundle: one directory that both ends load.

    bundle/
      manifest.json   detector facts, codec, file roles and their sha256
      encoder.onnx    detector layers 0..split [+ learned analysis] (edge)
      codec.npz       quantizer statistics + integer entropy tables (edge + cloud)
      tail.onnx       [learned synthesis +] detector layers split+1..Detect (cloud)
      preview.onnx    features → RGB preview for the human view (cloud)

The bundle hash is the sha256 of manifest.json, which pins every file's hash, so
the edge and the cloud agree on the model by comparing one string.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from codec.feature_codec import CODECS, FeatureCodec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(RuntimeError):
    """A bundle that is missing, incomplete or altered."""


class DetectorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: str = Field(description="Checkpoint the bundle was exported from")
    weights_sha256: str | None = Field(
        None,
        description="sha256 of that checkpoint: evaluation rebuilds the plain detector from it",
    )
    class_names: list[str] = Field(description="Label of each detector class id")
    split_layer: int = Field(description="Last detector layer that runs on the edge")
    stride: int = Field(description="Input pixels per latent pixel at the split")
    input_size: int = Field(description="Long side of the network input, pixels")
    pad_multiple: int = Field(
        32, description="Network input sides are padded to a multiple of this"
    )
    channels: int = Field(
        description="Channels of the coded tensor: the split tensor, or the learned latent"
    )


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = FORMAT_VERSION
    name: str
    created: str
    detector: DetectorInfo
    codec: str = Field(description=f"Feature codec, one of {sorted(CODECS)}")
    num_levels: int
    files: dict[str, str] = Field(description="role → file name inside the bundle")
    sha256: dict[str, str] = Field(description="file name → sha256 hex digest")
    notes: dict[str, str] = Field(default_factory=dict)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    hash: str

    @property
    def tag(self) -> bytes:
        """First 8 bytes of the hash; stamped into every frame's container."""
        return bytes.fromhex(self.hash[:16])

    @property
    def class_names(self) -> list[str]:
        return self.manifest.detector.class_names

    def file(self, role: str) -> Path:
        try:
            return self.path / self.manifest.files[role]
        except KeyError:
            raise BundleError(
                f"bundle {self.path} has no '{role}' file (has {sorted(self.manifest.files)})"
            ) from None

    def load_codec(self) -> FeatureCodec:
        return CODECS[self.manifest.codec].load(self.file("codec"))

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> Bundle:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"no {MANIFEST} in bundle directory {path}")
        raw = manifest_path.read_bytes()
        try:
            manifest = Manifest.model_validate_json(raw)
        except ValidationError as exc:
            raise BundleError(f"invalid {manifest_path}: {exc}") from exc
        if manifest.format_version != FORMAT_VERSION:
            raise BundleError(
                f"bundle format {manifest.format_version} is not supported (need {FORMAT_VERSION})"
            )
        if manifest.codec not in CODECS:
            raise BundleError(f"unknown codec '{manifest.codec}', known: {sorted(CODECS)}")
        if verify:
            for name in manifest.files.values():
                f = path / name
                if not f.is_file():
                    raise BundleError(f"bundle file {f} is missing")
                if file_sha256(f) != manifest.sha256.get(name):
                    raise BundleError(f"bundle file {f} does not match its manifest sha256")
        return cls(path, manifest, hashlib.sha256(raw).hexdigest())


def write_manifest(path: Path, manifest_fields: dict[str, object]) -> Bundle:
    """Hash the bundle's files, write manifest.json, and load the result back."""
    files = manifest_fields["files"]
    assert isinstance(files, dict)
    sha = {name: file_sha256(path / name) for name in files.values()}
    manifest = Manifest.model_validate({**manifest_fields, "sha256": sha})
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    (path / MANIFEST).write_text(text)
    return Bundle.load(path)
