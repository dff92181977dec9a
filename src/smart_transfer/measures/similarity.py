"""The result of comparing two activation profiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

SCHEMA_VERSION = 1


@dataclass
class Similarity:
    """Per-channel and per-layer similarity of two profiles under one measure.

    ``scores[layer]`` is a (C,) float tensor in [0, 1], higher = more alike, identical
    profiles give 1. ``raw[layer]`` keeps the measure's own values (a divergence, a
    statistic or a p-value) for the same channels. ``layer_scores`` / ``layer_raw`` summarise
    each layer: the mean over channels for channel-level measures, the value of the whole
    layer for layer-level ones. ``params`` says which parameters each layer owns per channel
    (copied from the D_new profile, used by :func:`smart_transfer.plan_freeze`). ``meta``
    holds JSON-friendly details (the measure's assumption and options, per-layer notes).
    """

    measure: str
    direction: str  # how the raw values read: "divergence", "similarity" or "p-value"
    scores: dict[str, Tensor]
    raw: dict[str, Tensor]
    layer_scores: dict[str, float]
    layer_raw: dict[str, float]
    params: dict[str, dict[str, tuple[int, ...]]]
    source: str = "data"  # where the D_pre statistics came from: "data" or "batchnorm"
    meta: dict[str, Any] = field(default_factory=dict)

    def layers(self) -> list[str]:
        """Compared layer names, in the D_new profile's order."""
        return list(self.scores)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, floats and strings only (``json.dumps`` works on it)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "measure": self.measure,
            "direction": self.direction,
            "source": self.source,
            "layers": {
                name: {
                    "scores": self.scores[name].tolist(),
                    "raw": self.raw[name].tolist(),
                    "layer_score": float(self.layer_scores[name]),
                    "layer_raw": float(self.layer_raw[name]),
                    "params": {
                        p: [int(s) for s in shape] for p, shape in self.params.get(name, {}).items()
                    },
                }
                for name in self.scores
            },
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Similarity:
        """Inverse of :meth:`to_dict` (tensors come back as float64)."""
        layers = d["layers"]
        return cls(
            measure=d["measure"],
            direction=d["direction"],
            scores={n: torch.tensor(v["scores"], dtype=torch.float64) for n, v in layers.items()},
            raw={n: torch.tensor(v["raw"], dtype=torch.float64) for n, v in layers.items()},
            layer_scores={n: float(v["layer_score"]) for n, v in layers.items()},
            layer_raw={n: float(v["layer_raw"]) for n, v in layers.items()},
            params={
                n: {p: tuple(int(s) for s in shape) for p, shape in v.get("params", {}).items()}
                for n, v in layers.items()
            },
            source=d.get("source", "data"),
            meta=dict(d.get("meta", {})),
        )
