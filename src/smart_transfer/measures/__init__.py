"""Similarity measures between two activation profiles, and ``compare``.

Every measure is registered once (:mod:`.registry`) with its level, direction, assumption and
required statistics; :func:`compare` runs one of them over the layers two profiles share and
returns a :class:`Similarity`. Importing this package registers the built-in measures:

=============  =======  ==========  ==============================================  =========
name           level    direction   score in [0, 1]                                 BatchNorm
=============  =======  ==========  ==============================================  =========
lognormal_kl   channel  divergence  exp(-KL(new || pre)), zero-inflated log-normal  no
gaussian_kl    channel  divergence  exp(-KL(new || pre)), Gaussian                  yes
welch_t        channel  p-value     the p-value                                     no
wasserstein    channel  divergence  exp(-W1 / s), s = pooled std >= bin width       no
ks             channel  divergence  1 - KS                                          no
js             channel  divergence  1 - JS distance (base 2)                        no
gram           layer    divergence  1 - normalised Frobenius distance of E[x x^T]   no
frechet        layer    divergence  1 - FD / (||dmu||^2 + Tr S_new + Tr S_pre)      yes
=============  =======  ==========  ==============================================  =========
"""

from __future__ import annotations

from . import histogram, kl, layer, welch  # noqa: F401  (register the built-in measures)
from .compare import compare
from .registry import (
    Measure,
    MeasureValues,
    get_measure,
    list_measures,
    register_measure,
    unregister_measure,
)
from .similarity import Similarity

__all__ = [
    "Measure",
    "MeasureValues",
    "Similarity",
    "compare",
    "get_measure",
    "list_measures",
    "register_measure",
    "unregister_measure",
]
