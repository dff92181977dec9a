"""The result of comparing two activation profiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class Similarity:
    """Per-channel and per-layer similarity of two profiles under one measure.

    ``scores[layer]`` is a (C,) float tensor in [0, 1], higher = more alike, identical
    profiles give 1. ``raw[layer]`` keeps the measure's own values (a divergence, a
    statistic or a p-value) for the same channels. ``layer_scores`` / ``layer_raw`` summarise
    each layer. ``params`` says which parameters each layer owns per channel (copied from the
    profiles, used by :func:`smart_transfer.plan_freeze`).
    """

    measure: str
    direction: str  # "similarity" or "divergence": how the raw values read
    scores: dict[str, Tensor]
    raw: dict[str, Tensor]
    layer_scores: dict[str, float]
    layer_raw: dict[str, float]
    params: dict[str, dict[str, tuple[int, ...]]]
    source: str = "data"  # where the D_pre statistics came from: "data" or "batchnorm"
    meta: dict[str, Any] = field(default_factory=dict)

    def layers(self) -> list[str]:
        return list(self.scores)

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "direction": self.direction,
            "source": self.source,
            "layers": {
                name: {
                    "scores": self.scores[name].tolist(),
                    "raw": self.raw[name].tolist(),
                    "layer_score": self.layer_scores[name],
                    "layer_raw": self.layer_raw[name],
                }
                for name in self.scores
            },
            "meta": dict(self.meta),
        }
