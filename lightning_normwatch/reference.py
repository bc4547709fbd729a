"""The reference distribution of a tensor and drift measured against it.

The reference accumulates, exactly, the moments and the shared-bin histogram of every logging
step inside a window that starts after a warm-up (activations move fast at initialization, see
``shared/STATISTICS.md`` §3). Drift is then: the log-ratio of stds, the mean shift in reference
stds, PSI and KS on the shared bins.

Example:
    >>> import numpy as np
    >>> ref = Reference()
    >>> ref.add(Moments.of(np.array([-1.0, 1.0])), np.array([1.0, 0.0, 1.0]))
    >>> d = drift(ref, Moments.of(np.array([-2.0, 2.0])), np.array([1.0, 0.0, 1.0]))
    >>> round(d["std_log_ratio"], 4), d["mean_shift"]
    (0.6931, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .histogram import ks_distance, psi
from .moments import Moments

__all__ = ["Reference", "drift", "DRIFT_FIGURES"]

DRIFT_FIGURES = ("std_log_ratio", "mean_shift", "psi", "ks")


@dataclass
class Reference:
    """Accumulated reference statistics of one tensor.

    Attributes:
        moments: merged moments of every sample in the window.
        hist: summed shared-bin counts.
        steps: logging steps accumulated.
    """

    moments: Moments = field(default_factory=Moments)
    hist: np.ndarray | None = None
    steps: int = 0

    def add(self, moments: Moments, hist: np.ndarray) -> None:
        """Add one logging step's statistics."""
        self.moments = self.moments.merge(moments)
        self.hist = hist.copy() if self.hist is None else self.hist + hist
        self.steps += 1

    def state(self) -> dict[str, object]:
        """Plain values for a checkpoint (loads with ``weights_only=True``)."""
        return {
            "moments": list(self.moments.astuple()),
            "hist": [] if self.hist is None else self.hist.tolist(),
            "steps": self.steps,
        }

    @classmethod
    def from_state(cls, state: dict[str, object]) -> Reference:
        hist = state["hist"]
        return cls(
            Moments(*state["moments"]),  # type: ignore[misc]
            np.asarray(hist, dtype=np.float64) if len(hist) else None,  # type: ignore[arg-type]
            int(state["steps"]),  # type: ignore[arg-type]
        )


def drift(reference: Reference, current: Moments, hist: np.ndarray) -> dict[str, float]:
    """Drift figures of the current step against the reference; NaN where undefined."""
    ref = reference.moments
    out = dict.fromkeys(DRIFT_FIGURES, math.nan)
    if ref.n == 0 or current.n == 0 or reference.hist is None:
        return out
    ref_std, cur_std = ref.std, current.std
    if ref_std > 0 and cur_std > 0:
        out["std_log_ratio"] = math.log(cur_std / ref_std)
    # a reference std of zero (constant tensor) would make any change infinite: floor it.
    scale = max(ref_std, 1e-6 * max(abs(ref.mean), 1e-12))
    out["mean_shift"] = (current.mean - ref.mean) / scale
    out["psi"] = psi(reference.hist, hist)
    out["ks"] = ks_distance(reference.hist, hist)
    return out
