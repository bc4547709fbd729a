"""``normwatch report`` on real event files: the table, ``--json`` and the exit status."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from models import Regressor, loader, mlp, regression_data, trainer
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from lightning_normwatch import NormWatch
from lightning_normwatch.view.cli import main
from lightning_normwatch.view.report import TABLE_FIGURES, RunReport, exit_code, format_reports


class NaNAfter(nn.Module):
    """Passes its input through for ``calls`` forward calls, then returns NaN."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls, self.seen = calls, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += 1
        return x * math.nan if self.seen > self.calls else x


def fit(root: Path, name: str, net: nn.Module) -> tuple[NormWatch, str]:
    torch.manual_seed(0)
    cb = NormWatch(every_n_steps=2, warmup_steps=0, reference_steps=2, on_alert="ignore")
    logger = TensorBoardLogger(root, name=name)
    trainer(root, [cb], max_steps=7, logger=logger).fit(Regressor(net), loader(regression_data()))
    return cb, logger.log_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[NormWatch, str]]:
    """Two runs under one directory: ``healthy`` (an MLP) and ``nan`` (NaN from the 4th forward on)."""
    root = tmp_path_factory.mktemp("logs")
    healthy = fit(root, "healthy", mlp())
    nan = fit(root, "nan", nn.Sequential(nn.Linear(16, 32), NaNAfter(3), nn.ReLU(), nn.Linear(32, 1)))
    assert not any(a.severity == "error" for a in healthy[0].alerts)
    assert any(a.kind == "nonfinite" and a.module == "net.1" for a in nan[0].alerts)
    return {"root": (healthy[0], str(root)), "healthy": healthy, "nan": nan}


def test_table_of_a_healthy_run(runs, capsys: pytest.CaptureFixture[str]) -> None:
    cb, log_dir = runs["healthy"]
    assert main(["report", log_dir]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("run .: latest step 6, 6 watched tensors")
    header = out[1].split()
    assert header == ["tensor", "type", "step", *TABLE_FIGURES]
    rows = {line.split()[0]: line.split() for line in out[3:] if line and not line.startswith(("alerts", " "))}
    assert set(rows) == {"input", "net.0", "net.1", "net.2", "net.3", "net.4"}
    figs = cb.last_result.figures
    for key, cells in rows.items():
        assert cells[1] == cb.session.collector.info(key).type_name  # the layer type, read back from the event files
        assert cells[2] == "6"
        values = dict(zip(TABLE_FIGURES, cells[3:], strict=True))
        for name in ("mean", "std", "shape_psi"):
            if key == "input" and name == "shape_psi":  # inputs are judged per feature: not logged by default
                assert values[name] == "-"
                continue
            assert float(values[name]) == pytest.approx(figs[key][name], rel=1e-3, abs=1e-6), (key, name)
        if cells[1] == "ReLU":  # dead units: a column of its own, only for activations
            assert float(values["dead"]) == pytest.approx(figs[key]["dead"], abs=1e-6)
        else:
            assert values["dead"] == "-"
    assert [rows[k][1] for k in ("input", "net.0", "net.1")] == ["batch", "Linear", "ReLU"]


def test_json_matches_the_event_files(runs, capsys: pytest.CaptureFixture[str]) -> None:
    _, log_dir = runs["healthy"]
    assert main(["report", log_dir, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_code"] == 0 and len(doc["runs"]) == 1
    run = doc["runs"][0]
    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    checked = 0
    for tag in acc.Tags()["scalars"]:
        parts = tag.split("/")
        if parts[0] != "normwatch" or parts[1] in ("thresholds", "alerts"):
            continue
        last = acc.Scalars(tag)[-1]
        tensor, figure = "/".join(parts[1:-1]), parts[-1]
        assert run["tensors"][tensor]["step"] == 6
        expected = last.value if last.step == 6 and math.isfinite(last.value) else None
        assert run["tensors"][tensor][figure] == expected, tag
        checked += 1
    assert checked == sum(len(figs) - 1 for figs in run["tensors"].values()) > 6 * 6
    assert run["active"] == {
        s: int(acc.Scalars(f"normwatch/alerts/{s}")[-1].value) for s in ("error", "warning", "info")
    }


def test_error_alert_gives_a_failing_exit_status(runs) -> None:
    """The console script, as CI would run it."""
    _, log_dir = runs["nan"]
    exe = shutil.which("normwatch", path=str(Path(sys.executable).parent))
    assert exe is not None, "the normwatch console script is not installed (pip install -e .)"
    out = subprocess.run([exe, "report", log_dir], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert "1 error" in lines[0]
    at = next(i for i, line in enumerate(lines) if "nonfinite" in line)
    assert lines[at].split()[:5] == ["3", "error", "nonfinite", "net.1", "(NaNAfter)"]  # the 4th forward: step 3
    assert lines[at + 1].strip().startswith("Non-finite values first appear in `net.1`")  # message below, wrapped
    assert lines[-1] == "exit status 1: 1 error alert were raised in run . (--fail-on error fails on error alerts)"


def test_several_runs_and_fail_on(runs, capsys: pytest.CaptureFixture[str]) -> None:
    _, root = runs["root"]
    assert main(["report", root, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in doc["runs"]] == ["healthy/version_0", "nan/version_0"]
    nan = doc["runs"][1]
    assert nan["raised"]["error"] == 1 and nan["tensors"]["net.1"]["mean"] is None  # NaN -> null
    assert main(["report", root, "--fail-on", "never"]) == 0
    assert "exit status" not in capsys.readouterr().out
    assert main(["report", root, "--fail-on", "info"]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("exit status 1: ") and "in run nan/version_0" in last and "--fail-on info" in last


def test_messages_wrap_to_the_terminal_width() -> None:
    message = " ".join(["word"] * 80)
    alert = dict(step=4, module="fc", kind="dead", severity="warning", value=5.0, threshold=4.0, message=message)
    report = RunReport("run", 4, {"fc": {"step": 4, "mean": 0.0}}, alerts=[alert], types={"fc": "ReLU"})
    lines = format_reports([report], width=60).splitlines()
    assert max(len(line) for line in lines if "word" in line) <= 60
    assert " ".join(w for line in lines if "word" in line for w in line.split()) == message
    assert any(line.split()[:4] == ["4", "warning", "dead", "fc"] and "(ReLU)" in line for line in lines)


def test_info_alerts_are_counted_unless_all_alerts() -> None:
    alert = dict(step=4, module="fc", value=5.0, threshold=4.0, message="m")
    info = {**alert, "kind": "non_normal", "severity": "info"}
    warning = {**alert, "kind": "dead", "severity": "warning"}
    report = RunReport("run", 4, {"fc": {"step": 4, "mean": 0.0}}, alerts=[info, warning])
    default = format_reports([report])
    assert "dead" in default and "non_normal" not in default
    assert "(1 info alert not listed: --all-alerts lists them)" in default
    everything = format_reports([report], all_alerts=True)
    assert "dead" in everything and "non_normal" in everything and "not listed" not in everything
    assert exit_code([report]) == 0 and exit_code([report], "warning") == 1 and exit_code([report], "never") == 0


@pytest.mark.slow
def test_python_m_and_no_data(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "lightning_normwatch", "report", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert (
        out.stderr.startswith("normwatch report: error: no NormWatch data under") and "TensorBoardLogger" in out.stderr
    )


def test_missing_dir_and_non_normwatch_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "other")) as writer:  # a TensorBoard run without NormWatch
        writer.add_scalar("loss", 1.0, 0)
    assert main(["report", str(tmp_path)]) == 2
    assert "no NormWatch data" in capsys.readouterr().err


def test_help_names_the_columns_the_table_has(capsys: pytest.CaptureFixture[str]) -> None:
    """``report --help`` promises the table's real columns (it once promised skew and kurtosis)."""
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"columns: {', '.join(TABLE_FIGURES)};" in text
    assert not {"skew", "kurtosis"} & set(TABLE_FIGURES) and "kurtosis" not in text
