"""Replaying a step's forward pass: to measure a compiled model's layers, and to locate where NaN/Inf start.

Both run the batch's ``training_step`` again (the adapter's ``replay(batch, batch_idx)``) with NormWatch's hooks
armed, from the RNG state the batch started with and on copies of the model's buffers (``collect/replay.py``),
so that training goes on exactly as it would have.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from ..collect.inputs import find_inputs
from ..collect.replay import preserved
from ..output import console

if TYPE_CHECKING:
    from .session import Session

__all__ = ["eager", "measure_compiled", "locate_nonfinite"]

log = console.log


def eager(session: Session) -> Any:
    """Compiled code runs eagerly inside (hooks fire normally; nothing is traced or recompiled)."""
    return torch.compiler.set_stance("force_eager") if session.compiled else nullcontext()


def measure_compiled(session: Session, replay: Callable[[Any, int], Any] | None) -> None:
    """Measure the layers of a compiled model on a logging step: replay the batch's forward eagerly,
    without gradient, from the batch-start RNG state and on copies of the buffers, with hooks.

    The compiled training step itself never meets a hook, so it runs the same graphs (no graph break,
    no recompilation) and trains exactly as without NormWatch; the cost is one eager forward pass per
    logging step. Without a replay (manual optimization) the layers are not measured.
    """
    session._replayed = True
    if replay is None:
        if not session._warned_manual:
            session._warn("NormWatch: compiled model under manual optimization: layers are not measured.")
            session._warned_manual = True
        return
    session.collector.resume()
    try:
        with eager(session), preserved(session.model, session._rng):
            replay(session._batch, session._batch_idx)
    except Exception as exc:  # best effort: never break training for it
        log.debug("NormWatch: replay of a compiled model's batch failed: %r", exc)
    finally:
        session.collector.pause()


def locate_nonfinite(session: Session, step: int, replay: Callable[[Any, int], Any]) -> None:
    """Replay this batch's forward with hooks armed to name the first module with NaN/Inf."""
    batch, session._batch = session._batch, None  # a backward inside the replay must not replay again
    try:
        automatic = session._automatic_inputs()
        if automatic:
            session.collector.expect_inputs(batch)
        with eager(session), session.collector.separate_collection():
            try:
                with preserved(session.model, session._rng):
                    if not automatic:
                        for name, tensor in find_inputs(batch, session.inputs):
                            session.collector.observe(name, tensor, role="input")
                    replay(batch, session._batch_idx)
            except Exception as exc:  # the replay is best effort: never break training for it
                # what the forward measured before the failure (e.g. manual_backward under no_grad) still counts
                log.debug("NormWatch: replay for non-finite values failed: %r", exc)
            stats = session.collector.collect()
    finally:
        session._batch = batch
    first = session.collector.first_nonfinite(stats)
    if first is None:  # a finite forward and a non-finite loss: the loss overflowed; name where it grew
        overflowed = session.evaluator.raise_overflow(step, stats)
        if overflowed is not None:
            session.emit(overflowed)
            return
    origin, share, downstream = first if first is not None else ("loss", math.nan, 0)
    session.emit(session.evaluator.raise_nonfinite(step, origin, share, downstream, "replaying the batch"))
