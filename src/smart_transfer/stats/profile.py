"""The result of profiling: per-layer, per-channel activation statistics.

Plain data (float64 tensors on the CPU), independent of the model that produced it, so it can
be saved once (``save``) and compared later. Accumulation lives in ``stats/running.py``;
this module only holds and (de)serialises finished statistics.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

SCHEMA_VERSION = 1

# Optional per-channel statistics, in the order they are listed in docs/architecture.md.
OPTIONAL_STATS = (
    "min",
    "max",
    "zero_frac",
    "log_count",
    "log_mean",
    "log_var",
    "hist",
    "hist_edges",
    "hist_count",
    "cov",
)


@dataclass
class LayerProfile:
    """Statistics of one layer's output channels (see docs/architecture.md for each field)."""

    name: str
    kind: str
    num_channels: int
    params: dict[str, tuple[int, ...]]
    count: Tensor  # (C,) values seen per channel; NaN when unknown (BatchNorm-derived)
    mean: Tensor  # (C,)
    var: Tensor  # (C,) population variance
    min: Optional[Tensor] = None
    max: Optional[Tensor] = None
    zero_frac: Optional[Tensor] = None
    log_count: Optional[Tensor] = None
    log_mean: Optional[Tensor] = None
    log_var: Optional[Tensor] = None
    hist: Optional[Tensor] = None  # (C, B) counts
    hist_edges: Optional[Tensor] = None  # (B+1,)
    hist_count: Optional[Tensor] = None  # (C,)
    cov: Optional[Tensor] = None  # (C, C)

    def available(self) -> set[str]:
        """Names of the statistics this layer carries (always count/mean/var)."""
        have = {"count", "mean", "var"}
        have.update(k for k in OPTIONAL_STATS if getattr(self, k) is not None)
        return have

    @property
    def std(self) -> Tensor:
        return self.var.clamp_min(0).sqrt()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "num_channels": self.num_channels,
            "params": {k: list(v) for k, v in self.params.items()},
        }
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                d[f.name] = v.detach().cpu().to(torch.float64)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerProfile":
        kwargs = dict(d)
        kwargs["params"] = {k: tuple(int(s) for s in v) for k, v in d["params"].items()}
        kwargs["num_channels"] = int(d["num_channels"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in names})


@dataclass
class ActivationProfile:
    """Statistics of every profiled layer of one model on one data source.

    ``source`` is ``"data"`` (images were forwarded) or ``"batchnorm"`` (taken from
    BatchNorm running statistics, no images needed).
    """

    layers: dict[str, LayerProfile]
    source: str = "data"
    num_samples: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> LayerProfile:
        return self.layers[name]

    def __contains__(self, name: object) -> bool:
        return name in self.layers

    def __len__(self) -> int:
        return len(self.layers)

    def names(self) -> list[str]:
        return list(self.layers)

    def available(self) -> set[str]:
        """Statistics present in every layer."""
        sets = [lp.available() for lp in self.layers.values()]
        return set.intersection(*sets) if sets else set()
