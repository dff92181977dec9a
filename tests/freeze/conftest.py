"""Shared factories for the freeze tests: tiny models and hand-built Similarity objects."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

from smart_transfer.layers import layer_param_map, select_layers
from smart_transfer.measures.similarity import Similarity
from smart_transfer.models.small import SmallVGG


def _make_model(
    batch_norm: bool = True, seed: int = 0, widths: Sequence[int] = (4, 6)
) -> nn.Module:
    torch.manual_seed(seed)
    return SmallVGG(num_classes=3, in_channels=3, widths=tuple(widths), batch_norm=batch_norm)


def _make_sim(
    model: nn.Module,
    seed: int = 0,
    scores: dict[str, torch.Tensor] | None = None,
    layer_scores: dict[str, float] | None = None,
    source: str = "data",
) -> Similarity:
    """Random scores in [0, 1] for every conv/linear layer of ``model`` (overridable)."""
    names = select_layers(model)
    params = layer_param_map(model, names)
    gen = torch.Generator().manual_seed(seed)
    s = {n: torch.rand(next(iter(params[n].values()))[0], generator=gen) for n in names}
    s.update(scores or {})
    ls = {n: float(v.nan_to_num(0.0).mean()) for n, v in s.items()}
    ls.update(layer_scores or {})
    return Similarity(
        measure="test_measure",
        direction="similarity",
        scores=s,
        raw={n: 1.0 - v for n, v in s.items()},
        layer_scores=ls,
        layer_raw={n: 1.0 - v for n, v in ls.items()},
        params=params,
        source=source,
    )


@pytest.fixture
def make_model() -> Callable[..., nn.Module]:
    return _make_model


@pytest.fixture
def make_sim() -> Callable[..., Similarity]:
    return _make_sim
