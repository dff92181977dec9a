"""Welch's unequal-variance t-test on the per-channel means, from the real counts.

The test runs on the profile statistics themselves (count, mean, population variance), not on
samples drawn from a fitted distribution, so its p-value is deterministic. It needs the true
number of values per channel, which BatchNorm-derived profiles do not have.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import special
from torch import Tensor

from ..errors import DataError
from ..stats.profile import LayerProfile
from ._common import f64
from .registry import register_measure


def welch_t_test(
    mean1: Tensor, var1: Tensor, n1: Tensor, mean2: Tensor, var2: Tensor, n2: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Two-sided Welch t-test from summary statistics, elementwise.

    ``var1`` / ``var2`` are *sample* variances (ddof=1). Returns ``(t, df, p)`` as float64,
    the same as ``scipy.stats.ttest_ind_from_stats(..., equal_var=False)`` wherever scipy's
    result is defined. Where both variances are 0 the statistic is undefined; there ``p`` is
    1 for equal means and 0 otherwise (``t`` is 0 or +/-inf, ``df`` is ``n1 + n2 - 2``).
    """
    a, b = var1 / n1, var2 / n2
    se2 = a + b
    diff = mean1 - mean2
    degenerate = se2 <= 0
    safe_se = torch.where(degenerate, torch.ones_like(se2), se2).sqrt()
    t = torch.where(degenerate, torch.sign(diff) * torch.inf, diff / safe_se)
    t = torch.where(degenerate & (diff == 0), torch.zeros_like(t), t)
    denom = a**2 / (n1 - 1) + b**2 / (n2 - 1)
    df = torch.where(degenerate, n1 + n2 - 2, se2**2 / torch.where(degenerate, 1.0, denom))
    # Two-sided p from the Student t CDF (scipy.special.stdtr handles infinite t).
    p_np = 2.0 * special.stdtr(df.numpy(), -np.abs(t.numpy()))
    p = torch.from_numpy(np.clip(p_np, 0.0, 1.0)).to(torch.float64)
    return t, df, p


def welch_t(pre: LayerProfile, new: LayerProfile) -> Tensor:
    """Per-channel two-sided p-value of Welch's t-test, ``mean_new == mean_pre``.

    The population variances of the profiles are turned into sample variances with
    ``var * n / (n - 1)``. Needs at least 2 values per channel in each profile.
    """
    stats = []
    for lp in (pre, new):
        n = f64(lp.count, "count", lp)
        if bool((n < 2).any()):
            c = int(torch.nonzero(n < 2)[0, 0])
            raise DataError(
                f"layer {lp.name!r} channel {c} has {n[c].item():g} values, but Welch's t-test "
                f"needs at least 2 per channel; profile more images."
            )
        var = f64(lp.var, "var", lp).clamp_min(0.0) * n / (n - 1)
        stats.append((f64(lp.mean, "mean", lp), var, n))
    (m1, v1, n1), (m2, v2, n2) = stats[1], stats[0]
    return welch_t_test(m1, v1, n1, m2, v2, n2)[2]


register_measure(
    "welch_t",
    level="channel",
    direction="p-value",
    assumption=(
        "the per-channel mean is compared with a two-sided Welch t-test that treats every "
        "value as independent; positions within an image are correlated and counts are large, "
        "so p-values are optimistic and tiny shifts already give p near 0"
    ),
    requires={"count", "mean", "var"},
    score="the p-value itself (1 = no evidence of a shift)",
)(welch_t)
