"""Every strategy through st.train: what it must leave frozen stays bit-identical."""

from __future__ import annotations

import pytest
import torch

import smart_transfer as st
from smart_transfer.errors import ConfigError, UnknownNameError

ALL = [
    "linear-probe",
    "linear-probe-best-layer",
    "head-only",
    "first-k-frozen",
    "full-finetune",
    "fine-tune",
    "lp-ft",
    "smart-kernel",
    "smart-layer",
    "random-mask",
    "smart-probe",
    "random-probe",
    "multi-layer-probe",
    "smart-multi-probe",
    "random-multi-probe",
    "auto",
]


def test_registry_lists_every_strategy_with_details():
    assert st.list_strategies() == ALL
    for d in st.list_strategies(details=True):
        assert set(d) == {"name", "trains", "needs", "options"} and d["trains"]


def test_unknown_strategy_and_option_name_the_known_ones(tiny_net, tiny_data):
    with pytest.raises(UnknownNameError, match="smart-kernel"):
        st.train(tiny_net, tiny_data, strategy="smart-kernal", progress=False)
    with pytest.raises(ConfigError, match="quantile"):
        st.train(tiny_net, tiny_data, strategy="smart-kernel", quantle=0.3, progress=False)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_head_only_changes_only_the_head(tiny_net, tiny_data):
    before = _params(tiny_net)
    r = st.train(tiny_net, tiny_data, strategy="head-only", epochs=2, progress=False)
    bn_before = {n: b.clone() for n, b in tiny_net.named_buffers()}
    for n, p in r.model.named_parameters():
        if n.startswith("classifier"):
            continue
        assert torch.equal(p, before[n]), n
    for n, b in r.model.named_buffers():  # BatchNorm stayed in eval mode
        if "running" in n:
            assert torch.equal(b, bn_before[n]), n
    assert len(r.history) == 2 and r.frozen_fraction > 0.9


def test_first_k_frozen_chooses_k_on_validation_and_freezes_those_layers(tiny_net, tiny_data):
    before = _params(tiny_net)
    r = st.train(tiny_net, tiny_data, strategy="first-k-frozen", epochs=3, lr=0.01, progress=False)
    ks = [t["k"] for t in r.tried]
    assert ks == sorted(set(ks)) and r.chosen["k"] in ks
    # the lowest validation loss is kept (equal losses: the higher accuracy, then the earlier k)
    kept = min(r.tried, key=lambda t: (t["val_loss"], -t["val_accuracy"]))
    assert r.chosen["k"] == kept["k"] and r.val_accuracy == kept["val_accuracy"]
    layers = st.list_layers(tiny_net)[: r.chosen["k"]]
    for layer in layers:
        w = dict(r.model.named_parameters())[f"{layer}.weight"]
        assert torch.equal(w, before[f"{layer}.weight"]), layer
    # the layers after the first k train: the kept state (an epoch >= 1) has moved them
    assert r.history and min(h["epoch"] for h in r.history) >= 1
    last = st.list_layers(tiny_net)[-2]
    assert not torch.equal(
        dict(r.model.named_parameters())[f"{last}.weight"], before[f"{last}.weight"]
    )


def test_smart_kernel_keeps_its_plan_bit_exact_and_random_mask_matches_its_counts(
    tiny_net, tiny_data, tmp_path
):
    before = _params(tiny_net)
    r = st.train(
        tiny_net,
        tiny_data,
        strategy="smart-kernel",
        epochs=3,
        lr=0.01,
        out=tmp_path / "smart",
        bn_stats="update",
        progress=False,
    )
    plan = r.plan
    assert plan is not None and 0.3 < r.frozen_fraction < 0.6
    moved = 0
    params = dict(r.model.named_parameters())
    for name, mask in plan.masks.items():
        assert torch.equal(params[name][mask], before[name][mask]), name
        moved += int((params[name][~mask] != before[name][~mask]).any())
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]
    if (
        r.val_accuracy > r.history[0]["val_accuracy"]
        or max(h["val_accuracy"] for h in r.history) > 0.34
    ):
        assert moved > 0  # the trainable channels did train
    rr = st.train(
        tiny_net,
        tiny_data,
        strategy="random-mask",
        epochs=2,
        plan=str(tmp_path / "smart" / "plan.json"),
        seed=1,
        progress=False,
    )
    for layer, names in plan.layers.items():
        a, b = plan.masks[names[0]], rr.plan.masks[names[0]]
        assert int(a.sum()) == int(b.sum()), layer
    assert any(not torch.equal(plan.masks[n], rr.plan.masks[n]) for n in plan.masks)
    assert (tmp_path / "smart" / "profile_pre.pt").is_file()


def test_smart_select_val_tries_each_quantile(tiny_net, tiny_data):
    r = st.train(
        tiny_net,
        tiny_data,
        strategy="smart-kernel",
        select="val",
        quantiles=[0.25, 0.75],
        epochs=1,
        progress=False,
    )
    assert [t["quantile"] for t in r.tried] == [0.25, 0.75]
    kept = min(r.tried, key=lambda t: (t["val_loss"], -t["val_accuracy"]))
    assert r.chosen["quantile"] == kept["quantile"]
    fr = {t["quantile"]: t["frozen_fraction"] for t in r.tried}
    assert fr[0.25] < fr[0.75]


def test_smart_layer_freezes_whole_layers(tiny_net, tiny_data):
    r = st.train(tiny_net, tiny_data, strategy="smart-layer", epochs=1, progress=False)
    for names in r.plan.layers.values():
        m = r.plan.masks[names[0]]
        assert bool(m.all()) or not bool(m.any())


def test_lp_ft_starts_from_the_probe(tiny_net, tiny_data):
    probe = st.train(tiny_net, tiny_data, strategy="linear-probe", progress=False)
    r = st.train(tiny_net, tiny_data, strategy="lp-ft", epochs=1, progress=False)
    assert r.chosen["probe_val_accuracy"] == probe.val_accuracy
    assert r.val_accuracy >= probe.val_accuracy  # epoch 0 (the probe itself) is a candidate


def test_auto_reports_what_it_tried_and_keeps_the_best(tiny_net, tiny_data):
    r = st.train(
        tiny_net,
        tiny_data,
        strategy="auto",
        epochs=1,
        progress=False,
        candidates=["full-finetune", "linear-probe"],
        rule="best",
    )
    vals = {t["strategy"]: t["val_accuracy"] for t in r.tried}
    assert set(vals) == {"linear-probe", "full-finetune"}
    assert r.chosen["strategy"] == max(vals, key=lambda k: (vals[k], k == "full-finetune"))
    assert r.val_accuracy == max(vals.values())
    assert r.advice is not None and r.advice.quadrant.startswith("small")


def test_auto_one_se_rule_keeps_the_simplest_candidate_within_one_standard_error(
    tiny_net, tiny_data
):
    import copy
    import math

    r = st.train(
        copy.deepcopy(tiny_net),
        tiny_data,
        strategy="auto",
        epochs=2,
        progress=False,
        candidates=["full-finetune", "lp-ft", "linear-probe"],
        prefer="simplest",
    )
    vals = {t["strategy"]: t["val_accuracy"] for t in r.tried}
    n = r.chosen["selection"]["val_images"]
    assert n == round(0.2 * len(tiny_data))  # the validation split st.train carved
    best = max(vals.values())
    se = math.sqrt(best * (1 - best) / n)
    assert r.chosen["selection"]["standard_error"] == pytest.approx(se)
    order = ["linear-probe", "lp-ft", "full-finetune"]  # simplest first
    expected = next(name for name in order if vals[name] >= best - se - 1e-12)
    assert r.chosen["strategy"] == expected
    assert r.val_accuracy == vals[expected]
    with pytest.raises(ConfigError, match="rule"):
        st.train(tiny_net, tiny_data, strategy="auto", rule="worst", progress=False)
    with pytest.raises(ConfigError, match="prefer"):
        st.train(tiny_net, tiny_data, strategy="auto", prefer="newest", progress=False)


def test_auto_prefer_advice_keeps_the_earliest_candidate_within_one_standard_error(
    tiny_net, tiny_data
):
    import copy
    import math

    order = ["full-finetune", "linear-probe", "lp-ft"]  # not the simplicity order
    r = st.train(
        copy.deepcopy(tiny_net),
        tiny_data,
        strategy="auto",
        epochs=2,
        progress=False,
        candidates=order,  # prefer="advice" is the default
    )
    vals = {t["strategy"]: t["val_accuracy"] for t in r.tried}
    losses = {t["strategy"]: t["val_loss"] for t in r.tried if "val_loss" in t}
    assert set(losses) == {"full-finetune", "lp-ft"}  # the trained ones; the probe has none
    best = max(vals.values())
    se = math.sqrt(best * (1 - best) / r.chosen["selection"]["val_images"])
    within = [name for name in order if vals[name] >= best - se - 1e-12]
    expected = within[0]
    if expected in losses:  # tie="loss" (default): the lowest loss among the trained within
        expected = min((n for n in within if n in losses), key=lambda n: losses[n])
    assert r.chosen["strategy"] == expected and r.chosen["selection"]["prefer"] == "advice"
    assert r.chosen["selection"]["tie"] == "loss"
    assert r.val_accuracy == vals[expected]


def test_auto_ranks_the_probes_by_cross_validation_then_against_trained_candidates(
    tiny_net, tiny_data
):
    import copy
    import math

    order = [
        "linear-probe",
        "multi-layer-probe",
        "linear-probe-best-layer",
        "head-only",
    ]  # simplest first
    r = st.train(
        copy.deepcopy(tiny_net),
        tiny_data,
        strategy="auto",
        epochs=1,
        progress=False,
        candidates=order[::-1],
        prefer="simplest",
    )
    tried = {t["strategy"]: t for t in r.tried}
    probes = order[:3]
    assert all(
        tried[p]["cv_folds"] == 5 and tried[p]["cv_images"] == len(tiny_data) for p in probes
    )
    assert (
        "cv_accuracy" not in tried["head-only"]
    )  # trained candidates are judged on validation only
    cv = {p: tried[p]["cv_accuracy"] for p in probes}
    top = max(cv.values())
    se = math.sqrt(top * (1 - top) / len(tiny_data))
    kept = next(p for p in probes if cv[p] >= top - se - 1e-12)
    sel = r.chosen["selection"]
    assert sel["cv"]["kept"] == kept and sel["cv"]["standard_error"] == pytest.approx(se)
    # the kept probe then meets the trained candidate on the validation split
    vals = {p: tried[p]["val_accuracy"] for p in (kept, "head-only")}
    best = max(vals.values())
    se_val = math.sqrt(best * (1 - best) / sel["val_images"])
    assert r.chosen["strategy"] == next(
        p for p in (kept, "head-only") if vals[p] >= best - se_val - 1e-12
    )
    # cv=0: the validation split alone, as before
    r0 = st.train(
        copy.deepcopy(tiny_net),
        tiny_data,
        strategy="auto",
        progress=False,
        cv=0,
        candidates=["linear-probe", "multi-layer-probe"],
    )
    assert all("cv_accuracy" not in t for t in r0.tried) and "cv" not in r0.chosen["selection"]
    with pytest.raises(ConfigError, match="cv"):
        st.train(tiny_net, tiny_data, strategy="auto", cv=1, progress=False)


def test_data_forms_agree(tiny_net, tiny_data):
    idx = torch.arange(len(tiny_data))
    tr, va = idx[:60], idx[60:]
    a = st.train(
        tiny_net, (tiny_data, tr), (tiny_data, va), strategy="linear-probe", progress=False
    )
    x, y = tiny_data.images, tiny_data.targets
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 60, 16)]
    b = st.train(tiny_net, batches, [(x[60:], y[60:])], strategy="linear-probe", progress=False)
    assert a.val_accuracy == b.val_accuracy and a.chosen == b.chosen
    assert a.config["samples"] == 90 and a.config["num_classes"] == 3


def test_bn_adapt_reestimates_running_statistics_and_keeps_them(tiny_net, tiny_data):
    from smart_transfer.strategies.base import Context, Recipe
    from smart_transfer.strategies.finetune import adapt_batchnorm

    tf = st.data.transforms_for(tiny_net, train=False)
    ctx = Context(
        make_model=lambda: tiny_net,
        backbone_name="",
        num_classes=3,
        train=None,
        val=None,
        train_eval=st.data.loader(tiny_data, batch_size=128),
        train_tf=tf,
        eval_tf=tf,
        recipe=Recipe(),
    )
    adapt_batchnorm(tiny_net, ctx)
    x = tf(tiny_data.images)
    first = tiny_net.features[0](x)  # the input of the first BatchNorm, over all images
    bn = tiny_net.features[1]
    torch.testing.assert_close(bn.running_mean, first.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        bn.running_var, first.var((0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-5
    )
    assert bn.momentum == 0.1 and bn.training == tiny_net.training  # settings restored
    r = st.train(
        tiny_net, tiny_data, strategy="smart-kernel", bn_stats="adapt", epochs=1, progress=False
    )
    assert r.plan is not None


def _bn_stats(net):
    return {
        n: (m.running_mean.clone(), m.running_var.clone())
        for n, m in net.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    }


def test_smart_probe_keeps_the_source_statistics_of_the_most_similar_channels_only(
    tiny_net, tiny_data, tiny_test, tmp_path
):
    import copy

    from smart_transfer.layers import following_norms
    from smart_transfer.strategies.base import Context, Recipe
    from smart_transfer.strategies.finetune import adapt_batchnorm

    source = _bn_stats(tiny_net)
    adapted_net = copy.deepcopy(tiny_net)
    r = st.train(
        tiny_net,
        tiny_data,
        tiny_test,
        strategy="smart-probe",
        quantile=0.5,
        out=tmp_path / "sp",
        progress=False,
    )
    assert r.plan is None and r.frozen_fraction > 0.9  # no weight trained
    # the AdaBN statistics of the same images, every channel re-estimated
    tf = st.data.transforms_for(adapted_net, train=False)
    ctx = Context(
        make_model=lambda: adapted_net,
        backbone_name="",
        num_classes=3,
        train=None,
        val=None,
        train_eval=st.data.loader(tiny_data, batch_size=32),
        train_tf=tf,
        eval_tf=tf,
        recipe=Recipe(),
    )
    adapt_batchnorm(
        adapted_net, ctx
    )  # the batches st.train uses: every training image, 32 at a time
    adapted = _bn_stats(adapted_net)
    got = _bn_stats(r.model)
    sim = st.compare(
        st.ActivationProfile.load(tmp_path / "sp" / "profile_pre.pt"),
        st.ActivationProfile.load(tmp_path / "sp" / "profile_new.pt"),
        "gaussian_kl",
    )
    for layer, bn in following_norms(tiny_net).items():
        if layer not in sim.scores:
            continue
        scores = sim.scores[layer]
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[scores.argsort(descending=True)[: len(scores) // 2]] = True
        mean, var = got[bn]
        torch.testing.assert_close(mean[keep], source[bn][0][keep], rtol=0, atol=0)
        torch.testing.assert_close(var[keep], source[bn][1][keep], rtol=0, atol=0)
        # the first BatchNorm sees the same inputs in both nets; later ones see inputs partly
        # normalised with source statistics, so only the first is compared with full AdaBN
        if bn == "features.1":
            # (to batching order: AdaBN averages batch means)
            torch.testing.assert_close(mean[~keep], adapted[bn][0][~keep], rtol=1e-2, atol=1e-3)
        assert not torch.equal(mean[~keep], source[bn][0][~keep])
    assert r.chosen["kept_source_channels"] + r.chosen["adapted_channels"] == sum(
        len(v[0]) for k, v in source.items() if k in following_norms(tiny_net).values()
    )


def test_smart_probe_at_quantile_one_is_the_linear_probe_and_random_probe_matches_counts(
    tiny_net, tiny_data, tiny_test
):
    import copy

    net2, net3 = copy.deepcopy(tiny_net), copy.deepcopy(tiny_net)
    lp = st.train(tiny_net, tiny_data, strategy="linear-probe", progress=False)
    sp = st.train(net2, tiny_data, strategy="smart-probe", quantile=1.0, progress=False)
    assert sp.val_accuracy == lp.val_accuracy
    torch.testing.assert_close(st.predict(sp, tiny_test).probs, st.predict(lp, tiny_test).probs)
    rp = st.train(net3, tiny_data, strategy="random-probe", quantile=0.5, progress=False)
    sp5 = st.train(
        copy.deepcopy(net3), tiny_data, strategy="smart-probe", quantile=0.5, progress=False
    )
    assert rp.chosen["kept_source_channels"] == sp5.chosen["kept_source_channels"]
    assert rp.chosen["random"] and not sp5.chosen["random"]


def test_smart_probe_select_val_tries_each_quantile(tiny_net, tiny_data):
    r = st.train(tiny_net, tiny_data, strategy="smart-probe", progress=False)
    assert [t["quantile"] for t in r.tried] == [0.0, 0.5, 1.0]
    assert r.val_accuracy == max(t["val_accuracy"] for t in r.tried)
    assert r.chosen["quantile"] in (0.0, 0.5, 1.0)


def test_smart_probe_on_a_network_without_batchnorm_is_one_clear_error(tiny_data):
    from smart_transfer.models.small import small_vgg

    net = small_vgg(widths=(8, 16), batch_norm=False)
    net.pretrained_cfg["input_size"] = (3, 16, 16)
    with pytest.raises(ConfigError, match="no BatchNorm layer; use linear-probe"):
        st.train(net, tiny_data, strategy="smart-probe", progress=False)
