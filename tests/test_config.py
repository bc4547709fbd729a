"""Argument validation of ``NormWatch`` and ``Thresholds``: errors name the parameter and the bad value."""

from __future__ import annotations

import math
import re
from dataclasses import fields
from typing import Any

import pytest
from torch import nn

from lightning_normwatch import NormWatch, Thresholds


def raises_naming(name: str, value: object) -> Any:
    """``pytest.raises(ValueError)`` whose message names ``name`` and shows ``value`` as written.

    For a list, the message may show just the bad entry (the last one in these cases).
    """
    shown = value[-1] if isinstance(value, list) else value
    return pytest.raises(ValueError, match=rf"(?s){re.escape(name)}.*{re.escape(repr(shown))}")


BAD_NORMWATCH_ARGS = [
    ("modules", 5),
    ("modules", 2.5),
    ("modules", ["encoder.*", 3]),
    ("modules", [nn.Linear(2, 2)]),
    ("modules", [int]),
    ("exclude", None),
    ("exclude", [object]),
    ("inputs", 1.5),
    ("inputs", None),
    ("every_n_steps", 0),
    ("every_n_steps", -3),
    ("every_n_steps", 2.0),
    ("every_n_steps", "5"),
    ("every_n_steps", True),
    ("sample_size", 15),
    ("sample_size", 1000.0),
    ("sample_size", None),
    ("pvalue_size", 7),
    ("pvalue_size", 0),
    ("warmup_steps", -1),
    ("warmup_steps", 1.5),
    ("reference_steps", 0),
    ("reference_steps", 1.5),
    ("on_alert", "explode"),
    ("on_alert", None),
    ("on_alert", "WARN"),
    ("check_nonfinite", "yes"),
    ("check_nonfinite", 1),
    ("seed", 1.5),
    ("seed", True),
    ("seed", "0"),
    ("tensorboard", "no"),
    ("tensorboard", None),
    ("plot_every_n_steps", 0),
    ("plot_every_n_steps", 2.5),
    ("input_drift", "loud"),
    ("input_drift", None),
    ("feature_names", "abc"),
    ("feature_names", ["a", 3]),
]


@pytest.mark.parametrize(("name", "value"), BAD_NORMWATCH_ARGS, ids=[f"{n}={v!r}" for n, v in BAD_NORMWATCH_ARGS])
def test_bad_normwatch_argument_raises_naming_it(name: str, value: object) -> None:
    with raises_naming(name, value):
        NormWatch(**{name: value})


BAD_THRESHOLDS = [
    ("dead", 0),
    ("dead", 1.5),
    ("dead", -0.1),
    ("saturated", 0.0),
    ("saturated", 2),
    ("scale_drift", 1),
    ("scale_drift", 0.5),
    ("feature_scale", 1.0),
    ("outlier", -5),
    ("mean_drift", 0),
    ("shift", -1.0),
    ("outlier_min_abs", 0.0),
    ("skew", 0),
    ("kurtosis", -1.0),
    ("dead", math.nan),
    ("shift", math.inf),
    ("kurtosis", "4"),
    ("skew", None),
    ("dead", True),
    ("input_mean_shift", 0),
    ("input_scale", 1.0),
    ("input_psi", -0.1),
    ("input_noise_z", 0.0),
]


@pytest.mark.parametrize(("name", "value"), BAD_THRESHOLDS, ids=[f"{n}={v!r}" for n, v in BAD_THRESHOLDS])
def test_bad_threshold_raises_naming_it(name: str, value: object) -> None:
    with raises_naming(f"thresholds.{name}", value):
        Thresholds(**{name: value})
    with raises_naming(f"thresholds.{name}", value):
        NormWatch(thresholds={name: value})


def test_unknown_threshold_keys_are_named() -> None:
    with pytest.raises(ValueError, match=r"thresholds.*'bogus'"):
        NormWatch(thresholds={"dead": 0.6, "bogus": 1.0})
    with pytest.raises(ValueError, match=r"thresholds.*'deadd'.*'satureted'"):
        Thresholds.coerce({"satureted": 0.5, "deadd": 0.5})
    # The message lists the valid keys so the typo is easy to fix.
    with pytest.raises(ValueError, match=r"dead.*saturated"):
        Thresholds.coerce({"deadd": 0.5})


@pytest.mark.parametrize("value", [0.5, [("dead", 0.5)], "dead=0.5"])
def test_thresholds_of_the_wrong_type_are_rejected(value: object) -> None:
    with raises_naming("thresholds", value):
        NormWatch(thresholds=value)  # type: ignore[arg-type]


def test_valid_configurations_are_accepted() -> None:
    cb = NormWatch(
        modules=["encoder.*", nn.Linear],
        exclude=("head", nn.Dropout),
        inputs="x",
        every_n_steps=1,
        sample_size=16,
        pvalue_size=8,
        warmup_steps=0,
        reference_steps=1,
        thresholds={"dead": 1.0, "saturated": 0.01, "scale_drift": 1.01, "kurtosis": 0.1},
        on_alert="raise",
        check_nonfinite=False,
        seed=123,
        tensorboard=False,
        plot_every_n_steps=10,
    )
    assert cb.modules == ("encoder.*", nn.Linear) and cb.exclude == ("head", nn.Dropout)
    assert cb.thresholds.dead == 1.0 and cb.thresholds.scale_drift == 1.01
    assert cb.thresholds.outlier == Thresholds().outlier  # not overridden: default kept
    assert cb.config.sample_size == 16 and cb.config.pvalue_size == 8 and cb.config.seed == 123
    assert NormWatch(modules="layer*").modules == ("layer*",)
    assert NormWatch(modules=nn.ReLU, exclude=nn.Dropout).exclude == (nn.Dropout,)
    assert NormWatch(modules=[]).modules == ()
    for inputs in (True, False, 0, -1, "image", lambda batch: batch[0]):
        assert NormWatch(inputs=inputs).inputs is inputs
    for on_alert in ("warn", "raise", "ignore"):
        assert NormWatch(on_alert=on_alert).on_alert == on_alert
    custom = Thresholds(dead=0.9)
    assert NormWatch(thresholds=custom).thresholds is custom
    assert NormWatch(thresholds=None).thresholds == Thresholds()
    assert NormWatch(every_n_steps=None, plot_every_n_steps=None).every_n_steps is None


def test_default_thresholds_are_valid_and_all_overridable() -> None:
    defaults = Thresholds()
    for f in fields(Thresholds):
        value = getattr(defaults, f.name)
        assert math.isfinite(value)
        changed = Thresholds.coerce({f.name: value * 0.999 if f.name in ("dead", "saturated") else value * 1.5})
        assert getattr(changed, f.name) != value
