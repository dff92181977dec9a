"""One registry of similarity measures, in the style of timm's model registry.

A measure is a pure function of two :class:`~smart_transfer.stats.profile.LayerProfile`
objects (D_pre first, D_new second) that returns the measure's own per-channel values (the
*raw* values) together with their mapping to a similarity score in [0, 1]. The registry
records, next to the function, everything a caller needs to choose one without reading its
code: whether it works per channel or per layer, how its raw values read, the assumption it
makes about the activations, and which profile statistics it needs.

New measures are added with the :func:`register_measure` decorator::

    @register_measure("mean_gap", level="channel", direction="divergence",
                      assumption="only the means matter", requires={"mean", "var"})
    def mean_gap(pre, new):
        return (new.mean - pre.mean).abs() / (pre.std + new.std + 1e-12)

A function may return a plain (C,) tensor of raw values, in which case the default score of
its direction is used (:func:`default_score`), or a :class:`MeasureValues` when it maps raw
values to scores itself, reports a layer-level value, or has something to say in ``meta``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union, overload

import torch
from torch import Tensor

from ..errors import ConfigError, UnknownNameError
from ..stats.profile import OPTIONAL_STATS, LayerProfile

LEVELS = ("channel", "layer")
DIRECTIONS = ("divergence", "similarity", "p-value")

#: Every statistic a LayerProfile can carry; ``requires`` must be a subset of these.
STATISTICS = frozenset(("count", "mean", "var") + OPTIONAL_STATS)

#: What a profile derived from BatchNorm running statistics can offer: the mean and the
#: variance of each channel. Its ``count`` is NaN (the sample size is unknown), so measures
#: that need ``count`` cannot run on it.
BATCHNORM_STATISTICS = frozenset({"mean", "var"})


@dataclass(frozen=True)
class MeasureValues:
    """What a measure function returns for one pair of layers.

    ``raw`` and ``score`` are (C,) float64 tensors over the layer's output channels.
    Layer-level measures also set ``layer_raw`` / ``layer_score`` (the value of the whole
    layer, not an average of channels); for channel-level measures :func:`compare` fills them
    with the mean over channels. ``meta`` holds JSON-friendly facts about this layer's
    computation (e.g. which covariance was used).
    """

    raw: Tensor
    score: Tensor
    layer_raw: float | None = None
    layer_score: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


MeasureFn = Callable[..., Union[Tensor, MeasureValues]]


def default_score(raw: Tensor, direction: str) -> Tensor:
    """Map raw values to a score in [0, 1] for a function that returns only raw values.

    ``divergence``: ``exp(-raw)`` (1 at 0, falls monotonically); ``similarity`` and
    ``p-value``: the raw value itself, clipped to [0, 1].
    """
    raw = raw.to(torch.float64)
    if direction == "divergence":
        return torch.exp(-raw.clamp_min(0.0))
    return raw.clamp(0.0, 1.0)


@dataclass(frozen=True)
class Measure:
    """A registered measure: its function plus what a caller needs to choose it.

    Attributes:
        name: registry key, e.g. ``"lognormal_kl"``.
        level: ``"channel"`` (one value per output channel, computed channel by channel) or
            ``"layer"`` (one value for the whole layer; its per-channel values are described
            in ``score_rule``).
        direction: how the raw values read: ``"divergence"`` (0 = identical, larger = more
            different), ``"similarity"`` (1 = identical) or ``"p-value"`` (of a test whose
            null hypothesis is "no difference").
        assumption: one sentence on what the measure assumes about the activations.
        requires: LayerProfile statistics the function reads (``count`` means *known*
            counts, which BatchNorm-derived profiles lack).
        fn: ``fn(pre, new, **options) -> Tensor | MeasureValues``.
        score_rule: how raw values become scores in [0, 1].
    """

    name: str
    level: str
    direction: str
    assumption: str
    requires: frozenset[str]
    fn: MeasureFn
    score_rule: str = ""

    @property
    def batchnorm_ok(self) -> bool:
        """Whether the measure runs when D_pre comes from BatchNorm running statistics."""
        return self.requires <= BATCHNORM_STATISTICS

    def details(self) -> dict[str, Any]:
        """JSON-friendly description (what ``list_measures(details=True)`` shows)."""
        return {
            "name": self.name,
            "level": self.level,
            "direction": self.direction,
            "assumption": self.assumption,
            "requires": sorted(self.requires),
            "batchnorm_ok": self.batchnorm_ok,
            "score": self.score_rule,
        }

    def compute(self, pre: LayerProfile, new: LayerProfile, **options: Any) -> MeasureValues:
        """Run the measure on one pair of layers and return checked :class:`MeasureValues`."""
        out = self.fn(pre, new, **options)
        if isinstance(out, Tensor):
            raw = out.to(torch.float64)
            out = MeasureValues(raw=raw, score=default_score(raw, self.direction))
        c = new.num_channels
        if tuple(out.raw.shape) != (c,) or tuple(out.score.shape) != (c,):
            raise ConfigError(
                f"measure {self.name!r} returned values of shape {tuple(out.raw.shape)} / "
                f"{tuple(out.score.shape)} for layer {new.name!r} with {c} channels; a measure "
                f"must return one value per output channel."
            )
        if self.level == "layer" and (out.layer_raw is None or out.layer_score is None):
            raise ConfigError(
                f"layer-level measure {self.name!r} returned no layer_raw/layer_score; return a "
                f"MeasureValues with both set, or register it with level='channel'."
            )
        return out


_REGISTRY: dict[str, Measure] = {}


def register_measure(
    name: str,
    *,
    level: str,
    direction: str,
    assumption: str,
    requires: Iterable[str],
    score: str = "",
    overwrite: bool = False,
) -> Callable[[MeasureFn], MeasureFn]:
    """Decorator that registers ``fn(pre, new, **options)`` under ``name``.

    ``score`` describes the raw-to-score mapping (for the listing). Registering a name twice
    raises :class:`ConfigError` unless ``overwrite=True``. Returns the function unchanged.
    """
    if level not in LEVELS:
        raise ConfigError(
            f"level {level!r} is not valid for measure {name!r}; use one of {LEVELS}."
        )
    if direction not in DIRECTIONS:
        raise ConfigError(
            f"direction {direction!r} is not valid for measure {name!r}; use one of {DIRECTIONS}."
        )
    req = frozenset(requires)
    unknown = sorted(req - STATISTICS)
    if unknown:
        raise ConfigError(
            f"measure {name!r} requires unknown statistics {unknown}; use names from "
            f"{sorted(STATISTICS)}."
        )
    if not score:
        score = "exp(-raw)" if direction == "divergence" else "the raw value, clipped to [0, 1]"

    def decorator(fn: MeasureFn) -> MeasureFn:
        if name in _REGISTRY and not overwrite:
            raise ConfigError(
                f"a measure named {name!r} is already registered; pick another name or pass "
                f"overwrite=True."
            )
        _REGISTRY[name] = Measure(
            name=name,
            level=level,
            direction=direction,
            assumption=assumption,
            requires=req,
            fn=fn,
            score_rule=score,
        )
        return fn

    return decorator


def unregister_measure(name: str) -> None:
    """Remove a measure from the registry (a no-op if it is not there)."""
    _REGISTRY.pop(name, None)


def get_measure(name: str | Measure) -> Measure:
    """The :class:`Measure` registered under ``name`` (a Measure is returned as is)."""
    if isinstance(name, Measure):
        return name
    if not isinstance(name, str) or name not in _REGISTRY:
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownNameError(
            f"unknown measure {name!r}{hint}; choose one of: {', '.join(known)}."
        )
    return _REGISTRY[name]


@overload
def list_measures(details: Literal[False] = False) -> list[str]: ...
@overload
def list_measures(details: Literal[True]) -> list[dict[str, Any]]: ...
@overload
def list_measures(details: bool) -> list[str] | list[dict[str, Any]]: ...


def list_measures(details: bool = False) -> list[str] | list[dict[str, Any]]:
    """Sorted names of the registered measures, or with ``details=True`` one dict per
    measure with ``name, level, direction, assumption, requires, batchnorm_ok, score``."""
    names = sorted(_REGISTRY)
    if details:
        return [_REGISTRY[n].details() for n in names]
    return names


def runnable_measures(available: Iterable[str]) -> list[str]:
    """Sorted names of the measures whose required statistics are all in ``available``."""
    have = frozenset(available)
    return sorted(n for n, m in _REGISTRY.items() if m.requires <= have)
