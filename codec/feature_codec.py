"""Feature codecs: a split tensor in, bytes out, and back.

    features (C,H,W) float32
        │  normalize per channel: (x - mean_c) / scale_c
        │  uniform quantization with the level's step: q = round(x̃ / step_l)
        ▼
    q (C,H,W) int32 ──► EntropyTables.encode ──► payload bytes
                    └─► symbol_crc(q) ──► checked against the decoded symbols

The uniform codec needs no training: its statistics (per-channel mean/scale and
the integer tables) are fitted on sample images when a bundle is exported. It
stays as the baseline beside the learned codec (GainedFeatureCodec), whose
transforms live in the bundle's ONNX files and whose quantizer is gain vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar, Protocol, Self

import numpy as np

from codec.entropy_tables import EntropyCodingError, EntropyTables, symbol_crc


@dataclass(frozen=True)
class EncodedFeatures:
    rate_level: int
    latent_shape: tuple[int, int, int]
    payload: bytes
    symbol_crc: int | None
    """CRC-32 of the coded symbols (entropy_tables.symbol_crc); None: not checked
    (a version-1 bitstream from before the check)."""


class FeatureCodec(Protocol):
    codec_id: ClassVar[int]
    name: ClassVar[str]

    @property
    def num_levels(self) -> int: ...

    @property
    def num_channels(self) -> int:
        """Channels of the latent tensor this codec codes."""
        ...

    def prepare(self) -> None:
        """Build coding models up front so the first frame is not slower than the rest."""
        ...

    def compress(self, features: np.ndarray, rate_level: int) -> EncodedFeatures: ...

    def expected_bytes(self, rate_level: int, latent_shape: tuple[int, int, int]) -> float:
        """Expected payload size at ``rate_level`` for a (C, H, W) latent, from the
        codec's own statistics (no coding); rate controllers start from it."""
        ...

    def decompress(self, encoded: EncodedFeatures) -> np.ndarray: ...


class _TableCoded:
    """Shared by the scalar-quantized codecs: integer symbols ⇄ payload via ``tables``.

    Subclasses say how features become symbols (``quantize``) and back (``dequantize``).
    """

    tables: EntropyTables

    def quantize(self, features: np.ndarray, rate_level: int) -> np.ndarray:
        raise NotImplementedError

    def dequantize(self, q: np.ndarray, rate_level: int) -> np.ndarray:
        raise NotImplementedError

    @property
    def num_levels(self) -> int:
        return self.tables.num_levels

    @property
    def num_channels(self) -> int:
        return self.tables.num_channels

    def prepare(self) -> None:
        self.tables.prepare()

    def expected_bytes(self, rate_level: int, latent_shape: tuple[int, int, int]) -> float:
        """Expected payload bytes: the integer tables' entropy (see EntropyTables.expected_bits)."""
        if not 0 <= rate_level < self.num_levels:
            raise ValueError(f"rate_level {rate_level} outside 0..{self.num_levels - 1}")
        return self.tables.expected_bits(rate_level, latent_shape) / 8.0

    def compress(self, features: np.ndarray, rate_level: int) -> EncodedFeatures:
        if features.ndim != 3:
            raise ValueError(f"features must be (C,H,W), got shape {features.shape}")
        q = self.quantize(features, rate_level)
        shape = (int(q.shape[0]), int(q.shape[1]), int(q.shape[2]))
        payload = self.tables.encode(q, rate_level)
        return EncodedFeatures(rate_level, shape, payload, symbol_crc(q))

    def decompress(self, encoded: EncodedFeatures) -> np.ndarray:
        q = self.tables.decode(encoded.payload, encoded.rate_level, encoded.latent_shape)
        if encoded.symbol_crc is not None:
            decoded = symbol_crc(q)
            if decoded != encoded.symbol_crc:
                raise EntropyCodingError(
                    "payload does not decode to the symbols it was coded from (symbol CRC-32 "
                    f"{decoded:08x}, the container says {encoded.symbol_crc:08x}): corrupted"
                )
        return self.dequantize(q, encoded.rate_level)

    def save(self, path: Path) -> None:
        """codec.npz: each float32 field by name, plus the tables (freqs, radius)."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tables"}  # type: ignore[arg-type]
        np.savez(path, **arrays, freqs=self.tables.freqs, radius=np.int32(self.tables.radius))

    @classmethod
    def load(cls, path: Path) -> Self:
        with np.load(path) as z:
            tables = EntropyTables(z["freqs"].astype(np.uint32), int(z["radius"]))
            arrays = {
                f.name: z[f.name].astype(np.float32)
                for f in fields(cls)  # type: ignore[arg-type]
                if f.name != "tables"
            }
        return cls(**arrays, tables=tables)  # type: ignore[call-arg]  # subclasses are dataclasses


@dataclass(frozen=True)
class UniformFeatureCodec(_TableCoded):
    """Per-channel normalized uniform quantizer + factorized integer tables."""

    codec_id: ClassVar[int] = 0
    name: ClassVar[str] = "uniform"

    mean: np.ndarray
    """float32 (C,)"""
    scale: np.ndarray
    """float32 (C,), strictly positive"""
    steps: np.ndarray
    """float32 (levels,), quantization step per rate level, coarsest first"""
    tables: EntropyTables

    def quantize(self, features: np.ndarray, rate_level: int) -> np.ndarray:
        x = (features.astype(np.float32) - self.mean[:, None, None]) / self.scale[:, None, None]
        return np.rint(x / self.steps[rate_level]).astype(np.int32)

    def dequantize(self, q: np.ndarray, rate_level: int) -> np.ndarray:
        x = q.astype(np.float32) * self.steps[rate_level]
        return x * self.scale[:, None, None] + self.mean[:, None, None]


@dataclass(frozen=True)
class GainedFeatureCodec(_TableCoded):
    """The learned codec's quantizer: per-level, per-channel gain vectors.

    q = round(y · gain[level]) on the edge; ŷ = q · inverse_gain[level] in the cloud.
    The latent y comes out of the bundle's encoder.onnx (detector layers + analysis
    transform) and ŷ goes into its tail.onnx (synthesis + detector tail); the tables
    are the trained entropy model evaluated at each level's gain (model/bottleneck.py).
    """

    codec_id: ClassVar[int] = 1
    name: ClassVar[str] = "learned"

    gains: np.ndarray
    """float32 (levels, C), coarsest level first"""
    inverse_gains: np.ndarray
    """float32 (levels, C)"""
    tables: EntropyTables

    def __post_init__(self) -> None:
        if (
            self.gains.shape != self.inverse_gains.shape
            or self.gains.shape != self.tables.freqs.shape[:2]
        ):
            raise ValueError(
                f"gains {self.gains.shape}, inverse gains {self.inverse_gains.shape} and tables "
                f"{self.tables.freqs.shape[:2]} must all be (levels, channels)"
            )
        if not np.all(self.gains > 0):
            raise ValueError("gains must be positive")

    def quantize(self, features: np.ndarray, rate_level: int) -> np.ndarray:
        return np.rint(features.astype(np.float32) * self.gains[rate_level][:, None, None]).astype(
            np.int32
        )

    def dequantize(self, q: np.ndarray, rate_level: int) -> np.ndarray:
        return q.astype(np.float32) * self.inverse_gains[rate_level][:, None, None]


CODECS: dict[str, type[UniformFeatureCodec] | type[GainedFeatureCodec]] = {
    UniformFeatureCodec.name: UniformFeatureCodec,
    GainedFeatureCodec.name: GainedFeatureCodec,
}
CODEC_IDS: dict[int, str] = {cls.codec_id: name for name, cls in CODECS.items()}
