"""P-frames: a latent coded against the camera's last decoded latent.

    reference symbols q_ref (level l_ref) ─► predict at level l ─► p        (edge and cloud alike)
    q = quantize(y, l)  ─►  d = q − p
        per cell (h, w): skip when Σ_c d² ≤ threshold, else replenish (exactly q)
    format 3 (encode_cells; container version 5):
        payload = (offset + 8) | (intra shift + 8) << 4 u8 | P(still channel) u8 |
                  P(residual cell) u8 |
                  ANS[skip flags, row by row, each in the context of the three cells above and
                      of the reference's flags, adaptively (nothing sent for them); the rest
                      as format 2, intra cells with the tables of level l + intra shift],
                  trailing zero bytes dropped
    format 2 (encode_cells(p_format=2); container version 4, still decoded):
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
    ESCAPE_BITS,
    PRECISION,
    EntropyCodingError,
    EntropyTables,
    channel_histograms,
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
    replenished: np.ndarray | None = field(default=None, compare=False, repr=False)
    """(H, W) bool, the cells this P-frame replenished (None: a keyframe, or a format-1
    P-frame): the next P-frame's flags are coded in its context (format 3). Both ends
    rebuild it from the same chain, and a mismatch fails the next frame's symbol CRC."""


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

    @cached_property
    def bit_costs(self) -> np.ndarray:
        """(rungs, K) float64: bits of each residual symbol, an escape's raw value included."""
        costs = -self.log2_probs
        costs[:, -1] += ESCAPE_BITS
        return costs

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
    counts = channel_histograms(symbols, k).astype(np.float64)
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


# P-frames, formats 2 (container version 4) and 3 (version 5): what changed is coded cell
# by cell.

P_FORMAT = 3
"""The P-frame format encode_cells writes (2: container version 4; format 1: encode_residual,
container version 3)."""
CELL_FORMATS = (2, 3)
CONTEXTS = 3
"""Spatial contexts of a cell's replenish flag: replenished cells among the three above it
(up-left, up, up-right), capped at 2. Moving people span several cells, so flags come in
blobs (fixed-camera dev set, level 3: ideally 31.5 → 22.7 B a P-frame, side information
included)."""
TEMPORAL = 3
"""Format 3's temporal contexts, from the reference frame's replenish map: 0, neither the
cell nor its four neighbours were replenished; 1, a neighbour only; 2, the cell itself.
People keep walking: with both, the flags ideally cost 28.2 → 19.8 B a P-frame (fixed
camera, level 3, tuning clips)."""
FLAG_PRIOR = np.array(
    [[31, 1], [28, 4], [21, 11], [30, 2], [24, 8], [18, 14], [22, 10], [14, 18], [5, 27]],
    dtype=np.int64,
)
"""Format 3's starting counts (skip, replenish) per context (spatial × TEMPORAL + temporal):
32 cells' worth at the replenish rates measured on the fixed-camera tuning clips (the two
clips beside the bench's, levels 3 and 4: the rates agree within a few percent). The
counts then adapt row by row, so nothing is sent (9 probabilities as 16-bit integers would
cost 18 B). By the model's own probabilities the flags cost 21.4 / 24.1 B a P-frame on the
two clips at level 3 (26.8 / 29.7 at level 4), against format 2's 34.2 / 36.4 (40.4 /
42.7), its 6 B of sent probabilities included. The priors were fitted on these clips;
fitted on one and judged on the other they gave 21.8 / 24.5 B at level 3."""
_HEADER_CELLS = struct.Struct("<b3HHH")
"""format 2: scale offset | P(skip) per context | P(still channel) | P(residual-coded cell)"""
_HEADER_CELLS_3 = struct.Struct("<BBB")
"""format 3: scale offset + 8 | (intra shift + 8) << 4, then P(still channel) u8 |
P(residual-coded cell) u8 (probability8)"""
INTRA_SHIFTS = range(-4, 5)
"""Format 3 codes a frame's intra cells with the keyframe tables of level l + shift, the
shift the encoder finds cheapest: replenished cells hold people, busier than the average
cell the tables were fitted to (fixed-camera tuning clips: −4% of their bits at levels 3
and 4; a keyframe gains nothing from it)."""


def flag_contexts(above: np.ndarray) -> np.ndarray:
    """The contexts of a row's cells from the replenish flags of the row above (or of
    rows, along the last axis)."""
    flags = above.astype(np.int64)
    count = flags.copy()
    count[..., 1:] += flags[..., :-1]
    count[..., :-1] += flags[..., 1:]
    return np.minimum(count, CONTEXTS - 1)


def temporal_contexts(previous: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) int64: each cell's temporal context from the reference's replenish map
    (None: the reference is a keyframe, nothing was replenished)."""
    if previous is None or previous.shape != shape:
        return np.zeros(shape, dtype=np.int64)
    near = previous.copy()
    near[1:] |= previous[:-1]
    near[:-1] |= previous[1:]
    near[:, 1:] |= previous[:, :-1]
    near[:, :-1] |= previous[:, 1:]
    return previous.astype(np.int64) + near


def _flag_probabilities(p_skip: tuple[int, ...]) -> np.ndarray:
    """(CONTEXTS, 2) dyadic probabilities of (skip, replenish) per context."""
    first = np.array(p_skip, dtype=np.float64)
    return np.stack([first, (1 << PRECISION) - first], axis=1) / (1 << PRECISION)


def _adaptive_probabilities(counts: np.ndarray) -> np.ndarray:
    """(n, 2) probabilities of (skip, replenish) from (…, 2) counts (skip, replenish):
    integer division, then an exact dyadic float (the same on every machine)."""
    first = np.clip((counts[..., 0] << PRECISION) // counts.sum(-1), 1, (1 << PRECISION) - 1)
    return _flag_probabilities(tuple(first.reshape(-1).tolist()))


class _FlagRows:
    """The probabilities of each row's replenish flags as the decoder reads them row by
    row: format 2, the frame's three sent probabilities in the spatial contexts; format 3,
    counts in 9 spatial × temporal contexts that start at FLAG_PRIOR and adapt."""

    def __init__(
        self, sent: tuple[int, ...], previous: np.ndarray | None, shape: tuple[int, int]
    ) -> None:
        self.table = _flag_probabilities(sent) if sent else None
        self.temporal = temporal_contexts(previous, shape)
        self.counts = FLAG_PRIOR.copy()
        self.contexts = np.zeros(shape[1], dtype=np.int64)

    def probabilities(self, row: int, above: np.ndarray) -> np.ndarray:
        spatial = flag_contexts(above)
        if self.table is not None:
            return self.table[spatial]
        self.contexts = spatial * TEMPORAL + self.temporal[row]
        return _adaptive_probabilities(self.counts[self.contexts])

    def saw(self, flags: np.ndarray) -> None:
        if self.table is None:
            np.add.at(self.counts, (self.contexts, flags.astype(np.int64)), 1)


def probability8(p16: int) -> int:
    """A 16-bit probability sent in 8 bits (format 3): ``(v << 8) | 128`` is what is used."""
    return min(p16 >> 8, 255)


def _from8(v: int) -> int:
    return (v << 8) | 128


_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)
"""The model family for symbols whose probabilities come per symbol (the flags)."""


def encode_cells(
    inter: InterTables,
    intra: EntropyTables,
    level: int,
    prediction: np.ndarray,
    q: np.ndarray,
    skip: np.ndarray,
    previous: np.ndarray | None = None,
    p_format: int = P_FORMAT,
) -> tuple[bytes, np.ndarray]:
    """A P-frame of format 3 (or 2): the symbols ``q`` (C, H, W) against ``prediction``, the
    cells ``skip`` kept from it → (payload, the symbols the decoder rebuilds); ``previous``:
    the reference's replenish map (format 3 codes the flags in its context).

    Every replenished cell is exact; each is coded as a residual (the Laplace ladder, as
    format 1) or intra (the keyframe tables), whichever the encoder expects to be shorter:
    a cell a person walked into changed completely, and its residual spreads wider than
    the values themselves. On the fixed-camera dev set (30 frames at 5 fps) 90% / 54% of
    the replenished cells go intra at levels 3 / 4 (all of a frame's where that is shorter),
    and with the skip flags in context P-frames, container included, shrink 18% / 13%:
    366 → 300 B and 596 → 518 B (format 2). Format 3 codes the flags adaptively in spatial
    and temporal context, the intra cells with the tables of the cheapest neighbouring
    level (INTRA_SHIFTS), sends its two probabilities in 8 bits and drops the ANS words'
    trailing zero bytes: on the fixed-camera tuning clips, payloads of 451 / 533 B at
    level 3 became 418 / 501 B, and 795 / 928 B at level 4 became 769 / 903 B."""
    if p_format not in CELL_FORMATS:
        raise ValueError(f"P-frame format {p_format}: encode_cells writes {CELL_FORMATS}")
    h, w = skip.shape
    replenish = ~skip
    spatial = np.zeros((h, w), dtype=np.int64)
    spatial[1:] = flag_contexts(replenish[:-1])
    p_skip: tuple[int, ...] = ()
    if p_format == 2:
        p_skip = tuple(
            _probability(float(skip[spatial == k].mean())) if np.any(spatial == k) else 1 << 15
            for k in range(CONTEXTS)
        )
        flag_probabilities = _flag_probabilities(p_skip)[spatial.reshape(-1)]
    else:
        contexts = spatial * TEMPORAL + temporal_contexts(previous, (h, w))
        # The counts each row starts from (what the decoder holds when it reaches it): the
        # prior plus every earlier row's (context, flag) tally, all rows at once.
        k = len(FLAG_PRIOR)
        tally = np.zeros((h, k * 2), dtype=np.int64)
        np.add.at(tally, (np.arange(h)[:, None], contexts * 2 + replenish), 1)
        before = np.cumsum(tally, axis=0) - tally
        counts = FLAG_PRIOR.reshape(1, k, 2) + before.reshape(h, k, 2)
        flag_probabilities = _adaptive_probabilities(counts[np.arange(h)[:, None], contexts])
    residual = (q.astype(np.int64) - prediction)[:, replenish]  # (C, n)
    values = q[:, replenish].astype(np.int64)
    flag_symbols = replenish.reshape(-1).astype(np.int32)

    def coded(as_residual: np.ndarray) -> bytes:
        coder = constriction.stream.stack.AnsCoder()
        offset, p_still = 0, 1
        p_residual = _probability(float(as_residual.mean()) if len(as_residual) else 0.5)
        if p_format == 3:
            p_residual = _from8(probability8(p_residual))
        # ANS is a stack: push what the decoder reads last first.
        if np.any(~as_residual):
            intra.push(coder, values[:, ~as_residual], level + shift)
        if np.any(as_residual):
            offset, p_still = _push_residuals(
                coder, inter, level, residual[:, as_residual], eight_bit=p_format == 3
            )
        if len(as_residual):
            coder.encode_reverse((~as_residual).astype(np.int32), _flag_model(p_residual))
        coder.encode_reverse(flag_symbols, _CATEGORICAL, flag_probabilities)
        body = coder.get_compressed().astype("<u4").tobytes()
        if p_format == 2:
            return _HEADER_CELLS.pack(offset, *p_skip, p_still, p_residual) + body
        # The last word's high bytes are often zero; the decoder pads them back.
        packed = (offset + 8) | ((shift + 8) << 4)
        return _HEADER_CELLS_3.pack(
            packed, probability8(p_still), probability8(p_residual)
        ) + body.rstrip(b"\0")

    intra_symbols, _ = to_symbols(values, intra.radius)
    shift = _intra_shift(intra, level, intra_symbols) if p_format == 3 else 0
    split, saved = _residual_cells(inter, intra, level + shift, level, residual, intra_symbols)
    payload = coded(split)
    if np.any(split) and saved < _SIDE_BITS_PER_CHANNEL * q.shape[0]:
        # The residual cells share side information (a flag and a rung per channel) that
        # the per-cell choice does not see: with few of them, all intra may be shorter
        # (fixed-camera dev set, level 3: 265 → 256 B a P-frame payload). Where they save
        # more than that side information can cost, it cannot be: no second coding.
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
    previous: np.ndarray | None = None,
    p_format: int = P_FORMAT,
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_cells` → (the decoded symbols, int64 (C, H, W); the
    replenish map, (H, W) bool: the next P-frame's temporal context)."""
    c, h, w = prediction.shape
    if p_format == 2:
        if len(payload) < _HEADER_CELLS.size or (len(payload) - _HEADER_CELLS.size) % 4:
            raise EntropyCodingError(
                f"P-frame payload of {len(payload)} bytes is not a {_HEADER_CELLS.size}-byte "
                "header followed by whole 32-bit words"
            )
        offset, *probabilities = _HEADER_CELLS.unpack_from(payload)
        body, shift = payload[_HEADER_CELLS.size :], 0
    elif p_format == 3:
        if len(payload) < _HEADER_CELLS_3.size:
            raise EntropyCodingError(
                f"P-frame payload of {len(payload)} bytes is shorter than its "
                f"{_HEADER_CELLS_3.size}-byte header"
            )
        packed, still8, residual8 = _HEADER_CELLS_3.unpack_from(payload)
        offset, shift = (packed & 15) - 8, (packed >> 4) - 8
        if shift not in INTRA_SHIFTS or not 0 <= level + shift < intra.num_levels:
            raise EntropyCodingError(
                f"P-frame intra shift {shift} at level {level}: the tables of level "
                f"{level + shift} do not exist (levels 0..{intra.num_levels - 1})"
            )
        probabilities = [_from8(still8), _from8(residual8)]
        body = payload[_HEADER_CELLS_3.size :]
        body += b"\0" * (-len(body) % 4)
    else:
        raise EntropyCodingError(f"unknown P-frame format {p_format}")
    if offset not in OFFSETS:
        raise EntropyCodingError(
            f"P-frame scale offset {offset} outside {OFFSETS.start}..{OFFSETS.stop - 1}"
        )
    names = [f"skip (context {k})" for k in range(len(probabilities) - 2)]
    for name, p in zip([*names, "still-channel", "residual-cell"], probabilities, strict=True):
        if not 1 <= p < 1 << PRECISION:
            raise EntropyCodingError(
                f"P-frame {name} probability {p} outside 1..{(1 << PRECISION) - 1}"
            )
    p_still, p_residual = probabilities[-2:]
    words = np.frombuffer(body, dtype="<u4").astype(np.uint32)
    decoded = prediction.astype(np.int64).reshape(c, h * w)
    with _decoding(words) as decoder:
        replenish = np.zeros((h, w), dtype=bool)
        above = np.zeros(w, dtype=bool)
        flags = _FlagRows(tuple(probabilities[:-2]), previous, (h, w))
        for row in range(h):
            replenish[row] = decoder.decode(_CATEGORICAL, flags.probabilities(row, above))
            flags.saw(replenish[row])
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
                decoded[:, fresh] = intra.pop(decoder, level + shift, len(fresh))
    return decoded.reshape(c, h, w), replenish


def _intra_shift(intra: EntropyTables, level: int, symbols: np.ndarray) -> int:
    """The shift of INTRA_SHIFTS whose tables code the replenished cells (their intra
    ``symbols``, (C, n), to_symbols) in the fewest bits, from each channel's histogram."""
    shifts = [d for d in INTRA_SHIFTS if 0 <= level + d < intra.num_levels]
    if not symbols.shape[1]:
        return 0
    counts = channel_histograms(symbols, intra.freqs.shape[-1]).astype(np.float64)
    cost = intra.bit_costs[level + shifts[0] : level + shifts[-1] + 1]  # (shifts, C, K)
    bits = np.tensordot(cost, counts, axes=([1, 2], [0, 1]))
    return shifts[int(bits.argmin())]


def _residual_cells(
    inter: InterTables,
    intra: EntropyTables,
    intra_level: int,
    level: int,
    residual: np.ndarray,
    intra_symbols: np.ndarray,
) -> tuple[np.ndarray, float]:
    """Which replenished cells to code as residuals (the rest intra, with the tables of
    ``intra_level``): per cell, the bits either way, a residual's under the rungs fitted to
    every replenished cell (one pass: fitting them again to the cells left as residuals
    changed P-frames by < 0.2%). → (as residual per cell, the bits that saves by the
    estimate)."""
    n = residual.shape[1]
    if not n:
        return np.ones(0, dtype=bool), 0.0
    # Bits per symbol (an escape's raw bits included), gathered through flat indices: at
    # fine levels most of the latent is replenished, and 2-D fancy indexing was the cost.
    k = intra.freqs.shape[-1]
    intra_cost = intra.bit_costs[intra_level]
    rows = np.arange(intra_cost.shape[0])[:, None] * k
    intra_bits = intra_cost.ravel().take(rows + intra_symbols).sum(0)
    residual_cost = inter.bit_costs
    bits = np.zeros(n)
    moving = np.flatnonzero(np.any(residual, axis=1))
    if len(moving):
        symbols, _ = to_symbols(residual[moving], inter.radius)
        _, rungs = _choose_rungs(inter, level, symbols, moving)
        bits = residual_cost.ravel().take(rungs[:, None] * k + symbols).sum(0)
    as_residual = bits <= intra_bits
    return as_residual, float((intra_bits - bits)[as_residual].sum())


_SIDE_BITS_PER_CHANNEL = 6.0
"""A bound on the residual cells' side information, per channel: a still flag (≤ 1 bit)
and a rung delta (≤ 5 bits where it is not far from the base rung)."""


def _push_residuals(
    coder: object, inter: InterTables, level: int, kept: np.ndarray, eight_bit: bool = False
) -> tuple[int, int]:
    """Push residual cells (C, n), format 1's way: still-channel flags, rung deltas, the
    residuals of moving channels → (offset, P(still)) for the header (``eight_bit``: a
    P(still) that format 3 can send, probability8)."""
    still = ~np.any(kept, axis=1)
    moving = np.flatnonzero(~still)
    p_still = _probability(float(still.mean()))
    if eight_bit:
        p_still = _from8(probability8(p_still))
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
