#!/usr/bin/env bash
# Screenshots of NormWatch's TensorBoard panels for the README (docs/*.png); docs/cdp_shot.py helps.
#
# Trains two log directories with the default settings:
#   demo: the quickstart's two runs (raw features / standardized + BatchNorm, examples/quickstart.py);
#   deep: a 24-block MLP (50 watched tensors) whose block-11 Linear gets a bias of -20 at step 200,
#         so ReLU net.23 dies and everything after it collapses (a fault to point at).
# Serves each with the real `tensorboard` on 127.0.0.1 and takes headless Chromium screenshots of
# its dashboards (`?forceSVG=true`: headless Chromium draws no WebGL lines). The overview heatmaps
# are also saved at full size from the event file. Not run by CI. Needs the project's .venv
# (`make demo` creates it) and Chromium (`apt-get install -y chromium`). Takes about 4 minutes.
#
#   bash docs/make_screenshots.sh            # writes docs/*.png
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TB=${TB:-.venv/bin/tensorboard}
WORK=$(mktemp -d)
LOG="$WORK/logs"

"$PY" - "$LOG" <<'PYTHON'
import logging, sys, warnings
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, "examples")
from quickstart import Classifier, dataset  # the README's demo model and data

from lightning_normwatch import NormWatch

warnings.filterwarnings("ignore")
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
torch.set_num_threads(2)
root = sys.argv[1]


def fit(model, data, name, logdir, callbacks=()):
    watch = NormWatch(every_n_steps=10, warmup_steps=50, reference_steps=100, plot_every_n_steps=150)
    trainer = pl.Trainer(
        max_steps=300, callbacks=[watch, *callbacks], logger=TensorBoardLogger(logdir, name=name, default_hp_metric=False),
        log_every_n_steps=10, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        accelerator="cpu", devices=1,
    )
    trainer.fit(model, DataLoader(data, batch_size=64, shuffle=True))
    print(f"{name}: {len(watch.alerts)} alerts")


for name, standardize, batchnorm in [("raw_features", False, False), ("standardized_batchnorm", True, True)]:
    pl.seed_everything(0, verbose=False)
    fit(Classifier(30, batchnorm), dataset(standardize), name, f"{root}/demo")


class Deep(pl.LightningModule):
    def __init__(self, blocks=24, width=64):
        super().__init__()
        layers = []
        for i in range(blocks):
            layers += [nn.Linear(30 if i == 0 else width, width), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, 2))
        for m in self.net:  # He initialization: a healthy deep ReLU network
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.002)


class Fault(pl.Callback):
    """At step 200, block 11's Linear (net.22) gets a bias of -20: ReLU net.23 dies, later layers collapse."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 200:
            with torch.no_grad():
                pl_module.net[22].bias.fill_(-20.0)


pl.seed_everything(0, verbose=False)
fit(Deep(), dataset(True), "deep_mlp", f"{root}/deep", [Fault()])
PYTHON

shoot() {  # shoot FILE URL [HEIGHT]
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$(mktemp -d -p "$WORK")" \
    --window-size="1400,${3:-1000}" --virtual-time-budget=20000 --screenshot="docs/$1" "$2" 2>/dev/null
}

serve() {  # serve LOGDIR -> sets URL, TB_PID
  PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$TB" --logdir "$1" --host 127.0.0.1 --port "$PORT" --load_fast=false >"$WORK/tensorboard.log" 2>&1 &
  TB_PID=$!
  URL="http://127.0.0.1:$PORT"
  for _ in $(seq 120); do  # wait until the alert tables are loaded
    if curl -s "$URL/data/plugin/text/tags" | grep -q "normwatch/alerts"; then break; fi
    sleep 0.5
  done
  sleep 2
}
trap 'kill "${TB_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

images() {  # images FILE TAG_FILTER HEIGHT: the Images dashboard with "Show actual image size" ticked
  "$PY" docs/cdp_shot.py "$URL/?forceSVG=true#images&tagFilter=$2" "docs/$1" 1400 "$3"
}

serve "$LOG/deep"
images deep_images_profile.png 0_depth_profile 1250
images deep_images_scale.png 1_scale 1300
images deep_images_dead.png 5_dead 1300
shoot deep_images_cards.png "$URL/?forceSVG=true#images&tagFilter=overview" 1000  # as TensorBoard scales them
shoot deep_custom_scalars.png "$URL/?forceSVG=true#custom_scalars&_smoothingWeight=0" 1400
shoot deep_timeseries.png "$URL/?forceSVG=true#timeseries" 1100
shoot deep_alerts.png "$URL/?forceSVG=true#text" 900
kill "$TB_PID"; wait "$TB_PID" 2>/dev/null || true

serve "$LOG/demo"
images demo_images.png "overview/[12]" 1300
shoot demo_custom_scalars.png "$URL/?forceSVG=true#custom_scalars&_smoothingWeight=0" 1400
shoot demo_timeseries.png "$URL/?forceSVG=true#timeseries" 1100
shoot demo_alerts.png "$URL/?forceSVG=true#text" 900
shoot panels_histograms.png "$URL/?forceSVG=true#histograms" 1000
kill "$TB_PID"; wait "$TB_PID" 2>/dev/null || true

# The Images dashboard scales images to its cards: save the overview images (and one Q-Q figure) at
# full size too, read back from the event files (what "Show actual image size" shows).
"$PY" - "$LOG" <<'PYTHON'
import glob, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

def images(run):
    acc = EventAccumulator(glob.glob(f"{sys.argv[1]}/{run}/version_*")[0], size_guidance={"images": 0})
    acc.Reload()
    return acc

deep = images("deep/deep_mlp")
for tag, name in [("0_depth_profile", "profile"), ("1_scale_log10_std", "scale"), ("2_scale_drift", "drift"),
                  ("5_dead_units", "dead")]:
    with open(f"docs/deep_overview_{name}.png", "wb") as f:
        f.write(deep.Images(f"normwatch/overview/{tag}")[-1].encoded_image_string)
demo = images("demo/raw_features")
with open("docs/demo_overview_scale.png", "wb") as f:
    f.write(demo.Images("normwatch/overview/1_scale_log10_std")[-1].encoded_image_string)
norm = images("demo/standardized_batchnorm")
with open("docs/panels_figure.png", "wb") as f:
    f.write(norm.Images("normwatch/figures/net")[-1].encoded_image_string)
PYTHON
ls -l docs/*.png
