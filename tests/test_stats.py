"""Wilson intervals and McNemar's exact test against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from vitlib.stats import mcnemar, wilson_interval


def wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(8, 10), (1973, 2000), (1930, 2000), (0, 5), (5, 5)])
def test_wilson_matches_the_formula(k, n):
    assert wilson_interval(k, n) == pytest.approx(wilson_by_hand(k, n), abs=1e-9)


def test_wilson_of_8_in_10_is_the_textbook_value():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)


def test_wilson_narrows_with_more_images_and_widens_with_confidence():
    assert wilson_interval(90, 100)[0] < wilson_interval(900, 1000)[0]
    assert wilson_interval(90, 100, 0.99)[0] < wilson_interval(90, 100, 0.95)[0]


@pytest.mark.parametrize("k,n,conf", [(3, 2, 0.95), (1, 0, 0.95), (-1, 4, 0.95), (1, 4, 1.0)])
def test_wilson_refuses_impossible_counts(k, n, conf):
    with pytest.raises(ValueError, match="expected"):
        wilson_interval(k, n, conf)


def test_mcnemar_counts_only_the_discordant_images_exactly():
    # a right on 1 image b gets wrong, b right on 9 a gets wrong, 5 both right, 3 both wrong
    a = [True] * 1 + [False] * 9 + [True] * 5 + [False] * 3
    b = [False] * 1 + [True] * 9 + [True] * 5 + [False] * 3
    result = mcnemar(a, b)
    assert (result.only_a, result.only_b) == (1, 9)
    assert result.p_value == pytest.approx(2 * (1 + 10) / 2**10)  # 2 P(X <= 1), X ~ B(10, 1/2)
    assert result.significant
    assert mcnemar(b, a).p_value == pytest.approx(result.p_value)


def test_mcnemar_of_identical_or_balanced_models_is_not_significant():
    same = [True, False, True]
    assert mcnemar(same, same).p_value == 1.0
    assert mcnemar([True, False], [False, True]).p_value == 1.0


def test_mcnemar_refuses_different_image_counts():
    with pytest.raises(ValueError, match="same images"):
        mcnemar([True, False], [True])
