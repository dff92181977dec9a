"""CustomRequireGrad: the original method's calls over profile -> compare -> plan -> apply.

The wiring is tested with stand-ins for ``smart_transfer.stats.profile`` and
``smart_transfer.measures.compare``; the end-to-end tests use the real ones.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import smart_transfer.measures as measures_pkg
import smart_transfer.stats as stats_pkg
from smart_transfer.errors import ConfigError
from smart_transfer.freeze import CustomRequireGrad, plan_freeze


def _loader(seed: int, batches: int = 2, n: int = 8, shift: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 3, 8, 8, generator=gen) + shift, torch.randint(0, 3, (n,), generator=gen))
        for _ in range(batches)
    ]


class _Fakes:
    """Records what CustomRequireGrad asks of the profiling and comparison functions."""

    def __init__(self, sim):
        self.sim = sim
        self.profiled: list = []
        self.from_bn: list = []
        self.compared: list = []

    def profile(self, model, loader, **kw):
        self.profiled.append((model, loader, kw))
        return ("profile", len(self.profiled))

    def profile_from_batchnorm(self, model, **kw):
        self.from_bn.append((model, kw))
        return ("bn_profile", model)

    def compare(self, pre, new, measure):
        self.compared.append((pre, new, measure))
        return self.sim


@pytest.fixture
def fakes(monkeypatch, make_model, make_sim):
    model = make_model()
    f = _Fakes(make_sim(model, seed=21))
    f.model = model
    monkeypatch.setattr(stats_pkg, "profile", f.profile, raising=False)
    monkeypatch.setattr(
        stats_pkg, "profile_from_batchnorm", f.profile_from_batchnorm, raising=False
    )
    monkeypatch.setattr(measures_pkg, "compare", f.compare, raising=False)
    return f


def test_run_profiles_both_loaders_compares_plans_and_applies(fakes):
    pre, new = _loader(0), _loader(1)
    rg = CustomRequireGrad(fakes.model, pre, new, max_batches=1, progress=False)
    plan = rg.run(stats_value=0.6)
    assert [(m, ld) for m, ld, _ in fakes.profiled] == [(fakes.model, pre), (fakes.model, new)]
    assert all(kw == {"max_batches": 1, "progress": False} for _, _, kw in fakes.profiled)
    assert fakes.compared == [(("profile", 1), ("profile", 2), "lognormal_kl")]
    expected = plan_freeze(fakes.sim, threshold=0.6)
    assert plan == expected and rg.plan is plan and rg.handle.active
    whole = [n for n, m in plan.masks.items() if m.all()]
    params = dict(fakes.model.named_parameters())
    assert all(not params[n].requires_grad for n in whole)
    # a second run re-plans from the cached comparison and replaces the applied plan
    first = rg.handle
    plan2 = rg.run(stats_value=0.2)
    assert len(fakes.profiled) == 2 and not first.active and rg.handle.active
    assert plan2.summary()["frozen_params"] >= plan.summary()["frozen_params"]
    rg.remove()
    assert all(p.requires_grad for p in fakes.model.parameters())


def test_without_source_data_batchnorm_statistics_and_gaussian_kl_are_used(fakes):
    new = _loader(1)
    rg = CustomRequireGrad(fakes.model, None, new, layers="features.*", progress=False)
    rg.run(stats_value=0.5)
    assert fakes.from_bn == [(fakes.model, {"layers": "features.*"})]  # same layer selection
    assert [ld for _, ld, _ in fakes.profiled] == [new]
    assert fakes.compared[0][0] == ("bn_profile", fakes.model)
    assert fakes.compared[0][2] == "gaussian_kl"
    rg2 = CustomRequireGrad(fakes.model, _loader(0), new, measure="wasserstein")
    assert rg2.measure == "wasserstein"


def test_seed_training_loop_keeps_frozen_channels_exact(fakes):
    model = fakes.model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    rg = CustomRequireGrad(model, _loader(0), _loader(1), optimizer=opt)
    plan = rg.run(stats_value=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    for x, y in _loader(2, batches=4):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        rg.update_grads(model)
        opt.step()
    for name, p in model.named_parameters():
        mask = plan.masks[name]
        assert torch.equal(p.detach()[mask], before[name][mask]), name
        if (~mask).any():
            assert not torch.equal(p.detach()[~mask], before[name][~mask]), name


def test_update_grads_zeroes_frozen_rows_written_by_other_means(fakes):
    rg = CustomRequireGrad(fakes.model, _loader(0), _loader(1))
    plan = rg.run(stats_value=0.5)
    params = dict(fakes.model.named_parameters())
    partial = [n for n, m in plan.masks.items() if m.any() and not m.all()]
    for n in partial:
        params[n].grad = torch.ones_like(params[n])  # bypasses the gradient hook
    rg.update_grads(fakes.model)
    for n in partial:
        assert not params[n].grad[plan.masks[n]].any()
        assert params[n].grad[~plan.masks[n]].eq(1).all()
    # a separate copy of the network (same parameter names) is handled by name
    other = type(fakes.model)(num_classes=3, widths=(4, 6))
    for p in other.parameters():
        p.grad = torch.ones_like(p)
    rg.update_grads(other)
    for n, p in other.named_parameters():
        assert not p.grad[plan.masks[n]].any() and p.grad[~plan.masks[n]].eq(1).all()


def test_misuse_raises_config_errors(fakes):
    with pytest.raises(ConfigError, match="loader_new"):
        CustomRequireGrad(fakes.model, _loader(0), None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        CustomRequireGrad("model", _loader(0), _loader(1))  # type: ignore[arg-type]
    rg = CustomRequireGrad(fakes.model, _loader(0), _loader(1))
    with pytest.raises(ConfigError, match="before run"):
        rg.update_grads(fakes.model)
    with pytest.raises(ConfigError, match="outside"):
        rg.run(stats_value=2.0)


# ---------------------------------------------------------------- end to end, real modules


def test_end_to_end_with_source_data(make_model):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    rg = CustomRequireGrad(model, _loader(0), _loader(1, shift=0.5), optimizer=opt, progress=False)
    plan = rg.run(stats_value=0.5)
    sim = rg.similarity
    assert sim is not None and plan.meta["measure"] == "lognormal_kl"
    for layer, scores in sim.scores.items():
        assert torch.equal(plan.layer_mask(layer), scores >= 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    for x, y in _loader(3, batches=3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        rg.update_grads(model)
        opt.step()
    for name, p in model.named_parameters():
        mask = plan.masks.get(name, torch.zeros(p.shape[0], dtype=torch.bool))
        assert torch.equal(p.detach()[mask], before[name][mask]), name


def test_end_to_end_from_batchnorm_statistics(make_model):
    model = make_model()
    rg = CustomRequireGrad(model, None, _loader(1), progress=False)
    plan = rg.run(stats_value=0.5)
    assert plan.meta["source"] == "batchnorm" and plan.meta["measure"] == "gaussian_kl"
    assert set(plan.layers) <= {
        "features.0",
        "features.3",
        "features.7",
        "features.10",
        "classifier",
    }
    rg.remove()
    assert all(p.requires_grad for p in model.parameters())
