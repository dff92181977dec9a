"""Subsampled statistics: unbiased, and the plans they give agree with exact ones."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import smart_transfer as st
from smart_transfer.stats.running import RunningStats


def test_sampled_covariance_is_unbiased():
    """The mean over many seeds of the sampled covariance converges to the exact one."""
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(4, 4, generator=gen)
    x = (mix @ torch.randn(4, 3 * 40, generator=gen)).view(4, 3, 40).transpose(0, 1) + 2.0
    x = x.contiguous()  # (3 images, 4 channels, 40 positions): correlated channels
    exact = RunningStats(4, cov_sample_per_batch=None, sample_per_batch=None, hist_bins=0)
    exact.update(x)
    ref = exact.to_layer_profile("l", "conv", {}).cov
    runs = []
    for seed in range(400):
        acc = RunningStats(
            4, cov_sample_per_batch=12, hist_bins=0, generator=torch.Generator().manual_seed(seed)
        )
        acc.update(x)
        lp = acc.to_layer_profile("l", "conv", {})
        assert lp.cov_count.tolist() == [12.0] * 4
        runs.append(lp.cov)
    runs_t = torch.stack(runs)
    mean, se = runs_t.mean(0), runs_t.std(0) / len(runs) ** 0.5
    off = ~torch.eye(4, dtype=torch.bool)
    assert bool((runs_t.std(0)[off] > 0).all())  # really sampled
    z = ((mean - ref) / se.clamp_min(1e-12))[off]
    assert float(z.abs().max()) < 4.5, z  # a biased estimator (e.g. no n/k weight) fails
    # exact diagonal (float32 sums in another order: rounding only)
    torch.testing.assert_close(runs_t[0].diagonal(), ref.diagonal(), rtol=1e-6, atol=1e-9)


def test_sampled_log_moments_are_unbiased():
    """Every position equally likely: the mean of sampled log means is the exact log mean."""
    gen = torch.Generator().manual_seed(1)
    # a spatial trend, so that favouring some positions would show as a bias
    x = (torch.rand(2, 3, 45, generator=gen) + torch.linspace(0.01, 3, 45)).contiguous()
    exact = RunningStats(3, sample_per_batch=None, hist_bins=0, covariance=False)
    exact.update(x)
    ref = exact.to_layer_profile("l", "conv", {}).log_mean
    means = []
    for seed in range(400):
        acc = RunningStats(
            3,
            sample_per_batch=40,
            hist_bins=0,
            covariance=False,
            generator=torch.Generator().manual_seed(seed),
        )
        acc.update(x)
        means.append(acc.to_layer_profile("l", "conv", {}).log_mean)
    m = torch.stack(means)
    z = (m.mean(0) - ref) / (m.std(0) / len(means) ** 0.5)
    assert float(z.abs().max()) < 4.5, z


def _bench_sampling():
    """benchmarks/bench_sampling.py, whose data, exact plans and agreement this test shares."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_sampling.py"
    spec = importlib.util.spec_from_file_location("bench_sampling", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_default_sampling_changes_no_plan():
    """quantile=0.5 plans from the default (subsampled) statistics agree with those from exact
    statistics on >= 98 % of channels for the KL measures and >= 95 % for every other one.

    EfficientNet-Lite0 (ImageNet weights), 96 px; D_pre: 512 Fashion-MNIST training images of
    classes 5-9, D_new: 512 of classes 0-4.
    """
    try:
        st.data.fashion_mnist("train", download=False)
        st.load_backbone("efficientnet_lite0")
    except (st.DataError, st.MissingDependencyError) as e:
        pytest.skip(f"needs Fashion-MNIST and the EfficientNet-Lite0 weights ({e})")
    bench = _bench_sampling()
    model = st.load_backbone("efficientnet_lite0").eval()
    data = bench.fashion_batches(model, images=512, size=96)
    measures = st.list_measures()
    exact = bench.exact_plans(model, data, measures)
    default = [st.profile(model, d, progress=False) for d in data]
    assert default[0].meta["subsampled"] and default[0].meta["cov_subsampled"]
    agreement = {m: bench.agreement(exact[m], *default, m)["network"] / 100 for m in measures}
    print("plan agreement per measure:", agreement)
    for measure, value in agreement.items():
        need = 0.98 if measure in ("gaussian_kl", "lognormal_kl") else 0.95
        assert value >= need, (measure, value)
