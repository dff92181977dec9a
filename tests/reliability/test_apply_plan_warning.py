"""apply_plan without an optimizer: a warning naming optimizer= when training starts, since
weight decay then moves the frozen rows; with optimizer= they stay bit-identical."""

from __future__ import annotations

import warnings

import pytest
import torch
from rel_helpers import tiny_model

import smart_transfer as st


def _half_plan(model):
    return st.FreezePlan.from_masks(
        model, {"features.0.weight": torch.tensor([True, False, True, False])}
    )


def _train(model, opt, steps=3):
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 0])
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_without_optimizer_adamw_moves_frozen_rows_and_a_warning_says_how_to_fix_it():
    model = tiny_model()
    w0 = model.features[0].weight.detach().clone()
    st.apply_plan(model, _half_plan(model))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    with pytest.warns(UserWarning, match=r"optimizer=.*handle\.attach") as record:
        _train(model, opt)
    assert len([w for w in record if "optimizer=" in str(w.message)]) == 1  # once, not per step
    moved = (model.features[0].weight.detach()[[0, 2]] - w0[[0, 2]]).abs().max()
    assert float(moved) > 1e-3  # what the warning is about: weight decay moved frozen rows


def test_with_optimizer_frozen_rows_stay_bit_identical_and_nothing_warns():
    model = tiny_model()
    w0 = model.features[0].weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    st.apply_plan(model, _half_plan(model), optimizer=opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(model, opt)
    w = model.features[0].weight.detach()
    assert torch.equal(w[[0, 2]], w0[[0, 2]])
    assert not torch.equal(w[[1, 3]], w0[[1, 3]])
