"""A probe on several layers' pooled features, concatenated."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..models.heads import PENULTIMATE, find_head, pool_features


class ConcatProbe(nn.Module):
    """Images -> pooled features of ``layers`` side by side -> ``head``."""

    def __init__(self, model: nn.Module, layers: Sequence[str], linear: nn.Linear, num_classes: int):
        super().__init__()
        self.model = model
        self.layers = list(layers)
        self.head = nn.Linear(linear.in_features, num_classes)
        self.head.load_state_dict(linear.state_dict())
        cfg = getattr(model, "pretrained_cfg", None)
        if isinstance(cfg, dict):
            self.pretrained_cfg = {**cfg, "num_classes": num_classes, "classifier": "head"}

    def forward(self, x: Tensor) -> Tensor:
        modules = dict(self.model.named_modules())
        _, head = find_head(self.model)
        got: dict[str, Tensor] = {}
        handles = []
        for name in self.layers:
            if name == PENULTIMATE:
                handles.append(head.register_forward_pre_hook(
                    lambda _m, a, n=name: got.__setitem__(n, pool_features(a[0]))))
            else:
                handles.append(modules[name].register_forward_hook(
                    lambda m, _a, o, n=name: got.__setitem__(n, pool_features(o, m))))
        try:
            self.model(x)
        finally:
            for h in handles:
                h.remove()
        return self.head(torch.cat([got[n].to(self.head.weight.dtype) for n in self.layers], 1))
