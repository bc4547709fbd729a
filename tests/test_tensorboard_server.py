"""The real ``tensorboard`` program serves NormWatch's panels: asked through its HTTP data API."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from cdp import stop_process
from models import Regressor, loader, regression_data, trainer
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn

from lightning_normwatch import NormWatch

TENSORBOARD = Path(sys.executable).with_name("tensorboard")
STARTUP_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with a dead ReLU (so an alert is raised), histograms, the layout and figures."""
    root = tmp_path_factory.mktemp("tb")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    with torch.no_grad():
        net[0].bias.fill_(-100.0)
    cb = NormWatch(every_n_steps=1, warmup_steps=0, reference_steps=1, plot_every_n_steps=100, on_alert="ignore")
    tr = trainer(root, [cb], max_steps=3, logger=TensorBoardLogger(root, name="demo"))
    tr.fit(Regressor(net), loader(regression_data()))
    assert any(a.kind == "dead" for a in cb.alerts)
    return root


@pytest.fixture(scope="module")
def server(logdir: Path) -> Iterator[str]:
    """``tensorboard`` on 127.0.0.1 and a free port; stopped (terminate, then kill) at the end."""
    if not TENSORBOARD.exists():
        pytest.skip(f"no tensorboard program next to {sys.executable}")
    port = free_port()
    cmd = [str(TENSORBOARD), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--load_fast=false", "--reload_interval=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")  # type: ignore[union-attr]
            try:
                text_runs = get(base, "/data/plugin/text/tags")
                scalar_runs = get(base, "/data/plugin/scalars/tags")
                if text_runs and scalar_runs:  # the run is loaded, text included
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tensorboard did not load {logdir} within {STARTUP_TIMEOUT:.0f} s")
            time.sleep(0.5)
        yield base
    finally:
        stop_process(proc)


def get(base: str, path: str, **params: str) -> Any:
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode())


def test_plugins_are_active(server: str) -> None:
    listing = get(server, "/data/plugins_listing")
    for plugin in ("scalars", "histograms", "distributions", "custom_scalars", "text", "images"):
        assert listing[plugin]["enabled"], plugin


def test_scalar_and_histogram_tags(server: str) -> None:
    runs = get(server, "/data/plugin/scalars/tags")
    assert list(runs) == ["demo/version_0"]
    scalars = set(runs["demo/version_0"])
    for module in ("input", "net.0", "net.1", "net.2"):
        assert {f"normwatch/{module}/{s}" for s in ("mean", "std")} <= scalars
    # the dead ReLU's within-channel shape is not logged (only pre-activations and inputs have one by default)
    assert "normwatch/net.0/channel_skew" in scalars and "normwatch/net.1/channel_skew" not in scalars
    assert "normwatch/net.1/dead" in scalars and "normwatch/net.0/dead" not in scalars
    assert {
        "normwatch/alerts/warning",
        "normwatch/thresholds/shift",
        "normwatch/thresholds/log_scale_drift_low",
    } <= scalars
    hist = get(server, "/data/plugin/histograms/tags")["demo/version_0"]
    assert set(hist) == {"normwatch/input", "normwatch/net.0", "normwatch/net.1", "normwatch/net.2"}
    data = get(server, "/data/plugin/histograms/histograms", run="demo/version_0", tag="normwatch/net.0")
    assert [step for _, step, _ in data] == [0, 1, 2]
    for _, _, buckets in data:  # [left, right, count] as the dashboard draws them
        assert sum(c for _, _, c in buckets) == 32 * 32
        assert all(left <= right for left, right, _ in buckets)


def test_custom_scalars_layout_is_served(server: str) -> None:
    layout = get(server, "/data/plugin/custom_scalars/layout")
    categories = {c["title"]: c for c in layout["category"]}
    assert list(categories) == ["normwatch: alerts", "normwatch: 1/1 input (batch) ... net.2 (Linear)"]
    charts = {ch["title"]: ch for ch in categories["normwatch: 1/1 input (batch) ... net.2 (Linear)"]["chart"]}
    value, lines = charts["net.1 (ReLU): log(std / reference std), alert beyond either threshold line"]["multiline"][
        "tag"
    ]
    found = get(server, "/data/plugin/custom_scalars/scalars", run="demo/version_0", tag=lines)
    assert set(found["tag_to_events"]) == {
        "normwatch/thresholds/log_scale_drift",
        "normwatch/thresholds/log_scale_drift_low",
    }
    # the plugin resolves a Multiline regex to the matching scalar series: one tensor and its threshold
    pattern, threshold = charts["net.1 (ReLU): share of dead units, alert above the threshold line"]["multiline"]["tag"]
    for tag, expected in ((pattern, "normwatch/net.1/dead"), (threshold, "normwatch/thresholds/dead")):
        found = get(server, "/data/plugin/custom_scalars/scalars", run="demo/version_0", tag=tag)
        assert found["regex_valid"] and set(found["tag_to_events"]) == {expected}
        assert len(found["tag_to_events"][expected]) == 3


def test_alert_text_and_figures(server: str) -> None:
    tags = sorted(get(server, "/data/plugin/text/tags")["demo/version_0"])
    assert tags == ["normwatch/alerts/text_summary", "normwatch/watched/text_summary"]
    texts = get(server, "/data/plugin/text/text", run="demo/version_0", tag=tags[0])
    html = texts[-1]["text"]
    assert "<table>" in html and re.search(r"<td>net\.1 \(ReLU\)</td>\s*<td>dead</td>\s*<td>warning</td>", html), html
    images = get(server, "/data/plugin/images/tags")["demo/version_0"]
    assert set(images) == {"normwatch/figures/inputs", "normwatch/figures/net"} | {
        f"normwatch/overview/{name}"
        for name in (
            "0_depth_profile", "1_scale_log10_std", "2_scale_drift", "3_shape_psi", "4_zeros", "5_dead_units",
            "6_update_ratio",
        )
    }  # fmt: skip
