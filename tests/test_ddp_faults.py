"""A DDP rank that raises in ``training_step`` on a logging step: the job ends, naming the real cause.

``python tests/test_ddp_faults.py <with|without> <out>`` runs a two-process CPU DDP fit (``ddp_fork``,
gloo) in which rank 1 raises ``RuntimeError("boom on rank 1 at step 3")`` in ``training_step`` at global
step 3, a NormWatch logging step (``every_n_steps=1``). Rank 0 then waits in DDP's gradient all-reduce
(Lightning's, not NormWatch's collective: NormWatch's one ``all_gather`` comes after the optimizer step),
until Lightning's launcher sees rank 1 fail and ends the job. The same run without NormWatch is the
baseline: with the callback, the job must end the same way (an error naming the cause, no hang) in a
comparable time.

NormWatch's part in this: every rank decides whether a step is a logging step from the global step
alone (``Session.is_logging_step``), so all ranks arm their hooks and call the exchange at the same
steps, whatever their forward pass ran; the writes only rank 0 makes (loggers, panels) cannot raise
(``output/guarded.py``), so no rank-local failure inside NormWatch leaves the other rank waiting.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LIMIT_S = 300


def _run(mode: str, out: Path) -> None:
    import logging
    import warnings

    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    sys.path.insert(0, str(HERE))
    from models import Regressor, mlp, regression_data

    from lightning_normwatch.adapters.callback import NormWatch

    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    torch.set_num_threads(1)

    class Failing(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.global_rank == 1 and self.global_step == 3:
                raise RuntimeError("boom on rank 1 at step 3")
            return super().training_step(batch, batch_idx)

    torch.manual_seed(0)
    callbacks = [NormWatch(every_n_steps=1, warmup_steps=1, reference_steps=2, tensorboard=False)]
    tr = pl.Trainer(
        default_root_dir=str(out), max_steps=8, log_every_n_steps=1, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, accelerator="cpu", devices=2,
        strategy="ddp_fork", logger=False, callbacks=callbacks if mode == "with" else [],
    )  # fmt: skip
    tr.fit(Failing(mlp(16, 32, 1)), DataLoader(regression_data(n=256), batch_size=8))


def _launch(mode: str, out: Path) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PL_DISABLE_FORK", None)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, __file__, mode, str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=LIMIT_S, start_new_session=True,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def test_collective_at_every_logging_step_whatever_the_forward_ran():
    """The exchange (the collective under DDP) is called at exactly the logging steps, also on a step where
    this rank's forward ran no watched module at all, or raised before any hook fired."""
    import torch
    from torch import nn

    from lightning_normwatch.config import SessionConfig
    from lightning_normwatch.session.session import Session

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    session = Session(SessionConfig(every_n_steps=2), inputs=False)
    session.start(model)
    called: list[int] = []
    collect = session.exchange.collect  # type: ignore[union-attr]

    def counting(*args: Any, **kwargs: Any) -> Any:
        called.append(step)
        return collect(*args, **kwargs)

    session.exchange.collect = counting  # type: ignore[method-assign,union-attr]
    for step in range(12):
        x = torch.randn(8, 4)
        session.begin_step(step, x)
        skipped = step % 4 == 0  # this rank's forward skips every watched module
        loss = x.sum() * 0 if skipped else model(x).pow(2).mean()
        session.before_backward(loss, step)
        session.end_step(step + 1)  # Lightning passes the advanced global step
    assert called == [0, 2, 4, 6, 8, 10]


@pytest.mark.slow  # two subprocesses that import Lightning and fork two ranks each
def test_a_rank_raising_on_a_logging_step_ends_the_job(tmp_path: Path):
    code_without, out_without, s_without = _launch("without", tmp_path / "without")
    code_with, out_with, s_with = _launch("with", tmp_path / "with")
    print(f"DDP rank failure: without NormWatch {s_without:.1f} s, with {s_with:.1f} s")
    # the baseline: Lightning ends the job with the cause
    assert code_without != 0 and "boom on rank 1 at step 3" in out_without, out_without[-3000:]
    # with NormWatch: the same end, the same cause, no hang, in a comparable time
    assert code_with != 0 and "boom on rank 1 at step 3" in out_with, out_with[-3000:]
    assert "Timed out" not in out_with and "NormWatchAlertError" not in out_with
    assert s_with < max(3 * s_without, 60), (s_with, s_without)


if __name__ == "__main__":
    _run(sys.argv[1], Path(sys.argv[2]))
