"""The examples' ``--quick`` forms: they run, draw their figures, and print conclusions that match their logs.

Each example runs as a user would run it (``python examples/<name>.py --quick --out DIR``) in a temporary
directory; the three run side by side. The printed numbers are checked against what the example wrote to
TensorBoard (read back with TensorBoard's own reader), not against the example's own arithmetic.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "feature_distributions": ["feature_distributions_loss.png", "feature_distributions_normwatch.png"],
    "bn_placement": ["bn_placement_distributions.png", "bn_placement_training.png"],
    "ics_sigmoid": ["ics_sigmoid_percentiles.png", "ics_sigmoid_drift.png"],
}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Run the three ``--quick`` examples in parallel; name -> (output folder, stdout)."""
    tmp = tmp_path_factory.mktemp("examples")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = {}
    for name in EXAMPLES:
        out = tmp / name
        procs[name] = (
            out,
            subprocess.Popen(
                [sys.executable, str(ROOT / "examples" / f"{name}.py"), "--quick", "--out", str(out)],
                cwd=tmp,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )
    results = {}
    for name, (out, proc) in procs.items():
        stdout, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name} failed:\n{stdout[-3000:]}"
        results[name] = (out, stdout)
    return results


def scalars(run_dir: Path, tag: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one scalar tag in a run's event files."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


def number_after(text: str, label: str) -> float:
    """The number printed right after ``label`` (``n/a`` is NaN)."""
    m = re.search(re.escape(label) + r"\s*([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?|n/a)", text)
    assert m, f"{label!r} not in {text!r}"
    return math.nan if m.group(1) == "n/a" else float(m.group(1))


def close(printed: float, recomputed: float) -> bool:
    """Printed with 3 significant digits; TensorBoard stores float32."""
    if math.isnan(printed) or math.isnan(recomputed):
        return math.isnan(printed) and math.isnan(recomputed)
    return abs(printed - recomputed) <= 6e-3 * abs(recomputed) + 1e-6


def conclusion_lines(stdout: str) -> list[str]:
    assert "Conclusion:" in stdout, stdout
    return [line.strip() for line in stdout.split("Conclusion:", 1)[1].splitlines() if line.startswith("  ")]


def check_pngs(out: Path, names: list[str]) -> None:
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def test_feature_distributions_quick(quick_runs) -> None:
    out, stdout = quick_runs["feature_distributions"]
    check_pngs(out, EXAMPLES["feature_distributions"])
    lines = conclusion_lines(stdout)
    assert any(line.startswith("Shape:") for line in lines) and any(line.startswith("Scale:") for line in lines)
    for variant, label in [
        ("raw", "(a) raw"),
        ("standardized", "(b) standardized"),
        ("normal", "(d) quantile->normal"),
    ]:
        line = next(x for x in lines if x.startswith(label))
        finals, reach = [], []
        for seed_dir in sorted((out / "logs" / variant).iterdir()):
            steps, loss = scalars(seed_dir, "example/train_loss_full")
            finals.append(loss[-1])
            reach.append(next((s for s, v in zip(steps, loss, strict=True) if v <= 0.1), math.inf))
        assert len(finals) == 2  # two seeds in the quick form
        assert close(number_after(line, "final loss median"), float(np.median(finals))), line
        median_reach = float(np.median(reach))
        assert close(number_after(line, "loss 0.1 at step"), median_reach if math.isfinite(median_reach) else math.nan)
    # NormWatch warned about the raw features' scales and about nothing on the quantile-normal ones
    raw = next(x for x in lines if x.startswith("(a) raw"))
    normal = next(x for x in lines if x.startswith("(d) quantile->normal"))
    assert number_after(raw, "warnings") > 0 and number_after(normal, "warnings") == 0


def test_bn_placement_quick(quick_runs) -> None:
    out, stdout = quick_runs["bn_placement"]
    check_pngs(out, EXAMPLES["bn_placement"])
    lines = conclusion_lines(stdout)
    assert any(line.startswith("BN before the ReLU:") for line in lines)
    assert "NormWatch alerts" in stdout
    relu_in = {"bn_before": ["net.1", "net.4", "net.7"], "bn_after": ["net.0", "net.3", "net.6"]}
    relu_out = {"bn_before": ["net.2", "net.5", "net.8"], "bn_after": ["net.1", "net.4", "net.7"]}
    for variant, label in [("bn_before", "Linear->BN->ReLU"), ("bn_after", "Linear->ReLU->BN")]:
        run = out / "logs" / variant / "seed_0"
        ratios, stds, zeros = [], [], []
        for k_in, k_out in zip(relu_in[variant], relu_out[variant], strict=True):
            steps, mean = scalars(run, f"normwatch/{k_in}/mean")
            _, std = scalars(run, f"normwatch/{k_in}/std")
            zsteps, z = scalars(run, f"normwatch/{k_out}/zeros")
            late = [i for i, s in enumerate(steps) if s >= 50]  # second half of the quick run's 100 steps
            m, sd = np.median([mean[i] for i in late]), np.median([std[i] for i in late])
            ratios.append(abs(m) / sd)
            stds.append(sd)
            zeros.append(np.median([v for s, v in zip(zsteps, z, strict=True) if s >= 50]))
        line = next(x for x in lines if x.startswith(label) and "test accuracy" in x)
        assert close(number_after(line, "ReLU input |mean|/std"), float(np.median(ratios))), line
        assert close(number_after(line, ", std"), float(np.median(stds))), line
        assert close(number_after(line, "ReLU passes"), 100 * (1 - float(np.median(zeros)))), line
    # BN right before the ReLU: a centred input of unit scale, about half passed (the quick run agrees already)
    before = next(x for x in lines if x.startswith("Linear->BN->ReLU"))
    assert number_after(before, "ReLU input |mean|/std") < 0.1
    assert 0.8 < number_after(before, ", std") < 1.25
    assert 35 < number_after(before, "ReLU passes") < 65


def test_ics_sigmoid_quick(quick_runs) -> None:
    out, stdout = quick_runs["ics_sigmoid"]
    check_pngs(out, EXAMPLES["ics_sigmoid"])
    lines = conclusion_lines(stdout)
    assert any(line.startswith("Figure 1:") for line in lines) and any(line.startswith("Noisy BN:") for line in lines)
    travels = {}
    for variant, label in [("no_bn", "no BN"), ("bn", "BN before each sigmoid"), ("noisy_bn", "noisy BN")]:
        run = out / "logs" / variant / "seed_0"
        nw = {q: scalars(run, f"example/normwatch_p{q}")[1] for q in (15, 50, 85)}
        ex = {q: scalars(run, f"example/exact_p{q}")[1] for q in (15, 50, 85)}
        exact = np.array([ex[q] for q in ex])
        err = np.abs(np.array([nw[q] for q in nw]) - exact)
        assert err.shape == (3, 30) and np.isfinite(err).all(), variant  # 300 steps, every 10th measured
        # NormWatch's percentiles of the probed unit are those of its batch, to within one histogram bin (10 % of
        # |x| of the values interpolated between, which lie within the batch's p15-p85 band for these ranks)
        assert (err <= 0.11 * np.abs(exact[[0, 2]]).max(axis=0) + 1e-4).all(), variant
        line = next(x for x in lines if x.startswith(label) and "test accuracy" in x)
        assert close(number_after(line, "off by"), float(err.mean())), line
        travel = max(max(nw[q]) - min(nw[q]) for q in nw)
        assert close(number_after(line, "percentiles travel"), travel), line
        travels[variant] = travel
        steps, acc = scalars(run, "example/test_accuracy")
        assert close(number_after(line, "test accuracy"), acc[-1]), line
    ratio_line = next(x for x in lines if x.startswith("Figure 1:"))
    assert close(number_after(ratio_line, "travel"), travels["no_bn"] / travels["bn"]), ratio_line
