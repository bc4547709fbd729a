"""What NormWatch prints, checked with ``caplog`` on real training runs."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from models import Regressor, loader, mlp, regression_data, trainer
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn

from lightning_normwatch import NormWatch
from lightning_normwatch.judge.alerts import Alert
from lightning_normwatch.output.console import summary_rows, summary_text


def dead_deep_net(blocks: int = 6, width: int = 16) -> nn.Sequential:
    """Linear+ReLU blocks whose biases are -100: every ReLU outputs only zeros (a dead alert each)."""
    layers: list[nn.Module] = []
    for i in range(blocks):
        layers += [nn.Linear(16 if i == 0 else width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 1))
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.bias.fill_(-100.0)
    return net


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lightning_normwatch"]


def test_start_line_and_summary_of_a_healthy_run(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    cb = NormWatch(every_n_steps=2, warmup_steps=0, reference_steps=2)
    logger = TensorBoardLogger(tmp_path)
    with caplog.at_level(logging.INFO, logger="lightning_normwatch"):
        trainer(tmp_path, [cb], max_steps=5, logger=logger).fit(Regressor(mlp()), loader(regression_data()))
    lines = messages(caplog)
    start = [m for m in lines if m.startswith("NormWatch: watching")]
    assert len(start) == 1
    assert "watching 5 modules and the batch input every 2 steps" in start[0]
    assert "reference window steps 0-2" in start[0] and logger.log_dir in start[0]
    summary = [m for m in lines if m.startswith("NormWatch summary")]
    assert len(summary) == 1 and lines[-1] == summary[0]  # printed once, at the end of the fit
    text = summary[0].splitlines()
    assert (
        text[0]
        == "NormWatch summary at step 4: 6 watched tensors, 0 alerts (worst first, roots before their followers)"
    )
    assert text[1].split() == ["tensor", "type", "std", "skew", "kurt", "drift", "dead", "alerts"]
    assert text[-1].startswith("rules: drift judged from step 2 (reference window steps 0-2); depth, collapse")
    assert text[-2].startswith("cost: NormWatch's own work took ") and " ms of training per step: about " in text[-2]
    rows = {line.split()[0]: line.split() for line in text[3:-2]}
    figures = cb.last_result.figures
    assert set(rows) == set(figures)
    for key, cells in rows.items():
        assert cells[1] == cb.session.collector.info(key).type_name
        assert float(cells[2]) == pytest.approx(figures[key]["std"], rel=5e-3)
    assert rows["net.1"][6].endswith("%") and rows["net.0"][6] == "-"  # dead only for activations
    assert "\x1b[" not in summary[0]  # not a terminal: plain text


def test_dead_layers_give_one_grouped_line_but_one_alert_each(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    cb = NormWatch(every_n_steps=1)
    with caplog.at_level(logging.INFO, logger="lightning_normwatch"):
        trainer(tmp_path, [cb], max_steps=1).fit(Regressor(dead_deep_net()), loader(regression_data()))
    relus = [f"net.{i}" for i in range(1, 12, 2)]
    assert sorted(a.module for a in cb.alerts if a.kind == "dead") == sorted(relus)  # one Alert per module
    dead_lines = [m for m in messages(caplog) if m.startswith("NormWatch [dead]")]
    assert len(dead_lines) == 1, dead_lines
    line = dead_lines[0]
    # one root line (the first dead layer in execution order), the 5 layers after it folded into it
    assert line.startswith("NormWatch [dead] net.1 (ReLU): 100% of `net.1` (ReLU)'s 16 units")
    assert line.endswith("(and 5 tensors after it: dead in net.3 (ReLU), net.5 (ReLU), net.7 (ReLU) ... net.11 (ReLU))")
    assert "usual cause" in line
    roots = [a for a in cb.alerts if a.caused_by is None]
    assert [(a.module, a.kind) for a in roots] == [("net.1", "dead")]
    assert all(a.caused_by == ("dead", "net.1") for a in cb.alerts if a.module != "net.1")
    records = [r for r in caplog.records if r.getMessage() == line]
    assert records[0].levelno == logging.WARNING
    # the summary puts the alerted layers first
    summary = next(m for m in messages(caplog) if m.startswith("NormWatch summary")).splitlines()
    firsts = [row.split()[0] for row in summary[3:9]]
    assert firsts == relus  # alerted at the same step: in execution order, the cascade's origin first
    assert all("1 warning (dead" in row for row in summary[3:9])
    assert "after dead@net.1" in summary[4] and "after" not in summary[3]  # the root first, its followers marked


def test_the_logger_level_is_respected(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="lightning_normwatch"):
        cb = NormWatch(every_n_steps=1)
        trainer(tmp_path, [cb], max_steps=1).fit(Regressor(dead_deep_net(2)), loader(regression_data()))
    lines = messages(caplog)
    assert lines and all(m.startswith("NormWatch [") for m in lines)  # alerts only: no start line, no summary
    assert len([m for m in lines if m.startswith("NormWatch [dead]")]) == 1


def test_summary_folds_long_models_and_renders_with_rich() -> None:
    figures = {f"net.{i}": {"std": 1.0 + i, "std_log_ratio": 0.01 * i} for i in range(40)}
    alerts = [Alert(5, "net.7", "scale_drift", "warning", 5.0, 4.0, "")]
    rows, folded = summary_rows(figures, {k: "Linear" for k in figures}, alerts, max_rows=10)
    assert len(rows) == 10 and folded == 30
    assert rows[0][0] == "net.7"  # alerted first, then the largest drift
    assert [r[0] for r in rows[1:3]] == ["net.39", "net.38"]
    plain = summary_text(rows, folded, "title")
    assert plain.splitlines()[-1].startswith("... 30 more tensors without alerts")
    pytest.importorskip("rich")
    fancy = summary_text(rows, folded, "title", rich=True)
    assert "\x1b[" in fancy and "net.7" in fancy and re.search(r"x1\.\d", fancy)
