"""The ``normwatch`` TensorBoard plugin in a real ``tensorboard`` server, over runs written by real training.

Each route is checked against what TensorBoard's own reader (``EventAccumulator``) finds in the event
files; bad parameters get HTTP 400 with a message. The runs: the quickstart demo (two runs) and a
16-block MLP whose Linear ``net.14`` is broken at step 100 (``plugin_runs.py``).
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cdp import CHROMIUM, chromium
from plugin_runs import DEAD_RELU, FAULT_STEP, FAULTY_LINEAR, TENSORBOARD, deep_run, demo_runs, get, get_error
from plugin_runs import tensorboard as serve

from lightning_normwatch.config import Thresholds
from lightning_normwatch.output.tags import ALERT_TAG, WATCHED_TAG
from lightning_normwatch.view.report import parse_alerts_markdown, parse_watched_markdown

DEEP = "deep/deep_mlp/version_0"
RAW = "demo/raw_features/version_0"
RUNS = [DEEP, RAW, "demo/standardized_batchnorm/version_0"]
STEPS = 150


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    deep = deep_run(root / "deep", STEPS)
    assert any(a.module == FAULTY_LINEAR and a.step == FAULT_STEP for a in deep.alerts)
    demo_runs(root / "demo", STEPS)
    return root


@pytest.fixture(scope="module")
def server(logdir: Path) -> Any:
    if not TENSORBOARD.exists():
        pytest.skip("no tensorboard program next to the Python interpreter")
    with serve(logdir) as base:
        deadline = time.monotonic() + 60
        while True:  # every run loaded to its last step, alert tables included
            runs = {r["run"]: r["last_step"] for r in get(base, "/data/plugin/normwatch/runs")["runs"]}
            loaded = set(runs) == set(RUNS) and all(s == STEPS - 5 for s in runs.values())
            if loaded and all(get(base, "/data/plugin/normwatch/run", run=r)["alert_count"] for r in RUNS[:2]):
                break
            assert time.monotonic() < deadline, f"runs not loaded: {runs}"
            time.sleep(0.5)
        yield base


@functools.cache
def accumulator(logdir: Path, run: str) -> Any:
    """TensorBoard's own reader over one run, every event kept (read once per run)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir / run), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def last_text(acc: Any, tag: str) -> str:
    from tensorboard.util import tensor_util

    event = max(acc.Tensors(f"{tag}/text_summary"), key=lambda e: (e.step, e.wall_time))
    return tensor_util.make_ndarray(event.tensor_proto).reshape(-1)[0].decode()


def close(a: Any, b: float) -> bool:
    """A served number (4 significant digits, or "NaN"/"Infinity") against the event file's value."""
    if isinstance(a, str):
        return str(b) in ("nan", "inf", "-inf") and a.lower().replace("infinity", "inf") == str(b)
    return math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-12)


def nw(server: str, route: str, **params: Any) -> Any:
    return get(server, f"/data/plugin/normwatch/{route}", **params)


def test_plugin_is_listed_active_with_its_module(server: str) -> None:
    entry = get(server, "/data/plugins_listing")["normwatch"]
    assert entry["enabled"] and entry["tab_name"] == "NormWatch"
    assert entry["loading_mechanism"] == {"type": "IFRAME", "module_path": "/data/plugin/normwatch/static/index.js"}
    code, body = get_error(server, "/data/plugin/normwatch/static/index.js")
    assert code == 200 and "export async function render" in body
    assert get_error(server, "/data/plugin/normwatch/static/../plugin.py")[0] == 404


def test_run_route_holds_the_event_files_tensors_alerts_and_thresholds(server: str, logdir: Path) -> None:
    acc = accumulator(logdir, DEEP)
    summary = nw(server, "run", run=DEEP)
    watched = parse_watched_markdown(last_text(acc, WATCHED_TAG))
    assert [(t["name"], t["type"], t["role"]) for t in summary["tensors"]] == watched
    scalars = acc.Tags()["scalars"]
    for t in summary["tensors"]:
        assert sorted(t["figures"]) == sorted(
            s.split("/")[-1] for s in scalars if s.rsplit("/", 1)[0] == f"normwatch/{t['name']}"
        )
    rows = parse_alerts_markdown(last_text(acc, ALERT_TAG))
    served = [a for r in summary["alerts"] for a in [r, *r["followers"]]]
    assert sorted((a["step"], a["module"], a["kind"]) for a in served) == sorted(
        (r["step"], r["module"], r["kind"]) for r in rows
    )
    roots = [a for a in summary["alerts"] if a["severity"] != "info"]
    assert roots[0]["module"] == FAULTY_LINEAR and roots[0]["step"] == FAULT_STEP  # the planted fault leads
    assert [a["step"] for a in summary["alerts"]] == sorted(a["step"] for a in summary["alerts"])
    for name, value in summary["thresholds"].items():
        assert close(value, acc.Scalars(f"normwatch/thresholds/{name}")[-1].value)
    assert summary["thresholds"]["dead"] == Thresholds().dead
    assert summary["first_drift"] == acc.Scalars("normwatch/net.0/std_log_ratio")[0].step == 60
    assert any("drift measured from step 60" in line for line in summary["not_measured"])
    figures = ["scale", "scale_drift", "mean_drift", "shape_psi", "zeros", "dead", "update"]  # update: the optimizer's
    assert [f["id"] for f in summary["figures"]] == figures


@pytest.mark.parametrize("figure,tag", [("dead", "dead"), ("scale", "std"), ("scale_drift", "std_log_ratio")])
def test_heatmap_cells_are_the_logged_scalars(server: str, logdir: Path, figure: str, tag: str) -> None:
    acc = accumulator(logdir, DEEP)
    heat = nw(server, "heatmap", run=DEEP, figure=figure)
    assert heat["steps"] == list(range(0, STEPS, 5))
    for row, tensor in enumerate(heat["tensors"]):
        name = f"normwatch/{tensor}/{tag}"
        logged = {e.step: e.value for e in acc.Scalars(name)} if name in acc.Tags()["scalars"] else {}
        for col, step in enumerate(heat["steps"]):
            value = heat["values"][row][col]
            assert (value is None) == (step not in logged), (tensor, step)
            assert value is None or close(value, logged[step]), (tensor, step, value, logged[step])
    dead_row, fault_col = heat["tensors"].index(DEAD_RELU), heat["steps"].index(FAULT_STEP)
    assert [dead_row, fault_col] in [m[:2] for m in heat["marks"]]  # the alert's first cell is outlined
    assert heat["rows"][dead_row] == f"{DEAD_RELU} (ReLU)"
    few = nw(server, "heatmap", run=DEEP, figure=figure, columns=7)
    assert len(few["steps"]) == 7 and few["steps"][-1] == STEPS - 5
    part = nw(server, "heatmap", run=DEEP, figure=figure, first=dead_row - 1, count=3)  # the rows in view first
    assert part["first"] == dead_row - 1 and not part["complete"] and part["rows"] == heat["rows"]
    assert part["values"] == heat["values"][dead_row - 1 : dead_row + 2]
    assert [dead_row, fault_col] in [m[:2] for m in part["marks"]]


def test_tensor_route_series_thresholds_and_alerts(server: str, logdir: Path) -> None:
    acc = accumulator(logdir, DEEP)
    detail = nw(server, "tensor", run=DEEP, tensor=DEAD_RELU)
    assert detail["type"] == "ReLU" and detail["role"] == "activation" and detail["histograms"]
    for figure, series in detail["figures"].items():
        events = acc.Scalars(f"normwatch/{DEAD_RELU}/{figure}")
        assert series["steps"] == [e.step for e in events]
        assert all(close(v, e.value) for v, e in zip(series["values"], events, strict=True)), figure
    assert detail["figures"]["dead"]["thresholds"] == {"high": Thresholds().dead}
    high = math.log(Thresholds().scale_drift)
    assert detail["figures"]["std_log_ratio"]["thresholds"] == pytest.approx({"high": high, "low": -high}, rel=1e-3)
    assert {(a["kind"], a["step"]) for a in detail["alerts"]} >= {("dead", FAULT_STEP)}


def test_histogram_route_step_reference_and_normals(server: str, logdir: Path) -> None:
    acc = accumulator(logdir, DEEP)
    hist = nw(server, "histogram", run=DEEP, tensor=FAULTY_LINEAR, step=FAULT_STEP + 2)
    assert hist["step"] == FAULT_STEP  # the nearest logged step
    events = {e.step: e.histogram_value for e in acc.Histograms(f"normwatch/{FAULTY_LINEAR}")}
    assert hist["steps"] == sorted(events)
    assert hist["count"] == pytest.approx(sum(events[FAULT_STEP].bucket), rel=1e-3)
    edges, density = np.array(hist["edges"]), np.array(hist["density"])
    assert (density * np.diff(edges)).sum() == pytest.approx(1.0, rel=1e-2)
    assert hist["reference"]["steps"] == [20, 55]  # up to the first drift step (60)
    assert (np.array(hist["reference"]["density"]) * np.diff(edges)).sum() == pytest.approx(1.0, rel=1e-2)
    mean = acc.Scalars(f"normwatch/{FAULTY_LINEAR}/mean")[FAULT_STEP // 5].value
    assert close(hist["normal"]["mean"], mean)
    # the reference's normal, recovered from the drift figures, is the pre-fault distribution
    before = acc.Scalars(f"normwatch/{FAULTY_LINEAR}/std")[10].value
    assert hist["reference"]["normal"]["std"] == pytest.approx(before, rel=0.3)


@pytest.mark.parametrize(
    "route,params,message",
    [
        ("run", {}, "missing parameter 'run'"),
        ("run", {"run": "../../etc"}, "unknown run '../../etc'"),
        ("heatmap", {"run": DEEP, "figure": "bogus"}, "unknown figure 'bogus'"),
        ("heatmap", {"run": DEEP, "figure": "saturated"}, "was not logged"),
        ("heatmap", {"run": DEEP, "figure": "dead", "columns": "0"}, "between 1 and 5000"),
        ("heatmap", {"run": DEEP, "figure": "dead", "count": "-3"}, "'count' must be between 1"),
        ("tensor", {"run": DEEP}, "missing parameter 'tensor'"),
        ("tensor", {"run": DEEP, "tensor": "net.999"}, "unknown tensor 'net.999'"),
        ("histogram", {"run": DEEP, "tensor": FAULTY_LINEAR, "step": "x"}, "must be an integer"),
    ],
)
def test_bad_requests_get_400_and_a_message(server: str, logdir: Path, route: str, params: dict, message: str) -> None:
    code, body = get_error(server, f"/data/plugin/normwatch/{route}", **params)
    assert code == 400 and message in body, body
    assert "Traceback" not in body and str(logdir) not in body and "/" + "tmp" not in body.replace(DEEP, "")


def test_demo_run_diagnosis(server: str, logdir: Path) -> None:
    summary = nw(server, "run", run=RAW)
    roots = [a for a in summary["alerts"] if a["severity"] != "info"]
    assert {(a["module"], a["kind"]) for a in roots} == {("input", "outlier"), ("input", "feature_scale")}
    assert summary["tensors"][0] == {
        "name": "input",
        "type": "batch",
        "role": "input",
        "figures": summary["tensors"][0]["figures"],
    }


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")

#: the tab's window: TensorBoard loads the plugin in an iframe (same origin), found through shadow roots
FRAME = """(() => { const find = (root) => { for (const el of root.querySelectorAll('*')) {
  if (el.tagName === 'IFRAME' && (el.src || '').includes('normwatch')) return el;
  if (el.shadowRoot) { const f = find(el.shadowRoot); if (f) return f; } } return null; };
  return find(document); })()"""


def open_tab(tools: Any, server: str, timeout: float = 60.0) -> tuple[float, float]:
    """Open TensorBoard on the NormWatch tab; (seconds until the heatmap is drawn, of which inside the tab)."""
    start = time.monotonic()
    tools.call("Page.navigate", url=f"{server}/#normwatch")
    inside = tools.wait_for(f"(() => {{ const f = {FRAME}; return f && f.contentWindow.__normwatchFirstPaint; }})()",
                            timeout=timeout)  # fmt: skip
    return time.monotonic() - start, inside / 1000


def in_tab(tools: Any, expression: str) -> Any:
    """Evaluate ``expression`` with ``doc`` bound to the tab's document."""
    return tools.evaluate(f"(() => {{ const doc = {FRAME}.contentDocument; return {expression}; }})()")


def click_row(tools: Any, tensor: str) -> None:
    """A real mouse click on the tensor's heatmap row (the middle of its last cell)."""
    box = in_tab(
        tools,
        f"""(() => {{
        const frame = {FRAME}.getBoundingClientRect();
        const labels = [...doc.querySelectorAll('.map')[0].querySelectorAll('.label')];
        const row = labels.findIndex((el) => el.title.split(' ')[0] === {tensor!r});
        const canvas = doc.querySelector('.map canvas').getBoundingClientRect();
        return {{x: frame.left + canvas.right - 3, y: frame.top + canvas.top + row * 16 + 8, row}};
    }})()""",
    )
    assert box["row"] >= 0, tensor
    for kind in ("mousePressed", "mouseReleased"):
        tools.call("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1)


@needs_chromium
def test_tab_in_headless_chromium(server: str) -> None:
    with chromium() as tools:
        total, inside = open_tab(tools, server)
        tools.wait_for(f"(() => {{ const d = {FRAME}.contentDocument; return !!d.querySelector('#hist svg'); }})()")
        assert tools.errors() == []
        first = in_tab(tools, "doc.querySelector('#diagnosis .alert').textContent")
        assert FAULTY_LINEAR in first and f"step {FAULT_STEP}" in first, first
        click_row(tools, "net.0")
        tools.wait_for(f"{FRAME}.contentDocument.querySelector('#selected-title').textContent.startsWith('net.0 ')")
        click_row(tools, FAULTY_LINEAR)
        title = f"{FAULTY_LINEAR} (Linear)"
        tools.wait_for(f"{FRAME}.contentDocument.querySelector('#selected-title').textContent.startsWith({title!r})")
        tools.wait_for(f"{FRAME}.contentDocument.querySelector('#hist .histtitle')?.textContent.includes('step 145')")
        assert in_tab(tools, "doc.querySelectorAll('#hist svg rect.bar').length") > 0
        alerts = in_tab(tools, "doc.querySelector('#tensor-alerts').textContent")
        assert f"Alerts of {FAULTY_LINEAR}" in alerts and "mean_drift" in alerts, alerts
        # two runs side by side, on the same depth axis (one row per tensor, same height)
        in_tab(tools, f"(() => {{ const s = doc.querySelector('#compare'); s.value = {RAW!r}; "
                      "s.dispatchEvent(new Event('change')); return true; })()")  # fmt: skip
        tools.wait_for(f"{FRAME}.contentDocument.querySelectorAll('.map canvas').length === 2")
        titles = in_tab(tools, "[...doc.querySelectorAll('.maptitle')].map((t) => t.textContent)")
        assert titles == [DEEP, RAW]
        rows = in_tab(tools, "[...doc.querySelectorAll('.map')].map((m) => m.querySelectorAll('.label').length)")
        assert rows == [34, 6]
        assert tools.errors() == []
    print(
        f"\nNormWatch tab, deep + demo runs: heatmap drawn {total:.2f} s after navigation ({inside:.2f} s in the tab)"
    )


@pytest.mark.slow
@needs_chromium
def test_first_paint_of_a_200_tensor_2000_step_run(tmp_path: Path) -> None:
    """The tab on a large run (synthetic, NormWatch's tags and writers): the heatmap is drawn within 2 s."""
    from synthetic_run import DEAD, write_large_run

    write_large_run(tmp_path, tensors=200, steps=2000)
    with serve(tmp_path, timeout=180, load_fast="true") as base:
        deadline = time.monotonic() + 180
        while get(base, "/data/plugin/normwatch/runs")["runs"][0]["last_step"] < 1999:
            assert time.monotonic() < deadline
            time.sleep(1)
        time.sleep(3)  # the data server finishes the histograms and text
        with chromium() as tools:
            total, inside = open_tab(tools, base)
            rows = in_tab(tools, "doc.querySelectorAll('.map .label').length")
            first = in_tab(tools, "doc.querySelector('#diagnosis .alert').textContent")
            assert tools.errors() == []
    print(f"\nNormWatch tab, 200 tensors x 2000 steps: heatmap drawn {total:.2f} s after navigation "
          f"({inside:.2f} s in the tab)")  # fmt: skip
    assert rows == 200 and DEAD in first
    assert inside <= 2.0
