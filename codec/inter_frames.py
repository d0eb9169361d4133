"""P-frames: a latent coded against the camera's last decoded latent.

    reference symbols q_ref (level l_ref) ─► predict at level l ─► p        (edge and cloud alike)
    q = quantize(y, l)  ─►  d = q − p
        per cell (h, w): skip when Σ_c d² ≤ threshold, else replenish
        payload = offset i8 | P(skip) u16 | P(still channel) u16 |
                  ANS[skip flags, still-channel flags, rung deltas, residuals of replenished cells]
    decoded q̂ = p where skipped, p + d elsewhere  ─►  the next frame's reference

Why the threshold is in symbol steps²: the learned latent is the KLT of the split tensor
in the detector's sensitivity metric, whitened, and the gains quantize every component
on one grid (model/bottleneck.py), so a step of any channel costs about the same in the
detector's metric. Closed loop: the reference is what the cloud decodes, never what the
encoder saw, so a skipped cell's error does not accumulate beyond one threshold.

Residuals are coded with discretized Laplacians from a fixed ladder of scales, adapted
forward (the encoder measures, the frame says what it chose): each (level, channel) has a
base rung fitted on the intra tables when the bundle is exported; each frame sends one
offset for all channels, then per channel a flag "still" (no residual in any replenished
cell: nothing more is coded for it) or its rung as a delta from base + offset, chosen for
the fewest bits including the delta's own. Channels move very differently (measured on
the fixed-camera dev set: an ideal rung per channel codes the residuals in 44% / 40% fewer
bits than one offset for all at levels 3 / 4; as coded, side information included, P-frames
shrank 29%, 519 → 366 B at level 3 and 842 → 595 B at level 4).
Every table is integer data (the bundle's, or integers in this file), so decoding stays
bit-exact; the prediction across levels is IEEE float32 multiplies and a rint, which every
machine computes the same.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import cached_property

import constriction
import numpy as np

from codec.entropy_tables import (
    PRECISION,
    EntropyCodingError,
    EntropyTables,
    from_symbols,
    push_escapes,
    quantize_frequencies,
    to_symbols,
)

LADDER = 0.05 * 2.0 ** (np.arange(24) / 2.0)
"""Laplace scales of the residual tables, in symbol steps (0.05 … 145)."""
BASE_FRACTION = 0.25
"""A channel's base rung: its intra spread times this (moving cells, one frame apart)."""
OFFSETS = range(-8, 7)
"""Ladder offsets a frame may choose."""
DELTA_RADIUS = len(LADDER) - 1
_HEADER = struct.Struct("<bHH")


def _delta_frequencies() -> np.ndarray:
    """Integer table of per-channel rung deltas −23..23, P ∝ 2^−|δ| (no floats: exact)."""
    a = np.abs(np.arange(-DELTA_RADIUS, DELTA_RADIUS + 1))
    freqs = np.where(a <= 14, 1 << np.clip(14 - a, 0, None), 1).astype(np.int64)
    freqs[DELTA_RADIUS] += (1 << PRECISION) - int(freqs.sum())
    return freqs.astype(np.uint32)


DELTA_FREQS = _delta_frequencies()
_DELTA_MODEL = constriction.stream.model.Categorical(
    DELTA_FREQS.astype(np.float64) / (1 << PRECISION), perfect=False
)


@dataclass(frozen=True)
class LatentSymbols:
    """A decoded latent as both ends hold it: what the next P-frame is predicted from."""

    rate_level: int
    q: np.ndarray
    """int32 (C, H, W): the symbols the decoder reconstructs"""
    crc: int
    """entropy_tables.symbol_crc(q): the container names its reference by it"""


@dataclass(frozen=True)
class InterTables:
    freqs: np.ndarray
    """uint32 (rungs, 2*radius+2): discretized Laplacians at LADDER, escape last"""
    base: np.ndarray
    """uint8 (levels, channels): each channel's base rung"""
    radius: int
    _models: dict[int, object] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.freqs.shape != (len(LADDER), 2 * self.radius + 2):
            raise ValueError(
                f"inter tables are {self.freqs.shape}, need ({len(LADDER)}, {2 * self.radius + 2})"
            )
        if np.any(self.base >= len(LADDER)):
            raise ValueError(f"base rungs must be below {len(LADDER)}")

    @cached_property
    def log2_probs(self) -> np.ndarray:
        """(rungs, K) float64: only the encoder's choice of offset uses it."""
        return np.log2(self.freqs.astype(np.float64) / (1 << PRECISION))

    def model(self, rung: int) -> object:
        m = self._models.get(rung)
        if m is None:
            probs = self.freqs[rung].astype(np.float64) / (1 << PRECISION)
            m = self._models[rung] = constriction.stream.model.Categorical(probs, perfect=False)
        return m

    def prepare(self) -> None:
        for rung in range(len(LADDER)):
            self.model(rung)

    def rungs(self, level: int, offset: int) -> np.ndarray:
        return np.clip(self.base[level].astype(np.int64) + offset, 0, len(LADDER) - 1)


def build_inter_tables(intra: EntropyTables) -> InterTables:
    """Residual tables for a codec's intra tables (at export; float maths, then integers)."""
    r = intra.radius
    values = np.arange(-r, r + 1, dtype=np.float64)
    probs = intra.freqs[..., :-1].astype(np.float64) / (1 << PRECISION)  # (L, C, 2r+1)
    mean = (probs * values).sum(-1, keepdims=True) / probs.sum(-1, keepdims=True)
    spread = np.sqrt((probs * (values - mean) ** 2).sum(-1) / probs.sum(-1))  # (L, C)
    target = np.maximum(spread * BASE_FRACTION, LADDER[0])
    base = np.abs(np.log(target)[..., None] - np.log(LADDER)).argmin(-1).astype(np.uint8)
    edges = np.concatenate([values - 0.5, [r + 0.5]])
    # Laplace CDF of each rung at the bin edges; the mass beyond ±radius is the escape.
    b = LADDER[:, None]
    tail = 0.5 * np.exp(-np.abs(edges) / b)
    cdf = np.where(edges < 0, tail, 1.0 - tail)
    bins = np.diff(cdf, axis=-1)
    escape = np.clip(1.0 - bins.sum(-1, keepdims=True), 0.0, None)
    freqs = quantize_frequencies(np.concatenate([bins, escape], -1))
    return InterTables(freqs, base, r)


def skip_map(residual: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) bool: cells whose residual energy, in symbol steps², is within ``threshold``."""
    return (residual.astype(np.float64) ** 2).sum(0) <= threshold


def encode_residual(
    tables: InterTables, level: int, residual: np.ndarray, skip: np.ndarray
) -> tuple[bytes, np.ndarray]:
    """Code ``residual`` (C, H, W) int32 with cells ``skip`` dropped → (payload, residual as
    decoded: zero in skipped cells)."""
    kept = residual[:, ~skip].astype(np.int64)  # (C, n)
    r = tables.radius
    n_skip = int(skip.sum())
    p_skip = _probability(n_skip / skip.size)
    decoded = np.where(skip[None], 0, residual).astype(np.int32)
    coder = constriction.stream.stack.AnsCoder()
    offset, p_still = 0, 1
    if kept.shape[1]:
        still = ~np.any(kept, axis=1)
        moving = np.flatnonzero(~still)
        p_still = _probability(float(still.mean()))
        symbols, raw = to_symbols(kept[moving], r)
        offset, rungs = _choose_rungs(tables, level, symbols, moving)
        deltas = rungs - tables.rungs(level, offset)[moving]
        # ANS is a stack: push what the decoder reads last first.
        push_escapes(coder, raw)
        for i in range(len(moving) - 1, -1, -1):
            coder.encode_reverse(symbols[i], tables.model(int(rungs[i])))
        if len(moving):
            coder.encode_reverse((deltas + DELTA_RADIUS).astype(np.int32), _DELTA_MODEL)
        coder.encode_reverse((~still).astype(np.int32), _flag_model(p_still))
    coder.encode_reverse((~skip).reshape(-1).astype(np.int32), _flag_model(p_skip))
    body = coder.get_compressed().astype("<u4").tobytes()
    return _HEADER.pack(offset, p_skip, p_still) + body, decoded


def decode_residual(
    tables: InterTables, level: int, payload: bytes, shape: tuple[int, int, int]
) -> np.ndarray:
    """Inverse of :func:`encode_residual`: the residual, zero in skipped cells."""
    c, h, w = shape
    if len(payload) < _HEADER.size or (len(payload) - _HEADER.size) % 4:
        raise EntropyCodingError(
            f"P-frame payload of {len(payload)} bytes is not a {_HEADER.size}-byte header "
            "followed by whole 32-bit words"
        )
    offset, p_skip, p_still = _HEADER.unpack_from(payload)
    if offset not in OFFSETS:
        raise EntropyCodingError(
            f"P-frame scale offset {offset} outside {OFFSETS.start}..{OFFSETS.stop - 1}"
        )
    for name, p in (("skip", p_skip), ("still-channel", p_still)):
        if not 1 <= p < 1 << PRECISION:
            raise EntropyCodingError(
                f"P-frame {name} probability {p} outside 1..{(1 << PRECISION) - 1}"
            )
    words = np.frombuffer(payload, dtype="<u4", offset=_HEADER.size).astype(np.uint32)
    r = tables.radius
    residual = np.zeros((c, h * w), dtype=np.int64)
    try:
        decoder = constriction.stream.stack.AnsCoder(words)
        replenish = decoder.decode(_flag_model(p_skip), h * w).astype(bool)
        n = int(replenish.sum())
        if n:
            moving = np.flatnonzero(decoder.decode(_flag_model(p_still), c))
            rungs = np.empty(0, dtype=np.int64)
            if len(moving):
                deltas = decoder.decode(_DELTA_MODEL, len(moving)).astype(np.int64)
                rungs = tables.rungs(level, offset)[moving] + deltas - DELTA_RADIUS
            if np.any((rungs < 0) | (rungs >= len(LADDER))):
                raise EntropyCodingError("P-frame rung delta points outside the ladder")
            symbols = np.empty((len(moving), n), dtype=np.int32)
            for i, rung in enumerate(rungs):
                symbols[i] = decoder.decode(tables.model(int(rung)), n)
            values = from_symbols(decoder, symbols, r)
            block = np.zeros((len(moving), h * w), dtype=np.int64)
            block[:, replenish] = values
            residual[moving] = block
        leftover = not decoder.is_empty()
    except (ValueError, RuntimeError, AssertionError) as exc:
        if isinstance(exc, EntropyCodingError):
            raise
        raise EntropyCodingError(f"P-frame payload does not decode: {exc}") from exc
    if leftover:
        raise EntropyCodingError("P-frame payload has data left after the last symbol")
    if residual.size and (residual.min() < -(2**31) or residual.max() >= 2**31):
        raise EntropyCodingError("decoded residual outside int32")
    return residual.astype(np.int32).reshape(c, h, w)


def _probability(fraction: float) -> int:
    """A fraction as a 16-bit frequency, never 0 or all (both symbols stay codable)."""
    return int(np.clip(round(fraction * (1 << PRECISION)), 1, (1 << PRECISION) - 1))


def _choose_rungs(
    tables: InterTables, level: int, symbols: np.ndarray, channels: np.ndarray
) -> tuple[int, np.ndarray]:
    """(frame offset, rung per moving channel) with the fewest bits, deltas included.

    From each channel's symbol histogram (C × K counts), so it costs the same whatever
    the number of replenished cells."""
    k = tables.freqs.shape[1]
    m = len(channels)
    if not m:
        return 0, np.empty(0, dtype=np.int64)
    flat = (symbols + (np.arange(m) * k)[:, None]).reshape(-1)
    counts = np.bincount(flat, minlength=m * k).reshape(m, k).astype(np.float64)
    bits = -(counts @ tables.log2_probs.T)  # (m, rungs): residual bits at each rung
    base = tables.base[level].astype(np.int64)[channels]
    every = np.arange(len(LADDER))
    delta_bits = -np.log2(DELTA_FREQS.astype(np.float64) / (1 << PRECISION))
    best: tuple[float, int, np.ndarray] | None = None
    for offset in OFFSETS:
        centre = np.clip(base + offset, 0, len(LADDER) - 1)
        cost = bits + delta_bits[every[None, :] - centre[:, None] + DELTA_RADIUS]
        rungs = cost.argmin(1)
        total = float(cost[np.arange(m), rungs].sum())
        if best is None or total < best[0]:
            best = (total, offset, rungs)
    assert best is not None
    return best[1], best[2]


def _flag_model(p_first: int) -> object:
    """Two symbols, the first with frequency ``p_first`` of 2**16: exact everywhere (built
    per frame; the probability is the frame's own)."""
    probs = np.array([p_first, (1 << PRECISION) - p_first], dtype=np.float64) / (1 << PRECISION)
    return constriction.stream.model.Categorical(probs, perfect=False)
