"""Kullback-Leibler divergences between per-channel parametric fits.

Both measures compute ``KL(new || pre)``: how many nats are lost, per activation value, when
the D_new activations of a channel are described by the channel's D_pre distribution. This is
the direction of the original smart-freezing method (the pretrained statistics are the
reference). ``symmetric=True`` returns the mean of both directions instead,
``(KL(new || pre) + KL(pre || new)) / 2``.

Scores are ``exp(-KL)``: 1 for identical fits, monotonically down towards 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..stats.profile import LayerProfile
from ._common import f64
from .registry import register_measure

#: Zero fractions are clipped to [ZERO_FRAC_EPS, 1 - ZERO_FRAC_EPS] so that a channel that is
#: never (or always) zero in one profile gives a large but finite Bernoulli KL.
ZERO_FRAC_EPS = 1e-6

#: Smallest variance of log|x| used: a channel whose non-zero values are all equal (variance
#: 0) is treated as having a log-scale spread of 1e-3, i.e. about 0.1 % relative resolution.
LOG_VAR_FLOOR = 1e-6

#: Value-space variances are clipped to at least
#: ``VAR_FLOOR_ABS + VAR_FLOOR_REL * max(second moment of either profile)`` per channel, so a
#: constant channel compares by its mean at a relative resolution of about 1e-3.
VAR_FLOOR_REL = 1e-6
VAR_FLOOR_ABS = 1e-12


def gaussian_kl_divergence(mean_p: Tensor, var_p: Tensor, mean_q: Tensor, var_q: Tensor) -> Tensor:
    """Elementwise ``KL(N(mean_p, var_p) || N(mean_q, var_q))`` in nats (variances > 0)."""
    kl = 0.5 * (torch.log(var_q / var_p) + (var_p + (mean_p - mean_q) ** 2) / var_q - 1.0)
    return kl.clamp_min(0.0)


def bernoulli_kl_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Elementwise ``KL(Bernoulli(p) || Bernoulli(q))`` in nats, for p, q strictly in (0, 1)."""
    kl = p * torch.log(p / q) + (1.0 - p) * torch.log((1.0 - p) / (1.0 - q))
    return kl.clamp_min(0.0)


def gaussian_kl(pre: LayerProfile, new: LayerProfile, symmetric: bool = False) -> Tensor:
    """Per-channel ``KL(N(mean_new, var_new) || N(mean_pre, var_pre))`` (nats, float64).

    Uses only mean and population variance, so it runs on BatchNorm-derived profiles. See
    :data:`VAR_FLOOR_REL` for how zero variances are handled.
    """
    mp, vp = f64(pre.mean, "mean", pre), f64(pre.var, "var", pre)
    mn, vn = f64(new.mean, "mean", new), f64(new.var, "var", new)
    floor = VAR_FLOOR_ABS + VAR_FLOOR_REL * torch.maximum(vp + mp**2, vn + mn**2)
    vp, vn = torch.maximum(vp, floor), torch.maximum(vn, floor)
    kl = gaussian_kl_divergence(mn, vn, mp, vp)
    if symmetric:
        kl = 0.5 * (kl + gaussian_kl_divergence(mp, vp, mn, vn))
    return kl


def _log_moments(lp: LayerProfile) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(zero_frac, log_mean, log_var, undefined) where ``undefined`` marks channels that have
    no non-zero value, so that their log-normal part does not exist."""
    z = f64(lp.zero_frac, "zero_frac", lp)
    m = f64(lp.log_mean, "log_mean", lp)
    v = f64(lp.log_var, "log_var", lp)
    undefined = (z >= 1.0) | ~torch.isfinite(m) | ~torch.isfinite(v)
    if lp.log_count is not None:
        undefined |= f64(lp.log_count, "log_count", lp) <= 0
    return z, m, v, undefined


def lognormal_kl(pre: LayerProfile, new: LayerProfile, symmetric: bool = False) -> Tensor:
    """Per-channel ``KL(new || pre)`` of zero-inflated log-normal fits (nats, float64).

    Each channel's distribution is modelled as a point mass at 0 with weight ``z =
    zero_frac`` plus, with weight ``1 - z``, a log-normal on the non-zero ``|x|`` (a Gaussian
    on ``log|x|`` with ``log_mean`` / ``log_var``). For two such mixtures the KL divergence
    is exact in closed form::

        KL = KL_Bernoulli(z_new || z_pre) + (1 - z_new) * KL(N(log_new) || N(log_pre))

    so ReLU sparsity is compared as a point mass rather than dropped. Zero fractions are
    clipped to ``[ZERO_FRAC_EPS, 1 - ZERO_FRAC_EPS]`` and log variances to at least
    ``LOG_VAR_FLOOR``. A channel with no non-zero value in one profile has no log-normal part;
    there only the zero fractions are compared (in both profiles: the two log parts count as
    equal).
    """
    zp, mp, vp, undef_p = _log_moments(pre)
    zn, mn, vn, undef_n = _log_moments(new)
    # A missing log part takes the other profile's moments (KL 0); both missing: any value.
    mp, vp = torch.where(undef_p, mn, mp), torch.where(undef_p, vn, vp)
    mn, vn = torch.where(undef_n, mp, mn), torch.where(undef_n, vp, vn)
    both = undef_p & undef_n
    mp, mn = torch.where(both, 0.0, mp), torch.where(both, 0.0, mn)
    vp, vn = torch.where(both, 1.0, vp), torch.where(both, 1.0, vn)
    vp, vn = vp.clamp_min(LOG_VAR_FLOOR), vn.clamp_min(LOG_VAR_FLOOR)
    zp = zp.clamp(ZERO_FRAC_EPS, 1.0 - ZERO_FRAC_EPS)
    zn = zn.clamp(ZERO_FRAC_EPS, 1.0 - ZERO_FRAC_EPS)

    def kl(z1: Tensor, m1: Tensor, v1: Tensor, z2: Tensor, m2: Tensor, v2: Tensor) -> Tensor:
        return bernoulli_kl_divergence(z1, z2) + (1.0 - z1) * gaussian_kl_divergence(m1, v1, m2, v2)

    out = kl(zn, mn, vn, zp, mp, vp)
    if symmetric:
        out = 0.5 * (out + kl(zp, mp, vp, zn, mn, vn))
    return out


register_measure(
    "lognormal_kl",
    level="channel",
    direction="divergence",
    assumption=(
        "non-negative (post-ReLU) activations: a point mass at 0 plus a log-normal on the "
        "non-zero |x|; KL(new || pre), or the mean of both directions with symmetric=True"
    ),
    requires={"zero_frac", "log_mean", "log_var"},
    score="exp(-KL) with KL in nats",
)(lognormal_kl)

register_measure(
    "gaussian_kl",
    level="channel",
    direction="divergence",
    assumption=(
        "each channel is Gaussian with its mean and variance; KL(new || pre), or the mean of "
        "both directions with symmetric=True"
    ),
    requires={"mean", "var"},
    score="exp(-KL) with KL in nats",
)(gaussian_kl)
