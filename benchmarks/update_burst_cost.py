"""Would a running maximum of the update ratio between logging steps be cheap enough? Measured, not built.

The update figures are measured on logging steps only, so a burst of large updates shorter than the logging
interval is not seen (``docs/updates.md``). Catching it needs a figure on **every** step, on the device, with
no host sync: either the exact ratio (a copy of the parameters before ``optimizer.step()``, ``||W_new - W_old||``
and ``||W||`` after it, a running ``torch.maximum``), or a lower bound without any copy (``|Δ||W|||/||W||``, from
one ``_foreach_norm`` per step: the norm after a step is the norm before the next one). This script times a
plain training step of ``overhead.py``'s models (same builders, batches and SGD) with each of the two in turn,
step by step in one process, and reports the time spent in the probe's calls (timed directly, around them)
over the whole step's time: the share a non-logging step would pay. On a shared machine a direct timing of the
calls is less noisy than the difference of two step times.

Run: ``.venv/bin/python benchmarks/update_burst_cost.py`` (about 1 minute; ``--steps N``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import overhead  # noqa: E402


class RunningMax:
    """Per-parameter running maximum of an update figure over the steps between two logging steps (device only)."""

    def __init__(self, params: list[nn.Parameter], exact: bool) -> None:
        self.params, self.exact = [p.detach() for p in params], exact
        self.peak = torch.zeros(len(params), dtype=torch.float64)
        self.norms = torch.stack(torch._foreach_norm(self.params)).double()
        self.copies: list[torch.Tensor] = []

    @torch.no_grad()
    def before(self) -> None:
        if self.exact:
            self.copies = torch._foreach_mul(self.params, 1.0)

    @torch.no_grad()
    def after(self) -> None:
        norms = torch.stack(torch._foreach_norm(self.params)).double()
        if self.exact:
            moved = torch.stack(torch._foreach_norm(torch._foreach_sub(self.params, self.copies))).double()
            self.copies = []
        else:
            moved = (norms - self.norms).abs()
        torch.maximum(self.peak, moved / self.norms.clamp_min(1e-30), out=self.peak)
        self.norms = norms


def shares(spec: overhead.ModelSpec, steps: int) -> dict[str, float]:
    """Median training step time (``step``) and, per probe, the median share of a step spent in its calls."""
    torch.manual_seed(0)
    model = spec.build()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = overhead.Batches(spec, steps)
    probes = {"exact": RunningMax(list(model.parameters()), True)}
    probes["norm_only"] = RunningMax(list(model.parameters()), False)
    times: dict[str, list[float]] = {"step": [], **{k: [] for k in probes}}
    for i in range(2 * steps + 4):
        name = list(probes)[i % 2]
        probe = probes[name]
        x, y = data[i]
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        t0 = time.perf_counter()
        probe.before()
        spent = time.perf_counter() - t0
        opt.step()
        t0 = time.perf_counter()
        probe.after()
        spent += time.perf_counter() - t0
        whole = time.perf_counter() - start
        if i >= 4:  # warm-up dropped
            times["step"].append(whole - spent)
            times[name].append(spent / (whole - spent))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=16, help="timed steps per probe (x the model's share)")
    parser.add_argument("--threads", type=int, default=overhead.THREADS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | parameters | plain step (ms) | exact running max | norm-only lower bound |")
    print("|---|---:|---:|---:|---:|")
    for spec in overhead.MODELS:
        if spec.compiled:
            continue
        t = shares(spec, max(4, args.steps * spec.steps // 16))
        params = sum(p.numel() for p in spec.build().parameters())
        exact, norm = 100 * t["exact"], 100 * t["norm_only"]
        print(f"| {spec.name} | {params:,} | {1e3 * t['step']:.1f} | {exact:.1f} % | {norm:.1f} % |", flush=True)


if __name__ == "__main__":
    main()
