"""Probes on the pooled features of many layers at once, with or without channel selection.

``multi-layer-probe`` is the Head2Toe baseline (Evci et al. 2022) without its selection: the
pooled outputs of the candidate layers of ``linear-probe-best-layer`` side by side, standardised,
one logistic regression with ``C`` chosen on validation.

``smart-multi-probe`` keeps only a fraction of each layer's channels, ranked by how far their
activation statistics moved between D_pre and D_new (the per-channel divergence of the smart
strategies: ``gaussian_kl`` by default, D_pre from source images or the BatchNorm statistics).
Whether to keep the most *similar* or the most *shifted* channels, and the fraction, are chosen
on validation. ``random-multi-probe`` is its control: in every layer the same number of channels
as the smart choice keeps, drawn at random, so that a difference can only come from which
channels the statistics picked.

The penultimate features (the head's input) have no profile of their own. In VGG- and
EfficientNet-style networks they are the last conv layer's output channels after normalisation,
activation and pooling, channel for channel, so they are ranked by that layer's divergence when
the channel counts agree; otherwise they are kept whole (by the control too).

The returned model is a :class:`ConcatProbe` over every candidate layer whose weights on the
dropped channels are zero, so it predicts from images and is rebuilt from ``config.json`` like
any concatenated probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..layers import select_layers
from ..measures import Similarity, get_measure
from ..models.heads import PENULTIMATE, find_head
from .base import Context, Outcome
from .concat import ConcatProbe
from .probe import C_GRID, _features, candidate_layers, cv_design, fit_fixed, fit_logistic
from .selection import KeepBest
from .smart import similarity

FRACTIONS = (0.125, 0.25, 0.5)
DIRECTIONS = ("similar", "shifted")
SELECTS = ("none", "smart", "random")


def stack_features(
    feats: dict[str, np.ndarray], layers: Sequence[str]
) -> tuple[np.ndarray, dict[str, slice]]:
    """The pooled features of ``layers`` side by side, and each layer's columns."""
    cols, start = {}, 0
    for name in layers:
        width = feats[name].shape[1]
        cols[name] = slice(start, start + width)
        start += width
    return np.hstack([feats[n] for n in layers]), cols


def channel_shift(
    sim: Similarity, model: nn.Module, layers: Sequence[str], widths: dict[str, int]
) -> dict[str, Tensor | None]:
    """Per candidate layer, how far each channel moved (higher = more shifted), or None when the
    layer has no per-channel statistics (it is then kept whole)."""

    def shift(name: str) -> Tensor:
        if sim.direction == "divergence":  # the raw divergence ranks without exp(-KL)'s underflow
            return sim.raw[name].double()
        return 1.0 - sim.scores[name].double()

    head_name, _ = find_head(model)
    convs = [n for n in select_layers(model) if n != head_name]
    out: dict[str, Tensor | None] = {}
    for name in layers:
        src = name
        if name == PENULTIMATE:  # the last conv layer's channels, normalised, activated, pooled
            src = convs[-1] if convs else ""
        ok = src in sim.raw and int(sim.raw[src].numel()) == widths[name]
        out[name] = shift(src) if ok else None
    return out


def keep_count(width: int, fraction: float) -> int:
    return max(1, round(fraction * width))


def rank_channels(
    shift: dict[str, Tensor | None], widths: dict[str, int], fraction: float, direction: str
) -> dict[str, list[int]]:
    """The channels kept in each layer: the ``fraction`` most similar or most shifted ones."""
    keep = {}
    for name, s in shift.items():
        if s is None:
            keep[name] = list(range(widths[name]))
            continue
        order = torch.argsort(s, descending=direction == "shifted", stable=True)
        keep[name] = sorted(order[: keep_count(widths[name], fraction)].tolist())
    return keep


def random_channels(
    counts: dict[str, int], widths: dict[str, int], seed: int
) -> dict[str, list[int]]:
    """``counts[layer]`` channels of each layer, drawn at random (a seeded generator)."""
    rng = np.random.default_rng(int(seed))
    return {
        name: sorted(int(i) for i in rng.choice(widths[name], size=counts[name], replace=False))
        for name in counts
    }


def columns(cols: dict[str, slice], keep: dict[str, list[int]]) -> np.ndarray:
    """Columns of the stacked feature matrix that ``keep`` selects, in layer order."""
    return np.concatenate([np.asarray(keep[n], dtype=np.int64) + cols[n].start for n in cols])


def expand(linear: nn.Linear, cols: np.ndarray, width: int) -> nn.Linear:
    """``linear`` over the selected columns as a linear layer over all ``width`` columns (zero
    weight on the others)."""
    full = nn.Linear(width, linear.out_features)
    with torch.no_grad():
        full.weight.zero_()
        full.weight[:, torch.from_numpy(cols)] = linear.weight
        full.bias.copy_(linear.bias)
    return full


def _check(
    select: str,
    direction: str,
    fraction: float | None,
    fractions: Sequence[float],
    layers: Sequence[str] | None,
    mask_seed: int | None,
) -> list[float]:
    if select not in SELECTS:
        raise ConfigError(f"select must be one of {', '.join(SELECTS)}, got {select!r}")
    if direction not in ("val", *DIRECTIONS):
        raise ConfigError(f"direction must be 'val', 'similar' or 'shifted', got {direction!r}")
    if layers is not None and (
        isinstance(layers, str) or not all(isinstance(n, str) for n in layers)
    ):
        raise ConfigError(f"layers must be a list of layer names, got {layers!r}")
    if mask_seed is not None and (isinstance(mask_seed, bool) or not isinstance(mask_seed, int)):
        raise ConfigError(f"mask_seed must be an integer, got {mask_seed!r}")
    if fraction is not None:
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, (int, float))
            or not 0 < fraction <= 1
        ):
            raise ConfigError(f"fraction must be a number in (0, 1], got {fraction!r}")
        return [float(fraction)]
    if (
        isinstance(fractions, (str, bytes))
        or not isinstance(fractions, Sequence)
        or not fractions
        or any(
            isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1
            for f in fractions
        )
    ):
        raise ConfigError(
            f"fractions must be a non-empty list of numbers in (0, 1], got {fractions!r}"
        )
    return [float(f) for f in fractions]


def run_multi_probe(
    ctx: Context,
    select: str = "none",
    layers: Sequence[str] | None = None,
    measure: str = "gaussian_kl",
    fraction: float | None = None,
    fractions: Sequence[float] = FRACTIONS,
    direction: str = "val",
    C: Sequence[float] | float = C_GRID,
    mask_seed: int | None = None,
    refit: bool = True,
) -> Outcome:
    """One logistic regression on the pooled features of many layers side by side.

    ``select="none"``: every channel (``multi-layer-probe``). ``"smart"``: per layer, the
    ``fraction`` of channels that are most similar or most shifted between D_pre and D_new under
    ``measure``; without ``fraction`` every value of ``fractions`` is tried, and with
    ``direction="val"`` both directions, the best on validation kept. ``"random"``: the smart
    choice's count per layer, channels drawn with ``mask_seed`` (default the run's seed).
    ``refit``: the chosen probe fitted again on the training and validation samples."""
    fracs = _check(select, direction, fraction, fractions, layers, mask_seed)
    name = {
        "none": "multi-layer-probe",
        "smart": "smart-multi-probe",
        "random": "random-multi-probe",
    }[select]
    sp = _Stacked.build(ctx, name, layers, C, refit)
    if select == "none":
        every = {n: list(range(sp.widths[n])) for n in sp.cands}
        linear, c, acc, _ = sp.fit(every)
        chosen = {**sp.base, "C": c, "kept_features": sp.width}
        return sp.outcome(linear, acc, chosen, [{"C": c, "val_accuracy": acc}], {}, every)

    if get_measure(measure).level != "channel":  # before any profiling
        raise ConfigError(
            f"measure {measure!r} scores whole layers; selecting channels needs a "
            "channel-level measure (e.g. gaussian_kl)"
        )
    sim = similarity(ctx, measure)
    shift = channel_shift(sim, sp.model, sp.cands, sp.widths)
    pre, new = ctx.cache[("profiles", "output")]
    extra = {"profile_pre": pre, "profile_new": new, "measure": measure}
    unranked = [n for n in sp.cands if shift[n] is None]
    dirs = list(DIRECTIONS) if direction == "val" else [direction]
    best: KeepBest[tuple[Any, ...]] = KeepBest(what="fractions")
    tried = []
    for d in dirs:
        for f in fracs:
            keep = rank_channels(shift, sp.widths, f, d)
            linear, c, acc, kept = sp.fit(keep)
            tried.append(
                {"direction": d, "fraction": f, "C": c, "val_accuracy": acc, "kept_features": kept}
            )
            best.offer((linear, c, d, f, keep, kept), acc)
    (linear, c, d, f, keep, kept), acc = best.item, best.accuracy
    common = {**sp.base, "measure": measure, "fraction": f, "unranked": unranked}
    if select == "smart":
        chosen = {**common, "direction": d, "C": c, "kept_features": kept, "kept": keep}
        return sp.outcome(linear, acc, chosen, tried, extra, keep)

    seed = ctx.seed if mask_seed is None else int(mask_seed)
    rkeep = random_channels({n: len(keep[n]) for n in sp.cands}, sp.widths, seed)
    linear, c, acc, kept = sp.fit(rkeep)
    chosen = {
        **common,
        "of": {"direction": d, "fraction": f, "val_accuracy": best.accuracy},
        "mask_seed": seed,
        "C": c,
        "kept_features": kept,
        "kept": rkeep,
    }
    row = {"random": True, "fraction": f, "C": c, "val_accuracy": acc, "kept_features": kept}
    tried.append(row)
    return sp.outcome(linear, acc, chosen, tried, extra, rkeep)


@dataclass
class _Stacked:
    """The pooled features of the candidate layers side by side, and how to fit a probe on a
    choice of their columns."""

    ctx: Context
    model: nn.Module
    cands: list[str]
    xtr: np.ndarray
    ytr: np.ndarray
    xva: np.ndarray
    yva: np.ndarray
    cols: dict[str, slice]
    grid: list[float]
    refit: bool

    @classmethod
    def build(
        cls,
        ctx: Context,
        name: str,
        layers: Sequence[str] | None,
        C: Sequence[float] | float,
        refit: bool,
    ) -> _Stacked:
        model = ctx.fresh_model(name)
        cands = list(layers) if layers else candidate_layers(model)
        ftr, ytr, fva, yva = _features(ctx, model, cands)
        xtr, cols = stack_features(ftr, cands)
        xva, _ = stack_features(fva, cands)
        grid = [C] if isinstance(C, (int, float)) else list(C)
        return cls(ctx, model, cands, xtr, ytr, xva, yva, cols, grid, refit)

    @property
    def width(self) -> int:
        return int(self.xtr.shape[1])

    @property
    def widths(self) -> dict[str, int]:
        return {n: self.cols[n].stop - self.cols[n].start for n in self.cands}

    @property
    def base(self) -> dict[str, Any]:
        return {"layers": self.cands, "total_features": self.width}

    def fit(self, keep: dict[str, list[int]]) -> tuple[nn.Linear, float, float, int]:
        """A probe on the ``keep`` columns (C on validation), as a linear layer over all."""
        use = columns(self.cols, keep)
        linear, c, acc, _ = fit_logistic(
            self.xtr[:, use], self.ytr, self.xva[:, use], self.yva, self.grid, self.ctx.num_classes
        )
        return expand(linear, use, self.width), c, acc, len(use)

    def outcome(
        self,
        linear: nn.Linear,
        acc: float,
        chosen: dict[str, Any],
        tried: list[dict[str, Any]],
        extra: dict[str, Any],
        keep: dict[str, list[int]],
    ) -> Outcome:
        use = columns(self.cols, keep)
        design = cv_design(self.xtr[:, use], self.ytr, self.xva[:, use], self.yva, chosen["C"])
        if self.refit:  # the chosen columns and C, fitted again on every labelled sample
            linear = expand(fit_fixed(design, self.ctx.num_classes), use, self.width)
        pm = ConcatProbe(self.model, self.cands, linear, self.ctx.num_classes).to(self.ctx.device)
        return Outcome(
            model=pm,
            val_accuracy=acc,
            chosen={**chosen, "refit": bool(self.refit)},
            tried=tried,
            model_kind={"kind": "concat", "layers": self.cands, "in_features": self.width},
            extra={"head_only": True, "probe_design": design, **extra},
        )
