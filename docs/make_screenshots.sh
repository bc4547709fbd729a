#!/usr/bin/env bash
# Screenshots of NormWatch's TensorBoard panels for the README (docs/panels_*.png).
#
# Trains the quickstart's two runs (raw features / standardized + BatchNorm, examples/quickstart.py)
# with figures every 150 steps, serves them with the real `tensorboard` on 127.0.0.1 and takes
# headless Chromium screenshots of its dashboards. Not run by CI. Needs the project's .venv
# (`make demo` creates it) and Chromium (`apt-get install -y chromium`). Takes about 3 minutes.
#
#   bash docs/make_screenshots.sh            # writes docs/panels_*.png
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
WORK=$(mktemp -d)
LOG="$WORK/logs"

"$PY" - "$LOG" <<'PYTHON'
import logging, sys, warnings
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

sys.path.insert(0, "examples")
from quickstart import Classifier, dataset  # the README's demo model and data

from lightning_normwatch import NormWatch

warnings.filterwarnings("ignore")
logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("lightning_normwatch").setLevel(logging.ERROR)
torch.set_num_threads(2)
for name, standardize, batchnorm in [("raw_features", False, False), ("standardized_batchnorm", True, True)]:
    pl.seed_everything(0, verbose=False)
    watch = NormWatch(every_n_steps=10, warmup_steps=50, reference_steps=100, plot_every_n_steps=150)
    trainer = pl.Trainer(
        max_steps=300, callbacks=[watch], logger=TensorBoardLogger(sys.argv[1], name=name, default_hp_metric=False),
        log_every_n_steps=10, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        accelerator="cpu", devices=1,
    )
    trainer.fit(Classifier(30, batchnorm), DataLoader(dataset(standardize), batch_size=64, shuffle=True))
    print(f"{name}: {len(watch.alerts)} alerts")
PYTHON

PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/tensorboard --logdir "$LOG" --host 127.0.0.1 --port "$PORT" --load_fast=false >"$WORK/tensorboard.log" 2>&1 &
TB_PID=$!
trap 'kill "$TB_PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
URL="http://127.0.0.1:$PORT"
for _ in $(seq 120); do  # wait until both runs, their alert tables included, are loaded
  if [ "$(curl -s "$URL/data/plugin/text/tags" | grep -o text_summary | wc -l)" -ge 2 ]; then break; fi
  sleep 0.5
done

shoot() {  # shoot FILE HASH [HEIGHT]
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$(mktemp -d -p "$WORK")" \
    --window-size="1400,${3:-1000}" --virtual-time-budget=15000 --screenshot="docs/$1" "$URL/$2" 2>/dev/null
}
shoot panels_custom_scalars.png '#custom_scalars&_smoothingWeight=0' 1500
shoot panels_alerts.png '#text'
shoot panels_histograms.png '#histograms'

# The Images dashboard shows figures as thumbnails: save one figure at full size instead, read
# back from the event file (what TensorBoard shows with "Show actual image size").
"$PY" - "$LOG" <<'PYTHON'
import glob, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(glob.glob(f"{sys.argv[1]}/standardized_batchnorm/version_*")[0], size_guidance={"images": 0})
acc.Reload()
image = acc.Images("normwatch/figures/net")[-1]
with open("docs/panels_figure.png", "wb") as f:
    f.write(image.encoded_image_string)
PYTHON
ls -l docs/panels_*.png
