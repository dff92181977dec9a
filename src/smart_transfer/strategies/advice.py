"""Advice: which strategy fits the data, from the two classic axes (dataset size x similarity).

The four rules, as the benchmarks under the step recipe measured them (``benchmarks/results/``,
``recipe-comparison.md``):

* small and similar    -> fine-tune everything from the pretrained weights (``full-finetune``;
  ``lp-ft`` and ``fine-tune`` are the next candidates). The folklore says a linear classifier
  on the top features; under a recipe that trains a few hundred steps at a rate chosen on
  validation, fine-tuning led the probes by 5-10 points on P2 (8 and 16 images per class,
  with and without BatchNorm), and the plain probe was among the last rows;
* small and different  -> a linear classifier on earlier features too: the pooled features of
  many layers side by side (``multi-layer-probe``; ``linear-probe-best-layer``, cut where the
  similarity curve falls, is the next candidate). On P1 (ImageNet -> Fashion-MNIST,
  EfficientNet-Lite0 and Lite1) it led full fine-tuning by about 4 points;
* large and similar    -> fine-tune (``lp-ft``: probe first, then everything);
* large and different  -> fine-tune everything from the pretrained weights (``full-finetune``).

"Small" is fewer than :data:`SMALL_PER_CLASS` labelled images per class. "Similar" compares the
network-level similarity (the mean over layers of the ``gaussian_kl`` layer scores between
D_pre and D_new, in [0, 1]) with :data:`SIMILAR`. ImageNet -> Fashion-MNIST against BatchNorm
statistics scores 0.80, Fashion-MNIST classes 5-9 -> 0-4 against real source images 0.93-0.94,
so the "similar" cut lies between them at 0.9. No benchmark has 100 or more images per class,
so the "large" rows and the size cut-off are the classic rules, not measured ones; the two
protocols separate the quadrants, they do not fit the cut-offs finely. See the README's
"Advice".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models.heads import PENULTIMATE

SMALL_PER_CLASS = 100  # below this many labelled images per class, the data is "small"
SIMILAR = 0.9  # network-level similarity at or above which a target counts as "similar"

RULES = {
    "small-similar": ("full-finetune", "fine-tuning everything from the pretrained weights"),
    "small-different": (
        "multi-layer-probe",
        ("a linear classifier on the features of many layers side by side, early ones included"),
    ),
    "large-similar": ("lp-ft", "fine-tuning, starting from a linear probe's head"),
    "large-different": ("full-finetune", "fine-tuning everything from the pretrained weights"),
}
CANDIDATES = {
    "small-similar": ["full-finetune", "lp-ft", "fine-tune", "linear-probe"],
    "small-different": ["multi-layer-probe", "linear-probe-best-layer", "linear-probe", "lp-ft"],
    "large-similar": ["lp-ft", "full-finetune", "smart-kernel"],
    "large-different": ["full-finetune", "lp-ft", "smart-kernel"],
}


@dataclass(frozen=True)
class Advice:
    strategy: str  # a name from list_strategies()
    quadrant: str  # "small-similar", "small-different", "large-similar" or "large-different"
    similarity: float  # network-level similarity of D_new to D_pre in [0, 1]
    layer: str  # the layer to cut for a probe
    reasons: list[str]
    samples_per_class: float
    curve: list[dict[str, Any]] = field(
        default_factory=list
    )  # [{"layer", "score"}], input to output
    candidates: list[str] = field(default_factory=list)  # what `auto` tries, best first
    frozen_fraction: float | None = None  # what a quantile-0.5 smart-kernel plan would freeze
    source: str = "batchnorm"
    cutoffs: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Advice:
        """The advice of an ``advice.json`` (keys of other versions ignored); a file that is not
        one is a :class:`~smart_transfer.errors.DataError` naming what it lacks."""
        from dataclasses import fields

        from ..errors import DataError

        known = {f.name for f in fields(cls)}
        missing = [
            k
            for k in ("strategy", "quadrant", "similarity", "layer", "reasons", "samples_per_class")
            if not isinstance(d, dict) or k not in d
        ]
        if missing:
            raise DataError(
                f"advice.json lacks {missing[0]!r}; the run folder is damaged: restore the file "
                "or train the run again"
            )
        return cls(**{k: v for k, v in d.items() if k in known})

    def __str__(self) -> str:
        lines = [f"advice: {self.strategy} ({self.quadrant})"] + [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def decide(
    samples_per_class: float,
    layer_scores: dict[str, float],
    source: str = "batchnorm",
    frozen_fraction: float | None = None,
    small_per_class: float = SMALL_PER_CLASS,
    similar: float = SIMILAR,
) -> Advice:
    """The advice from the evidence: samples per class and the layer-wise similarity curve."""
    names = list(layer_scores)
    values = np.array([layer_scores[n] for n in names], dtype=float)
    finite = np.isfinite(values)
    sim = float(values[finite].mean()) if finite.any() else 0.0
    small = samples_per_class < small_per_class
    similar_ = sim >= similar
    quadrant = f"{'small' if small else 'large'}-{'similar' if similar_ else 'different'}"
    strategy, what = RULES[quadrant]
    # where the curve falls: the deepest layer whose smoothed score (mean over it and its two
    # neighbours) is still similar; when none is, the layer where the smoothed curve peaks
    filled = np.where(finite, values, np.nan)
    smooth = np.array(
        [
            np.nanmean(filled[max(i - 1, 0) : i + 2])
            if finite[max(i - 1, 0) : i + 2].any()
            else -np.inf
            for i in range(len(names))
        ]
    )
    below = [i for i, v in enumerate(values) if np.isfinite(v) and v < similar]
    if similar_ or not names:
        layer = PENULTIMATE
    else:
        keep = np.nonzero(smooth >= similar)[0]
        layer = names[int(keep[-1])] if len(keep) else names[int(np.argmax(smooth))]
    reasons = [
        (
            f"{samples_per_class:.0f} labelled images per class: "
            f"{'small' if small else 'large'} (cut-off {small_per_class:g} per class)"
        ),
        (
            f"network-level similarity {sim:.3f} (mean of {int(finite.sum())} layer scores, "
            f"gaussian_kl against {source} statistics): "
            f"{'similar' if similar_ else 'different'} (cut-off {similar:g})"
        ),
    ]
    if below and names:
        reasons.append(
            f"the similarity curve first falls below {similar:g} at layer {names[below[0]]!r} "
            f"(layer {below[0] + 1} of {len(names)})"
        )
    reasons.append(
        f"rule for {quadrant}: {what} -> {strategy}"
        + (f", cut at {layer!r}" if strategy in ("linear-probe", "linear-probe-best-layer") else "")
    )
    if frozen_fraction is not None:
        reasons.append(
            f"a smart-kernel plan (quantile 0.5) would freeze {frozen_fraction:.1%} of the planned "
            "parameters"
        )
    return Advice(
        strategy=strategy,
        quadrant=quadrant,
        similarity=sim,
        layer=layer,
        reasons=reasons,
        samples_per_class=float(samples_per_class),
        curve=[{"layer": n, "score": float(v)} for n, v in zip(names, values)],
        candidates=list(CANDIDATES[quadrant]),
        frozen_fraction=frozen_fraction,
        source=source,
        cutoffs={"small_per_class": float(small_per_class), "similar": float(similar)},
    )
