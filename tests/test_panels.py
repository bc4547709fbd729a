"""TensorBoard panels, read back from real event files with TensorBoard's own reader."""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from models import Regressor, loader, mlp, regression_data, trainer
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util
from torch import nn

from lightning_normwatch import NormWatch
from lightning_normwatch.output.custom_scalars import group_of, layout_for
from lightning_normwatch.output.markdown import alerts_markdown
from lightning_normwatch.output.plots import PlotData, density, pair_rows, qq_points, quantiles, zero_share
from lightning_normwatch.stats.histogram import bin_counts, bin_edges
from lightning_normwatch.view.report import parse_alerts_markdown

BATCH, D_IN, WIDTH = 32, 16, 32
#: values per watched tensor per step: every value is sampled (tensors are smaller than sample_size)
NUMEL = {"input": BATCH * D_IN, "net.0": BATCH * WIDTH, "net.1": BATCH * WIDTH, "net.2": BATCH * WIDTH}
NUMEL |= {"net.3": BATCH * WIDTH, "net.4": BATCH}


def read_events(log_dir: str | Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def dead_relu_net() -> nn.Sequential:
    """A Linear whose bias is -100, so the ReLU after it outputs only zeros (a ``dead`` alert)."""
    net = nn.Sequential(nn.Linear(D_IN, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 1))
    with torch.no_grad():
        net[0].bias.fill_(-100.0)
    return net


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> tuple[NormWatch, EventAccumulator, Path]:
    """An MLP logged to TensorBoard and CSV every 2 steps, drift from step 4, figures at steps 0 and 6.

    Figures are due at the first logging step of each interval of 5 steps: 0 (0-4) and 6 (5-9).
    """
    root = tmp_path_factory.mktemp("healthy")
    torch.manual_seed(0)
    cb = NormWatch(every_n_steps=2, warmup_steps=0, reference_steps=4, plot_every_n_steps=5, on_alert="ignore")
    loggers = [TensorBoardLogger(root, name="tb"), CSVLogger(root, name="csv")]
    tr = trainer(root, [cb], max_steps=9, logger=loggers)
    tr.fit(Regressor(mlp(D_IN, WIDTH)), loader(regression_data(d_in=D_IN), batch_size=BATCH))
    return cb, read_events(loggers[0].log_dir), Path(loggers[1].log_dir)


@pytest.fixture(scope="module")
def dead(tmp_path_factory: pytest.TempPathFactory) -> tuple[NormWatch, EventAccumulator]:
    root = tmp_path_factory.mktemp("dead")
    torch.manual_seed(0)
    cb = NormWatch(every_n_steps=1, on_alert="ignore")
    logger = TensorBoardLogger(root)
    tr = trainer(root, [cb], max_steps=2, logger=logger)
    tr.fit(Regressor(dead_relu_net()), loader(regression_data(d_in=D_IN), batch_size=BATCH))
    return cb, read_events(logger.log_dir)


# ---------------------------------------------------------------------------------------- histograms
def test_histograms_hold_every_sampled_value(healthy) -> None:
    cb, acc, _ = healthy
    tags = acc.Tags()
    assert sorted(tags["histograms"]) == sorted(f"normwatch/{k}" for k in NUMEL)
    assert sorted(tags["distributions"]) == sorted(tags["histograms"])  # the Distributions dashboard too
    for key, numel in NUMEL.items():
        events = acc.Histograms(f"normwatch/{key}")
        assert [e.step for e in events] == [0, 2, 4, 6, 8]
        for event in events:
            h = event.histogram_value
            limits = np.array(h.bucket_limit)
            assert sum(h.bucket) == h.num == numel  # counts sum to the sampled count
            assert np.all(np.diff(limits) > 0), "bucket limits must be strictly increasing"
            assert len(h.bucket) == len(limits) and h.bucket[0] > 0 and h.bucket[-1] > 0
            assert h.min <= limits[0] and (len(limits) < 2 or limits[-2] < h.max <= limits[-1])
        last = events[-1].histogram_value
        assert last.num == cb.last_result.figures[key]["sampled"]
        mean = acc.Scalars(f"normwatch/{key}/mean")[-1].value
        assert last.sum / last.num == pytest.approx(mean, rel=1e-4, abs=1e-6)
    # each histogram's description names the layer type
    assert acc.SummaryMetadata("normwatch/net.1").summary_description == "net.1 (ReLU), activation"
    assert acc.SummaryMetadata("normwatch/net.2").summary_description == "net.2 (Linear), preact"


#: the mlp's tensors in execution order, with their layer types and roles
TYPES = {"input": "batch", "net.0": "Linear", "net.1": "ReLU", "net.2": "Linear", "net.3": "ReLU", "net.4": "Linear"}


def test_default_scalars_are_few_and_fit_each_layer(healthy) -> None:
    cb, acc, _ = healthy
    scalars = set(acc.Tags()["scalars"])
    per_tensor: dict[str, set[str]] = {}
    for tag in scalars:
        if tag.startswith("normwatch/") and tag.split("/")[1] not in ("thresholds", "alerts"):
            module, stat = tag[len("normwatch/") :].rsplit("/", 1)
            per_tensor.setdefault(module, set()).add(stat)
    assert set(per_tensor) == set(NUMEL)
    assert float(np.median([len(v) for v in per_tensor.values()])) <= 8
    for key, stats in per_tensor.items():
        if key == "input":  # judged per feature (input_drift), not on the pooled tensor's drift
            drift = {"feature_drift_share", "feature_mean_shift_max", "feature_std_log_ratio_max", "feature_psi_max"}
            assert {"mean", "std", "zeros"} | drift <= stats and "std_log_ratio" not in stats, stats
            continue
        assert {"mean", "std", "std_log_ratio", "mean_shift", "shape_psi"} <= stats, key
        # a layer with parameters logs its update ratio, in place of zeros for a pre-activation (8 at most)
        assert ("update_ratio" in stats) == ("zeros" not in stats) == (TYPES[key] == "Linear"), (key, stats)
        assert len(stats) <= 8, (key, stats)
        assert ("dead" in stats) == (TYPES[key] == "ReLU"), (key, stats)  # dead only for activations
        assert "saturated" not in stats and "jarque_bera_p" not in stats and "min" not in stats
    assert {"channel_skew", "channel_kurtosis"} <= per_tensor["input"]
    # thresholds: both sides of the two-sided drift figures, starting where the drift figures start
    drift_steps = [e.step for e in acc.Scalars("normwatch/net.0/std_log_ratio")]
    assert drift_steps == [4, 6, 8]
    for name, sign in (("log_scale_drift", 1), ("log_scale_drift_low", -1), ("mean_drift", 1), ("mean_drift_low", -1)):
        events = acc.Scalars(f"normwatch/thresholds/{name}")
        assert [e.step for e in events] == drift_steps, name
        expected = math.log(cb.thresholds.scale_drift) if "log" in name else cb.thresholds.mean_drift
        assert events[0].value == pytest.approx(sign * expected, rel=1e-6)
    assert [e.step for e in acc.Scalars("normwatch/thresholds/dead")] == [0, 2, 4, 6, 8]
    assert "normwatch/thresholds/saturated" not in scalars  # no bounded activation in this model


def test_scalars_all_and_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scalars.*'some'"):
        NormWatch(scalars="some")
    cb = NormWatch(every_n_steps=1, scalars="all", on_alert="ignore", tensorboard=False)
    logger = TensorBoardLogger(tmp_path)
    tr = trainer(tmp_path, [cb], max_steps=1, logger=logger)
    tr.fit(Regressor(mlp(D_IN, WIDTH)), loader(regression_data(d_in=D_IN), batch_size=BATCH))
    scalars = set(read_events(logger.log_dir).Tags()["scalars"])
    for stat in ("min", "max", "skew", "kurtosis", "normaltest_p", "jarque_bera_p", "mean_plus_std"):
        assert f"normwatch/net.2/{stat}" in scalars
    assert "normwatch/net.1/dead" in scalars and "normwatch/net.2/dead" not in scalars
    assert "normwatch/net.1/saturated" not in scalars  # a ReLU cannot saturate, even with scalars="all"


def _layout(acc: EventAccumulator) -> layout_pb2.Layout:
    events = acc.Tensors("custom_scalars__config__")
    assert len(events) == 1  # written once
    layout = layout_pb2.Layout()
    layout.ParseFromString(tensor_util.make_ndarray(events[0].tensor_proto).item())
    return layout


def test_custom_scalars_layout_matches_logged_tags(healthy) -> None:
    _, acc, _ = healthy
    scalars = set(acc.Tags()["scalars"])
    layout = _layout(acc)
    titles = [c.title for c in layout.category]
    assert titles == ["normwatch: alerts", "normwatch: 1/1 input (batch) ... net.4 (Linear)"]
    both_sides = 0
    for category in layout.category:
        for chart in category.chart:
            assert chart.HasField("multiline"), chart.title  # Margin charts would be drawn apart from the rest
            matched = set()
            for pattern in chart.multiline.tag:  # TensorBoard uses re.match on every tag
                hits = {tag for tag in scalars if re.match(pattern, tag)}
                assert hits, (chart.title, pattern)
                matched |= hits
            tensors = {t.split("/")[1] for t in matched} - {"thresholds", "alerts"}
            assert len(tensors) <= 1, (chart.title, matched)  # never several tensors in one chart
            lines = {t for t in matched if t.startswith("normwatch/thresholds/")}
            if "beyond either threshold line" in chart.title:  # both threshold lines, + and -
                assert len(lines) == 2 and {t[:-4] for t in lines if t.endswith("_low")} == lines - {
                    t for t in lines if t.endswith("_low")
                }
                both_sides += 1
    assert both_sides == 2 * (len(NUMEL) - 1)  # log std ratio and mean shift of every watched tensor but the input
    floors = [c.title for cat in layout.category for c in cat.chart if c.title.startswith("input (batch): largest")]
    assert len(floors) == 3 and all(t.endswith("effect floor line") for t in floors)  # per-feature input drift
    charts = [c.title for cat in layout.category[1:] for c in cat.chart]
    for key, type_name in TYPES.items():  # every title names the tensor and its layer type
        assert f"{key} ({type_name}): std" in charts
    assert all(re.match(r"^[\w.\[\]@/]+ \(\w+\): ", t) for t in charts), charts
    dead = [t for t in charts if "dead" in t]
    assert dead == [
        "net.1 (ReLU): share of dead units, alert above the threshold line",
        "net.3 (ReLU): share of dead units, alert above the threshold line",
    ]


def test_layout_chunks_deep_models() -> None:
    keys = [f"net.{i}" for i in range(100)]
    kinds = {k: ("Linear", "preact") if i % 2 == 0 else ("Tanh", "bounded") for i, k in enumerate(keys)}
    layout = layout_for(keys, kinds)
    categories = list(layout)[1:]
    assert len(categories) == 13 and categories[0] == "normwatch: 1/13 net.0 (Linear) ... net.7 (Tanh)"
    assert max(len(layout[c]) for c in categories) <= 8 * 6
    assert "net.1 (Tanh): share of saturated outputs, alert above the threshold line" in layout[categories[0]]
    assert not any("saturated" in t for t in layout[categories[0]] if t.startswith("net.0 "))


def test_figures_every_plot_interval(healthy) -> None:
    _, acc, _ = healthy
    figures = sorted(t for t in acc.Tags()["images"] if t.startswith("normwatch/figures/"))
    assert figures == ["normwatch/figures/inputs", "normwatch/figures/net"]
    for tag in figures:
        images = acc.Images(tag)
        assert [im.step for im in images] == [0, 6]
        assert all(im.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and im.width > 300 for im in images)
    # net: three rows (Linear+ReLU, Linear+ReLU, Linear), pre/post side by side -> 4 panels wide
    net = acc.Images("normwatch/figures/net")[-1]
    assert net.width >= 2 * acc.Images("normwatch/figures/inputs")[-1].width


def test_scalars_also_reach_the_csv_logger(healthy) -> None:
    _, acc, csv_dir = healthy
    with open(csv_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert "normwatch/net.1/zeros" in rows[0]
    steps = [int(r["step"]) for r in rows if r.get("normwatch/net.1/zeros")]
    assert steps == [0, 2, 4, 6, 8]
    tb = [e.value for e in acc.Scalars("normwatch/net.1/zeros")]
    assert [float(r["normwatch/net.1/zeros"]) for r in rows if r["normwatch/net.1/zeros"]] == pytest.approx(tb)


# ---------------------------------------------------------------------------------------- alerts
def test_alert_table_for_a_dead_relu(dead) -> None:
    cb, acc = dead
    assert any(a.kind == "dead" and a.module == "net.1" for a in cb.alerts)
    assert acc.Tags()["tensors"].count("normwatch/alerts/text_summary") == 1
    events = acc.Tensors("normwatch/alerts/text_summary")
    text = tensor_util.make_ndarray(events[-1].tensor_proto).item().decode()
    assert "| step | module | kind | severity | value | threshold | caused by | message |" in text
    rows = parse_alerts_markdown(text)
    assert [(r["step"], r["module"], r["kind"], r["severity"]) for r in rows] == [
        (a.step, a.module, a.kind, a.severity) for a in cb.alerts
    ]
    dead_row = next(r for r in rows if r["kind"] == "dead")
    assert dead_row["value"] == pytest.approx(1.0) and dead_row["threshold"] == pytest.approx(0.5)
    assert acc.Scalars("normwatch/alerts/warning")[0].value >= 1
    # plot_every_n_steps=None: no figures, only the overview
    assert all(t.startswith("normwatch/overview/") for t in acc.Tags()["images"])


def test_alerts_markdown_round_trip() -> None:
    from lightning_normwatch.judge.alerts import Alert

    alerts = [
        Alert(3, "enc.0[1]", "outlier", "warning", 123.456789, 100.0, "max |x| is 123x | its RMS\nsecond line"),
        Alert(9, "net.1", "nonfinite", "error", float("nan"), 0.0, "NaN in `net.1`"),
    ]
    text = alerts_markdown(alerts)
    assert (
        text.splitlines()[0]
        == "**2 alerts** up to step 9: 1 error, 1 warning, 0 info; 2 root alerts (most severe, then oldest first)"
    )
    assert text.splitlines()[2].startswith("- **nonfinite** (error) in net.1")  # one line per root first
    assert text.splitlines()[7].startswith("| 9 | net.1 | nonfinite | **error** |")  # errors first
    long = Alert(1, "fc", "shift", "warning", 3.0, 2.0, " ".join(["word"] * 60))
    assert (
        "<br>" in alerts_markdown([long])
        and parse_alerts_markdown(alerts_markdown([long]))[0]["message"] == long.message
    )
    rows = parse_alerts_markdown(text)
    assert [r["module"] for r in rows] == ["enc.0[1]", "net.1"]  # oldest first
    assert rows[1]["severity"] == "error"
    assert rows[0]["message"] == "max |x| is 123x | its RMS second line"
    assert rows[0]["value"] == pytest.approx(123.0) and math.isnan(rows[1]["value"])


# ---------------------------------------------------------------------------------------- other loggers
def test_csv_logger_only_warns_once_and_logs_scalars(tmp_path: Path) -> None:
    cb = NormWatch(every_n_steps=1, plot_every_n_steps=1, on_alert="ignore")
    logger = CSVLogger(tmp_path)
    tr = trainer(tmp_path, [cb], max_steps=2, logger=logger)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.fit(Regressor(mlp(D_IN, WIDTH)), loader(regression_data(d_in=D_IN), batch_size=BATCH))
    ours = [str(w.message) for w in caught if "TensorBoard" in str(w.message)]
    assert len(ours) == 1 and "CSVLogger" in ours[0] and "skipped" in ours[0], ours
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert {"normwatch/net.0/std", "normwatch/input/mean", "normwatch/alerts/error"} <= set(header)
    assert not list(tmp_path.rglob("events.out.tfevents*"))


def test_logger_false_still_watches(tmp_path: Path) -> None:
    cb = NormWatch(every_n_steps=1, plot_every_n_steps=1, on_alert="ignore")
    tr = trainer(tmp_path, [cb], max_steps=2, logger=False)
    tr.fit(Regressor(dead_relu_net()), loader(regression_data(d_in=D_IN), batch_size=BATCH))
    assert cb.last_result is not None and cb.last_result.step == 1
    assert any(a.kind == "dead" for a in cb.alerts)
    assert not list(tmp_path.rglob("events.out.tfevents*"))


@pytest.mark.slow
def test_without_matplotlib_everything_else_is_written(tmp_path: Path) -> None:
    """matplotlib made unimportable in a fresh interpreter: one warning, no figures, the rest written."""
    script = f"""
import sys, warnings
from pytorch_lightning.loggers import TensorBoardLogger  # (torchmetrics may import matplotlib itself)
for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
    del sys.modules[name]
sys.modules["matplotlib"] = None  # from here on, `import matplotlib` raises ImportError
sys.path.insert(0, {str(Path(__file__).parent)!r})
from models import Regressor, loader, mlp, regression_data, trainer
from lightning_normwatch import NormWatch
cb = NormWatch(every_n_steps=1, plot_every_n_steps=1, on_alert="ignore")
logger = TensorBoardLogger({str(tmp_path)!r})
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    trainer({str(tmp_path)!r}, [cb], max_steps=3, logger=logger).fit(Regressor(mlp()), loader(regression_data()))
print("WARNINGS", sum("matplotlib is not installed" in str(w.message) for w in caught))
print("LOGDIR", logger.log_dir)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "WARNINGS 1" in out.stdout
    log_dir = out.stdout.split("LOGDIR ")[1].strip()
    tags = read_events(log_dir).Tags()
    assert not [t for t in tags["images"] if t.startswith("normwatch/figures/")]
    assert "normwatch/overview/1_scale_log10_std" in tags["images"]  # the overview needs no matplotlib
    assert "normwatch/net.0" in tags["histograms"] and "normwatch/net.0/std" in tags["scalars"]


# ---------------------------------------------------------------------------------------- pure helpers
def test_group_of() -> None:
    assert group_of("net.0") == group_of("net.4") == "net"
    assert group_of("encoder.layers.3.attn.q") == "encoder.layers.3"
    assert group_of("fc1") == group_of("lstm[0]") == "model"
    assert group_of("input") == group_of("input/image") == "inputs"
    assert group_of("head.proj@2") == "head"


def test_layout_escapes_module_names() -> None:
    layout = layout_for(["blocks.0.fc", "blocks.0.act", "blocks.1.fc"])
    pattern = layout["normwatch: 1/1 blocks.0.fc ... blocks.1.fc"]["blocks.0.fc: std"][1][0]
    assert re.match(pattern, "normwatch/blocks.0.fc/std")
    assert not re.match(pattern, "normwatch/blocksX0.fc/std")
    assert not re.match(pattern, "normwatch/blocks.0.fc/std_log_ratio")
    assert not re.match(pattern, "normwatch/blocks.0.fc/mean_plus_std")


def _hist(x: torch.Tensor) -> np.ndarray:
    return bin_counts(x, bin_edges(dtype=torch.float64)).numpy()


def test_quantiles_from_shared_bins_match_the_sample() -> None:
    g = torch.Generator().manual_seed(1)
    for x in (torch.randn(20_000, generator=g) * 3 + 1, torch.relu(torch.randn(20_000, generator=g))):
        p = np.linspace(0.01, 0.99, 25)
        exact = np.quantile(x.double().numpy(), p)
        approx = quantiles(_hist(x), float(x.min()), float(x.max()), p)
        # bins grow by 10 %: an interpolated quantile is within one bin of the exact one
        assert np.all(np.abs(approx - exact) <= 0.1 * np.abs(exact) + 1e-3), np.abs(approx - exact).max()


def test_density_and_zero_atom() -> None:
    x = torch.relu(torch.randn(50_000, generator=torch.Generator().manual_seed(2)))
    h = _hist(x)
    assert zero_share(h) == pytest.approx(float((x == 0).double().mean()))
    grid = np.linspace(-1.0, 5.0, 121)
    full = density(h, 0.0, float(x.max()), grid)
    cont = density(h, 0.0, float(x.max()), grid, drop_zero_bin=True)
    assert (full * np.diff(grid)).sum() == pytest.approx(1.0, abs=1e-3)
    assert (cont * np.diff(grid)).sum() == pytest.approx(1.0 - zero_share(h), abs=1e-3)
    # the continuous part of a ReLU'd standard normal has density 2 * phi(x) * 1/2 = phi(x) for x > 0
    mid = (grid[:-1] + grid[1:]) / 2
    sel = (mid > 0.2) & (mid < 2.0)
    assert cont[sel] == pytest.approx(np.exp(-(mid[sel] ** 2) / 2) / np.sqrt(2 * np.pi), abs=0.03)


def test_qq_points_flag_heavy_tails_and_pairs() -> None:
    g = torch.Generator().manual_seed(3)
    t = torch.distributions.StudentT(3.0).sample((50_000,))
    h = _hist(t)
    d = PlotData("t", "batch", "input", h, float(t.min()), float(t.max()), float(t.mean()), float(t.std()), 0, 0)
    z, q = qq_points(d)
    assert q[-1] > z[-1] and q[0] < z[0]  # heavy tails: the ends leave the diagonal outwards
    n = torch.randn(50_000, generator=g)
    dn = PlotData("n", "batch", "input", _hist(n), float(n.min()), float(n.max()), 0.0, 1.0, 0, 0)
    z, q = qq_points(dn)
    assert np.abs(q - z).max() < 0.1

    def mk(name: str, role: str) -> PlotData:
        return PlotData(name, "M", role, h, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0)

    rows = pair_rows([mk("in", "input"), mk("fc", "preact"), mk("act", "activation"), mk("sig", "bounded")])
    assert [(a and a.name, b and b.name) for a, b in rows] == [("in", None), ("fc", "act"), (None, "sig")]


# ---------------------------------------------------------------------------------------- overview images
def _decode(png: bytes) -> np.ndarray:
    """``[H, W, 3]`` of a PNG, decoded by Pillow."""
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _grid(rgb: np.ndarray) -> tuple[int, list[int]]:
    """The heat grid's left edge and the top pixel row of each of its rows, found in a decoded image.

    The fullest pixel column is in the grid; there each row is a run of ``ROW - 1`` non-white pixels
    (then a white gap); the grid starts where the first row's cells stop going left.
    """
    from lightning_normwatch.output.heatmap import ROW

    ink = (rgb != 255).any(axis=-1)
    xm = int(np.argmax(ink.sum(axis=0)))
    edges = np.diff(np.concatenate([[0], ink[:, xm].astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    tops = [int(a) for a, b in zip(starts, ends, strict=True) if b - a == ROW - 1]
    x0, y = xm, tops[0] + ROW // 2
    while x0 > 0 and ink[y, x0 - 1]:
        x0 -= 1
    return x0, tops


def _ink(rgb: np.ndarray) -> np.ndarray:
    """Pixels at least half covered by black or red text (text is anti-aliased from white: green drops)."""
    return rgb[..., 1] < 128


def _text(text: str) -> np.ndarray:
    """``text`` in the heatmaps' font as Pillow draws it, at least half covered, cropped to its ink."""
    from PIL import Image, ImageDraw, ImageFont

    from lightning_normwatch.output.heatmap import FONT_SIZE

    img = Image.new("L", (400, 40))
    ImageDraw.Draw(img).text((0, 0), text, fill=255, font=ImageFont.load_default(size=FONT_SIZE))
    return _crop(np.asarray(img) >= 128)


def _crop(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] if len(ys) else mask[:0, :0]


def _labels(rgb: np.ndarray) -> list[tuple[np.ndarray, bool, bool]]:
    """Per heatmap row: its label's text pixels (cropped), whether they are red, and whether a ``!`` precedes it."""
    from lightning_normwatch.output.heatmap import INDENT, MARGIN, ROW

    x0, tops = _grid(rgb)
    out = []
    for y in tops:
        band = rgb[y : y + ROW - 1, :x0]
        name = _ink(band[:, MARGIN + INDENT :])
        red = band[..., 0].astype(int) - band[..., 1] > 100
        out.append((_crop(name), bool(red[:, MARGIN + INDENT :].any()), bool(_ink(band[:, : MARGIN + INDENT]).any())))
    return out


def test_overview_heatmaps_one_labelled_row_per_tensor_in_execution_order(healthy) -> None:
    _, acc, _ = healthy
    tags = sorted(t for t in acc.Tags()["images"] if t.startswith("normwatch/overview/"))
    assert tags == [
        "normwatch/overview/0_depth_profile",
        "normwatch/overview/1_scale_log10_std",
        "normwatch/overview/2_scale_drift",
        "normwatch/overview/3_shape_psi",
        "normwatch/overview/4_zeros",
        "normwatch/overview/5_dead_units",
        "normwatch/overview/6_update_ratio",
    ]
    expected = [_text(f"{key} ({type_name})") for key, type_name in TYPES.items()]
    for tag in tags[1:]:
        events = acc.Images(tag)
        assert [e.step for e in events] == [0, 8]  # the first logging step, then the end of the fit
        rgb = _decode(events[-1].encoded_image_string)
        assert rgb.shape[:2] == (events[-1].height, events[-1].width)
        labels = _labels(rgb)
        assert len(labels) == len(TYPES), tag  # one row per watched tensor
        for (drawn, red, mark), text, key in zip(labels, expected, TYPES, strict=True):
            assert drawn.shape == text.shape and (drawn == text).all(), (tag, key)  # its label, in its row
            assert not red and not mark, (tag, key)  # a healthy run: no row alerted
        assert not (labels[0][0].shape == expected[1].shape and (labels[0][0] == expected[1]).all())  # can fail


def test_overview_labels_are_legible_in_a_400_pixel_card(healthy) -> None:
    """TensorBoard shows an image scaled to its card's width: the labels' letters keep about 10 pixels there."""
    _, acc, _ = healthy
    for tag in ("normwatch/overview/0_depth_profile", "normwatch/overview/5_dead_units"):
        event = acc.Images(tag)[-1]
        height = _text("net.0 (Linear)").shape[0]  # ascender to descender
        assert 400 / event.width * height >= 10, (tag, event.width, height)


def test_overview_of_a_deep_model_fits_a_card() -> None:
    """50 tensors, the later 30 with three active alerts each: images narrow enough for 11 to 15 pixel letters."""
    from lightning_normwatch.config import Thresholds
    from lightning_normwatch.output.heatmap import FONT_SIZE
    from lightning_normwatch.output.overview import Overview

    ov, keys = Overview(), ["input"] + [f"net.{i}" for i in range(49)]
    kinds = {k: ("Linear", "preact") if k.endswith(("0", "2", "4", "6", "8")) else ("ReLU", "activation") for k in keys}
    active = {(k, kind) for k in keys[20:] for kind in ("dead", "scale_drift", "vanishing")}
    for step in range(0, 1000, 10):
        figures = {k: {"std": 1e-3 * (i + 1), "std_log_ratio": -3.0, "dead": 0.6} for i, k in enumerate(keys)}
        ov.add(step, figures, kinds, active)
    images = ov.images(Thresholds())
    assert [img.width for img in images.values()][1:] == [images["normwatch/overview/1_scale_log10_std"].width] * 5
    assert 400 / images["normwatch/overview/1_scale_log10_std"].width * FONT_SIZE >= 14
    assert 400 / images["normwatch/overview/0_depth_profile"].width * FONT_SIZE >= 11


def test_overview_marks_the_alerted_layer(dead) -> None:
    from lightning_normwatch.output.heatmap import ROW

    cb, acc = dead
    event = acc.Images("normwatch/overview/5_dead_units")[-1]
    rgb = _decode(event.encoded_image_string)
    rows = ["input (batch)", "net.0 (Linear)", "net.1 (ReLU)", "net.2 (Linear)"]
    labels = _labels(rgb)
    for (drawn, _, _), text in zip(labels, rows, strict=True):
        assert (drawn.shape == _text(text).shape) and (drawn == _text(text)).all(), text
    assert [red for _, red, _ in labels] == [False, False, True, False]  # net.1's label in red
    assert [mark for _, _, mark in labels] == [False, False, True, False]  # after a "!"
    x0, tops = _grid(rgb)
    frame = (rgb[..., 0] > 200) & (rgb[..., 1] < 40) & (rgb[..., 2] < 40)
    frame[:, :x0] = False  # red text is not a frame
    assert [bool(frame[y : y + ROW - 1].any()) for y in tops] == [False, False, True, False]  # only net.1's row
    y = tops[2]
    cells = np.nonzero(frame[y + ROW // 2])[0]  # the frame's left and right edges, crossing the row's middle
    assert len(cells) >= 2 and frame[y, cells[0] : cells[-1] + 1].all() and frame[y + ROW - 2, cells[-1]]
    assert not frame[y - 1].any() and not frame[y + ROW - 1].any()  # the frame stays inside the row


def test_heatmap_cells_take_the_colour_of_their_value() -> None:
    from lightning_normwatch.output.heatmap import GREY, heatmap, sequential

    img = heatmap(np.array([[-np.inf, 0.0, 1.0, np.nan]]), ["a (ReLU)"], [0, 10, 20, 30], "t")
    y = int(np.nonzero((img.pixels == GREY).any(axis=1))[0][0]) + 3  # a pixel row through the only heatmap row
    cells = img.pixels[y]
    colours = [c for i, c in enumerate(cells) if i == 0 or c != cells[i - 1]]
    cmap = sequential()
    known = {tuple(c) for c in cmap} | {tuple(img.palette[GREY])}
    rgb = [tuple(img.palette[c]) for c in colours if tuple(img.palette[c]) in known]
    # a std of 0 (log -inf) is the lowest colour like the minimum, NaN (not measured) is grey
    assert rgb == [tuple(cmap[0]), tuple(cmap[-1]), tuple(img.palette[GREY])]
