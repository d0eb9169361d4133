"""P-frames: what changed against the last decoded latent, per-cell skips, bit-exact decoding.

Format 3 (what compress writes) codes each replenished cell as a residual or intra, and
its flags adaptively in spatial and temporal context; format 2 (container version 4:
flag probabilities sent) and format 1 (version 3, residuals only) must still decode.

Small real codecs (integer tables from discretized Laplacians, inter tables from
build_inter_tables); every payload here is coded and decoded by constriction.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from codec.entropy_tables import (
    EntropyCodingError,
    EntropyTables,
    quantize_frequencies,
    symbol_crc,
    to_symbols,
)
from codec.feature_codec import (
    DEFAULT_SKIP_THRESHOLD,
    EncodedFeatures,
    GainedFeatureCodec,
    UniformFeatureCodec,
)
from codec.inter_frames import (
    LADDER,
    InterTables,
    LatentSymbols,
    _intra_shift,
    _residual_cells,
    build_inter_tables,
    decode_cells,
    decode_residual,
    encode_cells,
    encode_residual,
    flag_contexts,
    skip_map,
    temporal_contexts,
)

SHAPE = (6, 8, 10)
LEVELS = 4


def laplace_tables(spreads: np.ndarray, radius: int = 15) -> EntropyTables:
    """Integer tables for (levels, channels) Laplacians of these spreads, escape last."""
    values = np.arange(-radius, radius + 1)
    counts = np.exp(-np.abs(values) / spreads[..., None])
    escape = np.full((*spreads.shape, 1), 1e-3)
    return EntropyTables(quantize_frequencies(np.concatenate([counts, escape], -1)), radius)


def gained_codec(inter: bool = True) -> GainedFeatureCodec:
    c = SHAPE[0]
    gains = ((2.0 ** np.arange(LEVELS))[:, None] * np.linspace(0.5, 2.0, c)[None]).astype(
        np.float32
    )
    tables = laplace_tables(gains.astype(np.float64))  # latent of unit spread
    return GainedFeatureCodec(
        gains,
        (1.0 / gains).astype(np.float32),
        tables,
        build_inter_tables(tables) if inter else None,
    )


def uniform_codec(inter: bool = True) -> UniformFeatureCodec:
    c = SHAPE[0]
    steps = np.array([1.0, 0.5, 0.25, 0.125], np.float32)
    spreads = np.broadcast_to((1.0 / steps)[:, None], (LEVELS, c)).astype(np.float64)
    tables = laplace_tables(spreads)
    return UniformFeatureCodec(
        mean=np.linspace(-1.0, 1.0, c).astype(np.float32),
        scale=np.linspace(0.5, 3.0, c).astype(np.float32),
        steps=steps,
        tables=tables,
        inter=build_inter_tables(tables) if inter else None,
    )


Codec = GainedFeatureCodec | UniformFeatureCodec
CODECS: dict[str, Callable[..., Codec]] = {"gained": gained_codec, "uniform": uniform_codec}


def features_of(codec: Codec, q: np.ndarray, level: int) -> np.ndarray:
    """Features that quantize to exactly ``q`` at ``level``."""
    y = codec.dequantize(q, level).astype(np.float32)
    assert np.array_equal(codec.quantize(y, level), q)
    return y


def video(codec: Codec, frames: int, seed: int = 0) -> list[np.ndarray]:
    """A latent that drifts: most cells keep still, a moving blob and sensor noise."""
    rng = np.random.default_rng(seed)
    c, h, w = SHAPE
    base = rng.normal(0, 1, SHAPE)
    if isinstance(codec, UniformFeatureCodec):
        base = base * codec.scale[:, None, None] + codec.mean[:, None, None]
        unit = codec.scale[:, None, None]
    else:
        unit = np.ones((c, 1, 1))
    out = []
    for t in range(frames):
        y = base + 0.02 * unit * rng.normal(0, 1, SHAPE)
        i, j = t % (h - 2), (2 * t) % (w - 3)
        y[:, i : i + 2, j : j + 3] += 1.5 * unit[:, :, 0:1] * rng.normal(0, 1, (c, 2, 3))
        out.append(y.astype(np.float32))
    return out


def decode(
    codec: Codec, encoded: EncodedFeatures, reference: LatentSymbols | None
) -> LatentSymbols:
    """What the cloud sees: only the wire fields (no encoder-side ``.symbols``)."""
    wire = EncodedFeatures(
        encoded.rate_level,
        encoded.latent_shape,
        encoded.payload,
        encoded.symbol_crc,
        encoded.reference_crc,
    )
    return codec.decompress_symbols(wire, reference)


@pytest.mark.parametrize("kind", list(CODECS))
def test_identical_frame_skips_every_cell_in_a_few_bytes(kind: str) -> None:
    codec = CODECS[kind]()
    y = video(codec, 1)[0]
    key = codec.compress(y, 2)
    assert key.reference_crc is None and key.symbols is not None
    p = codec.compress(y, 2, reference=key.symbols)
    assert p.reference_crc == key.symbols.crc == key.symbol_crc
    # The 3-byte header and at most two ANS words: no cell is coded.
    assert len(p.payload) <= 3 + 8, len(p.payload)
    assert len(key.payload) > 10 * len(p.payload)
    prediction = key.symbols.q
    decoded, replenished = decode_cells(codec.inter, codec.tables, 2, p.payload, prediction)  # type: ignore[arg-type]
    np.testing.assert_array_equal(decoded, prediction)
    assert not replenished.any()
    got = decode(codec, p, key.symbols)
    assert np.array_equal(got.q, key.symbols.q) and got.crc == key.symbols.crc


def test_a_changed_region_replenishes_only_its_cells() -> None:
    codec = gained_codec()
    level = 2
    rng = np.random.default_rng(1)
    q0 = rng.integers(-6, 7, SHAPE).astype(np.int32)
    key = codec.compress(features_of(codec, q0, level), level)
    q1 = q0.copy()
    q1[:, 2:4, 3:6] += rng.choice([-5, -3, 3, 5], (SHAPE[0], 2, 3)).astype(np.int32)  # moved
    q1[0, 6, 1] += 1  # one step in one channel elsewhere: energy 1, within the threshold
    q1[1, 0, 9] -= 2  # energy 4: still skipped
    assert DEFAULT_SKIP_THRESHOLD >= 4
    assert key.symbols is not None
    p = codec.compress(features_of(codec, q1, level), level, reference=key.symbols)

    decoded, flags = decode_cells(codec.inter, codec.tables, level, p.payload, q0)  # type: ignore[arg-type]
    replenished = (decoded != q0).any(axis=0)
    region = np.zeros(SHAPE[1:], bool)
    region[2:4, 3:6] = True
    assert np.array_equal(replenished, region) and np.array_equal(flags, region)
    assert p.symbols is not None and np.array_equal(p.symbols.replenished, region)  # type: ignore[arg-type]
    assert np.array_equal(~replenished, skip_map(q1 - q0, DEFAULT_SKIP_THRESHOLD))

    got = decode(codec, p, key.symbols)
    assert p.symbols is not None and np.array_equal(got.q, p.symbols.q)
    np.testing.assert_array_equal(got.q[:, region], q1[:, region])  # replenished: exact
    np.testing.assert_array_equal(got.q[:, ~region], q0[:, ~region])  # skipped: the reference
    assert (got.q[0, 6, 1], got.q[1, 0, 9]) == (q0[0, 6, 1], q0[1, 0, 9])
    assert len(p.payload) < len(key.payload) / 3


@pytest.mark.parametrize("kind", list(CODECS))
def test_decoded_symbols_are_the_encoders_reference_frame_after_frame(kind: str) -> None:
    codec = CODECS[kind]()
    levels = [1, 1, 1, 2, 2, 3, 3, 3, 0, 0, 2, 1, 3, 3, 3, 3, 0, 1, 2, 2]
    edge_ref: LatentSymbols | None = None
    cloud_ref: LatentSymbols | None = None
    p_frames = skipped = 0
    for t, (y, level) in enumerate(zip(video(codec, len(levels)), levels, strict=True)):
        enc = codec.compress(y, level, reference=None if t % 10 == 0 else edge_ref)
        got = decode(codec, enc, cloud_ref)
        assert enc.symbols is not None
        assert got.rate_level == enc.symbols.rate_level == level
        assert np.array_equal(got.q, enc.symbols.q), f"frame {t}"
        assert got.q.dtype == np.int32 and got.crc == enc.symbols.crc == enc.symbol_crc
        assert enc.symbol_crc == symbol_crc(enc.symbols.q)
        p_frames += enc.reference_crc is not None
        skipped += int((got.q != codec.quantize(y, level)).any(axis=0).sum())
        edge_ref, cloud_ref = enc.symbols, got
    assert p_frames == len(levels) - 2
    assert skipped > 0, "small changes are skipped, not replenished"


@pytest.mark.parametrize("kind", list(CODECS))
@pytest.mark.parametrize(("ref_level", "level"), [(1, 3), (3, 0), (0, 1), (2, 2)])
def test_level_change_predicts_the_reference_on_the_new_grid(
    kind: str, ref_level: int, level: int
) -> None:
    codec = CODECS[kind]()
    y0, y1 = video(codec, 2, seed=3)
    key = codec.compress(y0, ref_level)
    assert key.symbols is not None
    prediction = codec.predict(key.symbols, level)
    assert prediction.dtype == np.int32 and prediction.shape == SHAPE
    expected = codec.quantize(codec.dequantize(key.symbols.q, ref_level), level)
    np.testing.assert_array_equal(prediction, expected)
    for threshold in (0.0, DEFAULT_SKIP_THRESHOLD):
        p = codec.compress(y1, level, reference=key.symbols, skip_threshold=threshold)
        assert p.rate_level == level and p.reference_crc == key.symbols.crc
        got = decode(codec, p, key.symbols)
        assert p.symbols is not None and np.array_equal(got.q, p.symbols.q)
        if threshold == 0:
            np.testing.assert_array_equal(got.q, codec.quantize(y1, level))


@pytest.mark.parametrize("kind", list(CODECS))
def test_skip_threshold_zero_is_lossless_against_quantize(kind: str) -> None:
    codec = CODECS[kind]()
    ref: LatentSymbols | None = None
    for t, y in enumerate(video(codec, 12, seed=5)):
        level = t % LEVELS
        enc = codec.compress(y, level, reference=ref, skip_threshold=0.0)
        got = decode(codec, enc, ref)
        np.testing.assert_array_equal(got.q, codec.quantize(y, level))
        ref = got


def test_a_wrong_or_missing_reference_is_refused_naming_both_crcs() -> None:
    codec = gained_codec()
    y0, y1 = video(codec, 2)
    key = codec.compress(y0, 1)
    other = codec.compress(y0 + 1.0, 1)
    assert key.symbols is not None and other.symbols is not None
    assert key.symbols.crc != other.symbols.crc
    p = codec.compress(y1, 1, reference=key.symbols)
    with pytest.raises(EntropyCodingError, match=f"{key.symbols.crc:08x}.*{other.symbols.crc:08x}"):
        decode(codec, p, other.symbols)
    with pytest.raises(EntropyCodingError, match=f"{key.symbols.crc:08x}.* is none"):
        decode(codec, p, None)
    # Same CRC, other shape: refused by name too (a forged reference).
    wrong_shape = LatentSymbols(1, np.zeros((6, 4, 4), np.int32), key.symbols.crc)
    with pytest.raises(EntropyCodingError, match=r"differs from its reference's \(6, 4, 4\)"):
        decode(codec, p, wrong_shape)


def test_a_reference_of_another_shape_gives_a_keyframe() -> None:
    """A resolution change on the edge: the old latent cannot predict the new one."""
    codec = gained_codec()
    y = video(codec, 1)[0]
    small = codec.compress(y[:, :4, :5], 1)
    assert small.symbols is not None
    enc = codec.compress(y, 1, reference=small.symbols)
    assert enc.reference_crc is None
    assert np.array_equal(decode(codec, enc, None).q, codec.quantize(y, 1))


def test_huge_residuals_escape_and_round_trip() -> None:
    codec = gained_codec()
    level = 1
    q0 = np.zeros(SHAPE, np.int32)
    q0[2, 3, 3] = -50_000
    key = codec.compress(features_of(codec, q0, level), level)
    q1 = q0.copy()
    q1[0, 0, 0] = 16  # just past the radius (15)
    q1[1, 4, 4] = -1000
    q1[2, 3, 3] = 70_000  # residual 120,000
    q1[3, 7, 9] = 1 << 20
    q1[4, 5, 0] = -(1 << 20)
    assert key.symbols is not None
    p = codec.compress(features_of(codec, q1, level), level, reference=key.symbols)
    got = decode(codec, p, key.symbols)
    np.testing.assert_array_equal(got.q, q1)
    assert p.symbols is not None and got.crc == p.symbols.crc

    # The coder itself, at the ends of the 32-bit escape range.
    inter = codec.inter
    assert inter is not None
    residual = np.zeros(SHAPE, np.int32)
    residual[0, 0, 0] = 2**31 - 1
    residual[5, 7, 9] = -(2**31) + 1
    residual[3, 1, 1] = inter.radius + 1
    residual[3, 1, 2] = -inter.radius - 1
    skip = np.zeros(SHAPE[1:], bool)
    skip[4:, :] = True
    payload, coded = encode_residual(inter, level, residual, skip)
    np.testing.assert_array_equal(coded, np.where(skip[None], 0, residual))
    np.testing.assert_array_equal(decode_residual(inter, level, payload, SHAPE), coded)


@pytest.mark.parametrize("p_format", [2, 3])
def test_cells_at_the_ends_of_int32_round_trip(p_format: int) -> None:
    """Replenished cells escape whether they go intra or as residuals."""
    codec = gained_codec()
    assert codec.inter is not None
    level = 1
    prediction = np.zeros(SHAPE, np.int32)
    prediction[:, 5, 5] = 3  # a cell close to what comes: a residual
    q = prediction.copy()
    q[0, 0, 0] = 2**31 - 1
    q[5, 7, 9] = -(2**31) + 1
    q[3, 1, 1] = codec.tables.radius + 1
    q[:, 5, 5] = 3 + np.arange(SHAPE[0]) % 3
    q[2, 5, 5] = 1 << 20
    skip = skip_map(q.astype(np.int64) - prediction, DEFAULT_SKIP_THRESHOLD)
    previous = np.zeros(SHAPE[1:], bool)
    previous[4:7, 4:7] = True
    payload, decoded = encode_cells(
        codec.inter, codec.tables, level, prediction, q, skip, previous, p_format
    )
    np.testing.assert_array_equal(decoded, np.where(skip[None], prediction, q))
    got, replenished = decode_cells(
        codec.inter, codec.tables, level, payload, prediction, previous, p_format
    )
    np.testing.assert_array_equal(got, decoded)
    np.testing.assert_array_equal(replenished, ~skip)


def test_a_cell_something_new_walked_into_codes_smaller_intra_than_as_a_residual() -> None:
    """Format 2 against format 1 on the same cells: content the reference never held is
    cheaper coded with the keyframe tables than as residuals, which spread twice as wide;
    it decodes exactly, as does the cell that changed by a little."""
    codec = gained_codec()
    assert codec.inter is not None
    level = 1
    rng = np.random.default_rng(11)
    spread = (1 / codec.inverse_gains[level])[:, None, None]  # the latent's own spread
    prediction = np.rint(rng.laplace(0, 1, SHAPE) * spread).astype(np.int32)
    q = prediction.copy()
    q[:, 1:7, :8] = np.rint(rng.laplace(0, 1, (SHAPE[0], 6, 8)) * spread)  # fresh content
    q[:, 7, 9] += np.array([3, -3, 2, 0, 0, 1], np.int32)  # a small change
    skip = skip_map(q.astype(np.int64) - prediction, DEFAULT_SKIP_THRESHOLD)
    assert (~skip).sum() > 40
    cells, decoded = encode_cells(codec.inter, codec.tables, level, prediction, q, skip)
    residuals, coded = encode_residual(codec.inter, level, q - prediction, skip)
    np.testing.assert_array_equal(decoded, prediction + coded)
    assert len(cells) < 0.9 * len(residuals), (len(cells), len(residuals))
    print(f"format 3: {len(cells)} B, format 1: {len(residuals)} B")
    np.testing.assert_array_equal(
        decode_cells(codec.inter, codec.tables, level, cells, prediction)[0], decoded
    )


def test_flag_contexts_count_the_replenished_cells_above() -> None:
    above = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool)
    np.testing.assert_array_equal(flag_contexts(above), [2, 2, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(flag_contexts(np.ones(3, bool)), [2, 2, 2])  # capped


def test_temporal_contexts_say_whether_the_cell_or_a_neighbour_was_replenished() -> None:
    previous = np.zeros((4, 5), bool)
    previous[1, 2] = True
    np.testing.assert_array_equal(
        temporal_contexts(previous, (4, 5)),
        [[0, 0, 1, 0, 0], [0, 1, 2, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]],
    )
    # A keyframe reference (nothing replenished), or one of another shape: context 0.
    assert not temporal_contexts(None, (4, 5)).any()
    assert not temporal_contexts(np.ones((2, 2), bool), (4, 5)).any()


def walking(codec: Codec, frames: int, level: int) -> list[np.ndarray]:
    """Symbols of a person-sized blob walking one cell a frame over a still background."""
    rng = np.random.default_rng(5)
    background = rng.integers(-3, 4, SHAPE).astype(np.int32)
    out = []
    for t in range(frames):
        q = background.copy()
        j = t % (SHAPE[2] - 3)
        q[:, 2:6, j : j + 3] = rng.integers(-12, 13, (SHAPE[0], 4, 3))
        out.append(q)
    return out


def test_format_3_codes_a_walking_blob_smaller_than_format_2_and_decodes_it_exactly() -> None:
    """The blob is where it was, one cell on: the temporal context predicts its flags."""
    codec = gained_codec()
    assert codec.inter is not None
    level = 2
    frames = walking(codec, 6, level)
    key = codec.compress(features_of(codec, frames[0], level), level)
    assert key.symbols is not None
    edge, cloud = key.symbols, decode(codec, key, None)
    sizes = {2: 0, 3: 0}
    for q in frames[1:]:
        p = codec.compress(features_of(codec, q, level), level, reference=edge)
        assert p.symbols is not None and p.reference_crc is not None
        got = decode(codec, p, cloud)
        assert got.crc == p.symbols.crc and np.array_equal(got.replenished, p.symbols.replenished)  # type: ignore[arg-type]
        # The same cells, coded as format 2 would (its flag probabilities sent).
        prediction = codec.predict(edge, level)
        skip = ~p.symbols.replenished  # type: ignore[operator]
        old, _ = encode_cells(codec.inter, codec.tables, level, prediction, q, skip, p_format=2)
        sizes[2] += len(old)
        sizes[3] += len(p.payload)
        edge, cloud = p.symbols, got
    assert sizes[3] < sizes[2] - 5 * 8, sizes  # ≥ 8 B a frame: the header alone is 8 B less
    print(f"format 3: {sizes[3]} B, format 2: {sizes[2]} B over {len(frames) - 1} P-frames")


def test_a_p_frame_decoded_against_a_reference_with_other_flags_fails_its_symbol_check() -> None:
    """The replenish map is state both ends rebuild from the chain; were it to differ,
    the next frame decodes to other symbols and the CRC says so."""
    codec = gained_codec()
    level = 2
    frames = walking(codec, 3, level)
    key = codec.compress(features_of(codec, frames[0], level), level)
    assert key.symbols is not None
    p1 = codec.compress(features_of(codec, frames[1], level), level, reference=key.symbols)
    assert p1.symbols is not None
    p2 = codec.compress(features_of(codec, frames[2], level), level, reference=p1.symbols)
    assert decode(codec, p2, p1.symbols).crc == p2.symbol_crc
    wrong = replace(p1.symbols, replenished=np.zeros(SHAPE[1:], bool))
    with pytest.raises(EntropyCodingError, match="does not decode|P-frame payload"):
        decode(codec, p2, wrong)


def keyframe_and_next(kind: str) -> tuple[Codec, LatentSymbols, np.ndarray, np.ndarray]:
    """(codec, a keyframe's symbols, the next frame's prediction from it, its symbols)."""
    codec = CODECS[kind]()
    assert codec.inter is not None
    y0, y1 = video(codec, 2, seed=4)
    key = codec.compress(y0, 2)
    assert key.symbols is not None
    return codec, key.symbols, codec.predict(key.symbols, 2), codec.quantize(y1, 2)


@pytest.mark.parametrize("kind", list(CODECS))
def test_a_format_2_p_frame_still_decodes(kind: str) -> None:
    """Container version 4's P-frames (flag probabilities sent) as the store has them."""
    codec, key_symbols, prediction, q = keyframe_and_next(kind)
    assert codec.inter is not None
    skip = skip_map(q.astype(np.int64) - prediction, DEFAULT_SKIP_THRESHOLD)
    assert (~skip).any()
    payload, expected = encode_cells(codec.inter, codec.tables, 2, prediction, q, skip, p_format=2)
    old = EncodedFeatures(2, SHAPE, payload, symbol_crc(expected), key_symbols.crc, p_format=2)
    got = codec.decompress_symbols(old, key_symbols)
    np.testing.assert_array_equal(got.q, expected)
    np.testing.assert_array_equal(got.replenished, ~skip)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", list(CODECS))
def test_a_format_1_p_frame_still_decodes(kind: str) -> None:
    """Container version 3's P-frames (residuals only) as an older edge or the store has them."""
    codec, key_symbols, prediction, q = keyframe_and_next(kind)
    assert codec.inter is not None
    residual = q - prediction
    skip = skip_map(residual, DEFAULT_SKIP_THRESHOLD)
    payload, coded = encode_residual(codec.inter, 2, residual, skip)
    expected = prediction + coded
    old = EncodedFeatures(2, SHAPE, payload, symbol_crc(expected), key_symbols.crc, p_format=1)
    np.testing.assert_array_equal(codec.decompress_symbols(old, key_symbols).q, expected)
    with pytest.raises(EntropyCodingError, match="unknown P-frame format 4"):
        codec.decompress_symbols(replace(old, p_format=4), key_symbols)


def test_every_offset_on_the_ladder_decodes() -> None:
    """The encoder picks the cheapest scale; small and large residuals pick the ends."""
    inter = gained_codec().inter
    assert inter is not None
    rng = np.random.default_rng(7)
    offsets = set()
    for spread in (0.01, 0.3, 3.0, 30.0):
        residual = rng.laplace(0, spread, SHAPE).round().astype(np.int32)
        residual[0, 0, 0] = 1  # never all zero
        skip = np.zeros(SHAPE[1:], bool)
        payload, coded = encode_residual(inter, 2, residual, skip)
        offsets.add(int(np.frombuffer(payload[:1], np.int8)[0]))
        np.testing.assert_array_equal(decode_residual(inter, 2, payload, SHAPE), coded)
    assert len(offsets) >= 3, offsets


@pytest.mark.parametrize("kind", list(CODECS))
def test_a_codec_without_inter_tables_refuses_p_frames_clearly(kind: str) -> None:
    with_inter, without = CODECS[kind](), CODECS[kind](inter=False)
    assert with_inter.supports_inter and not without.supports_inter
    y0, y1 = video(without, 2)
    key = without.compress(y0, 1)  # keyframes still work
    assert key.symbols is not None
    np.testing.assert_array_equal(decode(without, key, None).q, without.quantize(y0, 1))
    with pytest.raises(EntropyCodingError, match="no P-frame tables.*re-export it"):
        without.compress(y1, 1, reference=key.symbols)
    p = with_inter.compress(y1, 1, reference=key.symbols)
    with pytest.raises(EntropyCodingError, match="no P-frame tables"):
        decode(without, p, key.symbols)


@pytest.mark.parametrize("kind", list(CODECS))
def test_save_load_keeps_the_inter_tables(kind: str, tmp_path: Path) -> None:
    codec = CODECS[kind]()
    codec.save(tmp_path / "codec.npz")
    loaded = type(codec).load(tmp_path / "codec.npz")
    assert loaded.supports_inter and loaded.inter is not None and codec.inter is not None
    np.testing.assert_array_equal(loaded.inter.freqs, codec.inter.freqs)
    np.testing.assert_array_equal(loaded.inter.base, codec.inter.base)
    assert loaded.inter.freqs.dtype == np.uint32 and loaded.inter.base.dtype == np.uint8
    assert loaded.inter.radius == codec.inter.radius == codec.tables.radius
    # A P-frame coded by one decodes with the other.
    y0, y1 = video(codec, 2)
    key = codec.compress(y0, 2)
    assert key.symbols is not None
    p = codec.compress(y1, 2, reference=key.symbols)
    np.testing.assert_array_equal(decode(loaded, p, key.symbols).q, p.symbols.q)  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", list(CODECS))
def test_an_old_codec_npz_without_inter_tables_loads_keyframes_only(
    kind: str, tmp_path: Path
) -> None:
    codec = CODECS[kind]()
    # Exactly what save() wrote before P-frames: the float fields, freqs and radius.
    floats: dict[str, Any] = (
        {"gains": codec.gains, "inverse_gains": codec.inverse_gains}
        if isinstance(codec, GainedFeatureCodec)
        else {"mean": codec.mean, "scale": codec.scale, "steps": codec.steps}
    )
    path = tmp_path / "old.npz"
    np.savez(path, **floats, freqs=codec.tables.freqs, radius=np.int32(codec.tables.radius))
    old = type(codec).load(path)
    assert not old.supports_inter and old.inter is None
    old.prepare()
    y = video(codec, 1)[0]
    np.testing.assert_array_equal(decode(old, codec.compress(y, 3), None).q, codec.quantize(y, 3))
    # Saving it again writes no inter tables.
    old.save(tmp_path / "again.npz")
    with np.load(tmp_path / "again.npz") as z:
        assert "inter_freqs" not in z and "inter_base" not in z


def test_inter_tables_check_their_shape() -> None:
    inter = gained_codec().inter
    assert inter is not None
    with pytest.raises(ValueError, match="need"):
        InterTables(inter.freqs[:, :-1], inter.base, inter.radius)
    with pytest.raises(ValueError, match=f"below {len(LADDER)}"):
        InterTables(inter.freqs, np.full_like(inter.base, len(LADDER)), inter.radius)


def test_format_2_header_fields_out_of_range_are_named() -> None:
    codec = gained_codec()
    assert codec.inter is not None
    prediction = np.zeros(SHAPE, np.int32)

    def header(offset: int, *probabilities: int) -> bytes:
        return struct.pack("<b5H", offset, *probabilities) + bytes(4)

    cases = [
        (header(-9, 1, 1, 1, 1, 1), "scale offset -9 outside -8..6"),
        (header(0, 1, 0, 1, 1, 1), r"skip \(context 1\) probability 0 outside"),
        (header(0, 1, 1, 1, 0, 1), "still-channel probability 0 outside"),
        (header(0, 1, 1, 1, 1, 0), "residual-cell probability 0 outside"),
        (header(0, 1, 1, 1, 1, 1)[:10], "11-byte header followed by whole 32-bit"),
        (header(0, 1, 1, 1, 1, 1) + b"\x00", "11-byte header followed by whole 32-bit"),
    ]
    for payload, message in cases:
        with pytest.raises(EntropyCodingError, match=message):
            decode_cells(codec.inter, codec.tables, 0, payload, prediction, p_format=2)


def test_format_3_header_fields_out_of_range_are_named() -> None:
    codec = gained_codec()
    assert codec.inter is not None
    prediction = np.zeros(SHAPE, np.int32)

    def packed(offset: int, shift: int) -> bytes:
        return bytes([(offset + 8) | ((shift + 8) << 4), 0, 0, 1])

    cases = [
        (0, packed(7, 0), "scale offset 7 outside -8..6"),
        (2, packed(0, -5), "intra shift -5 at level 2"),
        (0, packed(0, -1), "intra shift -1 at level 0: the tables of level -1 do not exist"),
        (LEVELS - 1, packed(0, 1), f"the tables of level {LEVELS} do not exist"),
        (0, b"\x00\x00", "shorter than its 3-byte header"),
    ]
    for level, payload, message in cases:
        with pytest.raises(EntropyCodingError, match=message):
            decode_cells(codec.inter, codec.tables, level, payload, prediction)
    with pytest.raises(EntropyCodingError, match="unknown P-frame format 5"):
        decode_cells(codec.inter, codec.tables, 0, b"\x00\x00\x00", prediction, p_format=5)


def test_payload_header_fields_out_of_range_are_named() -> None:
    inter = gained_codec().inter
    assert inter is not None
    with pytest.raises(EntropyCodingError, match="scale offset 7 outside -8..6"):
        decode_residual(inter, 0, b"\x07\x01\x00\x01\x00" + bytes(4), SHAPE)
    with pytest.raises(EntropyCodingError, match="skip probability 0 outside"):
        decode_residual(inter, 0, b"\x00\x00\x00\x01\x00" + bytes(4), SHAPE)
    with pytest.raises(EntropyCodingError, match="still-channel probability 0 outside"):
        decode_residual(inter, 0, b"\x00\x01\x00\x00\x00" + bytes(4), SHAPE)
    with pytest.raises(EntropyCodingError, match="5-byte header followed by whole 32-bit"):
        decode_residual(inter, 0, b"\x00\x01", SHAPE)
    with pytest.raises(EntropyCodingError, match="5-byte header followed by whole 32-bit"):
        decode_residual(inter, 0, b"\x00\x01\x00\x01\x00\x00\x00", SHAPE)


def mutate(payload: bytes, rng: np.random.Generator) -> bytes:
    kind = int(rng.integers(4))
    if kind == 0:  # truncated, to any length
        return payload[: int(rng.integers(0, len(payload)))]
    if kind == 1:  # words appended
        return payload + rng.bytes(4 * int(rng.integers(1, 3)))
    out = bytearray(payload)
    # 2: anywhere, header included; 3: the ANS words only (if there are any)
    lo = 11 if kind == 3 and len(out) > 11 else 0
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(lo, len(out)))
        out[i] ^= 1 << int(rng.integers(8))
    return bytes(out)


def test_corrupted_p_frames_raise_only_coding_errors_and_the_crc_catches_the_rest() -> None:
    codec = gained_codec()
    codec.prepare()
    goods = []
    ref: LatentSymbols | None = None
    for t, y in enumerate(video(codec, 8, seed=9)):
        enc = codec.compress(y, t % LEVELS, reference=ref)
        if enc.reference_crc is not None:
            goods.append((enc, ref))
        ref = enc.symbols
    assert len(goods) == 7
    rng = np.random.default_rng(2024)
    unchecked_clean = caught_by_crc = 0
    for n in range(2000):
        enc, reference = goods[int(rng.integers(len(goods)))]
        assert enc.symbols is not None
        bad = mutate(enc.payload, rng)
        if bad == enc.payload:
            continue
        fields = (enc.rate_level, enc.latent_shape, bad)
        try:
            got = codec.decompress_symbols(
                EncodedFeatures(*fields, None, enc.reference_crc), reference
            )
        except EntropyCodingError:
            got = None
        except Exception as exc:  # pragma: no cover - the failure being tested for
            pytest.fail(f"corruption {n} raised {type(exc).__name__}: {exc}")
        wrong = got is not None and not np.array_equal(got.q, enc.symbols.q)
        unchecked_clean += wrong
        try:
            checked = codec.decompress_symbols(
                EncodedFeatures(*fields, enc.symbol_crc, enc.reference_crc), reference
            )
        except EntropyCodingError as exc:
            caught_by_crc += wrong and "symbol CRC-32" in str(exc)
        except Exception as exc:  # pragma: no cover
            pytest.fail(f"corruption {n} raised {type(exc).__name__}: {exc}")
        else:
            assert np.array_equal(checked.q, enc.symbols.q), f"corruption {n} was accepted"
    # Without the symbol CRC some corrupted payloads decode "cleanly" to other symbols;
    # with it, every one of them is refused.
    print(f"{unchecked_clean} of 2000 corrupted P-frames decode cleanly without the symbol CRC")
    assert caught_by_crc == unchecked_clean


def bug_contract(codec: GainedFeatureCodec, reference: LatentSymbols, y: np.ndarray) -> None:
    """The edge never sends what the cloud refuses: compress either raises, or its P-frame
    decodes to the encoder's own symbols."""
    try:
        p = codec.compress(y, 0, reference=reference)
    except EntropyCodingError:
        return
    assert p.symbols is not None
    np.testing.assert_array_equal(decode(codec, p, reference).q, p.symbols.q)


def test_a_residual_beyond_int32_is_refused_by_the_encoder_not_the_decoder() -> None:
    codec = gained_codec()
    q = np.zeros(SHAPE, np.int32)
    q[0, 0, 0] = -1_600_000_000
    reference = LatentSymbols(0, q, symbol_crc(q))
    y = np.zeros(SHAPE, np.float32)
    y[0, 0, 0] = 1_600_000_000 / codec.gains[0, 0]
    bug_contract(codec, reference, y)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("reference_has_it", [False, True], ids=["in-the-p-frame", "in-the-key"])
def test_a_non_finite_feature_never_makes_an_undecodable_p_frame(reference_has_it: bool) -> None:
    codec = gained_codec()
    y = np.zeros(SHAPE, np.float32)
    y[1, 2, 3] = np.inf  # e.g. an fp16 overflow in the encoder backend
    key = codec.compress(y if reference_has_it else np.zeros(SHAPE, np.float32), 0)
    assert key.symbols is not None
    np.testing.assert_array_equal(decode(codec, key, None).q, key.symbols.q)  # keyframes: fine
    # in-the-key: the same frame again, every cell skipped, and still refused
    bug_contract(codec, key.symbols, y)


def test_a_frame_goes_all_intra_when_the_residual_side_information_outweighs_it() -> None:
    """One replenished cell the per-cell estimate puts as a residual (its values are its
    residual: the reference held zeros there) costs as much either way, but the residual
    path adds a still flag per channel and the rung deltas: the frame goes all intra,
    which its P(residual cell) of zero in the header says."""
    codec = gained_codec()
    assert codec.inter is not None
    level = 0
    rng = np.random.default_rng(0)
    spread = (1 / codec.inverse_gains[level])[:, None, None]
    prediction = np.rint(rng.laplace(0, 1, SHAPE) * spread).astype(np.int32)
    prediction[:, 3, 4] = 0
    q = prediction.copy()
    q[:, 3, 4] = np.rint(rng.laplace(0, 1, SHAPE[0]) * spread[:, 0, 0]).astype(np.int32)
    q[0, 3, 4] += 3
    skip = skip_map(q.astype(np.int64) - prediction, DEFAULT_SKIP_THRESHOLD)
    assert (~skip).sum() == 1
    residual = (q.astype(np.int64) - prediction)[:, ~skip]
    symbols, _ = to_symbols(q[:, ~skip], codec.tables.radius)
    intra_level = level + _intra_shift(codec.tables, level, symbols)
    as_residual, saved = _residual_cells(
        codec.inter, codec.tables, intra_level, level, residual, symbols
    )
    assert as_residual.all() and saved < 6 * SHAPE[0]
    payload, decoded = encode_cells(codec.inter, codec.tables, level, prediction, q, skip)
    assert payload[2] == 0  # probability8 of P(residual cell): no cell is a residual
    got, replenished = decode_cells(codec.inter, codec.tables, level, payload, prediction)
    np.testing.assert_array_equal(got, decoded)
    np.testing.assert_array_equal(got[:, 3, 4], q[:, 3, 4])
    assert replenished.sum() == 1
