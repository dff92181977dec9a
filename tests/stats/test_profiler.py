"""stats/profiler.py: profile() against activations captured directly, and its contracts."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
from stats_helpers import (
    assert_layer_matches,
    capture,
    image_batches,
    profiles_equal,
    ref_stats,
    tiny_vgg,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import smart_transfer as st
from smart_transfer.errors import ConfigError, DataError, ProfileError
from smart_transfer.layers import layer_param_map
from smart_transfer.stats import hist_edges

CONVS = ["features.0", "features.3", "features.7", "features.10"]
LAYERS = CONVS + ["classifier"]
EXACT = {
    "progress": False,
    "sample_per_batch": None,
    "cov_sample_per_batch": None,
    "hist_sample_per_batch": None,
}  # no subsampling: every statistic is exact


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# -- values ------------------------------------------------------------------------------------


def test_every_layer_matches_numpy_on_captured_outputs():
    model, batches = tiny_vgg(), image_batches(3)
    prof = st.profile(model, batches, **EXACT)
    assert prof.names() == LAYERS
    assert prof.source == "data" and prof.num_samples == 15
    captured = capture(model, {n: n for n in LAYERS}, batches)
    edges = hist_edges(128, 0.01, 1e4).numpy()
    for name in LAYERS:
        assert_layer_matches(prof[name], ref_stats(captured[name], edges))
    assert prof["features.0"].kind == "conv" and prof["classifier"].kind == "linear"
    assert {n: prof[n].params for n in LAYERS} == layer_param_map(model, LAYERS)
    assert prof.available() >= {
        "count",
        "mean",
        "var",
        "min",
        "max",
        "zero_frac",
        "log_mean",
        "hist",
        "cov",
    }


def test_point_norm_is_the_batchnorm_output_keyed_by_the_conv():
    model, batches = tiny_vgg(), image_batches(2)
    prof = st.profile(model, batches, point="norm", **EXACT)
    assert prof.names() == CONVS  # the classifier has no BatchNorm after it
    assert "classifier" in prof.meta["skipped"]
    bns = {
        "features.0": "features.1",
        "features.3": "features.4",
        "features.7": "features.8",
        "features.10": "features.11",
    }
    assert prof.meta["hooked"] == bns
    captured = capture(model, bns, batches)
    raw = st.profile(model, batches, **EXACT)
    for name in CONVS:
        assert_layer_matches(prof[name], ref_stats(captured[name]))
        assert not torch.allclose(prof[name].mean, raw[name].mean)  # really a different point


def test_point_act_is_the_activation_output():
    model, batches = tiny_vgg(), image_batches(2)
    prof = st.profile(model, batches, point="act", **EXACT)
    assert prof.names() == CONVS
    relus = {
        "features.0": "features.2",
        "features.3": "features.5",
        "features.7": "features.9",
        "features.10": "features.12",
    }
    captured = capture(model, relus, batches)
    for name in CONVS:
        assert_layer_matches(prof[name], ref_stats(captured[name]))
        assert float(prof[name].zero_frac.mean()) > 0.2  # ReLU sparsity is what zero_frac is for
        assert float(prof[name].min.min()) == 0.0


def test_shared_activation_module_is_rejected_for_point_act():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.relu(self.conv2(self.relu(self.conv1(x))))

    with pytest.raises(ProfileError, match="shared"):
        st.profile(Shared(), image_batches(1), point="act", progress=False)


def test_linear_on_sequences_uses_the_last_dim():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 5)
            self.head = nn.Linear(5, 2)

        def forward(self, x):  # (B, T, 6)
            return self.head(torch.relu(self.proj(x)).mean(1))

    torch.manual_seed(0)
    model = Seq()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(3, 7, 6, generator=gen) for _ in range(2)]
    prof = st.profile(model, batches, **EXACT)
    captured = capture(model, {"proj": "proj", "head": "head"}, batches)
    assert prof["proj"].count[0] == 2 * 3 * 7
    for name in ("proj", "head"):
        assert_layer_matches(
            prof[name], ref_stats(captured[name], hist_edges(128, 0.01, 1e4).numpy())
        )


def test_subsampled_profile_is_reproducible_and_records_the_sample_size():
    model, batches = tiny_vgg(), image_batches(2)
    kw = {
        "progress": False,
        "sample_per_batch": 50,
        "hist_sample_per_batch": None,
        "cov_sample_per_batch": 30,
    }
    a = st.profile(model, batches, seed=3, **kw)
    b = st.profile(model, batches, seed=3, **kw)
    c = st.profile(model, batches, seed=4, **kw)
    assert a.meta["sample_per_batch"] == 50 and a.meta["subsampled"]
    assert a.meta["cov_sample_per_batch"] == 30 and a.meta["cov_subsampled"]
    assert torch.equal(a["features.0"].hist, b["features.0"].hist)
    assert torch.equal(a["features.0"].cov, b["features.0"].cov)
    assert not torch.equal(a["features.0"].hist, c["features.0"].hist)
    assert not torch.equal(a["features.0"].cov, c["features.0"].cov)
    assert a["features.0"].hist_count.tolist() == [100.0] * 4  # 50 positions x 2 batches
    assert a["features.0"].cov_count.tolist() == [60.0] * 4  # 30 positions x 2 batches
    exact = st.profile(model, batches, **EXACT)
    assert exact["features.0"].cov_count.tolist() == [2.0 * 5 * 16 * 16] * 4
    assert torch.equal(a["features.0"].count, exact["features.0"].count)  # moments use every value
    torch.testing.assert_close(a["features.0"].var, exact["features.0"].var, rtol=1e-6, atol=0)
    # the covariance's diagonal is the exact variance whatever the sample
    torch.testing.assert_close(a["features.0"].cov.diagonal(), a["features.0"].var, rtol=0, atol=0)


def test_histogram_edges_do_not_depend_on_the_data():
    model = tiny_vgg()
    a = st.profile(model, image_batches(1, seed=1), progress=False)
    b = st.profile(model, [10 * x + 3 for x in image_batches(2, seed=2)], progress=False)
    for name in LAYERS:
        assert torch.equal(a[name].hist_edges, b[name].hist_edges)
        assert torch.equal(a[name].hist_edges, hist_edges(128, 0.01, 1e4))
    c = st.profile(
        model, image_batches(1), progress=False, hist_bins=32, hist_scale=0.1, hist_max=10.0
    )
    assert torch.equal(c["features.0"].hist_edges, hist_edges(32, 0.1, 10.0))
    assert c["features.0"].hist.shape == (4, 32)


def test_statistics_can_be_switched_off():
    prof = st.profile(tiny_vgg(), image_batches(1), progress=False, covariance=False, hist_bins=0)
    lp = prof["features.0"]
    assert lp.cov is None and lp.hist is None and lp.hist_edges is None
    assert prof.meta["covariance"] is False and prof.meta["hist_bins"] == 0


# -- loaders and batches -------------------------------------------------------------------------


def test_batch_forms_give_the_same_profile():
    model, batches = tiny_vgg(), image_batches(2)
    ref = st.profile(model, batches, **EXACT)
    labels = torch.zeros(5, dtype=torch.long)
    ds = TensorDataset(torch.cat(batches), torch.zeros(10, dtype=torch.long))
    forms = {
        "tuple": [(x, labels) for x in batches],
        "list": [[x, labels, "meta"] for x in batches],
        "dict_image": [{"image": x, "label": labels} for x in batches],
        "dict_pixel_values": [{"pixel_values": x} for x in batches],
        "numpy": [x.numpy() for x in batches],
        "float64": [x.double() for x in batches],  # cast to the model's dtype
        "dataloader": DataLoader(ds, batch_size=5),
        "generator": (x for x in batches),
    }
    for name, loader in forms.items():
        prof = st.profile(model, loader, **EXACT)
        assert prof.num_samples == 10, name
        for layer in LAYERS:
            torch.testing.assert_close(
                prof[layer].mean, ref[layer].mean, rtol=1e-6, atol=1e-7, msg=name
            )
            assert torch.equal(prof[layer].hist, ref[layer].hist) or name == "float64", name


@pytest.mark.parametrize(
    "batch, match",
    [
        ({"labels": torch.zeros(2)}, "keys"),
        ((), "empty"),
        ("abc", "str"),
        ((["not", "a", "tensor"], 1), "list"),
        (torch.tensor(1.0), "0-d"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "uint8"),
    ],
)
def test_bad_batches_are_data_errors(batch, match):
    model = tiny_vgg()
    with pytest.raises(DataError, match=match):
        st.profile(model, [batch], progress=False)
    assert _no_hooks(model)


def test_empty_loader_is_a_data_error():
    with pytest.raises(DataError, match="no batches"):
        st.profile(tiny_vgg(), [], progress=False)
    with pytest.raises(DataError, match="no batches"):
        st.profile(tiny_vgg(), [torch.zeros(0, 3, 16, 16)], progress=False)


def test_max_batches_stops_early_without_reading_further():
    model, batches = tiny_vgg(), image_batches(4)
    pulled = []

    def loader():
        for i, x in enumerate(batches):
            pulled.append(i)
            yield x

    prof = st.profile(model, loader(), max_batches=2, **EXACT)
    assert pulled == [0, 1]
    assert prof.num_samples == 10 and prof.meta["num_batches"] == 2
    first_two = st.profile(model, batches[:2], **EXACT)
    torch.testing.assert_close(prof["features.3"].cov, first_two["features.3"].cov, rtol=0, atol=0)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="max_batches"):
            st.profile(model, batches, max_batches=bad, progress=False)


def test_progress_bar_runs():
    prof = st.profile(tiny_vgg(), image_batches(2), progress=True)  # off when not on a terminal
    assert prof.num_samples == 10


# -- selection and configuration errors ----------------------------------------------------------


def test_layer_selection_patterns_types_exclude():
    model, batches = tiny_vgg(), image_batches(1)
    assert st.profile(model, batches, layers="features.*", progress=False).names() == CONVS
    assert st.profile(model, batches, layers=["classifier"], progress=False).names() == [
        "classifier"
    ]
    assert st.profile(model, batches, types=[nn.Linear], progress=False).names() == ["classifier"]
    assert st.profile(
        model, batches, exclude=["features.1*", "classifier"], progress=False
    ).names() == ["features.0", "features.3", "features.7"]
    with pytest.raises(ConfigError, match="no layer"):
        st.profile(model, batches, layers="nothing.*", progress=False)


def test_bad_settings_are_config_errors():
    model, batches = tiny_vgg(), image_batches(1)
    with pytest.raises(ConfigError, match="point"):
        st.profile(model, batches, point="input", progress=False)
    with pytest.raises(ConfigError, match="point='output'"):
        st.profile(model, batches, layers="classifier", point="norm", progress=False)
    with pytest.raises(ConfigError, match="device"):
        st.profile(model, batches, device="meta", progress=False)
    with pytest.raises(ConfigError, match="sample_per_batch"):
        st.profile(model, batches, sample_per_batch=0, progress=False)
    with pytest.raises(ConfigError, match="hist"):
        st.profile(model, batches, hist_scale=-1.0, progress=False)
    with pytest.raises(ConfigError, match="Module"):
        st.profile(lambda x: x, batches, progress=False)
    with pytest.raises(ConfigError, match="distributed"):
        st.profile(model, batches, distributed=True, progress=False)


def test_layers_that_never_run_are_skipped():
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(3, 2, 1)
            self.unused = nn.Linear(2, 2)

        def forward(self, x):
            return self.used(x)

    prof = st.profile(WithUnused(), image_batches(1), progress=False)
    assert prof.names() == ["used"]
    assert "unused" in prof.meta["skipped"]


# -- NaN / Inf -----------------------------------------------------------------------------------


def test_nan_input_names_the_batch():
    batches = image_batches(3)
    batches[2][1, 0, 3, 3] = float("nan")
    model = tiny_vgg()
    with pytest.raises(DataError, match="batch 2"):
        st.profile(model, batches, progress=False)
    assert _no_hooks(model)


def test_nan_weights_name_the_layer_and_the_batch():
    model = tiny_vgg()
    with torch.no_grad():
        model.features[3].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ProfileError, match=r"'features\.3'.*batch 0"):
        st.profile(model, image_batches(2), progress=False)


# -- profiling changes nothing -------------------------------------------------------------------


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_model_is_left_exactly_as_it_was():
    model = tiny_vgg()
    model.train()
    model.features[4].eval()  # a deliberately mixed model: one BN frozen in eval mode
    model.classifier.weight.requires_grad_(False)
    modes = {n: m.training for n, m in model.named_modules()}
    before = _state(model)
    grad_enabled = torch.is_grad_enabled()

    prof = st.profile(model, image_batches(2), progress=False)

    assert {n: m.training for n, m in model.named_modules()} == modes
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # BatchNorm running stats and num_batches_tracked too
    assert _no_hooks(model)
    assert torch.is_grad_enabled() == grad_enabled
    assert not model.classifier.weight.requires_grad and model.features[0].weight.requires_grad
    # it ran in eval mode: the statistics are those of the eval-mode model
    ref = capture(copy.deepcopy(model).eval(), {"features.3": "features.3"}, image_batches(2))
    np.testing.assert_allclose(
        prof["features.3"].mean.numpy(), ref["features.3"].mean(0), rtol=1e-5, atol=1e-6
    )


def test_profiling_runs_without_gradients():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            seen.append((torch.is_grad_enabled(), self.training))
            return self.conv(x)

    model = Probe().train()
    st.profile(model, image_batches(1), progress=False)
    assert seen == [(False, False)]
    assert model.training


def test_hooks_removed_and_modes_restored_when_the_loader_raises():
    model = tiny_vgg().train()
    before = _state(model)

    def loader():
        yield image_batches(1)[0]
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        st.profile(model, loader(), progress=False)
    assert _no_hooks(model)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_hooks_removed_and_modes_restored_when_the_forward_raises():
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.bn = nn.BatchNorm2d(2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("boom")
            return self.bn(self.conv(x))

    model = Flaky().train()
    with pytest.raises(RuntimeError, match="boom") as info:
        st.profile(model, image_batches(3), progress=False)
    if sys.version_info >= (3, 11):  # exceptions carry notes from 3.11 on
        assert any("batch 1" in note for note in info.value.__notes__)
    assert _no_hooks(model)
    assert model.training and model.bn.training
    assert int(model.bn.num_batches_tracked) == 0


def test_two_profiles_in_a_row_do_not_accumulate_hooks():
    model, batches = tiny_vgg(), image_batches(1)
    a = st.profile(model, batches, **EXACT)
    b = st.profile(model, batches, **EXACT)
    for name in LAYERS:
        assert torch.equal(a[name].count, b[name].count)
        torch.testing.assert_close(a[name].cov, b[name].cov, rtol=0, atol=0)
    assert _no_hooks(model)


def test_profile_of_halves_merges_to_the_whole():
    model, batches = tiny_vgg(), image_batches(4)
    whole = st.profile(model, batches, **EXACT)
    for split in (1, 3):
        merged = st.profile(model, batches[:split], **EXACT).merge(
            st.profile(model, batches[split:], **EXACT)
        )
        profiles_equal(merged, whole)
        assert merged.meta["num_batches"] == 4


def test_channels_last_model_matches():
    model, batches = tiny_vgg(), image_batches(2)
    ref = st.profile(model, batches, **EXACT)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cl = st.profile(cl_model, [x.to(memory_format=torch.channels_last) for x in batches], **EXACT)
    for name in LAYERS:
        torch.testing.assert_close(cl[name].mean, ref[name].mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cl[name].var, ref[name].var, rtol=1e-4, atol=1e-6)
        assert torch.equal(cl[name].count, ref[name].count)


def test_stats_package_exports():
    from smart_transfer import stats

    for name in ("profile", "profile_from_batchnorm", "ActivationProfile", "LayerProfile"):
        assert hasattr(stats, name) and getattr(st, name) is getattr(stats, name)
