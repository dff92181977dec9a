"""Profiles built directly from numpy samples, so every measure can be checked against
numpy/scipy on exactly the values it summarises."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from smart_transfer.stats.profile import ActivationProfile, LayerProfile

# Uniform bins of width 0.1 over [-6, 8]: fine enough to resolve the shifts the tests use.
EDGES = np.linspace(-6.0, 8.0, 141)


def _t(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def layer_from_samples(
    x: np.ndarray,
    name: str = "conv1",
    edges: np.ndarray | None = EDGES,
    with_cov: bool = True,
    log_fill: float = math.nan,
    params: dict[str, tuple[int, ...]] | None = None,
) -> LayerProfile:
    """LayerProfile of samples ``x`` (N values x C channels), every statistic from numpy.

    ``log_fill`` is what the log moments hold for a channel without any non-zero value.
    """
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape
    mag = np.abs(x)
    log_count = (mag > 0).sum(axis=0).astype(np.float64)
    log_mean = np.full(c, log_fill)
    log_var = np.full(c, log_fill)
    for j in range(c):
        nz = mag[:, j][mag[:, j] > 0]
        if nz.size:
            log_mean[j] = np.log(nz).mean()
            log_var[j] = np.log(nz).var()
    lp = LayerProfile(
        name=name,
        kind="conv",
        num_channels=c,
        params=params if params is not None else {f"{name}.weight": (c, 3, 3, 3)},
        count=_t(np.full(c, float(n))),
        mean=_t(x.mean(axis=0)),
        var=_t(x.var(axis=0)),
        min=_t(x.min(axis=0)),
        max=_t(x.max(axis=0)),
        zero_frac=_t((x == 0).mean(axis=0)),
        log_count=_t(log_count),
        log_mean=_t(log_mean),
        log_var=_t(log_var),
    )
    if edges is not None:
        hist = np.stack([np.histogram(x[:, j], bins=edges)[0] for j in range(c)]).astype(float)
        lp.hist, lp.hist_edges, lp.hist_count = _t(hist), _t(edges), _t(hist.sum(axis=1))
    if with_cov:
        lp.cov = _t(np.cov(x, rowvar=False, bias=True).reshape(c, c))
    return lp


def batchnorm_layer(mean: np.ndarray, var: np.ndarray, name: str = "conv1") -> LayerProfile:
    """What a BatchNorm-derived profile holds: mean and var, count unknown (NaN)."""
    c = len(mean)
    return LayerProfile(
        name=name,
        kind="conv",
        num_channels=c,
        params={f"{name}.weight": (c, 3, 3, 3)},
        count=_t(np.full(c, np.nan)),
        mean=_t(mean),
        var=_t(var),
    )


def profile(
    *layers: LayerProfile, source: str = "data", num_samples: int = 10
) -> ActivationProfile:
    return ActivationProfile(
        layers={lp.name: lp for lp in layers}, source=source, num_samples=num_samples
    )


class Profiles:
    """Namespace handed to tests by the ``pf`` fixture."""

    EDGES = EDGES
    layer = staticmethod(layer_from_samples)
    batchnorm_layer = staticmethod(batchnorm_layer)
    profile = staticmethod(profile)

    @staticmethod
    def relu_samples(rng: np.random.Generator, n: int, c: int, shift: float = 0.0) -> np.ndarray:
        """Post-ReLU-like samples: correlated Gaussians, shifted, clipped at 0. The mixing
        is fixed, so every ``rng`` draws from the same distribution."""
        mix = np.random.default_rng(0).normal(size=(c, c)) / math.sqrt(c)
        z = rng.normal(size=(n, c)) @ (np.eye(c) + 0.5 * mix)
        return np.maximum(z + 0.5 + np.arange(c) * 0.1 + shift, 0.0)


@pytest.fixture(scope="session")
def pf() -> type[Profiles]:
    return Profiles


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
