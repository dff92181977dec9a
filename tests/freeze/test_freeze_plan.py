"""plan_freeze and FreezePlan: rules against direct computations, ties, NaN, JSON, checks."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as hst

from smart_transfer.errors import (
    ConfigError,
    DataError,
    IncompatibleError,
    SmartTransferError,
    UnknownNameError,
)
from smart_transfer.freeze import SCHEMA_VERSION, FreezePlan, plan_freeze


def _row(shape):
    return math.prod(shape[1:])


def _reference_budget(sim, budget, scope="kernel"):
    """Greedy in plain Python: most similar first (ties: earlier layer, lower channel)."""
    layers = list(sim.scores)
    if scope == "kernel":
        units = []
        for li, layer in enumerate(layers):
            cost = sum(_row(s) for s in sim.params[layer].values())
            for c, v in enumerate(sim.scores[layer].tolist()):
                units.append((v, li, c, cost))
    else:
        units = [
            (
                sim.layer_scores[layer],
                li,
                None,
                sum(math.prod(s) for s in sim.params[layer].values()),
            )
            for li, layer in enumerate(layers)
        ]
    total = (
        sum(u[3] for u in units)
        if scope == "layer"
        else sum(math.prod(s) for layer in layers for s in sim.params[layer].values())
    )
    units = sorted(
        (u for u in units if not math.isnan(u[0])), key=lambda u: (-u[0], u[1], u[2] or 0)
    )
    frozen, trainable = set(), total
    for _v, li, c, cost in units:
        if trainable <= budget * total + 1e-9:
            break
        frozen.add((li, c))
        trainable -= cost
    return frozen, trainable / total


def test_threshold_freezes_channels_at_or_above_t_in_every_owned_parameter(make_model, make_sim):
    model = make_model()
    sim = make_sim(model, seed=1)
    for t in (0.0, 0.3, 0.5, 0.9, 1.0):
        plan = plan_freeze(sim, threshold=t)
        for layer, params in sim.params.items():
            expected = sim.scores[layer] >= t
            assert set(plan.layers[layer]) == set(params)
            for p in params:
                assert torch.equal(plan.masks[p], expected), (t, p)
    # the BatchNorm after each conv is planned with it
    assert "features.1.weight" in plan.layers["features.0"]
    assert "features.1.bias" in plan.layers["features.0"]


def test_every_mask_matches_the_model_parameter_it_names(make_model, make_sim):
    model = make_model(batch_norm=False)
    plan = plan_freeze(make_sim(model), quantile=0.5)
    params = dict(model.named_parameters())
    assert set(plan.masks) == set(params)  # conv weights and biases, classifier weight and bias
    for name, mask in plan.masks.items():
        assert mask.dtype == torch.bool and mask.shape == (params[name].shape[0],)
        assert plan.shapes[name] == tuple(params[name].shape)
    plan.validate(model)


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.77, 1.0])
def test_quantile_freezes_the_most_similar_fraction_of_each_layer(make_model, make_sim, q):
    model = make_model()
    sim = make_sim(model, seed=2)
    plan = plan_freeze(sim, quantile=q)
    for layer, scores in sim.scores.items():
        mask = plan.layer_mask(layer)
        assert int(mask.sum()) == math.floor(q * scores.numel() + 1e-9)
        if mask.any() and (~mask).any():
            assert scores[mask].min() >= scores[~mask].max()


def test_quantile_ties_are_broken_by_channel_index(make_model, make_sim):
    model = make_model()
    n = model.features[0].out_channels
    sim = make_sim(model, scores={"features.0": torch.full((n,), 0.5)})
    first = plan_freeze(sim, quantile=0.5).layer_mask("features.0")
    assert first.nonzero().flatten().tolist() == list(range(n // 2))
    assert torch.equal(first, plan_freeze(sim, quantile=0.5).layer_mask("features.0"))


def test_nan_scores_are_never_frozen_by_any_rule(make_model, make_sim):
    model = make_model()
    n = model.features[3].out_channels
    s = torch.linspace(0.1, 1.0, n)
    s[[0, 2]] = float("nan")
    sim = make_sim(model, scores={"features.3": s})
    plans = [plan_freeze(sim, threshold=0.0), plan_freeze(sim, quantile=1.0)]
    with pytest.warns(RuntimeWarning, match="cannot be met"):
        plans.append(plan_freeze(sim, budget=0.0))
    for plan in plans:
        mask = plan.layer_mask("features.3")
        assert not mask[0] and not mask[2]
        assert mask[1] and mask[3:].all()


@pytest.mark.parametrize("b", [0.0, 0.1, 0.35, 0.5, 0.9, 1.0])
def test_budget_matches_a_greedy_reference_and_respects_the_fraction(make_model, make_sim, b):
    model = make_model()
    sim = make_sim(model, seed=3)
    plan = plan_freeze(sim, budget=b)
    expected, trainable = _reference_budget(sim, b)
    layers = list(sim.scores)
    got = {
        (li, c)
        for li, layer in enumerate(layers)
        for c in plan.layer_mask(layer).nonzero().flatten().tolist()
    }
    assert got == expected
    total = sum(p.numel() for n, p in model.named_parameters() if n in plan.masks)
    frozen = sum(
        int(plan.masks[n][:].sum()) * p[0].numel()
        for n, p in model.named_parameters()
        if n in plan.masks
    )
    assert (total - frozen) / total <= b + 1e-12
    assert plan.meta["selection"]["trainable_fraction"] == pytest.approx(trainable)
    assert plan.summary()["trainable_params"] == total - frozen


def test_scope_layer_freezes_whole_layers_by_layer_score(make_model, make_sim):
    model = make_model()
    sim = make_sim(model, seed=4)
    order = sorted(sim.layer_scores, key=lambda n: -sim.layer_scores[n])
    for plan, chosen in [
        (
            plan_freeze(sim, threshold=0.5, scope="layer"),
            {n for n, v in sim.layer_scores.items() if v >= 0.5},
        ),
        (plan_freeze(sim, quantile=0.5, scope="layer"), set(order[: len(order) // 2])),
    ]:
        for layer in sim.scores:
            m = plan.layer_mask(layer)
            assert bool(m.all()) == (layer in chosen) and (bool(m.any()) == bool(m.all()))
    for b in (0.0, 0.4, 0.8, 1.0):
        plan = plan_freeze(sim, budget=b, scope="layer")
        expected, _ = _reference_budget(sim, b, scope="layer")
        got = {(li, None) for li, layer in enumerate(sim.scores) if plan.layer_mask(layer).all()}
        assert got == expected
        assert 1 - plan.frozen_fraction <= b + 1e-12


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one"),
        ({"threshold": 0.5, "quantile": 0.5}, "threshold and quantile"),
        ({"threshold": 1.5}, "outside"),
        ({"budget": -0.1}, "outside"),
        ({"quantile": float("nan")}, "outside"),
        ({"threshold": "0.5"}, "must be a number"),
        ({"threshold": 0.5, "scope": "block"}, "unknown scope"),
    ],
)
def test_bad_selection_arguments_raise_config_error(make_model, make_sim, kwargs, match):
    sim = make_sim(make_model())
    with pytest.raises(ConfigError, match=match):
        plan_freeze(sim, **kwargs)


def test_layers_restriction_plans_only_matching_layers(make_model, make_sim):
    model = make_model()
    sim = make_sim(model)
    plan = plan_freeze(sim, threshold=0.0, layers="features.*")
    assert set(plan.layers) == {n for n in sim.scores if n.startswith("features.")}
    assert not any(n.startswith("classifier") for n in plan.masks)
    assert plan.meta["selection"]["layers"] == ["features.*"]
    with pytest.raises(UnknownNameError, match="nope"):
        plan_freeze(sim, threshold=0.5, layers=["nope"])
    with pytest.raises(ConfigError, match="empty"):
        plan_freeze(sim, threshold=0.5, layers=[])


def test_inconsistent_similarity_is_an_incompatible_error(make_model, make_sim):
    model = make_model()
    sim = make_sim(model, scores={"features.0": torch.rand(7)})
    with pytest.raises(IncompatibleError, match="features.0"):
        plan_freeze(sim, threshold=0.5)
    sim = make_sim(model)  # a second layer claiming features.0's parameters
    sim.params["features.3"] = dict(sim.params["features.0"])
    sim.scores["features.3"] = torch.rand(sim.scores["features.0"].numel())
    with pytest.raises(IncompatibleError, match="belongs to both"):
        plan_freeze(sim, threshold=0.5)


def test_metadata_records_measure_rule_and_source(make_model, make_sim):
    sim = make_sim(make_model(), source="batchnorm")
    plan = plan_freeze(sim, quantile=0.3, scope="kernel")
    assert plan.meta["measure"] == "test_measure"
    assert plan.meta["source"] == "batchnorm"
    assert plan.meta["selection"] == {
        "scope": "kernel",
        "rule": "quantile",
        "value": 0.3,
        "layers": None,
    }
    assert plan.meta["layer_scores"]["classifier"] == pytest.approx(sim.layer_scores["classifier"])


def test_summary_counts_match_the_model(make_model, make_sim):
    model = make_model()
    plan = plan_freeze(make_sim(model, seed=5), threshold=0.4)
    params = dict(model.named_parameters())
    s = plan.summary()
    assert s["num_params"] == sum(p.numel() for p in params.values())
    frozen = sum(params[n][m].numel() for n, m in plan.masks.items())
    assert s["frozen_params"] == frozen
    assert s["frozen_fraction"] == pytest.approx(frozen / s["num_params"])
    for row in s["layers"]:
        assert row["frozen_params"] == sum(params[p][plan.masks[p]].numel() for p in row["params"])
        assert row["frozen_channels"] == int(plan.masks[row["params"][0]].sum())
    text = plan.summary_text()
    assert (
        text.splitlines()[-1].startswith("total") and len(text.splitlines()) == len(s["layers"]) + 2
    )
    assert f"{s['frozen_channels']}/{s['channels']}" in repr(plan)


def test_save_load_roundtrip_is_exact_and_atomic(tmp_path, make_model, make_sim):
    plan = plan_freeze(make_sim(make_model(), seed=6), budget=0.4)
    path = plan.save(tmp_path / "plan.json")
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary file left
    d = json.loads(path.read_text())
    assert d["schema_version"] == SCHEMA_VERSION
    loaded = FreezePlan.load(path)
    assert loaded == plan
    assert all(torch.equal(loaded.masks[n], m) for n, m in plan.masks.items())
    # overwriting keeps a complete file
    plan_freeze(make_sim(make_model(), seed=7), budget=0.4).save(path)
    assert FreezePlan.load(path) != plan


def test_load_rejects_other_versions_and_corrupt_files(tmp_path, make_model, make_sim):
    plan = plan_freeze(make_sim(make_model()), threshold=0.5)
    d = plan.to_dict()
    (tmp_path / "v99.json").write_text(json.dumps(dict(d, schema_version=99)))
    with pytest.raises(IncompatibleError, match="schema version 99"):
        FreezePlan.load(tmp_path / "v99.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError):
        FreezePlan.load(tmp_path / "bad.json")
    broken = json.loads(json.dumps(d))
    del broken["params"][next(iter(broken["params"]))]["shape"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(DataError, match="corrupt"):
        FreezePlan.load(tmp_path / "broken.json")
    with pytest.raises(DataError, match="no FreezePlan file"):
        FreezePlan.load(tmp_path / "missing.json")
    assert FreezePlan.load(plan.save(tmp_path / "new_dir" / "p.json")) == plan


def test_validate_names_missing_and_misshaped_parameters(make_model, make_sim):
    plan = plan_freeze(make_sim(make_model()), threshold=0.5)
    with pytest.raises(IncompatibleError, match="another model.*mis-shaped.*features.0.weight"):
        plan.validate(make_model(widths=(5, 6)))
    with pytest.raises(IncompatibleError, match="another model.*no parameter"):
        plan.validate(torch.nn.Linear(3, 3))


def test_hand_made_plan_checks_its_masks(make_model):
    model = make_model()
    n = model.classifier.weight.shape[0]
    plan = FreezePlan.from_masks(model, {"classifier.weight": torch.ones(n, dtype=torch.bool)})
    assert plan.layers == {"classifier": ["classifier.weight"]}
    with pytest.raises(ConfigError, match="shape"):
        FreezePlan.from_masks(model, {"classifier.weight": torch.ones(n + 1, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="bool"):
        FreezePlan.from_masks(model, {"classifier.weight": torch.ones(n)})
    with pytest.raises(IncompatibleError, match="no parameter"):
        FreezePlan.from_masks(model, {"head.weight": torch.ones(n, dtype=torch.bool)})
    with pytest.raises(SmartTransferError):
        FreezePlan.from_masks(
            model,
            {"classifier.weight": torch.ones(n, dtype=torch.bool)},
            layers={"a": ["classifier.weight"], "b": ["classifier.weight"]},
        )


def test_random_like_keeps_per_layer_counts_and_is_seeded(make_model, make_sim):
    plan = plan_freeze(make_sim(make_model(widths=(16, 24)), seed=8), quantile=0.5)
    r1, r2, r3 = plan.random_like(seed=1), plan.random_like(seed=1), plan.random_like(seed=2)
    assert r1 == r2 and r1 != r3
    assert r1.summary()["frozen_params"] == plan.summary()["frozen_params"]
    for layer, params in plan.layers.items():
        assert int(r1.layer_mask(layer).sum()) == int(plan.layer_mask(layer).sum())
        assert all(torch.equal(r1.masks[p], r1.masks[params[0]]) for p in params)
    assert r1.meta["random_like"]["seed"] == 1


_scores = hst.lists(
    hst.one_of(hst.floats(0, 1), hst.just(float("nan")), hst.sampled_from([0.0, 0.5, 1.0])),
    min_size=4,
    max_size=4,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(s=_scores, a=hst.floats(0, 1), b=hst.floats(0, 1))
def test_rules_are_monotone_in_their_value_and_skip_nan(make_model, make_sim, s, a, b):
    """A stricter rule freezes a subset, for any scores (ties and NaN included)."""
    lo, hi = min(a, b), max(a, b)
    scores = torch.tensor(s)
    sim = make_sim(make_model(), scores={"features.0": scores})
    pairs = [
        (plan_freeze(sim, threshold=hi), plan_freeze(sim, threshold=lo)),
        (plan_freeze(sim, quantile=lo), plan_freeze(sim, quantile=hi)),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # budgets NaN channels cannot meet
        pairs.append((plan_freeze(sim, budget=hi), plan_freeze(sim, budget=lo)))
    for fewer, more in pairs:
        for n in fewer.masks:
            assert not (fewer.masks[n] & ~more.masks[n]).any()
        assert not more.layer_mask("features.0")[scores.isnan()].any()
