"""Integer entropy tables and the coder that uses them.

The decoder's probabilities are integer data stored in the bundle, never the output
of a float network, so decoding is bit-exact on every machine and runtime. Each
(rate level, channel) has a frequency table over ``2 * radius + 2`` symbols: values
``-radius..radius`` and one escape symbol; an escaped value is then coded raw with
a uniform model. The arithmetic is constriction's ANS coder; the tables are handed
to it as dyadic fractions (count / 2**PRECISION), which it represents exactly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cached_property

import constriction
import numpy as np

PRECISION = 16
"""Every table sums to 2**PRECISION; constriction's default coder has 24 bits."""

ESCAPE_BITS = 32
"""Raw bits of an escaped value (two 16-bit words), in every coder's bit estimates."""


class EntropyCodingError(ValueError):
    """A payload that does not decode under these tables."""


def symbol_crc(q: np.ndarray) -> int:
    """CRC-32 of an integer symbol tensor as int32, little-endian, C order.

    The encoder stores it beside the payload and the decoder recomputes it on what it
    decoded: ANS decodes most corrupted payloads to *something*, so decoding without
    an error is no proof that the symbols are the ones that were coded.
    """
    return zlib.crc32(np.ascontiguousarray(q, dtype="<i4").data)


_ESCAPE_WORD = constriction.stream.model.Uniform(1 << 16)
"""An escaped value goes raw, as two 16-bit words."""


def to_symbols(values: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Integers → (symbols: value + radius, or the escape 2·radius + 1 beyond ±radius;
    the escaped values, raw, in order). Shared by the intra and the P-frame coders."""
    wide = values.astype(np.int64)
    escaped = np.abs(wide) > radius
    raw = wide[escaped]
    if raw.size and (raw.min() < -(2**31) or raw.max() >= 2**31):
        raise EntropyCodingError("value outside the 32-bit escape range")
    return np.where(escaped, 2 * radius + 1, wide + radius).astype(np.int32), raw


def channel_histograms(symbols: np.ndarray, k: int) -> np.ndarray:
    """(C, K) int64 counts of each channel's symbols (``symbols``: (C, n), to_symbols):
    what encoder estimates weigh bit costs with, whatever n."""
    c = symbols.shape[0]
    flat = (symbols + (np.arange(c) * k)[:, None]).reshape(-1)
    return np.bincount(flat, minlength=c * k).reshape(c, k)


def push_escapes(coder: object, raw: np.ndarray) -> None:
    """Push escaped values onto an ANS stack; pushed first, they are read last."""
    if raw.size:
        halves = (raw + 2**31).astype(np.uint64)
        words = np.stack([halves >> 16, halves & 0xFFFF], axis=1).reshape(-1)
        coder.encode_reverse(words.astype(np.int32), _ESCAPE_WORD)  # type: ignore[attr-defined]


def from_symbols(decoder: object, symbols: np.ndarray, radius: int) -> np.ndarray:
    """Inverse of :func:`to_symbols` (+ :func:`push_escapes`): int64 values, the escaped
    ones read from ``decoder`` after the symbols."""
    values = symbols.astype(np.int64) - radius
    escaped = symbols == 2 * radius + 1
    n = int(escaped.sum())
    if n:
        halves = decoder.decode(_ESCAPE_WORD, 2 * n).astype(np.int64)  # type: ignore[attr-defined]
        values[escaped] = ((halves[0::2] << 16) | halves[1::2]) - 2**31
    return values


def quantize_frequencies(counts: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Turn nonnegative counts (..., K) into integer tables summing to 2**precision.

    Every symbol keeps at least frequency 1, so anything can still be coded.
    """
    counts = np.asarray(counts, dtype=np.float64)
    k = counts.shape[-1]
    total = 1 << precision
    if k > total:
        raise ValueError(f"alphabet of {k} symbols does not fit {precision}-bit tables")
    probs = counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1e-12)
    freqs = np.floor(probs * (total - k)).astype(np.int64) + 1
    # Hand the rounding remainder to each table's most frequent symbol.
    deficit = total - freqs.sum(axis=-1)
    top = np.argmax(freqs, axis=-1)
    np.put_along_axis(
        freqs,
        top[..., None],
        np.take_along_axis(freqs, top[..., None], -1) + deficit[..., None],
        -1,
    )
    return freqs.astype(np.uint32)


@dataclass(frozen=True)
class EntropyTables:
    freqs: np.ndarray
    """uint32 (levels, channels, 2*radius+2); each row sums to 2**PRECISION."""
    radius: int
    _models: dict[tuple[int, int], object] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        k = self.freqs.shape[-1]
        if k != 2 * self.radius + 2:
            raise ValueError(
                f"tables have {k} symbols, radius {self.radius} needs {2 * self.radius + 2}"
            )
        sums = self.freqs.astype(np.int64).sum(axis=-1)
        if not np.all(sums == 1 << PRECISION) or np.any(self.freqs == 0):
            raise ValueError(f"every table must be positive and sum to 2**{PRECISION}")

    @property
    def num_levels(self) -> int:
        return int(self.freqs.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.freqs.shape[1])

    @property
    def escape(self) -> int:
        return 2 * self.radius + 1

    def expected_bits(self, level: int, latent_shape: tuple[int, int, int]) -> float:
        """Bits :meth:`encode` is expected to spend on a (C, H, W) tensor at ``level``.

        The tables' own entropy, per channel, times the positions per channel, plus
        the raw 32 bits of each escaped value and one word of ANS state. It is exact
        in expectation when the symbols follow the tables (the data they were fitted
        on); on other content the actual size differs by the cross-entropy gap, which
        a rate controller measures online. Pure numpy, no coder involved.
        """
        channels, h, w = latent_shape
        self._check(channels, level)
        probs = self.freqs[level].astype(np.float64) / (1 << PRECISION)
        per_symbol = -(probs * np.log2(probs)).sum(axis=-1) + probs[:, self.escape] * ESCAPE_BITS
        return float(per_symbol.sum()) * h * w + 32.0

    def prepare(self) -> None:
        for level in range(self.num_levels):
            for channel in range(self.num_channels):
                self._model(level, channel)

    def _model(self, level: int, channel: int) -> object:
        key = (level, channel)
        model = self._models.get(key)
        if model is None:
            probs = self.freqs[level, channel].astype(np.float64) / (1 << PRECISION)
            model = constriction.stream.model.Categorical(probs, perfect=False)
            self._models[key] = model
        return model

    def encode(self, q: np.ndarray, level: int) -> bytes:
        """Entropy-code integer symbols ``q`` (channels, H, W) at ``level``."""
        self._check(q.shape[0], level)
        coder = constriction.stream.stack.AnsCoder()
        self.push(coder, q.reshape(q.shape[0], -1), level)
        return coder.get_compressed().astype("<u4").tobytes()

    def push(self, coder: object, values: np.ndarray, level: int) -> None:
        """Push (channels, n) integers onto an ANS stack with ``level``'s tables; the
        decoder reads them back with :meth:`pop` (escapes after the symbols)."""
        symbols, raw = to_symbols(values, self.radius)
        # ANS is a stack: push what the decoder reads last first.
        push_escapes(coder, raw)
        for c in range(symbols.shape[0] - 1, -1, -1):
            coder.encode_reverse(symbols[c], self._model(level, c))  # type: ignore[attr-defined]

    def pop(self, decoder: object, level: int, n: int) -> np.ndarray:
        """Inverse of :meth:`push`: int64 (channels, n)."""
        symbols = np.empty((self.num_channels, n), dtype=np.int32)
        for c in range(self.num_channels):
            symbols[c] = decoder.decode(self._model(level, c), n)  # type: ignore[attr-defined]
        return from_symbols(decoder, symbols, self.radius)

    def coded_bits(self, q: np.ndarray, level: int) -> float:
        """About the bits :meth:`encode` spends on ``q`` (C, H, W): the tables' own
        probabilities over each channel's histogram, escapes raw (ANS adds a word or two).
        For encoder decisions only."""
        symbols, _ = to_symbols(q.reshape(q.shape[0], -1), self.radius)
        counts = channel_histograms(symbols, self.freqs.shape[-1])
        return float((counts * self.bit_costs[level]).sum())

    @cached_property
    def log2_probs(self) -> np.ndarray:
        """(levels, channels, K) float64: for encoder decisions only (never decoding)."""
        return np.log2(self.freqs.astype(np.float64) / (1 << PRECISION))

    @cached_property
    def bit_costs(self) -> np.ndarray:
        """(levels, channels, K) float64: the bits of each symbol, an escape's raw value
        included (encoder decisions only)."""
        costs = -self.log2_probs
        costs[..., self.escape] += ESCAPE_BITS
        return costs

    def decode(self, payload: bytes, level: int, shape: tuple[int, int, int]) -> np.ndarray:
        """Inverse of :meth:`encode`; returns int32 (channels, H, W)."""
        channels, h, w = shape
        self._check(channels, level)
        if len(payload) % 4:
            raise EntropyCodingError(f"payload of {len(payload)} bytes is not whole 32-bit words")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        try:
            decoder = constriction.stream.stack.AnsCoder(words)
            values = self.pop(decoder, level, h * w)
            leftover = not decoder.is_empty()
        except (ValueError, RuntimeError, AssertionError) as exc:
            raise EntropyCodingError(f"payload does not decode: {exc}") from exc
        if leftover:
            raise EntropyCodingError("payload has data left after the last symbol")
        return values.astype(np.int32).reshape(channels, h, w)

    def _check(self, channels: int, level: int) -> None:
        if not 0 <= level < self.num_levels:
            raise EntropyCodingError(f"rate level {level} outside 0..{self.num_levels - 1}")
        if channels != self.num_channels:
            raise EntropyCodingError(
                f"tensor has {channels} channels, the tables have {self.num_channels}"
            )
