"""apply_plan: frozen coordinates stay bit-identical under real optimizers; remove() undoes all."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from torch import nn

from smart_transfer.errors import ConfigError, IncompatibleError
from smart_transfer.freeze import FreezePlan, PlanHandle, apply_plan, plan_freeze

OPTIMIZERS = {
    "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.05),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    "adamw_wd": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.5, weight_decay=0.01),
}


def _data(seed: int = 0, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    model.train()
    for i in range(steps):
        x, y = _data(seed + i)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _mixed_plan(model, make_sim) -> FreezePlan:
    """features.0 (+ its BN) frozen whole, classifier trainable, other layers partly frozen."""
    n0, nc = model.features[0].out_channels, model.classifier.out_features
    sim = make_sim(
        model, seed=11, scores={"features.0": torch.ones(n0), "classifier": torch.zeros(nc)}
    )
    plan = plan_freeze(sim, threshold=0.5)
    partial = [n for n, m in plan.masks.items() if m.any() and not m.all()]
    assert (
        partial and plan.layer_mask("features.0").all() and not plan.layer_mask("classifier").any()
    )
    return plan


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    state.update({n: b.clone() for n, b in model.named_buffers()})
    return state


def _assert_frozen_exact_and_rest_moved(model, plan, before):
    params = dict(model.named_parameters())
    for name, p in params.items():
        mask = plan.masks.get(name, torch.zeros(p.shape[0], dtype=torch.bool))
        assert torch.equal(p.detach()[mask], before[name][mask]), f"frozen rows of {name} moved"
        if (~mask).any():
            assert not torch.equal(p.detach()[~mask], before[name][~mask]), f"{name} did not train"


@pytest.mark.parametrize("pretrain_steps", [0, 3], ids=["fresh", "after_training"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_frozen_rows_stay_bit_identical(make_model, make_sim, opt_name, pretrain_steps):
    model = make_model()
    opt = OPTIMIZERS[opt_name](model.parameters())
    _train(model, opt, pretrain_steps, seed=100)  # leaves momentum / Adam state behind
    plan = _mixed_plan(model, make_sim)
    before = _snapshot(model)
    handle = apply_plan(model, plan, optimizer=opt)
    _train(model, opt, 5)
    _assert_frozen_exact_and_rest_moved(model, plan, before)
    for name in handle.whole:  # no gradient computed or kept for wholly frozen tensors
        p = dict(model.named_parameters())[name]
        assert not p.requires_grad and p.grad is None
    assert set(handle.whole) == {n for n, m in plan.masks.items() if m.all()}
    # BatchNorm running statistics of frozen channels are kept (default bn_stats="freeze")
    bn = model.features[4]
    mask = plan.masks["features.4.weight"]
    assert torch.equal(bn.running_mean[mask], before["features.4.running_mean"][mask])
    assert torch.equal(bn.running_var[mask], before["features.4.running_var"][mask])
    assert not torch.equal(bn.running_mean[~mask], before["features.4.running_mean"][~mask])
    assert torch.equal(model.features[1].running_var, before["features.1.running_var"])


def test_gradient_masking_alone_lets_weight_decay_move_frozen_rows_until_restore(
    make_model, make_sim
):
    model = make_model()
    plan = _mixed_plan(model, make_sim)
    before = _snapshot(model)
    opt = OPTIMIZERS["sgd_momentum_wd"](model.parameters())
    handle = apply_plan(model, plan)  # no optimizer: gradients masked, rows not restored
    _train(model, opt, 3)
    name = handle.partial[0]
    p, mask = dict(model.named_parameters())[name], plan.masks[name]
    assert torch.equal(p.grad[mask], torch.zeros_like(p.grad[mask]))  # the hook zeroed them
    assert not torch.equal(p.detach()[mask], before[name][mask])  # ... yet decay moved them
    handle.restore()
    _assert_frozen_exact_and_rest_moved(model, plan, before)


def test_attach_an_optimizer_created_later(make_model, make_sim):
    model = make_model()
    plan = _mixed_plan(model, make_sim)
    before = _snapshot(model)
    handle = apply_plan(model, plan)
    opt = OPTIMIZERS["adamw_wd"]([p for p in model.parameters() if p.requires_grad])
    handle.attach(opt)
    handle.attach(opt)  # twice is harmless
    _train(model, opt, 4)
    _assert_frozen_exact_and_rest_moved(model, plan, before)
    assert "1 optimizers attached" in repr(handle)


def test_gradient_accumulated_before_apply_is_masked(make_model, make_sim):
    model = make_model()
    plan = _mixed_plan(model, make_sim)
    x, y = _data()
    nn.functional.cross_entropy(model(x), y).backward()
    handle = apply_plan(model, plan)
    params = dict(model.named_parameters())
    for name in handle.partial:
        assert not params[name].grad[plan.masks[name]].any()
        assert params[name].grad[~plan.masks[name]].any()
    for name in handle.whole:
        assert params[name].grad is None


def test_model_without_batchnorm_freezes_bias_rows(make_model, make_sim):
    model = make_model(batch_norm=False)
    plan = plan_freeze(make_sim(model, seed=12), quantile=0.5)
    before = _snapshot(model)
    opt = OPTIMIZERS["sgd_momentum_wd"](model.parameters())
    handle = apply_plan(model, plan, optimizer=opt, bn_stats="update")
    assert "features.0.bias" in handle.partial and handle.bn_frozen == []
    _train(model, opt, 5)
    _assert_frozen_exact_and_rest_moved(model, plan, before)


@pytest.mark.parametrize("policy", ["freeze", "update"])
def test_batchnorm_running_statistics_policy(make_model, make_sim, policy):
    model = make_model()
    plan = _mixed_plan(model, make_sim)
    before = _snapshot(model)
    handle = apply_plan(model, plan, bn_stats=policy)
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(_data(i)[0] * 3 + 1)
    for bn_name in ("features.1", "features.4"):
        mask = plan.masks[f"{bn_name}.weight"]
        for stat in ("running_mean", "running_var"):
            now, then = (
                dict(model.named_buffers())[f"{bn_name}.{stat}"],
                before[f"{bn_name}.{stat}"],
            )
            assert torch.equal(now[mask], then[mask]) == (policy == "freeze"), (bn_name, stat)
            if (~mask).any():
                assert not torch.equal(now[~mask], then[~mask])
    assert (handle.bn_frozen == ["features.1", "features.4", "features.8", "features.11"]) == (
        policy == "freeze"
    )


def test_batchnorm_without_affine_follows_its_layer(make_sim):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, affine=False), nn.ReLU())
    sim = make_sim(model, scores={"0": torch.tensor([1.0, 0, 1, 0, 1, 0])})
    plan = plan_freeze(sim, threshold=0.5)
    assert set(plan.masks) == {"0.weight", "0.bias"}
    before = model[1].running_mean.clone()
    handle = apply_plan(model, plan)
    model(torch.randn(4, 3, 6, 6) + 2)
    mask = plan.layer_mask("0")
    assert handle.bn_frozen == ["1"]
    assert torch.equal(model[1].running_mean[mask], before[mask])
    assert not torch.equal(model[1].running_mean[~mask], before[~mask])


def test_remove_restores_flags_and_removes_every_hook(make_model, make_sim):
    model = make_model()
    plan = _mixed_plan(model, make_sim)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    opt = OPTIMIZERS["sgd_momentum_wd"](model.parameters())
    with apply_plan(model, plan, optimizer=opt) as handle:
        assert isinstance(handle, PlanHandle) and handle.active
        assert any(not p.requires_grad for p in model.parameters())
    assert not handle.active and "removed" in repr(handle)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    handle.remove()  # again: nothing happens
    before = _snapshot(model)
    _train(model, opt, 2)
    for name, p in model.named_parameters():  # every row trains again, frozen ones included
        mask = plan.masks[name]
        if mask.any():
            assert not torch.equal(p.detach()[mask], before[name][mask]), name
    assert not torch.equal(model.features[1].running_mean, before["features.1.running_mean"])
    with pytest.raises(ConfigError, match="removed"):
        handle.attach(opt)


def test_a_second_plan_on_the_same_parameters_is_refused_until_remove(make_model, make_sim):
    model = make_model()
    plan = _mixed_plan(model, make_sim)
    handle = apply_plan(model, plan)
    with pytest.raises(ConfigError, match="already has a freeze plan"):
        apply_plan(model, plan)
    handle.remove()
    apply_plan(model, plan).remove()
    apply_plan(model, plan)  # handle dropped without remove(): the plan still acts ...
    gc.collect()
    with pytest.raises(ConfigError, match="already has a freeze plan"):  # ... and is still known
        apply_plan(model, plan)
    model = make_model()
    other = copy.deepcopy(model)  # a copy has its own parameters
    apply_plan(model, plan)
    apply_plan(other, plan)


def test_bad_arguments_and_plans_for_another_model(make_model, make_sim):
    model = make_model()
    plan = _mixed_plan(model, make_sim)
    with pytest.raises(ConfigError, match="bn_stats"):
        apply_plan(model, plan, bn_stats="eval")
    with pytest.raises(ConfigError, match="not a torch.optim.Optimizer"):
        apply_plan(model, plan, optimizer=object())  # type: ignore[arg-type]
    assert all(p.requires_grad for p in model.parameters())  # the failed call left nothing behind
    with pytest.raises(ConfigError, match="FreezePlan"):
        apply_plan(model, {"features.0.weight": torch.ones(4, dtype=torch.bool)})  # type: ignore[arg-type]
    with pytest.raises(IncompatibleError, match="another model"):
        apply_plan(make_model(widths=(8, 6)), plan)
    with pytest.raises(IncompatibleError, match="another model"):
        apply_plan(nn.Linear(3, 3), plan)
