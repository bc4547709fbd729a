"""A 20,000-step soak (``benchmarks/soak.py``): memory, logging-step cost and event bytes stay flat."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.slow  # about 2 minutes on a quiet machine, 10 on a loaded one
def test_twenty_thousand_steps(tmp_path: Path):
    from soak import soak

    figures = soak(20_000, str(tmp_path))
    print(figures)
    assert figures["rss_growth_mib"] < 5.0  # resident memory after the warm-up (step 2,000) to the end
    # median CPU cost of a logging step, last 1,000 steps / steps 1,000-2,000: no growth (a drop is the machine's
    # load on the early block, see docs/robustness.md)
    assert figures["cost_ratio"] <= 1.1
    per_step = figures["bytes_per_logging_step"]
    assert max(per_step) - min(per_step) <= 0.01 * min(per_step)  # event bytes per logging step constant
    assert figures["alerts"] == 0  # a healthy run
