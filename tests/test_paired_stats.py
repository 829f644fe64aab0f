"""Paired comparisons against float64 hand computations and exact small-sample values."""

import math

import numpy as np
import pytest
from scipy import stats

from em_tutorial.segmentation.paired_stats import paired_comparison


def test_mean_interval_and_t_test_match_the_formulas():
    a = np.array([0.61, 0.55, 0.72, 0.48, 0.66, 0.59])
    b = np.array([0.52, 0.56, 0.60, 0.40, 0.61, 0.50])
    result = paired_comparison(a, b)
    d = a - b
    sd = math.sqrt(sum((x - d.mean()) ** 2 for x in d) / (len(d) - 1))
    t = d.mean() / (sd / math.sqrt(len(d)))
    assert result["mean"] == pytest.approx(d.mean(), abs=1e-15)
    half = 2.570581835636314 * sd / math.sqrt(6)  # t_{0.975, 5}, from tables
    assert result["ci"] == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-9)
    assert result["t_p"] == pytest.approx(2 * stats.t.sf(abs(t), 5), rel=1e-12)
    assert result["positive"] == 5 and result["n"] == 6


def test_wilcoxon_is_one_sided_and_exact_for_small_samples():
    # All five differences positive and distinct: the exact one-sided p is 1 / 2^5.
    a, b = np.array([1.0, 2.1, 3.2, 4.3, 5.4]), np.zeros(5)
    assert paired_comparison(a, b)["wilcoxon_p"] == pytest.approx(1 / 32)
    # ...and the other way round every sign is against A: p = 1
    assert paired_comparison(b, a)["wilcoxon_p"] == pytest.approx(1.0)


def test_bad_pairs_are_refused():
    with pytest.raises(ValueError, match="paired"):
        paired_comparison([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        paired_comparison([1.0], [0.0])
    with pytest.raises(ValueError, match="finite"):
        paired_comparison([1.0, float("nan")], [0.0, 0.0])
