"""benchmarks/stages.py: the per-stage profile wraps the package's methods from outside, attributes time to the
thread that ran them, and leaves every method as it was."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from lightning_normwatch.collect.collector import Collector
from lightning_normwatch.output.panels import Panels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from stages import StageProfile  # noqa: E402


def test_time_goes_to_the_thread_that_ran_the_stage_and_methods_are_restored(tmp_path: Path) -> None:
    before = (Panels.write_alerts, Panels.write, Collector.observe)
    panels = Panels(SummaryWriter(str(tmp_path)))
    with StageProfile() as prof:
        assert Panels.write_alerts is not before[0]
        worker = threading.Thread(target=panels.write_alerts, args=([], 0))
        worker.start()
        worker.join()
        panels.write_alerts([], 0)
    assert (Panels.write_alerts, Panels.write, Collector.observe) == before
    assert set(prof.seconds) == {("write", "worker"), ("write", "training")}
    assert prof.steps == 0 and prof.per_step("write", "worker") > 0
    rows = prof.rows("m")
    assert rows[3].startswith("| m | write |") and rows[-1].startswith("| m | **training thread total**")
