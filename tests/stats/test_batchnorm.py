"""stats/batchnorm.py: the Gaussian source profile read from BatchNorm running statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from stats_helpers import capture, image_batches, tiny_vgg
from torch import nn

import smart_transfer as st
from smart_transfer.errors import ConfigError
from smart_transfer.layers import layer_param_map

CONVS = ["features.0", "features.3", "features.7", "features.10"]
BNS = ["features.1", "features.4", "features.8", "features.11"]


def test_profile_from_batchnorm_reads_running_stats_keyed_by_conv():
    model = tiny_vgg()
    prof = st.profile_from_batchnorm(model)
    assert prof.source == "batchnorm" and prof.num_samples == 0
    assert prof.names() == CONVS  # the classifier feeds no BatchNorm
    mods = dict(model.named_modules())
    for conv, bn in zip(CONVS, BNS):
        lp = prof[conv]
        assert lp.kind == "conv" and lp.num_channels == mods[conv].out_channels
        assert lp.mean.dtype == torch.float64 and torch.equal(
            lp.mean, mods[bn].running_mean.double()
        )
        assert torch.equal(lp.var, mods[bn].running_var.double())
        assert bool(torch.isnan(lp.count).all())
        assert lp.available() == {"count", "mean", "var"}
        assert lp.params == layer_param_map(model, [conv])[conv]
        assert f"{bn}.weight" in lp.params  # the BN affine entries belong to the conv's channels
    assert prof.meta["norms"] == dict(zip(CONVS, BNS))
    # a copy, not a view: later training must not change a profile already taken
    mods["features.1"].running_mean.add_(1.0)
    assert not torch.equal(prof["features.0"].mean, mods["features.1"].running_mean.double())


def test_layer_selection_and_names_match_profile():
    model = tiny_vgg()
    assert st.profile_from_batchnorm(model, layers="features.1*").names() == ["features.10"]
    assert st.profile_from_batchnorm(model, exclude="features.0").names() == CONVS[1:]
    data = st.profile(model, image_batches(1), progress=False)
    assert set(st.profile_from_batchnorm(model).names()) <= set(data.names())


def test_model_without_batchnorm_says_to_profile_source_images():
    with pytest.raises(ConfigError, match=r"st\.profile"):
        st.profile_from_batchnorm(tiny_vgg(batch_norm=False))
    model = tiny_vgg()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
    with pytest.raises(ConfigError, match="running statistics"):
        st.profile_from_batchnorm(model)
    with pytest.raises(ConfigError, match="selected"):
        st.profile_from_batchnorm(tiny_vgg(), layers="classifier")


def _fit_running_stats(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Forward in train mode with momentum=None: running stats become cumulative averages."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    model.eval()


def test_batchnorm_profile_matches_data_profile_of_the_same_images():
    model = tiny_vgg()
    batches = image_batches(3, batch=6)
    _fit_running_stats(model, batches)
    bn_prof = st.profile_from_batchnorm(model)
    mods = dict(model.named_modules())

    # The conv outputs do not depend on BN mode, so the data profile sees what BN saw in training
    # (conv -> BN is the first place each batch's statistics differ between modes).
    first = ["features.0"]  # later convs see BN outputs, which differ between train and eval mode
    data_prof = st.profile(
        model,
        batches,
        layers=first,
        progress=False,
        sample_per_batch=None,
        cov_sample_per_batch=None,
        hist_sample_per_batch=None,
    )
    lp, bp = data_prof["features.0"], bn_prof["features.0"]
    # Equal batch sizes: the average of the batch means is the mean over all images.
    torch.testing.assert_close(bp.mean, lp.mean, rtol=1e-5, atol=1e-6)
    # BN keeps the average of each batch's *unbiased* variance; rebuild that from per-batch
    # profiles.
    per_batch = [
        st.profile(
            model,
            [x],
            layers=first,
            progress=False,
            sample_per_batch=None,
            cov_sample_per_batch=None,
            hist_sample_per_batch=None,
        )["features.0"]
        for x in batches
    ]
    want = torch.stack([p.var * p.count / (p.count - 1) for p in per_batch]).mean(0)
    torch.testing.assert_close(bp.var, want, rtol=1e-5, atol=1e-7)
    # and against the pooled variance of all data, which differs only by the between-batch spread
    np.testing.assert_allclose(bp.var.numpy(), lp.var.numpy(), rtol=0.1)
    assert mods["features.1"].num_batches_tracked == 3
    assert bn_prof.meta["num_batches_tracked"]["features.0"] == 3


def test_batchnorm_profile_with_one_batch_equals_unbiased_profile_variance_for_every_layer():
    """With one batch every layer's BN saw exactly the conv outputs of the train-mode forward."""
    model = tiny_vgg()
    x = image_batches(1, batch=8)[0]
    _fit_running_stats(model, [x])
    bn_prof = st.profile_from_batchnorm(model)
    model.train()  # capture the conv outputs as BN saw them (train-mode BN upstream)
    captured = capture_train(model, x)
    model.eval()
    for conv in CONVS:
        v = captured[conv]
        n = v.shape[0]
        np.testing.assert_allclose(bn_prof[conv].mean.numpy(), v.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            bn_prof[conv].var.numpy(), v.var(0) * n / (n - 1), rtol=1e-4, atol=1e-6
        )
        assert math.isnan(float(bn_prof[conv].count[0]))


def capture_train(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Conv outputs of a train-mode forward without touching BN running statistics."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False  # use batch statistics, update nothing
    try:
        return capture_keep_mode(model, x)
    finally:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.track_running_stats = True
        model.load_state_dict(state)


def capture_keep_mode(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    mods = dict(model.named_modules())
    got: dict[str, np.ndarray] = {}
    handles = [
        mods[c].register_forward_hook(
            lambda _m, _i, o, c=c: got.__setitem__(
                c, o.detach().double().movedim(1, -1).reshape(-1, o.shape[1]).numpy()
            )
        )
        for c in CONVS
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return got


def test_capture_helper_is_consistent_with_eval_capture():
    """The reference helper itself: in eval mode it agrees with the shared capture()."""
    model = tiny_vgg()
    x = image_batches(1)[0]
    a = capture_keep_mode(model.eval(), x)
    b = capture(model, {c: c for c in CONVS}, [x])
    for c in CONVS:
        np.testing.assert_array_equal(a[c], b[c])
