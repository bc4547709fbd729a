"""Central moments: computed per channel on the device, merged exactly on the host.

Everything NormWatch reports about scale and shape (mean, std, skewness, excess kurtosis,
normality tests) depends only on ``(n, mean, M2, M3, M4)`` with ``M_k = sum((x - mean) ** k)``.
These merge exactly across channels, logging steps and DDP ranks (Chan et al.; Pébay 2008),
so the device computes them per channel on centred values (never raw power sums, see
``shared/STATISTICS.md`` §1) and the host merges them in float64.

Example:
    >>> import numpy as np
    >>> x = np.array([1.0, 2.0, 4.0, 8.0])
    >>> a = Moments.of(x[:2]); b = Moments.of(x[2:])
    >>> m = a.merge(b)
    >>> round(m.mean, 6), round(m.std, 6)
    (3.75, 2.680951)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Moments", "channel_moments", "merge_groups", "pow2_scale", "rescale", "standardized_shape"]


def pow2_scale(absmax: Tensor) -> Tensor:
    """Per column, the power of two just above ``absmax`` (1 where it is 0 or not finite).

    Dividing by a power of two is exact in floating point, so values divided by it keep every digit
    and lie in ``[-1, 1]``: their squares and fourth powers neither overflow (float32 ``x**4``
    overflows from ``|x|`` about 4e9) nor underflow (below about 1e-10), whatever the unit.

    Example:
        >>> pow2_scale(torch.tensor([3.0, 0.0, 1e30, 1e-30])).tolist()
        [4.0, 1.0, 1.2676506002282294e+30, 1.5777218104420236e-30]
    """
    ok = absmax.isfinite() & (absmax > 0)
    _, exponent = torch.frexp(torch.where(ok, absmax, torch.ones_like(absmax)))
    limit = 127 if absmax.dtype == torch.float32 else 1023
    exponent = exponent.clamp(-limit + 1, limit)  # the scale and its inverse stay finite and normal
    ones = torch.ones_like(absmax)
    return torch.where(ok, torch.ldexp(ones, exponent), ones)


def channel_moments(
    sample: Tensor, absmax: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-column count, mean, M2, M3, M4 and non-zero count of a 2-D sample, ignoring non-finite values.

    Runs on the sample's device without host synchronisation. ``sample`` is ``[rows, channels]``
    in float32 or float64; the results are float64. Each column is divided by the power of two just
    above its largest finite ``|x|`` (``absmax``, computed when not given) before any power is taken,
    and the moments are scaled back exactly in float64 (``M_k * s**k``): the figures of ``c * x`` are
    those of ``x`` for any ``c`` that keeps ``c * x`` finite (1e-30 or 1e30 in float32).

    Example:
        >>> n, mean, m2, m3, m4, nz = channel_moments(torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
        >>> mean.tolist(), m2.tolist(), nz.tolist()
        ([2.0, 0.0], [2.0, 0.0], [2.0, 0.0])
        >>> _, _, m2, _, m4, _ = channel_moments(torch.tensor([[1e12], [-1e12]]))
        >>> f"{float(m2):.6g} {float(m4):.6g}"   # float32 fourth powers would be inf
        '2e+24 2e+48'
    """
    if absmax is None:
        absmax = (
            sample.abs().nan_to_num_(0.0, 0.0, 0.0).amax(0) if sample.shape[0] else sample.new_zeros(sample.shape[1:])
        )
    scale = pow2_scale(absmax)
    sample = sample / scale  # exact: every value keeps its digits
    # Float ops only (boolean masks cost 3-5x more per element on CPU): f is 1 where finite, else 0;
    # z is the sample with non-finite values zeroed; z - f * mean equals where(finite, sample - mean, 0).
    f = sample.mul(0).add_(1).nan_to_num_(0.0, 0.0, 0.0)
    z = sample.nan_to_num(0.0, 0.0, 0.0)
    n = f.sum(0)
    count = n.clamp_min(1)
    mean = z.sum(0) / count
    # Corrected two-pass: remove the first mean's rounding error (a constant channel gets M2 = 0 exactly).
    mean = mean + torch.addcmul(z, f, mean, value=-1).sum(0) / count
    d = torch.addcmul(z, f, mean, value=-1)
    d2 = d * d
    m2 = d2.sum(0)
    m3 = d.mul_(d2).sum(0)  # in place: d * d2 is d2 * d (IEEE products commute)
    m4 = d2.mul_(d2).sum(0)
    # in place (sample is our scaled copy): 1.0 where non-zero, the same counts as a boolean mask summed as floats,
    # which is several times slower on CPU
    nonzero = sample.ne_(0).sum(0)
    return rescale(n, mean, m2, m3, m4, nonzero, scale)


def rescale(
    n: Tensor, mean: Tensor, m2: Tensor, m3: Tensor, m4: Tensor, nonzero: Tensor, scale: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Moments of ``x / scale`` back to those of ``x``, in float64 (``mean * s``, ``M_k * s**k``).

    Example:
        >>> one = torch.ones(1)
        >>> [float(v) for v in rescale(one, one, one, one, one, one, torch.tensor([2.0]))]
        [1.0, 2.0, 4.0, 8.0, 16.0, 1.0]
    """
    s = scale.to(torch.float64)
    s2 = s * s
    return (
        n.to(torch.float64),
        mean.to(torch.float64) * s,
        m2.to(torch.float64) * s2,
        m3.to(torch.float64) * (s2 * s),
        m4.to(torch.float64) * (s2 * s2),
        nonzero.to(torch.float64),
    )


def merge_groups(
    n: np.ndarray, mean: np.ndarray, m2: np.ndarray, m3: np.ndarray, m4: np.ndarray, axis: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge many groups' central moments along ``axis`` exactly (float64, empty groups allowed).

    Uses the shift formulas: with ``d_g = mean_g - mean``,
    ``M2 = sum(M2_g + n_g d_g^2)``, ``M3 = sum(M3_g + 3 d_g M2_g + n_g d_g^3)``,
    ``M4 = sum(M4_g + 4 d_g M3_g + 6 d_g^2 M2_g + n_g d_g^4)``.

    Example:
        >>> x = np.arange(6.0)
        >>> parts = [Moments.of(x[:1]), Moments.of(x[1:])]
        >>> n, mean, m2, _, _ = merge_groups(*(np.array(v) for v in zip(*(p.astuple() for p in parts))))
        >>> float(n), float(mean), float(m2)
        (6.0, 2.5, 17.5)
    """
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite inputs give NaN/inf figures, not warnings
        return _merge_groups(n, mean, m2, m3, m4, axis)


def _merge_groups(n, mean, m2, m3, m4, axis):  # noqa: ANN001, ANN202
    n = np.asarray(n, dtype=np.float64)
    mean, m2, m3, m4 = (np.asarray(v, dtype=np.float64) for v in (mean, m2, m3, m4))
    if n.ndim and n.shape[axis] == 1 and all(v.shape == n.shape for v in (mean, m2, m3, m4)):
        return _merge_one(*(np.take(v, 0, axis=axis) for v in (n, mean, m2, m3, m4)))
    return _merge_many(n, mean, m2, m3, m4, axis)


def _merge_one(n, mean, m2, m3, m4):  # noqa: ANN001, ANN202
    """``_merge_many`` of a single group, without its reductions: a sum of one value ``x`` is ``x + 0.0``."""
    total = n + 0.0
    safe = np.where(total > 0, total, 1.0)
    grand = (n * mean + 0.0) / safe
    grand = grand + (np.where(n > 0, n * (mean - grand), 0.0) + 0.0) / safe
    d = np.where(n > 0, mean - grand, 0.0)
    d2 = d * d
    M2 = (m2 + n * d2) + 0.0
    M3 = (m3 + 3 * d * m2 + n * d2 * d) + 0.0
    M4 = (m4 + 4 * d * m3 + 6 * d2 * m2 + n * d2 * d2) + 0.0
    return total, grand, M2, M3, M4


def _merge_many(n, mean, m2, m3, m4, axis):  # noqa: ANN001, ANN202
    total = n.sum(axis=axis)
    safe = np.where(total > 0, total, 1.0)
    grand = (n * mean).sum(axis=axis) / safe
    # Correct the rounding error of the weighted mean (groups of equal means then give M2 = 0 exactly).
    grand = grand + np.where(n > 0, n * (mean - np.expand_dims(grand, axis)), 0.0).sum(axis=axis) / safe
    d = np.where(n > 0, mean - np.expand_dims(grand, axis), 0.0)
    d2 = d * d
    M2 = (m2 + n * d2).sum(axis=axis)
    M3 = (m3 + 3 * d * m2 + n * d2 * d).sum(axis=axis)
    M4 = (m4 + 4 * d * m3 + 6 * d2 * m2 + n * d2 * d2).sum(axis=axis)
    return total, grand, M2, M3, M4


def standardized_shape(n: np.ndarray, m2: np.ndarray, m3: np.ndarray, m4: np.ndarray) -> tuple[float, float]:
    """Skewness and excess kurtosis of the values pooled after standardizing each channel by itself.

    Pooling channels of different scale makes kurtosis positive by itself; this figure removes that
    effect, leaving the within-channel shape. Channels with fewer than 2 values or zero variance are
    skipped. Returns NaN when none is left.

    Example:
        >>> n = np.array([4.0, 4.0]); m2 = np.array([5.0, 500.0])
        >>> standardized_shape(n, m2, np.zeros(2), np.array([10.25, 102500.0]))
        (0.0, -1.36)
    """
    ok = (n >= 2) & (m2 > 0)
    if not ok.any():
        return math.nan, math.nan
    n, m2, m3, m4 = n[ok], m2[ok], m3[ok], m4[ok]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # inf moments give NaN, not warnings
        var = m2 / n
        z3 = (m3 / var**1.5).sum()
        z4 = (m4 / var**2).sum()
        total = n.sum()
        # After per-channel standardization every channel has mean 0 and variance 1: pooled m2 = 1.
        return float(z3 / total), float(z4 / total - 3.0)


@dataclass(frozen=True)
class Moments:
    """Count and central moment sums of a set of values, mergeable exactly.

    Attributes:
        n: number of values.
        mean: their mean.
        m2, m3, m4: sums of the 2nd, 3rd and 4th powers of deviations from the mean.
    """

    n: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        """Moments of a 1-D array of finite values (float64)."""
        x = np.asarray(values, dtype=np.float64).ravel()
        if x.size == 0:
            return cls()
        mu = x.mean()
        d = x - mu
        d2 = d * d
        return cls(float(x.size), float(mu), float(d2.sum()), float((d2 * d).sum()), float((d2 * d2).sum()))

    def astuple(self) -> tuple[float, float, float, float, float]:
        return (self.n, self.mean, self.m2, self.m3, self.m4)

    def merge(self, other: Moments) -> Moments:
        """Exact merge of two sets (Pébay 2008)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        merged = merge_groups(*(np.array(v) for v in zip(self.astuple(), other.astuple(), strict=True)))
        return Moments(*(float(v) for v in merged))

    @property
    def var(self) -> float:
        """Population variance (``ddof=0``), NaN when empty."""
        return self.m2 / self.n if self.n > 0 else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation, as ``numpy.std`` with its default ``ddof=0``."""
        return math.sqrt(self.var) if self.n > 0 else math.nan

    @property
    def skew(self) -> float:
        """``scipy.stats.skew`` with defaults: ``m3 / m2**1.5``; NaN for constant or empty data."""
        if self.n == 0 or self.m2 <= 0:
            return math.nan
        return (self.m3 / self.n) / (self.m2 / self.n) ** 1.5

    @property
    def kurtosis(self) -> float:
        """``scipy.stats.kurtosis`` with defaults (Fisher, biased): ``m4 / m2**2 - 3``."""
        if self.n == 0 or self.m2 <= 0:
            return math.nan
        return (self.m4 / self.n) / (self.m2 / self.n) ** 2 - 3.0
