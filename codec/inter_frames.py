"""P-frames: a latent coded against the camera's last decoded latent.

    reference symbols q_ref (level l_ref) ─► predict at level l ─► p        (edge and cloud alike)
    q = quantize(y, l)  ─►  d = q − p
        per cell (h, w): skip when Σ_c d² ≤ threshold, else replenish (exactly q)
    format 2 (encode_cells; container version 4):
        payload = offset i8 | P(skip | context k) 3×u16 | P(still channel) u16 |
                  P(residual cell) u16 |
                  ANS[skip flags, row by row, each in the context of the three cells above;
                      per replenished cell residual or intra; residual cells as format 1
                      codes them; intra cells with the keyframe tables]
    format 1 (encode_residual; container version 3, still decoded):
        payload = offset i8 | P(skip) u16 | P(still channel) u16 |
                  ANS[skip flags, still-channel flags, rung deltas, residuals of replenished cells]
    decoded q̂ = p where skipped, q elsewhere  ─►  the next frame's reference

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
shrank 29%, 519 → 366 B at level 3 and 842 → 595 B at level 4). Format 2 codes a cell
intra where that is shorter, and its skip flags in context (see encode_cells).
Every table is integer data (the bundle's, or integers in this file), so decoding stays
bit-exact; the prediction across levels is IEEE float32 multiplies and a rint, which every
machine computes the same.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

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
_DELTA_BITS = -np.log2(DELTA_FREQS.astype(np.float64) / (1 << PRECISION))
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
    n_skip = int(skip.sum())
    p_skip = _probability(n_skip / skip.size)
    decoded = np.where(skip[None], 0, residual).astype(np.int32)
    coder = constriction.stream.stack.AnsCoder()
    offset, p_still = 0, 1
    # ANS is a stack: push what the decoder reads last first.
    if kept.shape[1]:
        offset, p_still = _push_residuals(coder, tables, level, kept)
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
    residual = np.zeros((c, h * w), dtype=np.int64)
    with _decoding(words) as decoder:
        replenish = decoder.decode(_flag_model(p_skip), h * w).astype(bool)
        n = int(replenish.sum())
        if n:
            residual[:, replenish] = _pop_residuals(decoder, tables, level, offset, p_still, c, n)
    if residual.size and (residual.min() < -(2**31) or residual.max() >= 2**31):
        raise EntropyCodingError("decoded residual outside int32")
    return residual.astype(np.int32).reshape(c, h, w)


@contextmanager
def _decoding(words: np.ndarray) -> Iterator[Any]:
    """An ANS decoder over a P-frame's words: whatever fails inside is an
    EntropyCodingError naming the payload, and so is data left after the last symbol."""
    try:
        decoder = constriction.stream.stack.AnsCoder(words)
        yield decoder
        leftover = not decoder.is_empty()
    except EntropyCodingError:
        raise
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise EntropyCodingError(f"P-frame payload does not decode: {exc}") from exc
    if leftover:
        raise EntropyCodingError("P-frame payload has data left after the last symbol")


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
    offsets = np.arange(OFFSETS.start, OFFSETS.stop)
    centre = np.clip(base[:, None] + offsets[None, :], 0, len(LADDER) - 1)  # (m, offsets)
    every = np.arange(len(LADDER))
    # (m, offsets, rungs): bits of each channel at each rung, its delta from the centre included
    cost = bits[:, None, :] + _DELTA_BITS[every[None, None, :] - centre[..., None] + DELTA_RADIUS]
    rungs = cost.argmin(-1)  # (m, offsets)
    totals = np.take_along_axis(cost, rungs[..., None], -1)[..., 0].sum(0)
    best = int(totals.argmin())  # the first of equals, as the offsets run
    return int(offsets[best]), rungs[:, best]


def _flag_model(p_first: int) -> object:
    """Two symbols, the first with frequency ``p_first`` of 2**16: exact everywhere (built
    per frame; the probability is the frame's own)."""
    probs = np.array([p_first, (1 << PRECISION) - p_first], dtype=np.float64) / (1 << PRECISION)
    return constriction.stream.model.Categorical(probs, perfect=False)


# P-frames, format 2 (container version 4 on): what changed is coded cell by cell.

P_FORMAT = 2
"""The P-frame format encode_cells writes (format 1: encode_residual, container version 3)."""

CONTEXTS = 3
"""Contexts of a cell's replenish flag: replenished cells among the three above it
(up-left, up, up-right), capped at 2. Moving people span several cells, so flags come in
blobs (fixed-camera dev set, level 3: ideally 31.5 → 22.7 B a P-frame, side information
included)."""
_HEADER_CELLS = struct.Struct("<b3HHH")
"""scale offset | P(skip) per context | P(still channel) | P(residual-coded cell)"""


def flag_contexts(above: np.ndarray) -> np.ndarray:
    """The contexts of a row's cells from the replenish flags of the row above (or of
    rows, along the last axis)."""
    flags = above.astype(np.int64)
    count = flags.copy()
    count[..., 1:] += flags[..., :-1]
    count[..., :-1] += flags[..., 1:]
    return np.minimum(count, CONTEXTS - 1)


def _flag_probabilities(p_skip: tuple[int, ...]) -> np.ndarray:
    """(CONTEXTS, 2) dyadic probabilities of (skip, replenish) per context."""
    first = np.array(p_skip, dtype=np.float64)
    return np.stack([first, (1 << PRECISION) - first], axis=1) / (1 << PRECISION)


_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)
"""The model family for symbols whose probabilities come per symbol (the flags)."""


def encode_cells(
    inter: InterTables,
    intra: EntropyTables,
    level: int,
    prediction: np.ndarray,
    q: np.ndarray,
    skip: np.ndarray,
) -> tuple[bytes, np.ndarray]:
    """A P-frame, format 2: the symbols ``q`` (C, H, W) against ``prediction``, the cells
    ``skip`` kept from it → (payload, the symbols the decoder rebuilds).

    Every replenished cell is exact; each is coded as a residual (the Laplace ladder, as
    format 1) or intra (the keyframe tables), whichever the encoder expects to be shorter:
    a cell a person walked into changed completely, and its residual spreads wider than
    the values themselves. On the fixed-camera dev set (30 frames at 5 fps) 90% / 54% of
    the replenished cells go intra at levels 3 / 4 (all of a frame's where that is shorter),
    and with the skip flags in context P-frames, container included, shrink 18% / 13%:
    366 → 300 B and 596 → 518 B."""
    h, w = skip.shape
    replenish = ~skip
    contexts = np.zeros((h, w), dtype=np.int64)
    contexts[1:] = flag_contexts(replenish[:-1])
    p_skip = tuple(
        _probability(float(skip[contexts == k].mean())) if np.any(contexts == k) else 1 << 15
        for k in range(CONTEXTS)
    )
    residual = (q.astype(np.int64) - prediction)[:, replenish]  # (C, n)
    values = q[:, replenish].astype(np.int64)
    flag_symbols = replenish.reshape(-1).astype(np.int32)
    flag_probabilities = _flag_probabilities(p_skip)[contexts.reshape(-1)]

    def coded(as_residual: np.ndarray) -> bytes:
        coder = constriction.stream.stack.AnsCoder()
        offset, p_still = 0, 1
        p_residual = _probability(float(as_residual.mean()) if len(as_residual) else 0.5)
        # ANS is a stack: push what the decoder reads last first.
        if np.any(~as_residual):
            intra.push(coder, values[:, ~as_residual], level)
        if np.any(as_residual):
            offset, p_still = _push_residuals(coder, inter, level, residual[:, as_residual])
        if len(as_residual):
            coder.encode_reverse((~as_residual).astype(np.int32), _flag_model(p_residual))
        coder.encode_reverse(flag_symbols, _CATEGORICAL, flag_probabilities)
        body = coder.get_compressed().astype("<u4").tobytes()
        return _HEADER_CELLS.pack(offset, *p_skip, p_still, p_residual) + body

    split = _residual_cells(inter, intra, level, residual, values)
    payload = coded(split)
    if np.any(split):
        # The residual cells share side information (a flag and a rung per channel) that
        # the per-cell choice does not see: with few of them, all intra may be shorter
        # (fixed-camera dev set, level 3: 265 → 256 B a P-frame payload).
        every_intra = coded(np.zeros_like(split))
        payload = min(payload, every_intra, key=len)
    decoded = np.where(skip[None], prediction, q).astype(np.int32)
    return payload, decoded


def decode_cells(
    inter: InterTables,
    intra: EntropyTables,
    level: int,
    payload: bytes,
    prediction: np.ndarray,
) -> np.ndarray:
    """Inverse of :func:`encode_cells`: the decoded symbols, int64 (C, H, W)."""
    c, h, w = prediction.shape
    if len(payload) < _HEADER_CELLS.size or (len(payload) - _HEADER_CELLS.size) % 4:
        raise EntropyCodingError(
            f"P-frame payload of {len(payload)} bytes is not a {_HEADER_CELLS.size}-byte "
            "header followed by whole 32-bit words"
        )
    offset, *probabilities = _HEADER_CELLS.unpack_from(payload)
    if offset not in OFFSETS:
        raise EntropyCodingError(
            f"P-frame scale offset {offset} outside {OFFSETS.start}..{OFFSETS.stop - 1}"
        )
    names = [f"skip (context {k})" for k in range(CONTEXTS)] + ["still-channel", "residual-cell"]
    for name, p in zip(names, probabilities, strict=True):
        if not 1 <= p < 1 << PRECISION:
            raise EntropyCodingError(
                f"P-frame {name} probability {p} outside 1..{(1 << PRECISION) - 1}"
            )
    p_skip, (p_still, p_residual) = tuple(probabilities[:CONTEXTS]), probabilities[CONTEXTS:]
    table = _flag_probabilities(p_skip)
    words = np.frombuffer(payload, dtype="<u4", offset=_HEADER_CELLS.size).astype(np.uint32)
    decoded = prediction.astype(np.int64).reshape(c, h * w)
    with _decoding(words) as decoder:
        replenish = np.zeros((h, w), dtype=bool)
        above = np.zeros(w, dtype=bool)
        for row in range(h):
            replenish[row] = decoder.decode(_CATEGORICAL, table[flag_contexts(above)])
            above = replenish[row]
        cells = np.flatnonzero(replenish.reshape(-1))
        if len(cells):
            as_residual = ~decoder.decode(_flag_model(p_residual), len(cells)).astype(bool)
            coded, fresh = cells[as_residual], cells[~as_residual]
            if len(coded):
                decoded[:, coded] += _pop_residuals(
                    decoder, inter, level, offset, p_still, c, len(coded)
                )
            if len(fresh):
                decoded[:, fresh] = intra.pop(decoder, level, len(fresh))
    return decoded.reshape(c, h, w)


def _residual_cells(
    inter: InterTables, intra: EntropyTables, level: int, residual: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """Which replenished cells to code as residuals (the rest intra): per cell, the bits
    either way, a residual's under the rungs fitted to every replenished cell (one pass:
    fitting them again to the cells left as residuals changed P-frames by < 0.2%)."""
    n = residual.shape[1]
    if not n:
        return np.ones(0, dtype=bool)
    # Bits per symbol (an escape's raw bits included), gathered through flat indices: at
    # fine levels most of the latent is replenished, and 2-D fancy indexing was the cost.
    intra_symbols, _ = to_symbols(values, intra.radius)
    k = intra.freqs.shape[-1]
    intra_cost = -intra.log2_probs[level]
    intra_cost[:, -1] += _ESCAPE_COST
    rows = np.arange(intra_cost.shape[0])[:, None] * k
    intra_bits = intra_cost.ravel().take(rows + intra_symbols).sum(0)
    residual_cost = -inter.log2_probs
    residual_cost[:, -1] += _ESCAPE_COST
    bits = np.zeros(n)
    moving = np.flatnonzero(np.any(residual, axis=1))
    if len(moving):
        symbols, _ = to_symbols(residual[moving], inter.radius)
        _, rungs = _choose_rungs(inter, level, symbols, moving)
        bits = residual_cost.ravel().take(rungs[:, None] * k + symbols).sum(0)
    as_residual = bits <= intra_bits
    return as_residual


_ESCAPE_COST = 32.0
"""Raw bits of an escaped value (two 16-bit words)."""


def _push_residuals(
    coder: object, inter: InterTables, level: int, kept: np.ndarray
) -> tuple[int, int]:
    """Push residual cells (C, n), format 1's way: still-channel flags, rung deltas, the
    residuals of moving channels → (offset, P(still)) for the header."""
    still = ~np.any(kept, axis=1)
    moving = np.flatnonzero(~still)
    p_still = _probability(float(still.mean()))
    symbols, raw = to_symbols(kept[moving], inter.radius)
    offset, rungs = _choose_rungs(inter, level, symbols, moving)
    deltas = rungs - inter.rungs(level, offset)[moving]
    push_escapes(coder, raw)
    for i in range(len(moving) - 1, -1, -1):
        coder.encode_reverse(symbols[i], inter.model(int(rungs[i])))  # type: ignore[attr-defined]
    if len(moving):
        coder.encode_reverse((deltas + DELTA_RADIUS).astype(np.int32), _DELTA_MODEL)  # type: ignore[attr-defined]
    coder.encode_reverse((~still).astype(np.int32), _flag_model(p_still))  # type: ignore[attr-defined]
    return offset, p_still


def _pop_residuals(
    decoder: object, inter: InterTables, level: int, offset: int, p_still: int, c: int, n: int
) -> np.ndarray:
    """Inverse of :func:`_push_residuals`: int64 (C, n)."""
    moving = np.flatnonzero(decoder.decode(_flag_model(p_still), c))  # type: ignore[attr-defined]
    out = np.zeros((c, n), dtype=np.int64)
    if not len(moving):
        return out
    deltas = decoder.decode(_DELTA_MODEL, len(moving)).astype(np.int64)  # type: ignore[attr-defined]
    rungs = inter.rungs(level, offset)[moving] + deltas - DELTA_RADIUS
    if np.any((rungs < 0) | (rungs >= len(LADDER))):
        raise EntropyCodingError("P-frame rung delta points outside the ladder")
    symbols = np.empty((len(moving), n), dtype=np.int32)
    for i, rung in enumerate(rungs):
        symbols[i] = decoder.decode(inter.model(int(rung)), n)  # type: ignore[attr-defined]
    out[moving] = from_symbols(decoder, symbols, inter.radius)
    return out
