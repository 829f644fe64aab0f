"""Paired comparisons of two heads over the same seeds, with SciPy's tests.

Every seed trains each head from the same backbone on the same scenes, so the runs come in
pairs: the comparison is on the per-seed differences d_s = metric(head A, s) - metric(head B, s)
and never on two separate spreads.

    mean gain       d_bar = (1/n) sum_s d_s
    95 % CI         d_bar +- t_{0.975, n-1} * sd(d) / sqrt(n)      (``scipy.stats.t``)
    paired t        ``scipy.stats.ttest_rel`` (two-sided)
    Wilcoxon        ``scipy.stats.wilcoxon`` signed-rank test, one-sided (A > B)
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["paired_comparison"]


def paired_comparison(a, b, confidence: float = 0.95) -> dict:
    """Statistics of the paired differences ``a - b`` (one value per seed in each).

    Parameters
    ----------
    a, b : sequences of float, same length n >= 2
        The metric of head A and head B, seed by seed.
    confidence : float
        Level of the interval of the mean difference.

    Returns
    -------
    dict
        ``n``, ``differences`` (list), ``mean``, ``ci`` (low, high), ``positive`` (seeds with
        d_s > 0), ``t_p`` (paired t, two-sided), ``wilcoxon_p`` (one-sided, A > B; NaN when
        every difference is zero).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-D and paired, got shapes {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"a paired comparison needs at least 2 seeds, got {len(a)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a and b must be finite (a missing run?)")
    d = a - b
    n = len(d)
    mean = float(d.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    if np.all(d == 0):
        t_p, wilcoxon_p = float("nan"), float("nan")
    else:
        t_p = float(stats.ttest_rel(a, b).pvalue)
        wilcoxon_p = float(stats.wilcoxon(a, b, alternative="greater").pvalue)
    return {"n": n, "differences": d.tolist(), "mean": mean, "ci": (mean - half, mean + half),
            "positive": int((d > 0).sum()), "t_p": t_p, "wilcoxon_p": wilcoxon_p}  # fmt: skip
