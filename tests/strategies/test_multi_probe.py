"""Probes on many layers: the features are the pooled layer outputs side by side; the smart
selection keeps exactly the channels the divergence ranks first; the random control keeps the same
counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import smart_transfer as st
from smart_transfer.errors import ConfigError, UnknownNameError
from smart_transfer.models.heads import PENULTIMATE
from smart_transfer.strategies.base import Context, Recipe
from smart_transfer.strategies.multi_probe import run_multi_probe
from smart_transfer.strategies.probe import fit_logistic

TRAIN, VAL = torch.arange(0, 60), torch.arange(60, 90)


def _ctx(net, data, seed=0):
    tf = st.data.transforms_for(net, train=False)
    return Context(
        make_model=lambda: net,
        backbone_name="",
        num_classes=3,
        train=None,
        val=st.data.loader(data, VAL, batch_size=16),
        train_eval=st.data.loader(data, TRAIN, batch_size=16),
        train_tf=tf,
        eval_tf=tf,
        recipe=Recipe(),
        seed=seed,
    )


@torch.no_grad()
def _direct(net, x):
    """Every conv output of the tiny SmallVGG (by name) and its penultimate features, by hand."""
    net.eval()
    convs, h = {}, x
    for i, m in enumerate(net.features):
        h = m(h)
        if isinstance(m, torch.nn.Conv2d):
            convs[f"features.{i}"] = h.clone()
    return convs, net.flatten(net.pool(h))


def _pooled_concat(net, x, layers):
    convs, pen = _direct(net, x)
    return (
        torch.cat([pen if n == "penultimate" else convs[n].mean((2, 3)) for n in layers], 1)
        .double()
        .numpy()
    )


def test_multi_layer_probe_is_logistic_regression_on_the_pooled_outputs_side_by_side(
    tiny_net, tiny_data
):
    ctx = _ctx(tiny_net, tiny_data)
    out = run_multi_probe(ctx)
    layers = out.chosen["layers"]
    assert layers == ["features.0", "features.3", "features.7", "features.10", "penultimate"]
    tf = ctx.eval_tf
    xtr = _pooled_concat(tiny_net, tf(tiny_data.get_batch(TRAIN)[0]), layers)
    xva = _pooled_concat(tiny_net, tf(tiny_data.get_batch(VAL)[0]), layers)
    assert xtr.shape == (60, 8 + 8 + 16 + 16 + 16) and out.chosen["total_features"] == xtr.shape[1]
    assert out.chosen["kept_features"] == xtr.shape[1]
    # the same fit on the hand-made matrix gives the same classifier (C chosen on validation,
    # then fitted again on the training and validation samples together)
    linear, c, acc, _ = fit_logistic(
        xtr,
        tiny_data.targets[TRAIN].numpy(),
        xva,
        tiny_data.targets[VAL].numpy(),
        num_classes=3,
        refit=True,
    )
    assert out.chosen["C"] == c and out.val_accuracy == acc
    torch.testing.assert_close(out.model.head.weight, linear.weight, rtol=1e-4, atol=1e-4)
    # and the returned model predicts from images through exactly those features
    x = tf(tiny_data.get_batch(torch.arange(7))[0])
    with torch.no_grad():
        expected = out.model.head(torch.from_numpy(_pooled_concat(tiny_net, x, layers)).float())
        torch.testing.assert_close(out.model(x), expected, rtol=1e-4, atol=1e-4)
    assert out.model_kind == {"kind": "concat", "layers": layers, "in_features": xtr.shape[1]}


def _kl_by_hand(net, x):
    """KL(N(new) || N(BatchNorm source)) of every conv channel, from the raw conv outputs."""
    convs, _ = _direct(net, x)
    bns = {
        f"features.{i - 1}": m
        for i, m in enumerate(net.features)
        if isinstance(m, torch.nn.BatchNorm2d)
    }
    out = {}
    for name, h in convs.items():
        h = h.double()
        mn, vn = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
        mp, vp = bns[name].running_mean.double(), bns[name].running_var.double()
        out[name] = 0.5 * (torch.log(vp / vn) + (vn + (mn - mp) ** 2) / vp - 1.0)
    return out


@pytest.mark.parametrize("direction", ["similar", "shifted"])
def test_smart_multi_probe_keeps_the_channels_the_divergence_ranks_first(
    tiny_net, tiny_data, direction
):
    ctx = _ctx(tiny_net, tiny_data)
    out = run_multi_probe(ctx, select="smart", fraction=0.25, direction=direction)
    kl = _kl_by_hand(tiny_net, ctx.eval_tf(tiny_data.get_batch(TRAIN)[0]))
    kl["penultimate"] = kl["features.10"]  # the last conv layer's channels, activated and pooled
    assert (
        out.chosen["direction"] == direction
        and out.chosen["fraction"] == 0.25
        and out.chosen["unranked"] == []
    )
    for layer in out.chosen["layers"]:
        d = kl[layer]
        k = max(1, round(0.25 * len(d)))
        order = d.argsort(descending=direction == "shifted")
        assert out.chosen["kept"][layer] == sorted(order[:k].tolist()), layer
        assert (
            d[order[k - 1]] < d[order[k]]
            if direction == "similar"
            else d[order[k - 1]] > d[order[k]]
        )
    assert (
        out.chosen["kept_features"]
        == sum(len(v) for v in out.chosen["kept"].values())
        == 2 + 2 + 4 + 4 + 4
    )
    # the returned head has weight only on the kept columns
    w = out.model.head.weight.detach()
    start, used = 0, []
    for layer in out.chosen["layers"]:
        used += [start + i for i in out.chosen["kept"][layer]]
        start += len(kl[layer])
    mask = torch.zeros(w.shape[1], dtype=torch.bool)
    mask[used] = True
    # (a kept feature that is constant on the training images, e.g. a dead ReLU channel, gets no
    # weight either)
    varies = torch.from_numpy(
        _pooled_concat(
            tiny_net, ctx.eval_tf(tiny_data.get_batch(TRAIN)[0]), out.chosen["layers"]
        ).std(0)
        > 1e-9
    )
    assert torch.all(w[:, ~mask] == 0) and torch.all(w[:, mask & varies].abs().sum(0) > 0)
    assert int((mask & varies).sum()) >= 8


def test_smart_multi_probe_chooses_direction_and_fraction_on_validation(tiny_net, tiny_data):
    out = run_multi_probe(_ctx(tiny_net, tiny_data), select="smart", fractions=(0.25, 0.5))
    assert [(t["direction"], t["fraction"]) for t in out.tried] == [
        ("similar", 0.25),
        ("similar", 0.5),
        ("shifted", 0.25),
        ("shifted", 0.5),
    ]
    best = next(
        t for t in out.tried if t["val_accuracy"] == max(u["val_accuracy"] for u in out.tried)
    )
    assert (out.chosen["direction"], out.chosen["fraction"], out.val_accuracy) == (
        best["direction"],
        best["fraction"],
        best["val_accuracy"],
    )
    similar = run_multi_probe(
        _ctx(tiny_net, tiny_data), select="smart", fraction=0.5, direction="similar"
    )
    shifted = run_multi_probe(
        _ctx(tiny_net, tiny_data), select="smart", fraction=0.5, direction="shifted"
    )
    for layer in similar.chosen["layers"]:  # at half of each layer, the two are complements
        both = similar.chosen["kept"][layer] + shifted.chosen["kept"][layer]
        assert sorted(both) == list(range(len(both))), layer


def test_random_multi_probe_keeps_the_smart_counts_and_draws_by_its_seed(tiny_net, tiny_data):
    smart = run_multi_probe(_ctx(tiny_net, tiny_data), select="smart", fraction=0.25)
    a = run_multi_probe(_ctx(tiny_net, tiny_data), select="random", fraction=0.25, mask_seed=1)
    b = run_multi_probe(_ctx(tiny_net, tiny_data), select="random", fraction=0.25, mask_seed=1)
    c = run_multi_probe(_ctx(tiny_net, tiny_data), select="random", fraction=0.25, mask_seed=2)
    d = run_multi_probe(_ctx(tiny_net, tiny_data, seed=2), select="random", fraction=0.25)
    for r in (a, c, d):
        assert {k: len(v) for k, v in r.chosen["kept"].items()} == {
            k: len(v) for k, v in smart.chosen["kept"].items()
        }
        assert r.chosen["kept_features"] == smart.chosen["kept_features"]
        for kept in r.chosen["kept"].values():
            assert len(set(kept)) == len(kept) and all(0 <= i for i in kept)
    assert a.chosen["kept"] == b.chosen["kept"] and a.val_accuracy == b.val_accuracy
    assert a.chosen["kept"] != c.chosen["kept"] and a.chosen["kept"] != smart.chosen["kept"]
    assert (
        d.chosen["mask_seed"] == 2 and d.chosen["kept"] == c.chosen["kept"]
    )  # default: the run's seed
    # without a fraction, the control takes the one the smart selection chose on validation
    sv = run_multi_probe(_ctx(tiny_net, tiny_data), select="smart")
    rv = run_multi_probe(_ctx(tiny_net, tiny_data), select="random")
    assert (
        rv.chosen["fraction"] == sv.chosen["fraction"]
        and rv.chosen["of"]["direction"] == sv.chosen["direction"]
    )
    assert rv.chosen["kept_features"] == sv.chosen["kept_features"]


def test_multi_probes_through_train_save_and_reload(tiny_net, tiny_data, tiny_test, tmp_path):
    r = st.train(
        tiny_net,
        tiny_data,
        tiny_test,
        strategy="smart-multi-probe",
        out=tmp_path / "smp",
        progress=False,
    )
    assert r.plan is None and r.frozen_fraction > 0.5
    assert (tmp_path / "smp" / "profile_pre.pt").is_file()
    back = st.TrainResult.load(tmp_path / "smp", model=tiny_net)
    torch.testing.assert_close(st.predict(back, tiny_test).probs, st.predict(r, tiny_test).probs)
    m = st.train(tiny_net, tiny_data, tiny_test, strategy="multi-layer-probe", progress=False)
    assert np.isfinite(m.val_accuracy) and m.chosen["kept_features"] == m.chosen["total_features"]


@pytest.mark.parametrize(
    "strategy, options, named",
    [
        ("smart-multi-probe", {"fraction": 1.5}, "fraction"),
        ("smart-multi-probe", {"fraction": 0}, "fraction"),
        ("smart-multi-probe", {"fractions": []}, "fractions"),
        ("random-multi-probe", {"fractions": [0.25, 2.0]}, "fractions"),
        ("smart-multi-probe", {"direction": "up"}, "direction"),
        ("random-multi-probe", {"mask_seed": "one"}, "mask_seed"),
        ("multi-layer-probe", {"layers": "features.0"}, "layers"),
        ("smart-multi-probe", {"measure": "frechet"}, "channel-level"),
        (
            "multi-layer-probe",
            {"fraction": 0.25},
            "fraction",
        ),  # not an option of the unselected probe
        ("smart-multi-probe", {"mask_seed": 3}, "mask_seed"),  # only the control draws at random
        ("smart-multi-probe", {"fration": 0.25}, "fration"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(
    tiny_net, tiny_data, strategy, options, named
):
    with pytest.raises(ConfigError, match=named):
        st.train(tiny_net, tiny_data, strategy=strategy, progress=False, **options)


def test_unknown_measure_and_layer_are_named(tiny_net, tiny_data):
    with pytest.raises(UnknownNameError, match="gaussian_kl"):
        st.train(
            tiny_net,
            tiny_data,
            strategy="smart-multi-probe",
            measure="gaussian_kll",
            progress=False,
        )
    with pytest.raises(ConfigError, match="features.99"):
        st.train(
            tiny_net,
            tiny_data,
            strategy="multi-layer-probe",
            layers=["features.99"],
            progress=False,
        )


def test_probe_features_come_from_a_cached_superset_unchanged(tiny_net, tiny_data, monkeypatch):
    """auto's probes share one context: the penultimate features are read off the candidate
    layers already extracted, with the same values and no second pass over the images."""
    from smart_transfer.strategies import probe

    ctx = _ctx(tiny_net, tiny_data)
    cands = probe.candidate_layers(tiny_net)
    ftr, ytr, fva, yva = probe._features(ctx, tiny_net, cands)
    direct_tr, _ = probe.layer_features(tiny_net, [PENULTIMATE], ctx.train_eval, ctx.eval_tf)

    def no_second_pass(*args, **kwargs):
        raise AssertionError("features extracted again")

    monkeypatch.setattr(probe, "layer_features", no_second_pass)
    sub_tr, sub_ytr, sub_va, _ = probe._features(ctx, tiny_net, [PENULTIMATE])
    assert list(sub_tr) == [PENULTIMATE]
    np.testing.assert_array_equal(sub_tr[PENULTIMATE], direct_tr[PENULTIMATE])
    np.testing.assert_array_equal(sub_va[PENULTIMATE], fva[PENULTIMATE])
    np.testing.assert_array_equal(sub_ytr, ytr)
    np.testing.assert_array_equal(sub_tr[PENULTIMATE], ftr[PENULTIMATE])
    assert len(yva) == len(VAL)
