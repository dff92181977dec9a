"""A budget in optimizer steps: validation every few steps across passes, the best state kept,
early stopping, and a resume from the middle of a pass that ends bit-identical."""

from __future__ import annotations

import pytest
import torch
from test_resume import _Flat, _InterruptAt, _noisy, _setup

from smart_transfer.errors import ConfigError
from smart_transfer.training import TrainingInterrupted, checkpoint as ckpt, fit


def test_steps_cross_passes_and_validate_every_few_steps():
    model, opt, train, val = _setup()  # 8 batches per pass
    r = fit(_Flat(model), opt, train, val, steps=20, eval_every=6, progress=False)
    assert [h["step"] for h in r.history] == [6, 12, 18, 20]
    assert [h["epoch"] for h in r.history] == [1, 2, 3, 3]
    assert r.steps == 20 and r.best_step in (0, 6, 12, 18, 20)
    best = max(r.history, key=lambda h: (h["val_accuracy"], -h["val_loss"]))
    assert r.best_val_accuracy >= best["val_accuracy"]


def test_default_validation_is_every_pass_or_ten_steps():
    model, opt, train, val = _setup()
    r = fit(_Flat(model), opt, train, val, steps=20, progress=False)
    assert [h["step"] for h in r.history] == [8, 16, 20]  # a pass is 8 batches, fewer than 10


def test_kept_state_is_the_best_validation_score_and_ties_go_to_the_lower_loss():
    model, opt, train, val = _setup()
    m = _Flat(model)
    r = fit(m, opt, train, val, steps=24, eval_every=4, progress=False)
    for h in r.history:  # no validation beat the kept state (accuracy first, then the loss)
        assert (h["val_accuracy"], -h["val_loss"]) <= (r.best_val_accuracy, -r.best_val_loss)
    m.eval()
    with torch.no_grad():
        x, y = val[0]
        logits = m(x)
    assert torch.nn.functional.cross_entropy(logits, y).item() == pytest.approx(
        r.best_val_loss, rel=1e-5
    )
    assert (logits.argmax(1) == y).double().mean().item() == r.best_val_accuracy


def test_patience_counts_validations():
    model, opt, train, val = _setup()
    for g in opt.param_groups:
        g["lr"] = 0.0
    r = fit(_Flat(model), opt, train, val, steps=100, eval_every=3, patience=2, progress=False)
    assert r.stopped_early and [h["step"] for h in r.history] == [3, 6] and r.best_step == 0


def test_resume_from_the_middle_of_a_pass_is_bit_identical(tmp_path):
    kw = {
        "steps": 21,
        "eval_every": 5,
        "train_transform": _noisy,
        "scheduler": "cosine",
        "progress": False,
    }
    model, opt, train, val = _setup()
    m = _Flat(model)
    full = fit(m, opt, train, val, checkpoint_dir=tmp_path / "a", **kw)
    ref = {k: v.clone() for k, v in m.state_dict().items()}

    model, opt, train, val = _setup()
    with pytest.raises(TrainingInterrupted):  # pass 2, batch 6 is step 14: rounds at 5 and 10 saved
        fit(_Flat(model), opt, _InterruptAt(train, 2, 6), val, checkpoint_dir=tmp_path / "b", **kw)
    state = torch.load(ckpt.latest(tmp_path / "b") / ckpt.STATE, weights_only=True)
    assert state["step"] == 10 and state["in_epoch"] == 2 and state["open_pass"]
    model, opt, train, val = _setup(seed=99)
    m = _Flat(model)
    resumed = fit(m, opt, train, val, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    for k, v in m.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_budget_mistakes_are_config_errors():
    model, opt, train, val = _setup()
    with pytest.raises(ConfigError, match="exactly one"):
        fit(_Flat(model), opt, train, val, 2, steps=5, progress=False)
    with pytest.raises(ConfigError, match="eval_every"):
        fit(_Flat(model), opt, train, val, steps=5, eval_every=0, progress=False)
