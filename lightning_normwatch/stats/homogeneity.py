"""Pearson's two-sample chi-square test per row of binned counts, bins grouped to meet its conditions.

Used by ``feature_drift`` to tell a changed distribution of an input feature from sampling noise.
"""

from __future__ import annotations

import numpy as np

__all__ = ["homogeneity_pvalue"]


def homogeneity_pvalue(
    ref: np.ndarray, cur: np.ndarray, min_expected: float = 5.0, ref_sum: np.ndarray | None = None
) -> np.ndarray:
    """Per row, the p-value of Pearson's chi-square test that two count vectors share one distribution.

    Adjacent bins are grouped so that every group expects at least ``min_expected`` counts in the
    smaller sample (the condition for the chi-square approximation; PSI itself has no usable null
    distribution at small batches: its empty-bin floor makes a batch of 32 rows reach PSI 2 by chance).
    ``ref_sum``: ``ref.sum(1, keepdims=True)`` when the caller has it.

    Example:
        >>> r = np.array([[100.0, 200, 100], [100, 200, 100]])
        >>> c = np.array([[10.0, 20, 10], [30, 5, 5]])
        >>> p = homogeneity_pvalue(r, c)
        >>> bool(p[0] > 0.9), bool(p[1] < 1e-6)
        (True, True)
    """
    from scipy import special

    rows, bins = ref.shape
    m, n = ref.sum(1, keepdims=True) if ref_sum is None else ref_sum, cur.sum(1, keepdims=True)
    total = np.maximum(m + n, 1e-300)
    pooled = (ref + cur) / total
    # group id from the cumulative expected count of the smaller sample; the last group joins the one before
    cum = np.cumsum(pooled * np.minimum(m, n), axis=1)
    groups = np.floor(cum / min_expected - 1e-9).astype(np.int64)
    top = np.maximum(groups[:, -1:] - 1, 0)
    groups = np.minimum(np.maximum(groups, 0, out=groups), top, out=groups)  # non-decreasing: skipped ids are empty
    width = int(top.max()) + 1
    flat = (groups + np.arange(0, rows * width, width)[:, None]).ravel()
    # each bin's group (at most `bins` groups of the `width` ids): its term, put back at the group's id
    r_g, c_g = (
        np.bincount(flat, weights=a.ravel(), minlength=rows * width)[flat].reshape(rows, bins) for a in (ref, cur)
    )
    p_g = (r_g + c_g) / total
    with np.errstate(invalid="ignore", divide="ignore"):
        e_r, e_c = m * p_g, n * p_g
        terms = np.where(e_r > 0, (r_g - e_r) ** 2 / e_r, 0.0) + np.where(e_c > 0, (c_g - e_c) ** 2 / e_c, 0.0)
    chi2 = np.zeros((rows, width))
    chi2.ravel()[flat] = terms.ravel()  # empty ids stay 0.0, as their terms were: the same row sums
    chi2 = chi2.sum(1)
    dof = np.count_nonzero(groups[:, 1:] != groups[:, :-1], axis=1)  # groups - 1
    out = np.where(dof > 0, special.chdtrc(np.maximum(dof, 1), chi2), 1.0)  # scipy.stats.chi2.sf, without its checks
    return np.where((m[:, 0] > 0) & (n[:, 0] > 0), out, np.nan)
