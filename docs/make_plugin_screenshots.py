"""Screenshots of the NormWatch tab in TensorBoard at 1600x1000: docs/plugin_demo.png and docs/plugin_deep.png.

Trains the runs of the plugin tests (``tests/plugin_runs.py``) for 300 steps: the quickstart demo's two
runs (shown side by side) and the 16-block MLP whose Linear ``net.14`` gets a bias of -20 at step 100.
Serves them with the real ``tensorboard`` and drives headless Chromium (``tests/cdp.py``). Needs the
project's ``.venv`` and ``chromium``; about a minute.

    .venv/bin/python docs/make_plugin_screenshots.py [LOGDIR]   # LOGDIR: keep the runs (trained if absent)
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cdp import chromium  # noqa: E402
from plugin_runs import deep_run, demo_runs, tensorboard  # noqa: E402
from test_tensorboard_plugin import FRAME, in_tab, open_tab  # noqa: E402


def shoot(logdir: Path, out: Path, compare: str | None = None, figure: str | None = None) -> None:
    with tensorboard(logdir) as base, chromium(1600, 1000) as tools:
        time.sleep(3)  # every run loaded
        total, inside = open_tab(tools, base)
        if compare:
            in_tab(tools, f"(() => {{ const s = doc.querySelector('#compare'); s.value = {compare!r}; "
                          "s.dispatchEvent(new Event('change')); return true; })()")  # fmt: skip
            tools.wait_for(f"{FRAME}.contentDocument.querySelectorAll('.map canvas').length === 2")
        if figure:
            in_tab(tools, f"[...doc.querySelectorAll('#figures button')].find((b) => b.textContent === {figure!r})"
                          ".click() || true")  # fmt: skip
        time.sleep(2)
        assert not tools.errors(), tools.errors()
        tools.screenshot(str(out))
        print(f"{out.name}: heatmap drawn {total:.2f} s after navigation ({inside:.2f} s in the tab)")


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())  # a given directory is trained once
    if not (work / "demo").exists():
        demo_runs(work / "demo", 300)
    if not (work / "deep").exists():
        deep_run(work / "deep", 300)
    shoot(work / "demo", ROOT / "docs/plugin_demo.png", compare="standardized_batchnorm/version_0", figure="scale")
    shoot(work / "deep", ROOT / "docs/plugin_deep.png")


if __name__ == "__main__":
    main()
