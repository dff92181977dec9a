"""Small helpers shared by the measure implementations."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, IncompatibleError
from ..stats.profile import LayerProfile


def f64(x: Tensor | None, what: str, layer: LayerProfile) -> Tensor:
    """``x`` as a float64 CPU tensor; a missing statistic is a ConfigError naming it."""
    if x is None:
        raise ConfigError(
            f"layer {layer.name!r} has no {what!r} statistic; profile with {what} enabled or "
            f"pick a measure listed by list_measures(details=True) that does not need it."
        )
    return torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)


def score_from_distance(d: Tensor) -> Tensor:
    """``1 - d`` for a distance already in [0, 1], clipped against rounding."""
    return (1.0 - d).clamp(0.0, 1.0)


def score_from_divergence(d: Tensor) -> Tensor:
    """``exp(-d)`` for a non-negative divergence: 1 at 0, monotonically down to 0."""
    return torch.exp(-d.clamp_min(0.0))


def shared_histograms(pre: LayerProfile, new: LayerProfile) -> tuple[Tensor, Tensor, Tensor]:
    """``(hist_pre, hist_new, edges)`` as float64, after checking that the bins are shared."""
    hp = f64(pre.hist, "hist", pre)
    hn = f64(new.hist, "hist", new)
    ep = f64(pre.hist_edges, "hist_edges", pre)
    en = f64(new.hist_edges, "hist_edges", new)
    if ep.shape != en.shape or not torch.equal(ep, en):
        raise IncompatibleError(
            f"layer {new.name!r}: the two profiles have different histogram bins "
            f"({ep.numel() - 1} bins over [{ep[0].item():g}, {ep[-1].item():g}] vs "
            f"{en.numel() - 1} bins over [{en[0].item():g}, {en[-1].item():g}]); profile both "
            f"with the same hist settings (number of bins and range)."
        )
    b = ep.numel() - 1
    for lp, h in ((pre, hp), (new, hn)):
        if h.ndim != 2 or h.shape[1] != b:
            raise IncompatibleError(
                f"layer {lp.name!r}: hist has shape {tuple(h.shape)} but hist_edges define {b} "
                f"bins; re-profile the layer so that hist is (channels, bins)."
            )
    return hp, hn, ep


def normalise_rows(h: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of ``h`` divided by their sums, and a mask of the rows that were empty
    (those are left as zeros)."""
    total = h.sum(dim=1, keepdim=True)
    empty = total.squeeze(1) <= 0
    p = torch.where(total > 0, h / total.clamp_min(torch.finfo(h.dtype).tiny), torch.zeros_like(h))
    return p, empty
