"""Uncertainty of test accuracies: Wilson intervals and McNemar's paired test.

    low, high = wilson_interval(correct=1973, total=2000)          # 95% by default
    result = mcnemar(probe_correct, finetune_correct)               # same test images, in order
    result.p_value, result.only_a, result.only_b

The study reports 96.5% against 98.65% on the same 2,000 test images with no interval; these say
how sure such a figure is (Wilson, as recommended over the normal approximation for
proportions near 1) and whether two models differ on the same images (McNemar, exact binomial
form: only the images one model gets right and the other wrong count). scipy computes both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["McNemar", "mcnemar", "wilson_interval"]


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the accuracy correct/total, as (low, high) fractions."""
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(
            f"expected 0 <= correct <= total and total > 0, got correct={correct}, total={total}"
        )
    if not 0 < confidence < 1:
        raise ValueError(f"expected a confidence between 0 and 1, got {confidence}")
    from scipy import stats  # here, not at import: scipy.stats takes 0.3-0.6 s

    ci = stats.binomtest(int(correct), int(total)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class McNemar:
    only_a: int  # images model a gets right and b wrong
    only_b: int  # images b gets right and a wrong
    p_value: float  # two-sided, exact binomial on only_a of only_a + only_b at 1/2

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def mcnemar(a_correct, b_correct) -> McNemar:
    """McNemar's exact test of two models on the same images: which each got right, in order."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"expected two 1-d sequences of the same images, got shapes {a.shape} and {b.shape}"
        )
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    n = only_a + only_b
    from scipy import stats  # here, not at import: scipy.stats takes 0.3-0.6 s

    p = 1.0 if n == 0 else stats.binomtest(only_a, n, 0.5).pvalue
    return McNemar(only_a, only_b, float(min(p, 1.0)))
