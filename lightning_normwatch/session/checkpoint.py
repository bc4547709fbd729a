"""A ``Session``'s checkpoint state: written with its format version, loaded as far as it fits the run.

``session_state`` gathers the evaluator's state (with ``format`` and ``made_for``, ``judge/resume.py``),
the sampling generators, the input discovery's findings and the model checks' notes, all plain values.
``load_session_state`` loads what still fits this run and returns the one warning to give (or None):
a changed module's tensors start afresh, matching tensors keep their reference, and a state that cannot
be read at all is reset whole. Training always continues.

Example:
    >>> from torch import nn
    >>> from lightning_normwatch.config import SessionConfig
    >>> from lightning_normwatch.session.session import Session
    >>> session = Session(SessionConfig())
    >>> session.start(nn.Sequential(nn.Linear(4, 2)))
    >>> state = session_state(session)
    >>> state["format"], sorted(state["made_for"])
    (2, ['modules', 'settings', 'tensors'])
    >>> load_session_state(session, state) is None  # everything matches: no warning
    True
    >>> print(load_session_state(session, {"references": 3}))  # doctest: +ELLIPSIS
    NormWatch: the checkpoint's NormWatch state could not be read (TypeError(...)): all of it was reset...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..judge.evaluator import Evaluator

if TYPE_CHECKING:
    from .session import Session

__all__ = ["load_session_state", "session_state"]


def session_state(session: Session) -> dict[str, Any]:
    """Plain values and CPU tensors: loads with ``torch.load(..., weights_only=True)``."""
    state = session.evaluator.state_dict()
    state["generators"] = session.collector.generator_state()
    d = session.collector.discovery
    state["consumers"] = None if d.consumers is None else dict(d.consumers)
    checks = session.checks.state() if session.checks is not None else session.checks_state
    if checks is not None:
        state["model_checks"] = checks
    state["updates"] = session.updates.state_dict() if session.updates is not None else {}  # docs/updates.md
    return state


def _reset(session: Session) -> None:
    session.evaluator = Evaluator(session.evaluator.config, session.collector)
    session.evaluator.interval = session.interval
    session.collector.anchors = session.evaluator.input_tracker.anchor


def load_session_state(session: Session, state: dict[str, Any]) -> str | None:
    """Load what of ``state`` fits ``session``'s run; the warning to give about the rest, or None."""
    try:
        plan = session.evaluator.load_state_dict(state)
    except Exception as exc:  # a damaged or foreign state must not stop training
        _reset(session)
        return (
            f"NormWatch: the checkpoint's NormWatch state could not be read ({exc!r}): all of it was reset; "
            "references are taken afresh at the next logging steps. Training continues."
        )
    session.collector.load_generator_state(state.get("generators", {}))
    consumers = state.get("consumers")
    if consumers is not None and all(plan.keeps_module(m) for m in consumers):
        session.collector.discovery.consumers = dict(consumers)
    if session.updates is not None and state.get("updates"):
        session.updates.load_state_dict(state["updates"])
    loaded = set(session.evaluator.alerts)  # resuming this session's own earlier run: no alert twice
    session.earlier_alerts = [a for a in session.earlier_alerts if a not in loaded]
    checks = state.get("model_checks")
    if checks is not None:
        checks = {**checks, "reported": [r for r in checks.get("reported", []) if plan.keeps_module(r[0])]}
    session.checks_state = checks
    if session.checks is not None and checks is not None:
        session.checks.load(checks)
    return plan.message
