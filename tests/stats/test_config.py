"""StatsConfig: one set of sampling settings, and a lighter set of statistics on request."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stats_helpers import capture, image_batches, tiny_vgg

import smart_transfer as st
from smart_transfer.errors import ConfigError
from smart_transfer.stats import RunningStats, StatsConfig, native


def test_default_config_is_the_previous_default_profile():
    """The default StatsConfig and the individual keyword arguments give the same numbers."""
    model, data = tiny_vgg(), image_batches(2, 4, 16)
    a = st.profile(model, data, progress=False)
    b = st.profile(model, data, progress=False, config=StatsConfig())
    for name, la in a.layers.items():
        lb = b.layers[name]
        for f in ("mean", "var", "log_mean", "hist", "cov"):
            assert torch.equal(getattr(la, f), getattr(lb, f)), (name, f)
    assert a.meta["stats"] == ["moments", "logs", "histogram", "covariance"]


def test_moments_only_profile_has_the_same_moments_and_nothing_else():
    model, data = tiny_vgg(), image_batches(2, 4, 16)
    full = st.profile(model, data, progress=False)
    light = st.profile(
        model, data, progress=False, config=StatsConfig.for_measures(["gaussian_kl"])
    )
    assert light.meta["stats"] == ["moments"] and light.meta["hist_bins"] == 0
    ref = capture(model, {"features.0": "features.0"}, data)["features.0"]
    lp = light.layers["features.0"]
    np.testing.assert_allclose(lp.mean.numpy(), ref.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lp.var.numpy(), ref.var(0), rtol=1e-4, atol=1e-7)
    for name, lf in full.layers.items():
        ll = light.layers[name]
        assert ll.log_mean is None and ll.hist is None and ll.cov is None, name
        for f in ("mean", "var", "min", "max", "zero_frac"):
            torch.testing.assert_close(getattr(ll, f), getattr(lf, f), rtol=1e-6, atol=1e-7)


def test_for_measures_picks_the_groups_their_statistics_need():
    assert StatsConfig.for_measures(["gaussian_kl"]).stats == ("moments",)
    assert StatsConfig.for_measures(["lognormal_kl"]).stats == ("moments", "logs")
    assert StatsConfig.for_measures(["js", "gaussian_kl"]).stats == ("moments", "histogram")
    assert StatsConfig(stats=("covariance",)).stats == ("moments", "covariance")
    with pytest.raises(ConfigError, match="unknown group"):
        StatsConfig(stats=("moment",))
    with pytest.raises(ConfigError, match="sample_per_batch"):
        StatsConfig(sample_per_batch=0)


def test_a_measure_the_profile_cannot_serve_names_the_config_to_profile_with():
    model = tiny_vgg()
    light = StatsConfig(stats=("moments",))
    pre = st.profile(model, image_batches(2, 4, 16, seed=1), progress=False, config=light)
    new = st.profile(model, image_batches(2, 4, 16, seed=2), progress=False, config=light)
    full_pre = st.profile(model, image_batches(2, 4, 16, seed=1), progress=False)
    full_new = st.profile(model, image_batches(2, 4, 16, seed=2), progress=False)
    got = st.compare(pre, new, "gaussian_kl").raw["features.0"]
    torch.testing.assert_close(got, st.compare(full_pre, full_new, "gaussian_kl").raw["features.0"])
    with pytest.raises(ConfigError, match=r"StatsConfig\.for_measures\(\['lognormal_kl'\]\)"):
        st.compare(pre, new, "lognormal_kl")


def test_config_and_contradicting_keywords_are_refused():
    model, data = tiny_vgg(), image_batches(1, 2, 16)
    with pytest.raises(ConfigError, match="hist_bins"):
        st.profile(model, data, progress=False, config=StatsConfig(), hist_bins=16)
    with pytest.raises(ConfigError, match="seed"):
        st.profile(model, data, progress=False, config=StatsConfig(), seed=3)
    with pytest.raises(ConfigError, match="StatsConfig"):
        RunningStats(3, config={"stats": ("moments",)})  # type: ignore[arg-type]


def test_profile_records_which_engine_computed_it(monkeypatch):
    model, data = tiny_vgg(), image_batches(2, 8, 16)
    monkeypatch.setattr(native, "kernels", lambda: None)
    eager = st.profile(model, data, progress=False)
    assert eager.meta["engine"] == "eager"
    assert eager.meta["engine_layers"]["native"] == 0
    monkeypatch.undo()
    if native.kernels() is None:
        pytest.skip("no C compiler: the fused statistics cannot be built here")
    fused = st.profile(model, data, progress=False)
    assert fused.meta["engine"] == "native" and fused.meta["engine_layers"]["native"] > 0
    torch.testing.assert_close(
        fused.layers["features.0"].mean, eager.layers["features.0"].mean, rtol=1e-5, atol=1e-7
    )
