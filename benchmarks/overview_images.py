"""Time the overview images: ``Overview.images`` plus PNG encoding, per draw (best of several runs).

The time is this process's CPU time (``time.process_time``), not wall time: on a shared machine
other processes' load inflates wall times several-fold.

Two sizes: a deep model (50 watched tensors x the last 100 logging steps, one layer dead for the
last 20) and the demo's classifier (input and 5 layers x 30 logging steps). The images are drawn
every 20 logging steps (``overview_every``), so the cost per logging step is a twentieth of a draw.

``--demo`` also trains the demo's raw-features run (``examples/quickstart.py``, 300 steps) and times
its real overview after the fit.

Run: ``.venv/bin/python benchmarks/overview_images.py [--demo] [--out DIR]`` (``--out``: also write the PNGs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from lightning_normwatch.config import Thresholds
from lightning_normwatch.output.overview import Overview


def _encode(img: object) -> bytes:
    """PNG bytes of an overview image, whatever the drawing code returns."""
    if hasattr(img, "png"):
        return img.png()  # type: ignore[attr-defined]
    from lightning_normwatch.output.heatmap import png_bytes

    return png_bytes(img)  # type: ignore[arg-type]


def overview(n_tensors: int, n_steps: int, types: list[str] | None = None, seed: int = 0) -> Overview:
    """An overview of ``n_tensors`` tensors (input, then Linear/ReLU pairs) over ``n_steps`` logging steps."""
    rng = np.random.default_rng(seed)
    ov = Overview(max_steps=100)
    keys = ["input"] + [f"net.{i}" for i in range(n_tensors - 1)]
    types = types or ["batch"] + ["Linear" if i % 2 == 0 else "ReLU" for i in range(n_tensors - 1)]
    roles = {"batch": "input", "ReLU": "activation"}
    kinds = {k: (t, roles.get(t, "preact")) for k, t in zip(keys, types, strict=True)}
    dead = keys[len(keys) // 2] if types[len(keys) // 2] == "ReLU" else keys[len(keys) // 2 + 1]
    for c in range(n_steps):
        step = 10 * c
        broken = c >= n_steps - 20
        figures = {
            k: {
                "std": float(np.exp(rng.normal(0, 0.3))) * (1e-3 if broken and r > keys.index(dead) else 1.0),
                "std_log_ratio": float(rng.normal(0, 0.2)) if c >= 10 else float("nan"),
                "shape_psi": float(abs(rng.normal(0, 0.05))) if c >= 10 else float("nan"),
                "zeros": 1.0 if broken and k == dead else float(rng.uniform(0, 0.5)),
                "dead": 1.0 if broken and k == dead else float(rng.uniform(0, 0.1)),
            }
            for r, k in enumerate(keys)
        }
        ov.add(step, figures, kinds, {(dead, "dead")} if broken else set())
    return ov


def demo_overview() -> Overview:
    """The overview of the demo's raw-features run (``examples/quickstart.py``), after its fit."""
    import logging
    import tempfile
    import warnings

    from lightning_normwatch.output import panels

    sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
    from quickstart import train

    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning_normwatch").setLevel(logging.ERROR)
    seen: list[Overview] = []
    draw = panels.Panels.write_overview

    def spy(self: panels.Panels) -> None:
        seen.append(self.overview)
        draw(self)

    panels.Panels.write_overview = spy  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train("raw_features", standardize=False, batchnorm=False, steps=300, logdir=tmp)
    finally:
        panels.Panels.write_overview = draw  # type: ignore[method-assign]
    return seen[-1]


def best_ms(ov: Overview, repeats: int) -> tuple[float, int]:
    """Best CPU time of one draw (images + PNG bytes) in ms, and the bytes of all images."""
    th, times, size = Thresholds(), [], 0
    for _ in range(repeats):
        t0 = time.process_time()
        size = sum(len(_encode(img)) for img in ov.images(th).values())
        times.append(time.process_time() - t0)
    return 1e3 * min(times), size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--demo", action="store_true", help="also time the real demo run's overview")
    parser.add_argument("--out", help="write the PNGs of both overviews into this folder")
    args = parser.parse_args()
    cases = {
        "deep 50 tensors x 100 steps": overview(50, 100),
        "demo 6 tensors x 30 steps": overview(6, 30, ["batch", "Linear", "ReLU", "Linear", "ReLU", "Linear"]),
    }
    if args.demo:
        ov = demo_overview()
        cases[f"demo run {len(ov.rows)} tensors x {len(ov.steps)} steps"] = ov
    for name, ov in cases.items():
        ms, size = best_ms(ov, args.repeats)
        print(f"{name}: {ms:.1f} ms per draw ({ms / 20:.2f} ms per logging step at overview_every=20), {size} bytes")
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for tag, img in ov.images(Thresholds()).items():
                (out / f"{'_'.join(name.split()[:2])}_{tag.rsplit('/', 1)[-1]}.png").write_bytes(_encode(img))
    return 0


if __name__ == "__main__":
    sys.exit(main())
