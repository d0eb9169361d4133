"""BD-rate and COCO mAP as ``fchm model eval`` scores codecs, on curves with known answers."""

from __future__ import annotations

import math

import pytest

from cloud.detector_tail import Detection
from model.eval_metrics import bd_rate, bytes_at, coco_map, rate_fidelity_envelope

RATES = [1000.0, 2000.0, 4000.0, 8000.0, 16000.0]
MAP50 = [0.20, 0.50, 0.70, 0.85, 0.95]


@pytest.mark.parametrize("factor", [0.1, 0.5, 1.0, 3.0])
def test_a_curve_shifted_in_rate_has_bd_rate_factor_minus_one(factor: float) -> None:
    result = bd_rate(RATES, MAP50, [r * factor for r in RATES], MAP50)
    assert result.value is not None
    assert math.isclose(result.value, factor - 1.0, abs_tol=1e-9)
    assert result.overlap == (0.20, 0.95)


def test_bd_rate_is_the_mean_over_the_shared_fidelity_range_only() -> None:
    # Test covers only the top of the anchor's range, at a quarter of its bytes. (Not
    # exactly -0.75: PCHIP's end slopes on 3 points differ from its slopes on 5.)
    result = bd_rate(RATES, MAP50, [r / 4 for r in RATES[2:]], MAP50[2:])
    assert result.value is not None and math.isclose(result.value, -0.75, abs_tol=0.005)
    assert result.overlap == (0.70, 0.95)


def test_curves_that_do_not_overlap_give_none_and_say_why() -> None:
    result = bd_rate(RATES, MAP50, [100.0, 200.0], [0.97, 0.99])
    assert result.value is None and result.overlap is None
    assert result.note is not None and "no overlap" in result.note
    flat = bd_rate(RATES, MAP50, [100.0, 200.0], [0.5, 0.5])
    assert flat.value is None and flat.note is not None and "fewer than 2" in flat.note
    with pytest.raises(ValueError, match="positive"):
        bd_rate(RATES, MAP50, [0.0, 1.0], [0.3, 0.4])


def test_envelope_drops_settings_that_cost_more_for_less() -> None:
    rates, quality = rate_fidelity_envelope([4000, 1000, 2000, 8000], [0.5, 0.3, 0.6, 0.6])
    assert rates.tolist() == [1000, 2000] and quality.tolist() == [0.3, 0.6]


def _det(box: tuple[float, float, float, float], score: float = 0.9) -> Detection:
    return Detection(0, "person", score, box)


def test_coco_map_of_the_reference_itself_is_one_and_of_nothing_is_zero() -> None:
    reference = [[_det((10, 10, 50, 90))], [], [_det((0, 0, 30, 30)), _det((40, 40, 90, 99))]]
    assert coco_map(reference, reference) == (1.0, 1.0)
    assert coco_map(reference, [[], [], []]) == (0.0, 0.0)
    assert coco_map([[], []], [[_det((0, 0, 5, 5))], []]) == (None, None)
    shifted = [[_det((x1 + 8, y1, x2 + 8, y2)) for x1, y1, x2, y2 in (d.box for d in ds)]
               for ds in reference]  # fmt: skip
    map50, map50_95 = coco_map(reference, shifted)
    assert map50 is not None and map50_95 is not None and map50_95 < map50


def test_class_agnostic_map_pools_classes_and_ignores_labels() -> None:
    """Two classes, one of them with a single reference box: the per-class mean moves by
    half on that one box, the pooled score by a third; a swapped label still counts
    as a match when classes are pooled."""
    person = [_det((10, 10, 50, 90)), _det((60, 10, 99, 90))]
    fall = Detection(1, "fall", 0.8, (0, 100, 40, 140))
    reference = [[*person, fall]]
    missed_fall = [person]
    assert coco_map(reference, missed_fall) == (0.5, 0.5)
    pooled, _ = coco_map(reference, missed_fall, class_agnostic=True)
    assert pooled is not None and abs(pooled - 2 / 3) < 0.01
    relabelled = [[*person, Detection(0, "person", 0.8, fall.box)]]
    assert coco_map(reference, relabelled, class_agnostic=True) == (1.0, 1.0)
    assert coco_map(reference, relabelled)[0] == 0.5


def test_bytes_at_interpolates_on_the_envelope_and_flags_bounds() -> None:
    rows = [(1000.0, 0.5), (4000.0, 0.9), (3000.0, 0.4), (16000.0, 1.0)]  # 3000 B: dominated
    mid = bytes_at(rows, 0.95)
    assert mid.bytes_per_frame == pytest.approx(8000.0) and not mid.bound  # geometric mean
    assert bytes_at(rows, 0.3).bytes_per_frame == 1000.0 and bytes_at(rows, 0.3).bound
    assert bytes_at(rows, 1.01).bytes_per_frame is None
    assert bytes_at([(10.0, None)], 0.5).bytes_per_frame is None
