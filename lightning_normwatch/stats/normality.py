"""Normality tests computed from moments alone (no values needed).

Same formulas as ``scipy.stats.skewtest``, ``kurtosistest``, ``normaltest`` and
``jarque_bera`` (two-sided, defaults), see ``shared/STATISTICS.md`` §2. Because they need only
``(n, m2, m3, m4)`` they run on merged moments, on the host, in float64. Apply them to a
fixed-size subsample only: on whole activation tensors every p-value is ~0 and means nothing.

Example:
    >>> from lightning_normwatch.stats.moments import Moments
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=5000)
    >>> r = normality(Moments.of(x))
    >>> r.normaltest_p > 0.01
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from scipy import special

from .moments import Moments

__all__ = ["NormalityResult", "skewtest_z", "kurtosistest_z", "normality", "normality_p"]


@dataclass(frozen=True)
class NormalityResult:
    """Test statistics and p-values; NaN where the sample is too small or constant.

    Attributes:
        n: sample size the tests ran on.
        skew_z, kurtosis_z: z-scores of ``skewtest`` (n >= 8) and ``kurtosistest`` (n >= 5; valid n > 20).
        normaltest_k2, normaltest_p: D'Agostino-Pearson K² and its p-value.
        jarque_bera, jarque_bera_p: Jarque-Bera statistic and its p-value.
    """

    n: float
    skew_z: float
    kurtosis_z: float
    normaltest_k2: float
    normaltest_p: float
    jarque_bera: float
    jarque_bera_p: float


def _two_sided_p(z: float) -> float:
    return float(2 * special.ndtr(-abs(z))) if math.isfinite(z) else math.nan


@lru_cache(maxsize=64)
def _skew_constants(n: float) -> tuple[float, float, float]:
    """What ``skewtest_z`` computes from ``n`` alone: (the factor of ``b1``, delta, alpha); cached, as the
    p-value subsample has the same size at almost every logging step."""
    factor = math.sqrt(((n + 1) * (n + 3)) / (6.0 * (n - 2)))
    beta2 = 3.0 * (n * n + 27 * n - 70) * (n + 1) * (n + 3) / ((n - 2.0) * (n + 5) * (n + 7) * (n + 9))
    w2 = -1 + math.sqrt(2 * (beta2 - 1))
    delta = 1 / math.sqrt(0.5 * math.log(w2))
    alpha = math.sqrt(2.0 / (w2 - 1))
    return factor, delta, alpha


def skewtest_z(b1: float, n: float) -> float:
    """z-score of ``scipy.stats.skewtest`` for sample skewness ``b1`` (biased) and size ``n``."""
    if n < 8 or not math.isfinite(b1):
        return math.nan
    factor, delta, alpha = _skew_constants(n)
    y = b1 * factor
    y = y if y != 0 else 1.0  # scipy's own quirk: a skewness of exactly 0 is replaced by y = 1
    return delta * math.log(y / alpha + math.sqrt((y / alpha) ** 2 + 1))


@lru_cache(maxsize=64)
def _kurtosis_constants(n: float) -> tuple[float, float, float, float, float, float]:
    """What ``kurtosistest_z`` computes from ``n`` alone: (E[b2], sqrt(var b2), A, 1 - 2/(9A),
    sqrt(2/(A-4)), sqrt(2/(9A))); cached as ``_skew_constants``."""
    e = 3.0 * (n - 1) / (n + 1)
    var_b2 = 24.0 * n * (n - 2) * (n - 3) / ((n + 1) * (n + 1.0) * (n + 3) * (n + 5))
    sqrt_beta1 = (
        6.0 * (n * n - 5 * n + 2) / ((n + 7) * (n + 9)) * math.sqrt((6.0 * (n + 3) * (n + 5)) / (n * (n - 2) * (n - 3)))
    )
    a = 6.0 + 8.0 / sqrt_beta1 * (2.0 / sqrt_beta1 + math.sqrt(1 + 4.0 / (sqrt_beta1**2)))
    return e, math.sqrt(var_b2), a, 1 - 2 / (9.0 * a), math.sqrt(2 / (a - 4.0)), math.sqrt(2 / (9.0 * a))


def kurtosistest_z(b2: float, n: float) -> float:
    """z-score of ``scipy.stats.kurtosistest`` for Pearson kurtosis ``b2`` (= excess + 3) and size ``n``."""
    if n < 5 or not math.isfinite(b2):
        return math.nan
    e, sd, a, term1, slope, scale = _kurtosis_constants(n)
    x = (b2 - e) / sd
    denom = 1 + x * slope
    if denom == 0:
        return math.nan
    term2 = math.copysign(1.0, denom) * ((1 - 2.0 / a) / abs(denom)) ** (1 / 3.0)
    return (term1 - term2) / scale


def normality(m: Moments) -> NormalityResult:
    """Run the moment-based normality tests on one set of moments.

    Example:
        >>> normality(Moments.of([1.0, 2.0])).normaltest_p  # too small: NaN, not an error
        nan
    """
    return NormalityResult(m.n, *_tests(m.n, m.skew, m.kurtosis))


def normality_p(m: Moments) -> tuple[float, float]:
    """``(normaltest_p, jarque_bera_p)`` of ``normality(m)``, without building the full result (the figures
    of every tensor at every logging step need only these two).

    Example:
        >>> m = Moments.of([0.0, 1.0, 2.0, 4.0, 8.0, 3.0, 1.0, 0.5, 2.5])
        >>> normality_p(m) == (normality(m).normaltest_p, normality(m).jarque_bera_p)
        True
    """
    _, _, _, p_k2, _, p_jb = _tests(m.n, m.skew, m.kurtosis)
    return p_k2, p_jb


def _tests(n: float, g1: float, g2: float) -> tuple[float, float, float, float, float, float]:
    """(skew z, kurtosis z, K², its p-value, Jarque-Bera, its p-value) from size, skewness and excess kurtosis."""
    zs = skewtest_z(g1, n)
    zk = kurtosistest_z(g2 + 3.0, n)
    k2 = zs * zs + zk * zk if math.isfinite(zs) and math.isfinite(zk) else math.nan
    p_k2 = math.exp(-k2 / 2) if math.isfinite(k2) else math.nan
    if n > 0 and math.isfinite(g1) and math.isfinite(g2):
        jb = n / 6.0 * (g1 * g1 + g2 * g2 / 4.0)
        p_jb = math.exp(-jb / 2)
    else:
        jb = p_jb = math.nan
    return zs, zk, k2, p_k2, jb, p_jb


def pvalue_of_z(z: float) -> float:
    """Two-sided normal p-value of a z-score (as scipy's skewtest/kurtosistest report)."""
    return _two_sided_p(z)
