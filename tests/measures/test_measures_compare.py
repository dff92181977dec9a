"""compare(): pairing layers, checking profiles, and the Similarity it returns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from smart_transfer.errors import (
    ConfigError,
    DataError,
    IncompatibleError,
    ProfileError,
    UnknownNameError,
)
from smart_transfer.measures import Similarity, compare, list_measures
from smart_transfer.measures.kl import gaussian_kl


@pytest.fixture
def three_layers(pf, rng):
    """D_pre and D_new profiles of layers a (3 ch), b (2 ch), c (4 ch)."""

    def make(shift: float, seed: int, names=("a", "b", "c")):
        r = np.random.default_rng(seed)
        sizes = {"a": 3, "b": 2, "c": 4}
        return pf.profile(
            *[pf.layer(pf.relu_samples(r, 400, sizes[n], shift), name=n) for n in names]
        )

    return make(0.0, 1), make(0.3, 2)


def test_layers_follow_the_new_profiles_order(pf, rng):
    x = rng.normal(size=(100, 2))
    pre = pf.profile(*(pf.layer(x, name=n) for n in ("a", "b", "c", "only_pre")))
    new = pf.profile(*(pf.layer(x + 0.1, name=n) for n in ("c", "only_new", "a", "b")))
    sim = compare(pre, new, "gaussian_kl")
    assert sim.layers() == ["c", "a", "b"]
    assert list(sim.layer_scores) == ["c", "a", "b"]


def test_layers_argument_restricts_by_name_or_pattern(three_layers):
    pre, new = three_layers
    assert compare(pre, new, "ks", layers="b").layers() == ["b"]
    assert compare(pre, new, "ks", layers=["c", "a"]).layers() == ["a", "c"]
    assert compare(pre, new, "ks", layers="[ab]").layers() == ["a", "b"]
    with pytest.raises(UnknownNameError, match="'zzz'.*'a', 'b', 'c'"):
        compare(pre, new, "ks", layers=["a", "zzz"])


def test_no_common_layer_names_a_few_of_each(pf, rng):
    x = rng.normal(size=(50, 2))
    pre = pf.profile(*(pf.layer(x, name=f"features.{i}") for i in range(8)))
    new = pf.profile(pf.layer(x, name="blocks.0"), pf.layer(x, name="blocks.1"))
    with pytest.raises(IncompatibleError) as err:
        compare(pre, new, "gaussian_kl")
    msg = str(err.value)
    assert "'features.0'" in msg and "'blocks.0'" in msg and "3 more" in msg


def test_channel_count_mismatch_names_the_layer(pf, rng):
    pre = pf.profile(pf.layer(rng.normal(size=(50, 3)), name="head"))
    new = pf.profile(pf.layer(rng.normal(size=(50, 4)), name="head"))
    with pytest.raises(IncompatibleError, match="'head' has 3 channels .* 4"):
        compare(pre, new, "gaussian_kl")


def test_batchnorm_profile_lists_the_measures_that_can_run(pf, rng):
    x = rng.normal(size=(300, 3))
    bn = pf.profile(pf.batchnorm_layer(x.mean(0), x.var(0)), source="batchnorm")
    new = pf.profile(pf.layer(x + 0.2))
    for name in ("welch_t", "lognormal_kl", "ks", "gram"):
        with pytest.raises(ConfigError) as err:
            compare(bn, new, name)
        msg = str(err.value)
        runnable = msg.split("can run on these profiles:")[1]
        assert [m.strip(" .") for m in runnable.split(",")] == ["frechet", "gaussian_kl"]
        assert "D_pre" in msg and "'batchnorm'" in msg
    with pytest.raises(ConfigError, match="needs the statistics count,.*unknown for BatchNorm"):
        compare(bn, new, "welch_t")
    with pytest.raises(ConfigError, match="log_mean, log_var, zero_frac"):
        compare(bn, new, "lognormal_kl")


def test_batchnorm_source_runs_gaussian_kl_and_frechet(pf, rng):
    x = rng.normal(size=(300, 3))
    bn_layer = pf.batchnorm_layer(x.mean(0), x.var(0))
    bn = pf.profile(bn_layer, source="batchnorm")
    data_layer = pf.layer(x + 0.2)
    new = pf.profile(data_layer)
    sim = compare(bn, new, "gaussian_kl")
    assert sim.source == "batchnorm"
    torch.testing.assert_close(sim.raw["conv1"], gaussian_kl(bn_layer, data_layer))
    fr = compare(bn, new, "frechet")
    assert fr.meta["layers"]["conv1"]["covariance"] == "diagonal"
    assert any("diagonal variances" in n and "conv1" in n for n in fr.meta["notes"])


def test_missing_statistic_in_new_profile_is_named(pf, rng):
    x = rng.normal(size=(100, 2))
    pre = pf.profile(pf.layer(x))
    new = pf.profile(pf.layer(x, edges=None))
    with pytest.raises(ConfigError, match="hist, hist_edges.*D_new"):
        compare(pre, new, "js")


def test_histograms_with_other_bins_are_incompatible(pf, rng):
    x = rng.normal(size=(100, 2))
    pre = pf.profile(pf.layer(x))
    new = pf.profile(pf.layer(x, edges=np.linspace(-3, 3, 11)))
    with pytest.raises(IncompatibleError, match="'conv1'.*same hist settings"):
        compare(pre, new, "wasserstein")


def test_similarity_fields(pf, rng):
    a, b = rng.normal(size=(200, 3)), rng.normal(0.5, size=(200, 3))
    pre = pf.profile(pf.layer(a, params={"x.weight": (3, 1)}), num_samples=7)
    new_params = {"conv1.weight": (3, 2, 3, 3), "conv1.bias": (3,), "bn1.weight": (3,)}
    new = pf.profile(pf.layer(b, params=new_params), num_samples=9)
    sim = compare(pre, new, "js")
    assert isinstance(sim, Similarity)
    assert sim.measure == "js" and sim.direction == "divergence" and sim.source == "data"
    assert sim.params == {"conv1": new_params}
    assert sim.scores["conv1"].dtype == torch.float64 and sim.scores["conv1"].shape == (3,)
    # Channel-level measure: layer values are the channel means.
    assert sim.layer_scores["conv1"] == pytest.approx(sim.scores["conv1"].mean().item())
    assert sim.layer_raw["conv1"] == pytest.approx(sim.raw["conv1"].mean().item())
    assert sim.meta["num_samples"] == {"pre": 7, "new": 9}
    assert sim.meta["level"] == "channel" and sim.meta["assumption"]


def test_layer_measure_keeps_its_own_layer_value(pf, rng):
    a, b = rng.normal(size=(200, 4)), rng.normal(0.5, size=(200, 4))
    sim = compare(pf.profile(pf.layer(a)), pf.profile(pf.layer(b)), "gram")
    from smart_transfer.measures.layer import gram

    out = gram(pf.layer(a), pf.layer(b))
    assert sim.layer_raw["conv1"] == pytest.approx(out.layer_raw)
    assert sim.layer_scores["conv1"] == pytest.approx(out.layer_score)
    assert sim.layer_scores["conv1"] != pytest.approx(sim.scores["conv1"].mean().item())


def test_options_are_passed_and_checked(three_layers):
    pre, new = three_layers
    fwd = compare(pre, new, "gaussian_kl")
    bwd = compare(new, pre, "gaussian_kl")
    sym = compare(pre, new, "gaussian_kl", symmetric=True)
    for n in sym.layers():
        torch.testing.assert_close(sym.raw[n], 0.5 * (fwd.raw[n] + bwd.raw[n]))
    assert sym.meta["options"] == {"symmetric": True}
    with pytest.raises(ConfigError, match="no option 'symetric'.*symmetric"):
        compare(pre, new, "gaussian_kl", symetric=True)
    with pytest.raises(ConfigError, match="no option 'symmetric'; its options are: none"):
        compare(pre, new, "ks", symmetric=True)


def test_bad_arguments(pf, rng, three_layers):
    pre, new = three_layers
    with pytest.raises(ConfigError, match="prof_pre must be an ActivationProfile"):
        compare({"a": 1}, new)
    with pytest.raises(UnknownNameError, match="choose one of"):
        compare(pre, new, "kl")
    with pytest.raises(ConfigError, match="layers is empty"):
        compare(pre, new, layers=[])


def test_welch_needs_two_values_per_channel(pf):
    one = pf.profile(pf.layer(np.ones((1, 2))))
    two = pf.profile(pf.layer(np.ones((5, 2))))
    with pytest.raises(DataError, match="at least 2"):
        compare(one, two, "welch_t")


def test_non_finite_statistics_are_a_profile_error(pf, rng):
    good = pf.layer(rng.normal(size=(50, 2)))
    bad = pf.layer(rng.normal(size=(50, 2)))
    bad.mean[1] = float("nan")
    with pytest.raises(ProfileError, match="'conv1'.*'mean'"):
        compare(pf.profile(good), pf.profile(bad), "gaussian_kl")


def test_to_dict_is_json_and_round_trips(three_layers):
    pre, new = three_layers
    for name in list_measures():
        sim = compare(pre, new, name)
        text = json.dumps(sim.to_dict(), allow_nan=False)
        back = Similarity.from_dict(json.loads(text))
        assert back.layers() == sim.layers() and back.measure == name
        for n in sim.layers():
            torch.testing.assert_close(back.scores[n], sim.scores[n])
            torch.testing.assert_close(back.raw[n], sim.raw[n])
            assert back.layer_scores[n] == sim.layer_scores[n]
            assert back.params[n] == sim.params[n]


def test_profiles_taken_at_different_points_are_incompatible(pf, rng):
    x = rng.normal(size=(100, 2))
    pre, new = pf.profile(pf.layer(x)), pf.profile(pf.layer(x))
    pre.meta["point"], new.meta["point"] = "output", "activation"
    with pytest.raises(IncompatibleError, match="'output'.*'activation'.*same point"):
        compare(pre, new, "gaussian_kl")
    new.meta["point"] = "output"
    assert compare(pre, new, "gaussian_kl").layer_scores["conv1"] == 1.0
