"""The values a strategy option may take, checked before any work.

A strategy reads its options deep inside its run (a grid of ``C`` when the probe is fitted,
``quantiles`` after the profiles are made), so a mistyped value used to fail minutes later
with scikit-learn's or torch's own error. Every option of the built-in strategies means the
same thing wherever it appears, so one rule per option name checks them all at once; an
option without a rule (a strategy's own) is left to the strategy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError

Rule = Callable[[Any], bool]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _between(lo: float, hi: float, lo_open: bool = False) -> Rule:
    return lambda v: _number(v) and (v > lo if lo_open else v >= lo) and v <= hi


def _list_of(rule: Rule) -> Rule:
    return lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(rule(x) for x in v)


def _one_or_list(rule: Rule) -> Rule:
    return lambda v: rule(v) or _list_of(rule)(v)


def _positive(v: Any) -> bool:
    return _number(v) and v > 0


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


# option -> (rule, what the value must be, an example)
RULES: dict[str, tuple[Rule, str, str]] = {
    "C": (_one_or_list(_positive), "a positive number or a list of them", "C=1.0 or C=[0.1,1,10]"),
    "quantile": (_between(0, 1), "a number in [0, 1]", "quantile=0.5"),
    "quantiles": (
        _list_of(_between(0, 1)),
        "a non-empty list of numbers in [0, 1]",
        "quantiles=[0.25,0.5]",
    ),
    "threshold": (_number, "a finite number", "threshold=0.8"),
    "budget": (_between(0, 1), "a number in [0, 1]", "budget=0.3"),
    "bn_prior": (lambda v: _number(v) and v >= 0, "a number >= 0", "bn_prior=16"),
    "head_lr_mult": (_positive, "a positive number", "head_lr_mult=10"),
    "layer_decay": (_between(0, 1, lo_open=True), "a number in (0, 1]", "layer_decay=0.7"),
    "fraction": (_between(0, 1, lo_open=True), "a number in (0, 1]", "fraction=0.25"),
    "fractions": (
        _list_of(_between(0, 1, lo_open=True)),
        "a non-empty list of numbers in (0, 1]",
        "fractions=[0.25,0.5]",
    ),
    "k": (lambda v: _integer(v) and v >= 0, "an integer >= 0", "k=3"),
    "concat": (lambda v: _integer(v) and v >= 1, "an integer >= 1", "concat=2"),
    "cv": (lambda v: _integer(v) and (v == 0 or v >= 2), "0 (off) or an integer >= 2", "cv=5"),
    "mask_seed": (lambda v: v is None or _integer(v), "an integer", "mask_seed=1"),
    "budget_s": (_positive, "a positive number of seconds", "budget_s=300"),
    "refit": (lambda v: isinstance(v, bool), "true or false", "refit=false"),
    "invert": (lambda v: isinstance(v, bool), "true or false", "invert=true"),
    "random": (lambda v: isinstance(v, bool), "true or false", "random=true"),
    "measure": (_text, "a measure name (see list_measures())", "measure=gaussian_kl"),
    "layer": (_text, "a layer name", "layer=features.3"),
    "layers": (_one_or_list(_text), "a layer name or a list of them", 'layers=["features.3"]'),
    "candidates": (
        _list_of(_text),
        "a non-empty list of strategy names",
        'candidates=["linear-probe","lp-ft"]',
    ),
    **{
        name: (_text, "a name", f"{name}=...")
        for name in ("select", "bn_stats", "point", "init", "rule", "prefer", "tie", "direction")
    },
}


def check_option_values(strategy: str, options: dict[str, Any]) -> None:
    """Refuse, with one :class:`ConfigError` naming the option, a value its rule rejects."""
    for name, value in options.items():
        if name not in RULES:
            continue
        rule, what, example = RULES[name]
        if not rule(value):
            raise ConfigError(
                f"option {name}={value!r} of strategy {strategy!r} must be {what}; "
                f"e.g. --option {example} (Python: {name}=...)"
            )
    measure = options.get("measure")
    if isinstance(measure, str):
        from ..measures import get_measure

        get_measure(measure)  # an unknown name: UnknownNameError with the close matches
