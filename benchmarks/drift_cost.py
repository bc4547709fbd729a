"""Cost of a logging step's drift figures and input figures, this tree against a git revision (issue 17).

Records, during a real fit of a benchmark model (``overhead.py``, ``every step``), what the judging
hands to the drift functions: every tensor's moments and histogram with its frozen reference, the
input features' statistics, and the samples ``feature_histogram`` bins. Then times, interleaved in
one process (CPU time, medians of rounds), the revision's functions (extracted with ``git archive``)
against this tree's on those very inputs, and checks that they give the same figures:

- drift: ``[drift(ref, moments, hist) ...]`` (revision) against ``drift_many`` (this tree);
- input figures: ``InputTracker.scale_figures`` and ``update`` (per-feature drift, homogeneity test);
- ``feature_histogram`` (the anchor bins of the input features, on the training thread).

Run: ``.venv/bin/python benchmarks/drift_cost.py [--base main] [--models MLP Transformer]``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import overhead  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def record(name: str, steps: int) -> dict[str, Any]:
    """Fit the benchmark model with NormWatch every step; keep what the drift and input figures receive."""
    from lightning_normwatch.collect import collector
    from lightning_normwatch.judge import evaluator

    rec: dict[str, Any] = {"steps": [], "samples": []}
    evaluate, histogram = evaluator.Evaluator.evaluate, collector.feature_histogram

    def judged(self, step, stats):  # noqa: ANN001, ANN202
        if self.reference_ready(step) and "inputs" not in rec:
            rec["inputs"] = (copy.deepcopy(self.input_tracker.state()), self.input_tracker.reference_end)
        result = evaluate(self, step, stats)
        if self.reference_ready(step):
            rec["steps"].append({k: copy.deepcopy(st) for k, st in stats.items()})
            rec["references"] = {k: r.state() for k, r in self.references.items() if r.steps > 0}
            rec["inputs_keys"] = [k for k in stats if self._is_input(k)]
        return result

    def binned(sample, center, scale):  # noqa: ANN001, ANN202
        rec["samples"].append((sample.clone(), center.clone(), scale.clone()))
        return histogram(sample, center, scale)

    evaluator.Evaluator.evaluate, collector.feature_histogram = judged, binned
    try:
        spec = {m.name: m for m in overhead.MODELS}[name]
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            overhead.fit(spec.build(), spec, "every step", steps, tmp)
    finally:
        evaluator.Evaluator.evaluate, collector.feature_histogram = evaluate, histogram
    return rec


def load_revision(base: str, into: Path) -> str:
    """The package at ``base`` as an importable package named ``nw_base``."""
    archive = subprocess.run(["git", "archive", base, "lightning_normwatch"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "lightning_normwatch").rename(into / "nw_base")
    sys.path.insert(0, str(into))
    return "nw_base"


def workloads(pkg: str, rec: dict[str, Any], fast: bool) -> dict[str, Any]:
    """Per part, a function running every recorded logging step with package ``pkg``; returns the figures."""
    ref_mod = importlib.import_module(f"{pkg}.stats.reference")
    moments = importlib.import_module(f"{pkg}.stats.moments").Moments
    features = importlib.import_module(f"{pkg}.stats.feature_drift")
    tracker_cls = importlib.import_module(f"{pkg}.judge.input_drift").InputTracker
    refs = {k: ref_mod.Reference.from_state(s) for k, s in rec["references"].items()}
    steps = [
        [(refs[k], moments(*st.overall.astuple()), st.hist) for k, st in s.items() if k in refs] for s in rec["steps"]
    ]
    if fast:
        many = importlib.import_module(f"{pkg}.stats.drift_rows").drift_many
        drift = lambda: [many(items) for items in steps]  # noqa: E731
    else:
        drift = lambda: [[ref_mod.drift(*item) for item in items] for items in steps]  # noqa: E731
    inputs = [(k, st) for s in rec["steps"] for k, st in s.items() if k in rec["inputs_keys"]]

    def input_figures() -> list[Any]:
        tracker = tracker_cls(rec["inputs"][1])
        tracker.load(copy.deepcopy(rec["inputs"][0]))
        out = []
        for step, (key, st) in enumerate(inputs, start=rec["inputs"][1]):
            arrays = (st.cn, st.cmean, st.cm2, st.cm3, st.cm4)
            out.append(tracker.scale_figures(key, *arrays))
            if st.fhist is not None:
                current = features.FeatureStats(*arrays, st.fhist, st.fitems)
                figures, verdict = tracker.update(key, step, current, (0.5, 1.5, 0.2), 5.0)
                out.append((figures, None if verdict is None else verdict.message))
        return out

    def histograms() -> list[Any]:
        return [features.feature_histogram(*args).tolist() for args in rec["samples"]]

    return {"drift": drift, "input figures": input_figures, "feature_histogram": histograms}


def compare(rec: dict[str, Any], base_pkg: str, rounds: int) -> None:
    old, new = workloads(base_pkg, rec, fast=False), workloads("lightning_normwatch", rec, fast=True)
    steps, samples = len(rec["steps"]), max(len(rec["samples"]), 1)
    for part in old:
        same = repr(old[part]()) == repr(new[part]())
        times = np.zeros((rounds, 2))
        for r in range(rounds):
            for i, run in enumerate((old[part], new[part])):
                started = time.process_time()
                run()
                times[r, i] = time.process_time() - started
        per = samples if part == "feature_histogram" else steps
        o, n = np.median(times, 0) / per * 1e3
        print(
            f"  {part:18s} old {o:7.3f} ms  new {n:7.3f} ms  x{np.median(times[:, 0] / times[:, 1]):.2f}  same: {same}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="main", help="git revision to compare with (default main)")
    parser.add_argument("--models", nargs="+", default=["MLP", "Transformer"])
    parser.add_argument("--steps", type=int, default=25, help="logging steps of each fit")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        base_pkg = load_revision(args.base, Path(tmp))
        for name in args.models:
            rec = record(name, args.steps)
            print(f"{name}: {len(rec['steps'])} logging steps after the reference, {len(rec['steps'][0])} tensors")
            compare(rec, base_pkg, args.rounds)


if __name__ == "__main__":
    main()
