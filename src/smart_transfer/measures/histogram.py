"""Distances between the per-channel histograms of two profiles.

These measures make no parametric assumption, but they only see the activations through the
histogram: both profiles must use the same bins (``hist_edges``), values outside the
histogram range are whatever the profiler did with them, and the resolution is one bin.

Empty histograms (a channel with no value inside the histogram range) carry no distribution.
When both profiles' rows are empty the channel counts as identical (distance 0, score 1);
when only one is, the distance is its maximum (KS 1, JS 1, W1 the whole range) and the score
0. Such channels are listed in the layer's ``meta``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..stats.profile import LayerProfile
from ._common import f64, normalise_rows, score_from_distance, shared_histograms
from .registry import MeasureValues, register_measure


def _prepare(pre: LayerProfile, new: LayerProfile) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Normalised histograms, edges, and the masks of rows empty in both / in exactly one."""
    hp, hn, edges = shared_histograms(pre, new)
    p, empty_p = normalise_rows(hp)
    q, empty_n = normalise_rows(hn)
    return p, q, edges, empty_p & empty_n, empty_p ^ empty_n


def _empty_meta(both: Tensor, one: Tensor) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if bool(both.any()):
        meta["empty_in_both"] = torch.nonzero(both).flatten().tolist()
    if bool(one.any()):
        meta["empty_in_one"] = torch.nonzero(one).flatten().tolist()
    if meta:
        meta["note"] = (
            "some channels have an empty histogram (no value inside the histogram range): "
            "scored 1 when empty in both profiles, 0 when empty in one"
        )
    return meta


def histogram_cdf_distance(p: Tensor, q: Tensor) -> Tensor:
    """``|F_p - F_q|`` at the inner bin edges, (C, B-1), for row-normalised histograms."""
    return (torch.cumsum(p, dim=1) - torch.cumsum(q, dim=1))[:, :-1].abs()


def wasserstein(pre: LayerProfile, new: LayerProfile) -> MeasureValues:
    """Per-channel Wasserstein-1 distance between the histograms, in activation units.

    Each bin's mass sits at its centre, so the value equals
    ``scipy.stats.wasserstein_distance(centres, centres, hist_pre, hist_new)``:
    ``sum_i |F_pre(i) - F_new(i)| * (centre[i+1] - centre[i])``.

    Score: ``exp(-W1 / s)`` with the scale ``s = max(sqrt((var_pre + var_new) / 2), narrowest
    bin width)``: the pooled standard deviation of the channel (from the profiles' ``var``),
    but never finer than the histogram can resolve. 1 for identical histograms; for a fixed
    scale it falls monotonically with W1 (a shift by one pooled std scores about 0.37).
    """
    p, q, edges, both, one = _prepare(pre, new)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w1 = (histogram_cdf_distance(p, q) * torch.diff(centres)).sum(dim=1)
    span = (edges[-1] - edges[0]).item()
    w1 = torch.where(both, 0.0, torch.where(one, span, w1))
    vp, vn = f64(pre.var, "var", pre).clamp_min(0.0), f64(new.var, "var", new).clamp_min(0.0)
    widths = torch.diff(edges)
    resolution = float(widths[widths > 0].min()) if bool((widths > 0).any()) else 1.0
    scale = torch.sqrt(0.5 * (vp + vn)).clamp_min(resolution)
    score = torch.where(one, 0.0, torch.exp(-w1 / scale))
    return MeasureValues(raw=w1, score=score, meta=_empty_meta(both, one))


def ks(pre: LayerProfile, new: LayerProfile) -> MeasureValues:
    """Per-channel Kolmogorov-Smirnov statistic of the histograms: ``max |F_pre - F_new|``
    over the bin edges.

    This is exactly ``scipy.stats.ks_2samp(...).statistic`` of the two samples after every
    value is replaced by its bin (the binned samples), and a lower bound of the statistic of
    the raw samples, which can also differ inside a bin. Score: ``1 - KS``.
    """
    p, q, _, both, one = _prepare(pre, new)
    d = histogram_cdf_distance(p, q)
    stat = d.max(dim=1).values if d.shape[1] > 0 else torch.zeros(p.shape[0], dtype=p.dtype)
    stat = torch.where(both, 0.0, torch.where(one, 1.0, stat)).clamp(0.0, 1.0)
    return MeasureValues(raw=stat, score=score_from_distance(stat), meta=_empty_meta(both, one))


def js(pre: LayerProfile, new: LayerProfile) -> MeasureValues:
    """Per-channel Jensen-Shannon *distance* (base 2, in [0, 1]) of the normalised histograms,
    ``sqrt(JSD)``, as ``scipy.spatial.distance.jensenshannon(p, q, base=2)``. Score:
    ``1 - JS``."""
    p, q, _, both, one = _prepare(pre, new)
    m = 0.5 * (p + q)

    def kl_to_m(a: Tensor) -> Tensor:
        # 0 * log(0 / m) = 0; where a > 0, m >= a / 2 > 0.
        ratio = torch.where(a > 0, a / torch.where(m > 0, m, 1.0), 1.0)
        return (a * torch.log2(ratio)).sum(dim=1)

    jsd = (0.5 * kl_to_m(p) + 0.5 * kl_to_m(q)).clamp(0.0, 1.0)
    dist = torch.sqrt(jsd)
    dist = torch.where(both, 0.0, torch.where(one, 1.0, dist))
    return MeasureValues(raw=dist, score=score_from_distance(dist), meta=_empty_meta(both, one))


_HIST = frozenset({"hist", "hist_edges"})
_HIST_ASSUMPTION = (
    "activations are seen through histograms with the same bins in both profiles "
    "(resolution one bin)"
)

register_measure(
    "wasserstein",
    level="channel",
    direction="divergence",
    assumption=_HIST_ASSUMPTION + "; W1 with each bin's mass at its centre",
    requires=_HIST | {"var"},
    score="exp(-W1 / s), s = max(pooled std of the channel, narrowest bin width)",
)(wasserstein)

register_measure(
    "ks",
    level="channel",
    direction="divergence",
    assumption=_HIST_ASSUMPTION + "; KS statistic of the binned values",
    requires=_HIST,
    score="1 - KS",
)(ks)

register_measure(
    "js",
    level="channel",
    direction="divergence",
    assumption=_HIST_ASSUMPTION + "; Jensen-Shannon distance, base 2",
    requires=_HIST,
    score="1 - JS",
)(js)
