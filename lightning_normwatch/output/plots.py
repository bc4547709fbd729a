"""Pictures of a layer group: histogram against the fitted normal and a normal Q-Q plot.

Everything is drawn from what NormWatch already measured at a logging step: the counts on the
shared histogram bins, the sample's finite extremes and its moments. No activation is kept for
plotting. The empirical CDF is taken piecewise linear inside each bin (values spread uniformly in
a bin), which is exact at the bin edges; the zero bin (``|x| <= 1e-6``) is treated as an atom, so
ReLU's exact zeros show as a share instead of an infinitely tall bar.

Matplotlib is optional: ``load_matplotlib()`` imports it lazily and returns ``None`` (warning
once) when it is missing. Figures are built with the Agg canvas directly, without pyplot's global
state, so plotting never changes the user's backend.

Example:
    >>> import numpy as np
    >>> from lightning_normwatch.stats.histogram import bin_counts, bin_edges
    >>> import torch
    >>> x = torch.linspace(-2.0, 2.0, 401)
    >>> counts = bin_counts(x, bin_edges(dtype=torch.float64)).numpy()
    >>> q = quantiles(counts, -2.0, 2.0, np.array([0.0, 0.5, 1.0]))
    >>> [round(float(v), 2) for v in q]
    [-2.0, 0.0, 2.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..stats.histogram import edges_numpy

__all__ = [
    "PlotData",
    "cdf_knots",
    "quantiles",
    "density",
    "zero_share",
    "qq_points",
    "pair_rows",
    "group_figure",
    "load_matplotlib",
]

_ZERO_LIMIT = 1e-6  # the shared bins' zero bin is (-1e-6, 1e-6]


@dataclass(frozen=True)
class PlotData:
    """What one tensor's panels are drawn from (all of it measured at the logging step).

    Attributes:
        name: tensor key (``net.0``, ``input``, ``lstm[0]`` ...).
        label: module class name (``Linear``, ``ReLU``, ``batch`` for inputs).
        role: ``input``, ``preact``, ``activation``, ``bounded`` or ``other``.
        hist: counts on the shared bins (finite sampled values).
        smin, smax: the sample's finite extremes.
        mean, std, skew, kurtosis: moments of the sample (kurtosis is excess kurtosis).

    Example:
        >>> import numpy as np
        >>> d = PlotData("fc", "Linear", "preact", np.zeros(3), 0.0, 1.0, 0.5, 0.3, 0.0, 0.0)
        >>> d.title
        'fc (Linear)'
    """

    name: str
    label: str
    role: str
    hist: np.ndarray
    smin: float
    smax: float
    mean: float
    std: float
    skew: float
    kurtosis: float

    @property
    def title(self) -> str:
        return f"{self.name} ({self.label})"

    @property
    def drawable(self) -> bool:
        """Whether there is anything to draw (some finite values and finite extremes)."""
        return (
            float(np.sum(self.hist)) > 0
            and math.isfinite(self.smin)
            and math.isfinite(self.smax)
            and math.isfinite(self.mean)
        )


def cdf_knots(hist: np.ndarray, smin: float, smax: float) -> tuple[np.ndarray, np.ndarray]:
    """Knots ``x`` and empirical CDF values ``F(x)`` (non-decreasing) of shared-bin counts.

    The open outer bins end at the observed extremes; every knot is clipped to ``[smin, smax]``.

    Example:
        >>> import numpy as np
        >>> from lightning_normwatch.stats.histogram import num_bins
        >>> x, F = cdf_knots(np.eye(num_bins())[num_bins() // 2] * 4, -1e-7, 1e-7)   # four zeros
        >>> float(F[0]), float(F[-1]), float(x.min()) >= -1e-7
        (0.0, 1.0, True)
    """
    counts = np.asarray(hist, dtype=np.float64)
    edges = edges_numpy()
    total = counts.sum()
    if total <= 0:
        raise ValueError("cdf_knots: the histogram is empty")
    left = min(float(smin), float(edges[0]))
    right = max(float(smax), float(edges[-1]))
    x = np.clip(np.concatenate([[left], edges, [right]]), smin, smax)
    cum = np.concatenate([[0.0], np.cumsum(counts)]) / total
    return x, cum


def quantiles(hist: np.ndarray, smin: float, smax: float, p: np.ndarray) -> np.ndarray:
    """Empirical quantiles at probabilities ``p`` (values uniform within each bin).

    Example:
        >>> import numpy as np
        >>> from lightning_normwatch.stats.histogram import num_bins
        >>> counts = np.zeros(num_bins()); counts[num_bins() // 2] = 10     # ten zeros
        >>> float(quantiles(counts, 0.0, 0.0, np.array([0.5]))[0])
        0.0
    """
    x, cum = cdf_knots(hist, smin, smax)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    # bin j spans knots x[j]..x[j+1] and CDF cum[j]..cum[j+1]; find the first bin reaching p
    j = np.clip(np.searchsorted(cum, p, side="left") - 1, 0, len(x) - 2)
    lo, hi = cum[j], cum[j + 1]
    frac = np.where(hi > lo, (p - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    return x[j] + np.clip(frac, 0.0, 1.0) * (x[j + 1] - x[j])


def zero_share(hist: np.ndarray) -> float:
    """Share of the counts in the zero bin (``|x| <= 1e-6``), e.g. a ReLU's exact zeros."""
    counts = np.asarray(hist, dtype=np.float64)
    total = counts.sum()
    return float(counts[_zero_bin()] / total) if total > 0 else math.nan


def _zero_bin() -> int:
    """Index of the bin ``(-1e-6, 1e-6]``."""
    return int(np.searchsorted(edges_numpy(), _ZERO_LIMIT, side="left"))


def density(hist: np.ndarray, smin: float, smax: float, grid: np.ndarray, drop_zero_bin: bool = False) -> np.ndarray:
    """Probability density on the cells of a uniform ``grid`` (``len(grid) - 1`` values).

    With ``drop_zero_bin`` the zero bin's mass is left out (drawn as an atom instead); the density
    then integrates to one minus ``zero_share``.

    Example:
        >>> import numpy as np, torch
        >>> from lightning_normwatch.stats.histogram import bin_counts, bin_edges
        >>> counts = bin_counts(torch.rand(100_000) * 2 - 1, bin_edges(dtype=torch.float64)).numpy()
        >>> d = density(counts, -1.0, 1.0, np.linspace(-1, 1, 5))
        >>> [round(float(v), 1) for v in d]
        [0.5, 0.5, 0.5, 0.5]
    """
    counts = np.asarray(hist, dtype=np.float64).copy()
    total = counts.sum()
    if drop_zero_bin:
        counts[_zero_bin()] = 0.0
    if counts.sum() <= 0:
        return np.zeros(len(grid) - 1)
    x, cum = cdf_knots(counts, smin, smax)
    cum = cum * (counts.sum() / total)
    # the CDF is piecewise linear between distinct knots; interpolate at the grid points
    keep = np.concatenate([[True], np.diff(x) > 0])
    xs, fs = x[keep], cum[keep]
    xs, idx = np.unique(xs, return_index=True)
    last = np.concatenate([idx[1:] - 1, [len(fs) - 1]])  # for a repeated knot, the CDF after the jump
    fs = fs[last]
    if len(xs) == 1:  # a single value: all its mass in the grid cell that holds it
        out = np.zeros(len(grid) - 1)
        cell = int(np.clip(np.searchsorted(grid, xs[0], side="right") - 1, 0, len(out) - 1))
        out[cell] = fs[0] / (grid[cell + 1] - grid[cell])
        return out
    g = np.interp(grid, xs, fs, left=0.0, right=float(fs[-1]))
    return np.diff(g) / np.diff(grid)


def qq_points(data: PlotData, points: int = 99) -> tuple[np.ndarray, np.ndarray]:
    """Normal Q-Q points: theoretical normal quantiles and the sample's standardized quantiles.

    A sample that is normal lies on the line ``y = x``; heavy tails bend away at both ends, skew
    bends one end, a point mass (ReLU's zeros) shows as a flat run.

    Example:
        >>> import numpy as np, torch
        >>> from lightning_normwatch.stats.histogram import bin_counts, bin_edges
        >>> x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
        >>> h = bin_counts(x, bin_edges(dtype=torch.float64)).numpy()
        >>> d = PlotData("x", "batch", "input", h, float(x.min()), float(x.max()), 0.0, 1.0, 0.0, 0.0)
        >>> z, q = qq_points(d, points=9)
        >>> bool(np.abs(z - q).max() < 0.05)
        True
    """
    from scipy import special

    p = (np.arange(points) + 0.5) / points
    z = special.ndtri(p)
    q = quantiles(data.hist, data.smin, data.smax, p)
    scale = data.std if data.std > 0 and math.isfinite(data.std) else 1.0
    return z, (q - data.mean) / scale


def pair_rows(items: Sequence[PlotData]) -> list[tuple[PlotData | None, PlotData | None]]:
    """Rows of the group figure: a pre-activation next to the activation that follows it.

    ``items`` are in execution order. A ``preact`` (or ``other``) tensor immediately followed by an
    ``activation``/``bounded`` one forms a row ``(pre, post)``; an activation alone is ``(None,
    post)``; anything else stands alone as ``(item, None)``.

    Example:
        >>> import numpy as np
        >>> mk = lambda n, r: PlotData(n, "M", r, np.zeros(1), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        >>> rows = pair_rows([mk("fc1", "preact"), mk("act1", "activation"), mk("fc2", "preact")])
        >>> [(a and a.name, b and b.name) for a, b in rows]
        [('fc1', 'act1'), ('fc2', None)]
    """
    rows: list[tuple[PlotData | None, PlotData | None]] = []
    post_roles = ("activation", "bounded")
    i = 0
    while i < len(items):
        cur = items[i]
        nxt = items[i + 1] if i + 1 < len(items) else None
        if cur.role in ("preact", "other") and nxt is not None and nxt.role in post_roles:
            rows.append((cur, nxt))
            i += 2
        elif cur.role in post_roles:
            rows.append((None, cur))
            i += 1
        else:
            rows.append((cur, None))
            i += 1
    return rows


_WARNED = False


def load_matplotlib() -> Any | None:
    """Matplotlib's ``Figure`` class, or ``None`` with one warning per process when it is missing.

    Example:
        >>> from matplotlib.figure import Figure   # the extra "plots"
        >>> load_matplotlib() is Figure
        True
    """
    global _WARNED
    try:
        from matplotlib.figure import Figure
    except ImportError:
        if not _WARNED:
            _WARNED = True
            import warnings

            warnings.warn(
                "NormWatch: plot_every_n_steps is set but matplotlib is not installed; figures are skipped "
                "(pip install 'lightning-normwatch[plots]' to get them). Everything else is logged.",
                stacklevel=2,
            )
        return None
    return Figure


def _fmt(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "n/a"


def _hist_axes(ax: Any, d: PlotData) -> None:
    """Histogram (density) of one tensor against the normal with the same mean and std."""
    z0 = zero_share(d.hist)
    atom = z0 >= 0.01  # a visible point mass at zero: drawn as a bar of its own
    std = d.std if d.std > 0 and math.isfinite(d.std) else max(abs(d.smax - d.smin), 1e-12) / 4
    qlo, qhi = quantiles(d.hist, d.smin, d.smax, np.array([0.002, 0.998]))
    lo = min(float(qlo), d.mean - 3.5 * std)
    hi = max(float(qhi), d.mean + 3.5 * std)
    if not hi > lo:
        lo, hi = lo - 1.0, hi + 1.0
    cells = int(np.clip(2 * math.sqrt(float(np.sum(d.hist))), 12, 60))  # fewer cells for small samples
    grid = np.linspace(lo, hi, cells + 1)
    dens = density(d.hist, d.smin, d.smax, grid, drop_zero_bin=atom)
    xs = np.linspace(lo, hi, 400)
    pdf = np.exp(-0.5 * ((xs - d.mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    ax.stairs(dens, grid, fill=True, color="#8fb3d9", label="measured")
    ax.plot(xs, pdf, color="#d9534f", lw=1.5, label="fitted normal")
    top = 1.15 * max(float(dens.max(initial=0.0)), float(pdf.max()))
    if atom:
        # its height is arbitrary (a point mass has no density): kept below the legend, labelled with its share
        ax.vlines(0.0, 0.0, top * 0.7, color="#2c5d8f", lw=3, label=f"exact zeros {z0:.0%}")
    ax.set_ylim(0.0, top)
    ax.set_xlim(lo, hi)
    ax.set_yticks([])
    ax.set_title(d.title, fontsize=9, loc="left")
    ax.text(
        0.99,
        0.97,
        f"mean {_fmt(d.mean)}\nstd {_fmt(d.std)}\nskew {_fmt(d.skew)}\nex. kurt {_fmt(d.kurtosis)}",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=7,
        family="monospace",
        bbox={"boxstyle": "round", "fc": "white", "ec": "#cccccc", "alpha": 0.85},
    )
    ax.legend(loc="upper left", fontsize=6, frameon=False)
    ax.tick_params(labelsize=7)
    ax.locator_params(axis="x", nbins=5)


def _qq_axes(ax: Any, d: PlotData) -> None:
    """Standardized normal Q-Q plot: on the diagonal when the tensor is normal."""
    z, q = qq_points(d)
    lim = max(3.0, float(np.abs(z).max()))
    ax.plot([-lim, lim], [-lim, lim], color="#d9534f", lw=1, label="normal")
    ax.plot(z, q, ".", ms=3, color="#2c5d8f", label="measured")
    qmin, qmax = float(q.min()), float(q.max())
    ax.set_xlim(-lim, lim)
    ax.set_ylim(min(-lim, qmin) - 0.2, max(lim, qmax) + 0.2)
    ax.set_title("Q-Q vs normal", fontsize=8, loc="left")
    ax.set_xlabel("normal quantile", fontsize=7)
    ax.set_ylabel("(quantile - mean) / std", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.locator_params(nbins=5)
    ax.grid(alpha=0.3)


def group_figure(
    figure_cls: Any, group: str, step: int, rows: Sequence[tuple[PlotData | None, PlotData | None]]
) -> Any:
    """One figure for a layer group: per row, histogram + Q-Q of the pre-activation, then of the activation.

    Args:
        figure_cls: ``matplotlib.figure.Figure`` (from ``load_matplotlib()``).
        group: group name (title).
        step: global step (title).
        rows: ``pair_rows(...)`` output.

    Example:
        >>> import numpy as np, torch
        >>> from lightning_normwatch.stats.histogram import bin_counts, bin_edges
        >>> Figure = load_matplotlib()
        >>> x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
        >>> h = bin_counts(x, bin_edges(dtype=torch.float64)).numpy()
        >>> d = PlotData("fc", "Linear", "preact", h, float(x.min()), float(x.max()), 0.0, 1.0, 0.0, 0.0)
        >>> fig = group_figure(Figure, "net", 10, [(d, None)])
        >>> len(fig.axes), fig.get_size_inches().round(2).tolist()   # histogram and Q-Q; 2 x 3.4 by 2.6 + 0.5 in
        (2, [6.8, 3.1])
        >>> fig.get_suptitle()
        'normwatch: net at step 10 — histogram and Q-Q plot'
    """
    paired = any(a is not None and b is not None for a, b in rows)
    cols = 4 if paired else 2
    width, height = 3.4 * cols, 2.6 * len(rows) + 0.5
    fig = figure_cls(figsize=(width, height), dpi=80)
    # fixed margins (in inches) instead of a layout engine: drawing stays cheap for big groups
    axes = fig.subplots(
        len(rows),
        cols,
        squeeze=False,
        gridspec_kw={
            "left": 0.15 / width,
            "right": 1 - 0.1 / width,
            "bottom": 0.45 / height,
            "top": 1 - 0.65 / height,
            "wspace": 0.28,
            "hspace": 0.55 / 2.1,
        },
    )
    what = "pre-activation (left) vs activation (right)" if paired else "histogram and Q-Q plot"
    fig.suptitle(f"normwatch: {group} at step {step} — {what}", fontsize=10, y=1 - 0.12 / height, va="top")
    for r, (pre, post) in enumerate(rows):
        cells = [pre, post] if paired else [pre if pre is not None else post]
        for c, d in enumerate(cells):
            hax, qax = axes[r][2 * c], axes[r][2 * c + 1]
            if d is None or not d.drawable:
                hax.set_axis_off()
                qax.set_axis_off()
                if d is not None:
                    hax.text(0.5, 0.5, f"{d.title}\nno finite values", ha="center", va="center", fontsize=8)
                continue
            _hist_axes(hax, d)
            _qq_axes(qax, d)
    return fig
