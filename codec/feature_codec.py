"""Feature codecs: a split tensor in, bytes out, and back.

    features (C,H,W) float32
        │  normalize per channel: (x - mean_c) / scale_c
        │  uniform quantization with the level's step: q = round(x̃ / step_l)
        ▼
    q (C,H,W) int32 ──► EntropyTables.encode ──► payload bytes
                    └─► symbol_crc(q) ──► checked against the decoded symbols

A frame is intra (a keyframe) or a P-frame: given the camera's last decoded latent
(``LatentSymbols``), ``compress`` codes only what changed (codec/inter_frames.py) and
``decompress`` needs the same reference. Both return, or take, symbols exactly as the
decoder reconstructs them, so the two ends hold the same reference bit for bit.

The uniform codec needs no training: its statistics (per-channel mean/scale and
the integer tables) are fitted on sample images when a bundle is exported. It
stays as the baseline beside the learned codec (GainedFeatureCodec), whose
transforms live in the bundle's ONNX files and whose quantizer is gain vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Protocol, Self

import numpy as np

from codec.entropy_tables import EntropyCodingError, EntropyTables, symbol_crc
from codec.inter_frames import (
    CELL_FORMATS,
    P_FORMAT,
    InterTables,
    LatentSymbols,
    decode_cells,
    decode_residual,
    encode_cells,
    skip_map,
)

DEFAULT_SKIP_THRESHOLD = 6.0
"""P-frame cells whose residual energy is within this many symbol steps² are skipped."""
INTRA_CHECK_BELOW = 0.25
"""A P-frame that skips fewer cells than this (a cut, a pan, a light switched on) is also
coded intra; the smaller one goes, and a keyframe restarts the chain. P-frames of formats 2 and 3
code a changed cell intra when that is shorter, so they are rarely longer: at 0.75, on the
panning street clip the keyframe won at most 2 of 29 frames a level (format 1: up to 13),
and each frame coded both ways cost the edge a keyframe's coding on top."""


@dataclass(frozen=True)
class EncodedFeatures:
    rate_level: int
    latent_shape: tuple[int, int, int]
    payload: bytes
    symbol_crc: int | None
    """CRC-32 of the coded symbols (entropy_tables.symbol_crc); None: not checked
    (a version-1 bitstream from before the check)."""
    reference_crc: int | None = None
    """P-frame: the symbol CRC of the latent it is predicted from; None: intra."""
    symbols: LatentSymbols | None = field(default=None, compare=False, repr=False)
    """Encoder side only (never on the wire): the latent as the decoder will rebuild it,
    the next P-frame's reference."""
    p_format: int = P_FORMAT
    """How a P-frame's payload is coded (codec/inter_frames.py): 3, what ``compress``
    writes; 1 and 2, frames from before it (container versions 3 and 4)."""


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

    @property
    def supports_inter(self) -> bool:
        """Whether the bundle holds P-frame tables (bundles exported before them do not)."""
        ...

    def compress(
        self,
        features: np.ndarray,
        rate_level: int,
        reference: LatentSymbols | None = None,
        skip_threshold: float = DEFAULT_SKIP_THRESHOLD,
    ) -> EncodedFeatures: ...

    def expected_bytes(self, rate_level: int, latent_shape: tuple[int, int, int]) -> float:
        """Expected payload size at ``rate_level`` for a (C, H, W) latent, from the
        codec's own statistics (no coding); rate controllers start from it."""
        ...

    def decompress_symbols(
        self, encoded: EncodedFeatures, reference: LatentSymbols | None = None
    ) -> LatentSymbols: ...

    def dequantize(self, q: np.ndarray, rate_level: int) -> np.ndarray: ...

    def decompress(
        self, encoded: EncodedFeatures, reference: LatentSymbols | None = None
    ) -> np.ndarray: ...


class _TableCoded:
    """Shared by the scalar-quantized codecs: integer symbols ⇄ payload via ``tables``.

    Subclasses say how features become symbols (``quantize``) and back (``dequantize``).
    """

    tables: EntropyTables
    inter: InterTables | None

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
        if self.inter is not None:
            self.inter.prepare()

    def expected_bytes(self, rate_level: int, latent_shape: tuple[int, int, int]) -> float:
        """Expected payload bytes: the integer tables' entropy (see EntropyTables.expected_bits)."""
        if not 0 <= rate_level < self.num_levels:
            raise ValueError(f"rate_level {rate_level} outside 0..{self.num_levels - 1}")
        return self.tables.expected_bits(rate_level, latent_shape) / 8.0

    @property
    def supports_inter(self) -> bool:
        return self.inter is not None

    def predict(self, reference: LatentSymbols, rate_level: int) -> np.ndarray:
        """The reference's symbols on ``rate_level``'s grid (itself on the same level).

        Across levels: dequantize, then quantize, in float32 — IEEE multiplies and a rint,
        the same on every machine, so both ends predict the same integers."""
        if reference.rate_level == rate_level:
            return reference.q
        return self.quantize(self.dequantize(reference.q, reference.rate_level), rate_level)

    def compress(
        self,
        features: np.ndarray,
        rate_level: int,
        reference: LatentSymbols | None = None,
        skip_threshold: float = DEFAULT_SKIP_THRESHOLD,
    ) -> EncodedFeatures:
        if features.ndim != 3:
            raise ValueError(f"features must be (C,H,W), got shape {features.shape}")
        q = self.quantize(features, rate_level)
        shape = (int(q.shape[0]), int(q.shape[1]), int(q.shape[2]))
        if reference is None or reference.q.shape != q.shape:
            payload = self.tables.encode(q, rate_level)
            crc = symbol_crc(q)
            return EncodedFeatures(
                rate_level, shape, payload, crc, None, LatentSymbols(rate_level, q, crc)
            )
        inter = self._inter()
        prediction = self.predict(reference, rate_level)
        wide = q.astype(np.int64) - prediction
        if wide.min() < -(2**31) or wide.max() >= 2**31:
            return self.compress(features, rate_level)  # no int32 residual: a keyframe
        skip = skip_map(wide, skip_threshold)
        payload, decoded = encode_cells(
            inter, self.tables, rate_level, prediction, q, skip, reference.replenished
        )
        if (
            skip.mean() < INTRA_CHECK_BELOW
            and self.tables.coded_bits(q, rate_level) / 8 <= len(payload) + 16
        ):
            # Much of the frame changed (a pan, a cut, a light switched on): a keyframe
            # may be smaller, and it restarts the chain for free. Coded only where its
            # estimate says it may be (panning street clip, level 4: 12 of 29 frames were
            # coded twice, and no keyframe won).
            intra = self.compress(features, rate_level)
            if len(intra.payload) <= len(payload):
                return intra
        crc = symbol_crc(decoded)
        symbols = LatentSymbols(rate_level, decoded, crc, ~skip)
        return EncodedFeatures(rate_level, shape, payload, crc, reference.crc, symbols)

    def decompress_symbols(
        self, encoded: EncodedFeatures, reference: LatentSymbols | None = None
    ) -> LatentSymbols:
        """The decoded symbols; a P-frame needs the reference its ``reference_crc`` names."""
        replenished = None
        if encoded.reference_crc is None:
            q = self.tables.decode(encoded.payload, encoded.rate_level, encoded.latent_shape)
        else:
            if reference is None or reference.crc != encoded.reference_crc:
                held = "none" if reference is None else f"{reference.crc:08x}"
                raise EntropyCodingError(
                    f"P-frame predicted from a latent with symbol CRC {encoded.reference_crc:08x}, "
                    f"but the reference given is {held}"
                )
            if reference.q.shape != encoded.latent_shape:
                raise EntropyCodingError(
                    f"P-frame latent {encoded.latent_shape} differs from its reference's "
                    f"{reference.q.shape}"
                )
            if not 0 <= encoded.rate_level < self.num_levels:
                raise EntropyCodingError(
                    f"rate level {encoded.rate_level} outside 0..{self.num_levels - 1}"
                )
            prediction = self.predict(reference, encoded.rate_level).astype(np.int64)
            if encoded.p_format in CELL_FORMATS:
                wide, replenished = decode_cells(
                    self._inter(), self.tables, encoded.rate_level, encoded.payload, prediction,
                    reference.replenished, encoded.p_format,
                )  # fmt: skip
            elif encoded.p_format == 1:
                wide = prediction + decode_residual(
                    self._inter(), encoded.rate_level, encoded.payload, encoded.latent_shape
                )
            else:
                raise EntropyCodingError(f"unknown P-frame format {encoded.p_format}")
            if wide.size and (wide.min() < -(2**31) or wide.max() >= 2**31):
                raise EntropyCodingError("P-frame decodes outside int32")
            q = wide.astype(np.int32)
        crc = symbol_crc(q)
        if encoded.symbol_crc is not None and crc != encoded.symbol_crc:
            raise EntropyCodingError(
                "payload does not decode to the symbols it was coded from (symbol CRC-32 "
                f"{crc:08x}, the container says {encoded.symbol_crc:08x}): corrupted"
            )
        return LatentSymbols(encoded.rate_level, q, crc, replenished)

    def decompress(
        self, encoded: EncodedFeatures, reference: LatentSymbols | None = None
    ) -> np.ndarray:
        symbols = self.decompress_symbols(encoded, reference)
        return self.dequantize(symbols.q, encoded.rate_level)

    def _inter(self) -> InterTables:
        if self.inter is None:
            raise EntropyCodingError(
                "this bundle has no P-frame tables (exported before inter coding): "
                "re-export it, or code keyframes only"
            )
        return self.inter

    def save(self, path: Path) -> None:
        """codec.npz: each float32 field by name, the tables (freqs, radius) and the
        P-frame tables (inter_freqs, inter_base)."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TABLES}  # type: ignore[arg-type]
        if self.inter is not None:
            arrays |= {"inter_freqs": self.inter.freqs, "inter_base": self.inter.base}
        np.savez(path, **arrays, freqs=self.tables.freqs, radius=np.int32(self.tables.radius))

    @classmethod
    def load(cls, path: Path) -> Self:
        with np.load(path) as z:
            tables = EntropyTables(z["freqs"].astype(np.uint32), int(z["radius"]))
            inter = None
            if "inter_freqs" in z:
                inter = InterTables(
                    z["inter_freqs"].astype(np.uint32),
                    z["inter_base"].astype(np.uint8),
                    tables.radius,
                )
            arrays = {
                f.name: z[f.name].astype(np.float32)
                for f in fields(cls)  # type: ignore[arg-type]
                if f.name not in _TABLES
            }
        return cls(**arrays, tables=tables, inter=inter)  # type: ignore[call-arg]  # subclasses are dataclasses


_TABLES = ("tables", "inter")


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
    inter: InterTables | None = None
    """P-frame tables; None: a bundle from before inter coding (keyframes only)"""

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
    inter: InterTables | None = None
    """P-frame tables; None: a bundle from before inter coding (keyframes only)"""

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
