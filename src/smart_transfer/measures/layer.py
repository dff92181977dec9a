"""Layer-level measures on the joint distribution of all channels of a layer.

Both read the channel covariance (C x C) as well as the means, so they see correlations that
per-channel measures miss. Each returns one value for the whole layer (``layer_raw`` /
``layer_score``) and, for the per-channel view, a per-channel version of the same quantity
(not the layer value broadcast).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor

from ..stats.profile import LayerProfile
from ._common import f64, score_from_distance
from .registry import MeasureValues, register_measure


def second_moment(lp: LayerProfile) -> Tensor:
    """The (C, C) second moment matrix ``E[x x^T] = cov + mean mean^T`` of a layer."""
    mean = f64(lp.mean, "mean", lp)
    return f64(lp.cov, "cov", lp) + torch.outer(mean, mean)


def _normalised_distance(a: Tensor, b: Tensor, dim: Any = None) -> Tensor:
    """``||a - b|| / (||a|| + ||b||)`` (Frobenius / row norms), in [0, 1], 0 when both are 0."""
    if dim is None:
        num, den = torch.linalg.norm(a - b), torch.linalg.norm(a) + torch.linalg.norm(b)
    else:
        num = torch.linalg.vector_norm(a - b, dim=dim)
        den = torch.linalg.vector_norm(a, dim=dim) + torch.linalg.vector_norm(b, dim=dim)
    d = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
    return d.clamp(0.0, 1.0)


def gram(pre: LayerProfile, new: LayerProfile) -> MeasureValues:
    """Normalised Frobenius distance between the layers' second moment (Gram) matrices.

    ``d = ||G_new - G_pre||_F / (||G_new||_F + ||G_pre||_F)`` with ``G = cov + mean mean^T``;
    by the triangle inequality ``d`` is in [0, 1], 0 for equal matrices. Per channel ``c`` the
    same formula on row ``c`` (the channel's second moments with every channel of the layer).
    Scores: ``1 - d``.
    """
    gp, gn = second_moment(pre), second_moment(new)
    rows = _normalised_distance(gn, gp, dim=1)
    d = float(_normalised_distance(gn, gp))
    return MeasureValues(
        raw=rows, score=score_from_distance(rows), layer_raw=d, layer_score=1.0 - d
    )


def sqrtm_psd(s: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix by a symmetric
    eigendecomposition (negative rounding-error eigenvalues are clipped to 0)."""
    w, v = torch.linalg.eigh(0.5 * (s + s.T))
    return cast(Tensor, (v * w.clamp_min(0.0).sqrt()) @ v.T)


def trace_sqrt_product(s1: Tensor, s2: Tensor) -> Tensor:
    """``Tr(sqrtm(s1 @ s2))`` for PSD ``s1``, ``s2``.

    ``s1 s2`` is similar to the PSD matrix ``A s2 A`` with ``A = sqrtm(s1)``, so the trace is
    the sum of the square roots of that matrix's eigenvalues: two ``eigh`` calls, no
    general (complex) matrix square root.
    """
    a = sqrtm_psd(s1)
    m = a @ s2 @ a
    return cast(Tensor, torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0.0).sqrt().sum())


def frechet_distance(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> Tensor:
    """``||mu1 - mu2||^2 + Tr(s1 + s2 - 2 sqrtm(s1 s2))``: the squared 2-Wasserstein
    distance between ``N(mu1, s1)`` and ``N(mu2, s2)`` (float64 scalar, >= 0)."""
    dmu2 = ((mu1 - mu2) ** 2).sum()
    if torch.equal(s1, s2):  # exact: Tr sqrtm(S S) = Tr S, without eigendecomposition rounding
        return dmu2
    fd = dmu2 + torch.trace(s1) + torch.trace(s2)
    return (fd - 2.0 * trace_sqrt_product(s1, s2)).clamp_min(0.0)


def frechet(pre: LayerProfile, new: LayerProfile) -> MeasureValues:
    """Frechet distance between ``N(mean, cov)`` fits of the two layers.

    ``layer_raw`` is the Frechet distance FD; the layer score is ``1 - FD / (||mu_new -
    mu_pre||^2 + Tr(S_new) + Tr(S_pre))``. The denominator is ``E||X - Y||^2`` for independent
    ``X ~ D_new``, ``Y ~ D_pre``, the cost of one particular coupling, so it bounds FD and the
    score lies in [0, 1] (1 for identical fits).

    Per channel, the same quantities on the channel's marginal: ``raw_c = (mu_new - mu_pre)^2
    + (sd_new - sd_pre)^2`` and ``score_c = 1 - raw_c / ((mu_new - mu_pre)^2 + var_new +
    var_pre)``.

    When either profile has no covariance (BatchNorm-derived profiles carry none), both are
    replaced by their diagonal variances (comparing a full matrix with a diagonal one would
    count every correlation as a difference); ``meta["covariance"]`` says which was used.
    """
    mp, mn = f64(pre.mean, "mean", pre), f64(new.mean, "mean", new)
    vp = f64(pre.var, "var", pre).clamp_min(0.0)
    vn = f64(new.var, "var", new).clamp_min(0.0)

    dmu2 = (mn - mp) ** 2
    raw = dmu2 + (vn.sqrt() - vp.sqrt()) ** 2
    den = dmu2 + vn + vp
    score = score_from_distance(torch.where(den > 0, raw / torch.where(den > 0, den, 1.0), 0.0))

    if pre.cov is not None and new.cov is not None:
        sp, sn = f64(pre.cov, "cov", pre), f64(new.cov, "cov", new)
        fd = frechet_distance(mn, sn, mp, sp)
        layer_den = float(dmu2.sum() + torch.trace(sn) + torch.trace(sp))
        covariance = "full"
    else:
        fd = raw.sum()  # FD of diagonal Gaussians is the sum of the marginal FDs
        layer_den = float(den.sum())
        covariance = "diagonal"
    fd_f = float(fd)
    layer_score = 1.0 - fd_f / layer_den if layer_den > 0 else 1.0
    meta: dict[str, Any] = {"covariance": covariance}
    if covariance == "diagonal":
        meta["note"] = (
            "frechet used diagonal variances, as a profile has no channel covariance "
            "(BatchNorm-derived profiles carry none)"
        )
    return MeasureValues(
        raw=raw,
        score=score,
        layer_raw=fd_f,
        layer_score=min(max(layer_score, 0.0), 1.0),
        meta=meta,
    )


register_measure(
    "gram",
    level="layer",
    direction="divergence",
    assumption=(
        "the layer is summarised by its second moment matrix E[x x^T] (correlations and "
        "magnitudes of all channel pairs); per channel: the row of that matrix"
    ),
    requires={"mean", "cov"},
    score="1 - normalised Frobenius distance, ||G_new - G_pre|| / (||G_new|| + ||G_pre||)",
)(gram)

register_measure(
    "frechet",
    level="layer",
    direction="divergence",
    assumption=(
        "the layer is a multivariate Gaussian N(mean, cov) (diagonal var when a profile has no "
        "cov); per channel: the Frechet distance of its marginal"
    ),
    requires={"mean", "var"},
    score="1 - FD / (||mu_new - mu_pre||^2 + Tr S_new + Tr S_pre)",
)(frechet)
