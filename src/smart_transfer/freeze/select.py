"""`plan_freeze`: turn similarity scores into a :class:`FreezePlan`.

Three selection rules, each with a kernel (output channel) or a layer scope:

``threshold=t``
    freeze every channel (layer) whose similarity is ``>= t``.
``quantile=q``
    kernel scope: in each layer freeze the ``floor(q * C)`` most similar of its ``C``
    channels; layer scope: freeze the ``floor(q * L)`` most similar of the ``L`` layers.
``budget=b``
    freeze the most similar channels (layers) network-wide, most similar first, until at
    most the fraction ``b`` of the planned parameters is still trainable. A channel costs
    ``sum(prod(shape[1:]))`` over the parameters of its layer, a layer costs all their scalars.
    The last channel taken may overshoot, so the trainable fraction ends at or just below ``b``.

Determinism: ties are broken by position, earlier layers first and lower channel indices
first. NaN scores mean "no evidence that the channel behaves alike" and are never frozen, so
a quantile or budget that would need them freezes fewer (the budget case warns). The same
inputs always give the same plan.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import numbers
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ConfigError, IncompatibleError, UnknownNameError
from .plan import FreezePlan, _row_size

if TYPE_CHECKING:
    from ..measures.similarity import Similarity

SCOPES = ("kernel", "layer")
_EPS = 1e-9  # absorbs float error in q * C and b * total (0.29 * 100 = 28.999999999999996)


def _check_rule(threshold: Any, quantile: Any, budget: Any) -> tuple[str, float]:
    given = {
        k: v
        for k, v in (("threshold", threshold), ("quantile", quantile), ("budget", budget))
        if v is not None
    }
    if len(given) != 1:
        what = "none was" if not given else f"{' and '.join(given)} were"
        raise ConfigError(
            f"plan_freeze needs exactly one of threshold=, quantile= or budget=, but {what} "
            "given; pass one of them, e.g. threshold=0.8"
        )
    rule, value = next(iter(given.items()))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{rule} must be a number in [0, 1], got {value!r}; pass e.g. {rule}=0.5")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ConfigError(f"{rule}={value} is outside [0, 1]; pass a fraction between 0 and 1")
    return rule, value


def _select_layers(sim: Similarity, layers: str | Sequence[str] | None) -> list[str]:
    names = list(sim.scores)
    if layers is None:
        return names
    patterns = [layers] if isinstance(layers, str) else list(layers)
    if not patterns:
        raise ConfigError("layers= is empty; pass None to plan every compared layer")
    for pat in patterns:
        if not isinstance(pat, str):
            raise ConfigError(
                f"layers= holds {pat!r} ({type(pat).__name__}); pass layer names or glob patterns"
            )
        if not any(n == pat or fnmatch.fnmatchcase(n, pat) for n in names):
            close = difflib.get_close_matches(pat, names, n=3, cutoff=0.6)
            hint = (
                f"did you mean {', '.join(map(repr, close))}?"
                if close
                else "the Similarity has: "
                + ", ".join(names[:8])
                + (" ..." if len(names) > 8 else "")
            )
            raise UnknownNameError(f"layers={pat!r} matches no compared layer; {hint}")
    return [n for n in names if any(n == p or fnmatch.fnmatchcase(n, p) for p in patterns)]


def _ordered_prefix(scores: np.ndarray, keys: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Bool mask of the ``k`` highest non-NaN scores, ties broken by ``keys`` ascending."""
    valid = np.flatnonzero(~np.isnan(scores))
    # lexsort sorts by its last key first: score descending, then the tie-break keys
    order = valid[np.lexsort(tuple(key[valid] for key in reversed(keys)) + (-scores[valid],))]
    out = np.zeros(scores.shape, dtype=bool)
    out[order[: max(0, min(k, order.size))]] = True
    return out


def _budget_prefix(
    scores: np.ndarray, costs: np.ndarray, keys: Sequence[np.ndarray], budget: float
) -> tuple[np.ndarray, bool]:
    """Freeze the most similar units until at most ``budget`` of the total cost is trainable.

    Returns the mask and whether the budget was met (it is not when NaN units would be needed).
    """
    total = int(costs.sum())
    need = total - math.floor(budget * total + _EPS)  # cost that must be frozen
    valid = np.flatnonzero(~np.isnan(scores))
    order = valid[np.lexsort(tuple(key[valid] for key in reversed(keys)) + (-scores[valid],))]
    out = np.zeros(scores.shape, dtype=bool)
    if need <= 0:
        return out, True
    cum = np.cumsum(costs[order])
    if cum.size == 0 or cum[-1] < need:
        out[order] = True
        return out, False
    out[order[: int(np.searchsorted(cum, need, side="left")) + 1]] = True
    return out, True


def plan_freeze(
    sim: Similarity,
    threshold: float | None = None,
    quantile: float | None = None,
    budget: float | None = None,
    scope: str = "kernel",
    layers: str | Sequence[str] | None = None,
) -> FreezePlan:
    """Choose the channels (``scope="kernel"``) or layers (``scope="layer"``) to freeze.

    Args:
        sim: per-channel and per-layer similarity scores in [0, 1] and each layer's
            parameters, as returned by :func:`smart_transfer.compare`.
        threshold: freeze what scores ``>= threshold``.
        quantile: freeze this fraction of the most similar channels in each layer (kernel
            scope) or of the most similar layers (layer scope).
        budget: freeze the most similar channels (layers) network-wide until only this
            fraction of the planned parameters stays trainable.
        scope: ``"kernel"`` (per output channel, using ``sim.scores``) or ``"layer"`` (whole
            layers, using ``sim.layer_scores``).
        layers: plan only these layers (exact names or glob patterns); others stay trainable
            and are not part of the plan.

    Exactly one of ``threshold``, ``quantile`` and ``budget`` must be given, in [0, 1].
    See the module docstring for ties and NaN scores.
    """
    _check_similarity(sim)
    rule, value = _check_rule(threshold, quantile, budget)
    if scope not in SCOPES:
        raise ConfigError(f"unknown scope {scope!r}; use scope='kernel' or scope='layer'")
    chan_scores, params = _planned_layers(sim, _select_layers(sim, layers), scope)
    if scope == "kernel":
        frozen, met = _kernel_masks(rule, value, chan_scores, params)
    else:
        frozen, met = _layer_masks(rule, value, sim, chan_scores, params)
    plan = _make_plan(sim, frozen, params, scope, rule, value, layers)
    if rule == "budget":
        trainable = 1.0 - plan.frozen_fraction
        plan.meta["selection"]["trainable_fraction"] = trainable
        if not met:
            warnings.warn(
                f"budget={value} cannot be met: only channels with a score can be frozen and "
                f"{trainable:.3f} of the planned parameters stay trainable; NaN scores are never "
                "frozen",
                RuntimeWarning,
                stacklevel=2,
            )
    return plan


def _check_similarity(sim: Any) -> None:
    if not all(hasattr(sim, a) for a in ("scores", "layer_scores", "params", "measure")):
        what = type(sim).__name__
        hint = (
            "compare two profiles first: plan_freeze(compare(prof_pre, prof_new), ...)"
            if hasattr(sim, "layers")
            else "pass the result of smart_transfer.compare(prof_pre, prof_new)"
        )
        raise ConfigError(f"plan_freeze needs a Similarity, got {what}; {hint}")


_Params = dict[str, dict[str, tuple[int, ...]]]  # layer -> parameter name -> shape


def _planned_layers(
    sim: Similarity, names: Sequence[str], scope: str
) -> tuple[dict[str, np.ndarray], _Params]:
    """Channel scores and parameter shapes of every planned layer (in order); layers owning no
    parameter are skipped (nothing of theirs could be frozen)."""
    chan_scores: dict[str, np.ndarray] = {}
    params: _Params = {}
    owner: dict[str, str] = {}
    for layer in names:
        if layer not in sim.params:
            raise IncompatibleError(
                f"the Similarity has scores but no parameter map for layer {layer!r}; build it "
                "with smart_transfer.compare or fill sim.params from smart_transfer.layers"
            )
        lp = {p: tuple(int(s) for s in shape) for p, shape in sim.params[layer].items()}
        if not lp:
            continue
        s = torch.as_tensor(sim.scores[layer]).detach().to("cpu", torch.float64).flatten().numpy()
        _check_owned(layer, s.size, lp, owner)
        if scope == "layer" and layer not in sim.layer_scores:
            raise IncompatibleError(
                f"the Similarity has no layer score for {layer!r}; scope='layer' needs "
                "sim.layer_scores for every planned layer"
            )
        chan_scores[layer] = s
        params[layer] = lp
    if not chan_scores:
        raise ConfigError(
            "none of the selected layers owns a parameter, so there is nothing to plan; "
            "compare layers with weights (conv / linear)"
        )
    return chan_scores, params


def _check_owned(
    layer: str, channels: int, lp: dict[str, tuple[int, ...]], owner: dict[str, str]
) -> None:
    """Each parameter has one row per channel score and belongs to one planned layer."""
    for p, shape in lp.items():
        if not shape or shape[0] != channels:
            raise IncompatibleError(
                f"layer {layer!r} has {channels} channel scores but its parameter {p!r} has "
                f"shape {shape}; scores and parameters must come from the same model"
            )
        if p in owner:
            raise IncompatibleError(
                f"parameter {p!r} belongs to both layer {owner[p]!r} and layer {layer!r}; "
                "restrict layers= so that each parameter is planned once"
            )
        owner[p] = layer


def _kernel_masks(
    rule: str, value: float, chan_scores: dict[str, np.ndarray], params: _Params
) -> tuple[dict[str, np.ndarray], bool]:
    """Per-channel frozen masks (kernel scope) and whether a budget was met."""
    if rule == "threshold":
        with np.errstate(invalid="ignore"):
            return {layer: s >= value for layer, s in chan_scores.items()}, True  # NaN: False
    if rule == "quantile":
        return {
            layer: _ordered_prefix(s, [np.arange(s.size)], math.floor(value * s.size + _EPS))
            for layer, s in chan_scores.items()
        }, True
    planned = list(chan_scores)
    scores = np.concatenate([chan_scores[layer] for layer in planned])
    costs = np.concatenate(
        [
            np.full(
                chan_scores[layer].size,
                sum(_row_size(sh) for sh in params[layer].values()),
                dtype=np.int64,
            )
            for layer in planned
        ]
    )
    layer_idx = np.concatenate(
        [np.full(chan_scores[layer].size, i) for i, layer in enumerate(planned)]
    )
    chan_idx = np.concatenate([np.arange(chan_scores[layer].size) for layer in planned])
    flat, met = _budget_prefix(scores, costs, [layer_idx, chan_idx], value)
    bounds = np.cumsum([0] + [chan_scores[layer].size for layer in planned])
    return {layer: flat[bounds[i] : bounds[i + 1]] for i, layer in enumerate(planned)}, met


def _layer_masks(
    rule: str,
    value: float,
    sim: Similarity,
    chan_scores: dict[str, np.ndarray],
    params: _Params,
) -> tuple[dict[str, np.ndarray], bool]:
    """Whole-layer frozen masks (layer scope) and whether a budget was met."""
    planned = list(chan_scores)
    lscores = np.array([float(sim.layer_scores[layer]) for layer in planned], dtype=np.float64)
    pos = np.arange(len(planned))
    met = True
    if rule == "threshold":
        with np.errstate(invalid="ignore"):
            chosen = lscores >= value
    elif rule == "quantile":
        chosen = _ordered_prefix(lscores, [pos], math.floor(value * len(planned) + _EPS))
    else:
        costs = np.array(
            [sum(math.prod(sh) for sh in params[layer].values()) for layer in planned],
            dtype=np.int64,
        )
        chosen, met = _budget_prefix(lscores, costs, [pos], value)
    return {
        layer: np.full(chan_scores[layer].size, bool(c)) for layer, c in zip(planned, chosen)
    }, met


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _make_plan(
    sim: Similarity,
    frozen: dict[str, np.ndarray],
    params: _Params,
    scope: str,
    rule: str,
    value: float,
    layers: str | Sequence[str] | None,
) -> FreezePlan:
    """The plan: one mask per parameter (its layer's channel mask) and how it was chosen."""
    masks = {}
    shapes = {}
    for layer, lp in params.items():
        m = torch.from_numpy(np.ascontiguousarray(frozen[layer], dtype=bool))
        for p, shape in lp.items():
            masks[p] = m.clone()
            shapes[p] = shape
    meta: dict[str, Any] = {
        "measure": sim.measure,
        "direction": sim.direction,
        "source": sim.source,
        "selection": {
            "scope": scope,
            "rule": rule,
            "value": value,
            "layers": None
            if layers is None
            else ([layers] if isinstance(layers, str) else list(layers)),
        },
        "layer_scores": {
            layer: _json_float(float(sim.layer_scores[layer]))
            for layer in params
            if layer in sim.layer_scores
        },
    }
    return FreezePlan(
        masks=masks,
        shapes=shapes,
        layers={layer: list(lp) for layer, lp in params.items()},
        meta=meta,
    )
