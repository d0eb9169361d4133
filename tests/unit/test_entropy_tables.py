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
