import numpy as np
import pytest

from codec.entropy_tables import PRECISION, EntropyCodingError, EntropyTables, quantize_frequencies


def laplace_tables(levels: int = 2, channels: int = 4, radius: int = 7) -> EntropyTables:
    values = np.arange(-radius, radius + 1)
    counts = np.exp(-np.abs(values) / np.arange(1, channels + 1)[:, None])
    counts = np.concatenate([counts, np.full((channels, 1), 1e-3)], axis=1)  # escape
    return EntropyTables(quantize_frequencies(np.stack([counts] * levels)), radius)


def test_quantized_tables_are_positive_and_exact() -> None:
    freqs = quantize_frequencies(np.array([[0.0, 1.0, 5.0, 1e9]]))
    assert freqs.sum() == 1 << PRECISION
    assert freqs.min() >= 1


def test_round_trip_is_exact_including_escapes() -> None:
    tables = laplace_tables()
    rng = np.random.default_rng(1)
    q = rng.laplace(0, 2, size=(4, 9, 11)).round().astype(np.int32)
    q[0, 0, 0], q[3, 8, 10], q[2, 4, 4] = 1000, -70000, 2**31 - 1  # escapes, one extreme
    for level in range(tables.num_levels):
        payload = tables.encode(q, level)
        assert np.array_equal(tables.decode(payload, level, q.shape), q)


def test_coded_size_is_within_a_word_per_channel_of_the_information_content() -> None:
    tables = laplace_tables()
    q = np.random.default_rng(0).laplace(0, 1.5, size=(4, 64, 64)).round().clip(-7, 7)
    q = q.astype(np.int32)
    probs = tables.freqs[0] / (1 << PRECISION)
    ideal_bits = -sum(np.log2(probs[c, q[c] + tables.radius]).sum() for c in range(4))
    coded_bits = 8 * len(tables.encode(q, 0))
    assert ideal_bits <= coded_bits <= ideal_bits * 1.001 + 64


def test_wrong_level_channels_or_payload_are_errors() -> None:
    tables = laplace_tables()
    q = np.zeros((4, 2, 2), dtype=np.int32)
    with pytest.raises(EntropyCodingError, match="rate level 5"):
        tables.encode(q, 5)
    with pytest.raises(EntropyCodingError, match="3 channels"):
        tables.encode(np.zeros((3, 2, 2), dtype=np.int32), 0)
    with pytest.raises(EntropyCodingError, match="32-bit words"):
        tables.decode(b"abc", 0, (4, 2, 2))


def test_tables_must_be_normalized() -> None:
    with pytest.raises(ValueError, match="sum to"):
        EntropyTables(np.ones((1, 1, 4), dtype=np.uint32), 1)


def test_golden_payload_pins_the_coder() -> None:
    """Edge and cloud may run on different machines and images: the same symbols and
    tables must give these exact bytes everywhere. If this fails after an upgrade of
    constriction or numpy, decoding old bitstreams is at risk: pin the old version."""
    import hashlib

    values = np.arange(-7, 8)
    counts = np.exp(-np.abs(values) / np.arange(1, 5)[:, None])
    counts = np.concatenate([counts, np.full((4, 1), 1e-3)], axis=1)
    tables = EntropyTables(quantize_frequencies(np.stack([counts] * 2)), 7)
    q = np.random.default_rng(123).laplace(0, 2, size=(4, 16, 16)).round().astype(np.int32)
    q[0, 0, 0] = 500  # one escape
    payload = tables.encode(q, 1)
    assert hashlib.sha256(payload).hexdigest() == (
        "b19c5f74b0ab847e1af52645918e520b8eedaf3439d30bab06e28e1319f4e6e1"
    )
    assert np.array_equal(tables.decode(payload, 1, q.shape), q)


def test_inter_tables_are_normalized_laplacians_rooted_at_each_channels_spread() -> None:
    from codec.inter_frames import BASE_FRACTION, LADDER, build_inter_tables

    intra = laplace_tables(levels=3, channels=4, radius=7)
    inter = build_inter_tables(intra)
    assert inter.radius == intra.radius
    assert inter.freqs.shape == (len(LADDER), 2 * 7 + 2) and inter.freqs.dtype == np.uint32
    assert np.all(inter.freqs.astype(np.int64).sum(-1) == 1 << PRECISION)
    assert inter.freqs.min() >= 1
    # Symmetric about 0 up to integer rounding, peaked at 0; wider rungs escape more.
    body = inter.freqs[:, :-1].astype(np.int64)
    assert np.all(np.abs(body - body[:, ::-1]) <= 1)
    assert np.all(body.argmax(-1) == 7)
    assert np.all(np.diff(inter.freqs[:, -1].astype(np.int64)) >= 0)
    assert inter.freqs[0, 7] > 0.99 * (1 << PRECISION) and inter.freqs[-1, -1] > 1 << 14
    # Base rungs: channels spread 1..4 (laplace_tables), so the rungs rise with the channel.
    assert inter.base.shape == (3, 4) and inter.base.dtype == np.uint8
    assert np.all(np.diff(inter.base.astype(int), axis=1) >= 0)
    assert inter.base[0, -1] > inter.base[0, 0]
    probs = intra.freqs[0, 0, :-1] / intra.freqs[0, 0, :-1].sum()
    values = np.arange(-7, 8)
    spread = np.sqrt((probs * values**2).sum())
    nearest = int(np.abs(np.log(LADDER) - np.log(spread * BASE_FRACTION)).argmin())
    assert inter.base[0, 0] == nearest


def test_golden_p_frame_payload_pins_the_inter_coder() -> None:
    """As the intra golden above, for P-frames: same residual, skips and tables, same bytes."""
    import hashlib

    from codec.inter_frames import build_inter_tables, decode_residual, encode_residual

    inter = build_inter_tables(laplace_tables(levels=2, channels=4, radius=7))
    rng = np.random.default_rng(321)
    residual = rng.laplace(0, 1.0, size=(4, 16, 16)).round().astype(np.int32)
    residual[1, 3, 3] = -400  # one escape
    skip = (residual.astype(np.int64) ** 2).sum(0) <= 2
    payload, coded = encode_residual(inter, 1, residual, skip)
    assert hashlib.sha256(payload).hexdigest() == (
        "403cf57ba1b472ad74f40add4635c127106babbe30d109c859b5a0067a4ac5df"
    )
    assert np.array_equal(decode_residual(inter, 1, payload, residual.shape), coded)


def test_the_encoders_estimate_of_a_keyframe_is_within_a_few_bytes_of_its_payload() -> None:
    """coded_bits gates coding a changed frame intra as well: it must not miss a keyframe
    that would have been smaller."""
    tables = laplace_tables()
    q = np.random.default_rng(2).laplace(0, 1.5, size=(4, 32, 32)).round().astype(np.int32)
    q[1, 2, 3] = 500  # an escape, raw
    for level in range(tables.num_levels):
        estimate = tables.coded_bits(q, level) / 8
        payload = len(tables.encode(q, level))
        assert estimate <= payload <= estimate * 1.001 + 8, (estimate, payload)


def test_golden_format_3_payload_pins_the_cell_coder() -> None:
    """A format-3 P-frame (adaptive flags in spatial and temporal context, the cells intra
    with the tables of the level below): same inputs, same bytes, on every machine."""
    import hashlib

    from codec.inter_frames import build_inter_tables, decode_cells, encode_cells

    intra = laplace_tables(levels=3, channels=4, radius=7)
    inter = build_inter_tables(intra)
    rng = np.random.default_rng(99)
    prediction = rng.laplace(0, 1.0, size=(4, 12, 12)).round().astype(np.int32)
    q = prediction.copy()
    q[:, 2:6, 3:8] = rng.laplace(0, 2.0, size=(4, 4, 5)).round()  # something walked in
    q[:, 9, 9] += np.array([2, -2, 1, 0], np.int32)  # a small change: a residual
    q[0, 3, 4] = -300  # an escape
    skip = ((q.astype(np.int64) - prediction) ** 2).sum(0) <= 2
    previous = np.zeros((12, 12), bool)
    previous[2:6, 2:7] = True  # the reference's flags, a cell to the left
    payload, decoded = encode_cells(inter, intra, 1, prediction, q, skip, previous)
    assert payload[:3] == bytes([0x78, 0, 0])  # offset 0, intra shift −1, every cell intra
    assert hashlib.sha256(payload).hexdigest() == (
        "703c768ad8ae23ddee1fbb686135789e31f813b4bd0a0c70bbd0cbedc4fa28f0"
    )
    got, replenished = decode_cells(inter, intra, 1, payload, prediction, previous)
    assert np.array_equal(got, decoded) and np.array_equal(replenished, ~skip)
