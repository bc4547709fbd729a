"""Host cost of judging a logging step, old code against new, on statistics captured from a real fit.

``capture`` trains one of ``overhead.py``'s models with ``NormWatch(every_n_steps=1)`` (synchronous) and
saves what each logging step handed to ``Evaluator.evaluate`` (the merged statistics as plain arrays, the
collector's view, the configuration) and the raw blocks ``TensorStats.from_blocks`` merged. ``compare``
replays the captured steps through two copies of the package in one process, interleaved over rounds:
fresh ``Evaluator`` per replay, every step in order, and reports per logging step the median time of
``from_blocks`` (all tensors), ``evaluate``, and ``evaluate`` minus the drift and input-feature work
(``_reference_and_drift``, ``_input_figures``, timed inside); it also checks that both copies give the
same figures (bitwise, NaN equal to NaN) and the same alerts at every step.

The baseline is a copy of the package renamed, e.g. from the main branch::

    mkdir -p /tmp/old && git archive main lightning_normwatch | tar -x -C /tmp/old
    mv /tmp/old/lightning_normwatch /tmp/old/lightning_normwatch_old
    .venv/bin/python benchmarks/judge_cost.py capture Transformer 12 /tmp/tr.pkl
    .venv/bin/python benchmarks/judge_cost.py compare /tmp/tr.pkl --baseline /tmp/old --rounds 7
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import importlib
import math
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def capture(model_name: str, steps: int, out: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    import overhead
    import torch

    from lightning_normwatch.judge.evaluator import Evaluator
    from lightning_normwatch.stats.figures import TensorStats

    spec = {m.name: m for m in overhead.MODELS}[model_name]
    torch.manual_seed(0)
    model = spec.build()
    records: list[dict[str, Any]] = []
    blocks: list[tuple[np.ndarray, int, int]] = []
    original_evaluate, original_from_blocks = Evaluator.evaluate, TensorStats.from_blocks.__func__

    def evaluate(self, step, stats):  # noqa: ANN001, ANN202
        fields = {
            k: {f.name: copy.deepcopy(getattr(st, f.name)) for f in dataclasses.fields(st)} for k, st in stats.items()
        }
        c = self.collector
        view = {
            "infos": dict(c.infos),
            "edges": dict(c.edges),
            "feature_stride": dict(c.feature_stride),
            "first": c.discovery.finish(),
            "watched": list(c.watched),  # the modules: the evaluator asks their type and parameters only
        }
        records.append({"step": step, "stats": fields, "view": view, "config": self.config})
        return original_evaluate(self, step, stats)

    def from_blocks(cls, b, channels, feature_bins=0):  # noqa: ANN001, ANN202
        blocks.append((np.array(b, copy=True), channels, feature_bins))
        return original_from_blocks(cls, b, channels, feature_bins)

    Evaluator.evaluate = evaluate
    TensorStats.from_blocks = classmethod(from_blocks)
    try:
        with tempfile.TemporaryDirectory() as d:
            overhead.fit(model, spec, "every step", steps, d)
    finally:
        Evaluator.evaluate = original_evaluate
        TensorStats.from_blocks = classmethod(original_from_blocks)
    with open(out, "wb") as f:
        pickle.dump({"records": records, "blocks": blocks, "model": model_name}, f)
    print(f"{len(records)} logging steps, {len(blocks)} blocks -> {out}")


class _Found:
    def __init__(self, first: str | None) -> None:
        self.first = first

    def finish(self) -> str | None:
        return self.first


class _View:
    def __init__(self, view: dict[str, Any], collector_cls: Any) -> None:
        self.watched = view["watched"]
        self.infos, self.edges, self.feature_stride = view["infos"], view["edges"], view["feature_stride"]
        self.discovery = _Found(view["first"])
        self.first_nonfinite = collector_cls.first_nonfinite


def _package(name: str) -> dict[str, Any]:
    return {
        "Evaluator": importlib.import_module(f"{name}.judge.evaluator").Evaluator,
        "TensorStats": importlib.import_module(f"{name}.stats.figures").TensorStats,
        "Moments": importlib.import_module(f"{name}.stats.moments").Moments,
        "Collector": importlib.import_module(f"{name}.collect.collector").Collector,
    }


def _stats(pkg: dict[str, Any], fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key, f in fields.items():
        f = dict(f)
        p = f["pvalue"]
        f["pvalue"] = pkg["Moments"](p.n, p.mean, p.m2, p.m3, p.m4)
        out[key] = pkg["TensorStats"](**{k: copy.copy(v) for k, v in f.items()})
    return out


class Replay:
    """One package's ``Evaluator`` stepping through the captured logging steps, timing each ``evaluate`` and the
    drift and input-feature work inside it."""

    def __init__(self, pkg: dict[str, Any], records: list[dict[str, Any]]) -> None:
        self.inputs = [(r["step"], _stats(pkg, r["stats"]), _View(r["view"], pkg["Collector"])) for r in records]
        self.evaluator = pkg["Evaluator"](records[0]["config"], self.inputs[0][2])
        self.inner = 0.0
        for name in ("_reference_and_drift", "_input_figures"):
            setattr(self.evaluator, name, self._timed(getattr(self.evaluator, name)))
        self.total: list[float] = []
        self.drift: list[float] = []
        self.results: list[Any] = []

    def _timed(self, method: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.inner += time.perf_counter() - t

        return wrapper

    def step(self, i: int) -> None:
        step, stats, view = self.inputs[i]
        self.evaluator.collector = view
        self.inner = 0.0
        t = time.perf_counter()
        result = self.evaluator.evaluate(step, stats)
        self.total.append(time.perf_counter() - t)
        self.drift.append(self.inner)
        self.results.append((result.figures, [repr(a) for a in result.alerts], result.active))


def time_blocks(pkg: dict[str, Any], blocks: list[tuple[np.ndarray, int, int]]) -> float:
    t = time.perf_counter()
    for b, channels, bins in blocks:
        pkg["TensorStats"].from_blocks(b, channels, bins)
    return time.perf_counter() - t


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def differences(old: list[Any], new: list[Any]) -> list[str]:
    out = []
    for i, ((fa, aa, ca), (fb, ab, cb)) in enumerate(zip(old, new, strict=True)):
        if aa != ab or ca != cb:
            out.append(f"step {i}: alerts differ")
        for key in sorted(set(fa) | set(fb)):
            x, y = fa.get(key, {}), fb.get(key, {})
            if list(x) != list(y):
                out.append(f"step {i} {key}: figure names differ")
            out += [f"step {i} {key}.{n}: {x[n]!r} != {y.get(n)!r}" for n in x if not _same(x[n], y.get(n, math.nan))]
    return out


def compare(path: str, baseline: str, rounds: int) -> int:
    with open(path, "rb") as f:
        data = pickle.load(f)
    gc.collect()
    gc.freeze()  # the captured data is long-lived: keep the collector from walking it again and again
    sys.path.insert(0, baseline)
    packages = {"old": _package("lightning_normwatch_old"), "new": _package("lightning_normwatch")}
    records, steps = data["records"], len(data["records"])
    # per package and measure: [round][step] seconds; old and new alternate at every logging step
    times: dict[str, dict[str, list[list[float]]]] = {k: {"blocks": [], "evaluate": [], "judge": []} for k in packages}
    outputs = {}
    for r in range(rounds):
        replays = {name: Replay(pkg, records) for name, pkg in packages.items()}
        for i in range(steps):
            for name in packages if (r + i) % 2 == 0 else reversed(list(packages)):
                replays[name].step(i)
        for name, rep in replays.items():
            times[name]["blocks"].append([time_blocks(packages[name], data["blocks"]) / steps])
            times[name]["evaluate"].append(rep.total[1:])  # the first step builds caches (edges, finfo ...)
            times[name]["judge"].append([t - d for t, d in zip(rep.total[1:], rep.drift[1:], strict=True)])
            outputs[name] = rep.results
    diffs = differences(outputs["old"], outputs["new"])
    print(f"{data['model']}: {steps} logging steps, {len(records[0]['stats'])} tensors, {rounds} rounds")
    print("  ms per logging step (mean over steps of the median or the min over rounds)")
    print(f"  {'':34s} {'old':>8s} {'new':>8s} {'ratio':>6s}")
    for what in ("blocks", "evaluate", "judge"):
        label = {"blocks": "from_blocks", "evaluate": "evaluate", "judge": "evaluate - drift - input"}[what]
        for how, fn in (("median", statistics.median), ("min", min)):
            old, new = (
                1e3 * statistics.mean(fn(col) for col in zip(*times[k][what], strict=True)) for k in ("old", "new")
            )
            print(f"  {label + ' (' + how + ')':34s} {old:8.3f} {new:8.3f} {old / new:6.2f}")
    print("figures and alerts identical" if not diffs else "DIFFERENCES:\n  " + "\n  ".join(diffs[:30]))
    return 1 if diffs else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("capture")
    c.add_argument("model")
    c.add_argument("steps", type=int)
    c.add_argument("out")
    r = sub.add_parser("compare")
    r.add_argument("path")
    r.add_argument("--baseline", required=True, help="folder holding lightning_normwatch_old")
    r.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.command == "capture":
        capture(args.model, args.steps, args.out)
        return 0
    return compare(args.path, args.baseline, args.rounds)


if __name__ == "__main__":
    sys.exit(main())
