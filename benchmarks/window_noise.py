"""How many logging steps the reference window needs: drift noise on healthy runs against reference size.

Trains the healthy runs of ``calibrate.py`` for 400 steps, logging every 10, keeps every tensor's
moments and histogram per logging step, and afterwards builds references of ``k`` logging steps
(starting at step 40, 10 % of the run) for several ``k``. For each ``k`` it prints the largest value,
over every tensor and every later logging step, of each drift figure divided by its threshold
(``scale_drift``, ``mean_drift``, ``shift``): above 1 a healthy run would warn. The model's
prediction and the inputs are left out, as the drift rules leave them out.

Run: ``.venv/bin/python benchmarks/window_noise.py`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import logging
import math

import pytorch_lightning as pl
import torch
from calibrate import RUNS
from torch.utils.data import DataLoader

from lightning_normwatch import NormWatch
from lightning_normwatch.config import Thresholds
from lightning_normwatch.judge.evaluator import Evaluator
from lightning_normwatch.stats.reference import Reference, drift

KS = (1, 2, 3, 4, 6, 8)
START, STEPS, EVERY = 40, 400, 10


def record(run) -> dict[int, dict[str, tuple]]:  # noqa: ANN001
    """Per logging step: per judged tensor, (overall moments, histogram)."""
    seen: dict[int, dict[str, tuple]] = {}
    original = Evaluator.evaluate

    def evaluate(self, step, stats):  # noqa: ANN001, ANN202
        result = original(self, step, stats)
        prediction = self.prediction_keys(stats)
        seen[step] = {
            k: (st.overall, st.hist.copy())
            for k, st in stats.items()
            if k not in prediction and self.collector.info(k).role != "input" and not st.has_nonfinite
        }
        return result

    Evaluator.evaluate = evaluate
    try:
        pl.seed_everything(0, verbose=False)
        watch = NormWatch(every_n_steps=EVERY, on_alert="ignore", warmup_steps=100, reference_steps=200)
        trainer = pl.Trainer(
            max_steps=STEPS,
            callbacks=[watch],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            accelerator="cpu",
        )
        trainer.fit(run.model(), DataLoader(run.data(), batch_size=run.batch, shuffle=run.shuffle))
    finally:
        Evaluator.evaluate = original
    return seen


def worst(seen: dict[int, dict[str, tuple]], k: int, th: Thresholds) -> tuple[float, float, float]:
    steps = sorted(seen)
    window = [s for s in steps if s >= START][:k]
    refs: dict[str, Reference] = {}
    for s in window:
        for key, (m, h) in seen[s].items():
            refs.setdefault(key, Reference()).add(m, h)
    out = [0.0, 0.0, 0.0]
    for s in steps:
        if s <= window[-1]:
            continue
        for key, (m, h) in seen[s].items():
            if key not in refs or m.n < 32:
                continue
            d = drift(refs[key], m, h)
            values = (
                math.exp(abs(d["std_log_ratio"])) / th.scale_drift,
                abs(d["mean_shift"]) / th.mean_drift,
                d["shape_psi"] / th.shift,
            )
            out = [max(o, v) if math.isfinite(v) else o for o, v in zip(out, values, strict=True)]
    return out[0], out[1], out[2]


def main() -> None:
    torch.set_num_threads(1)
    logging.getLogger("lightning_normwatch").setLevel(logging.CRITICAL)
    th = Thresholds()
    print(f"{'run':38s} " + " ".join(f"k={k}: scale/mean/shape".rjust(24) for k in KS))
    overall = {k: [0.0, 0.0, 0.0] for k in KS}
    for run in RUNS:
        if not run.healthy:
            continue
        seen = record(run)
        cells = []
        for k in KS:
            w = worst(seen, k, th)
            overall[k] = [max(a, b) for a, b in zip(overall[k], w, strict=True)]
            cells.append(" ".join(f"{v:7.2f}" for v in w).rjust(24))
        print(f"{run.name:38s} " + " ".join(cells), flush=True)
    cells = (" ".join(f"{v:7.2f}" for v in overall[k]).rjust(24) for k in KS)
    print(f"{'worst (fraction of threshold)':38s} " + " ".join(cells))


if __name__ == "__main__":
    main()
