"""auto does not train a candidate that its rule could not keep: once the kept candidate scores
1.0 on validation, a later, more complex one could only tie, and a tie keeps the simpler; and
the loss tie-break among the trained candidates within one standard error."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from smart_transfer.errors import ConfigError
from smart_transfer.strategies import auto
from smart_transfer.strategies.base import Outcome
from smart_transfer.training.loop import FitResult


def _run(monkeypatch, scores, rule="one-se", prefer="advice", tie="order", losses=None):
    """Run auto over stand-in candidates with the given validation accuracies (and, for the
    names in ``losses``, a trained candidate's validation loss)."""
    ran = []
    losses = losses or {}

    def strategy(name):
        def run(ctx, **options):
            ran.append(name)
            fit = None
            if name in losses:
                fit = FitResult(
                    best_epoch=1, best_val_accuracy=scores[name], best_val_loss=losses[name]
                )
            return Outcome(model=nn.Linear(1, 1), val_accuracy=scores[name], fit=fit)

        return SimpleNamespace(run=run)

    monkeypatch.setattr(auto, "get_strategy", strategy)
    monkeypatch.setattr(
        auto,
        "advice_for",
        lambda ctx: SimpleNamespace(
            candidates=list(scores), layer="penultimate", strategy=next(iter(scores))
        ),
    )
    ctx = SimpleNamespace(val=[(None, torch.zeros(40))], seed=0)
    out = auto.run_auto(ctx, candidates=list(scores), rule=rule, prefer=prefer, cv=0, tie=tie)
    return ran, out


@pytest.mark.parametrize("rule", ["one-se", "best"])
def test_a_perfect_probe_skips_the_trained_candidates(monkeypatch, rule):
    ran, out = _run(monkeypatch, {"linear-probe": 1.0, "lp-ft": 1.0, "full-finetune": 1.0}, rule)
    assert ran == ["linear-probe"]
    assert out.chosen["strategy"] == "linear-probe"
    skipped = [t for t in out.tried if "skipped" in t]
    assert [t["strategy"] for t in skipped] == ["lp-ft", "full-finetune"]
    assert "linear-probe already scores 1.000" in skipped[0]["skipped"]


def test_an_imperfect_probe_leaves_the_trained_candidates_their_chance(monkeypatch):
    ran, out = _run(monkeypatch, {"linear-probe": 0.7, "lp-ft": 0.95})
    assert ran == ["linear-probe", "lp-ft"]
    assert out.chosen["strategy"] == "lp-ft"  # 0.95 - 0.7 is more than one standard error


def test_a_simpler_later_candidate_is_still_trained(monkeypatch):
    ran, out = _run(monkeypatch, {"lp-ft": 1.0, "linear-probe": 1.0}, prefer="simplest")
    assert ran == ["lp-ft", "linear-probe"]  # linear-probe is simpler: it would be kept on a tie
    assert out.chosen["strategy"] == "linear-probe"


def test_by_default_a_later_candidate_in_the_advice_order_is_skipped(monkeypatch):
    ran, out = _run(monkeypatch, {"full-finetune": 1.0, "lp-ft": 1.0, "fine-tune": 1.0})
    assert ran == ["full-finetune"]  # the advisor's first is kept on a tie: the rest cannot win
    assert out.chosen["strategy"] == "full-finetune"


# --- the loss tie-break (tie="loss", the default of run_auto) --------------------------------

TRAINED = {"full-finetune": 0.7, "lp-ft": 0.7, "fine-tune": 0.675}
LOSSES = {"full-finetune": 1.2, "lp-ft": 0.9, "fine-tune": 0.8}


@pytest.mark.parametrize("tie, kept", [("order", "full-finetune"), ("loss", "fine-tune")])
def test_tied_trained_candidates_are_told_apart_by_validation_loss(monkeypatch, tie, kept):
    # 40 images: se = sqrt(0.7 * 0.3 / 40) = 0.072, so all three are within one standard error
    _, out = _run(monkeypatch, dict(TRAINED), tie=tie, losses=LOSSES)
    assert out.chosen["strategy"] == kept
    assert out.chosen["selection"]["tie"] == tie
    assert {t["strategy"]: t["val_loss"] for t in out.tried} == LOSSES


def test_the_loss_does_not_reach_outside_one_standard_error(monkeypatch):
    scores = {"full-finetune": 0.9, "lp-ft": 0.7}  # se = sqrt(0.9 * 0.1 / 40) = 0.047
    _, out = _run(monkeypatch, scores, tie="loss", losses={"full-finetune": 2.0, "lp-ft": 0.1})
    assert out.chosen["strategy"] == "full-finetune"


def test_a_probe_first_in_the_order_keeps_its_place(monkeypatch):
    scores = {"multi-layer-probe": 0.7, **TRAINED}
    _, out = _run(monkeypatch, scores, tie="loss", losses=LOSSES)
    assert out.chosen["strategy"] == "multi-layer-probe"  # a probe has no loss of the same kind


def test_rule_best_breaks_only_exact_ties_by_loss(monkeypatch):
    _, out = _run(monkeypatch, dict(TRAINED), rule="best", tie="loss", losses=LOSSES)
    assert out.chosen["strategy"] == "lp-ft"  # fine-tune's 0.675 is not a tie under "best"


@pytest.mark.parametrize("tie, ran", [("order", ["lp-ft"]), ("loss", ["lp-ft", "full-finetune"])])
def test_a_perfect_trained_candidate_skips_the_rest_only_under_the_order(monkeypatch, tie, ran):
    scores = {"lp-ft": 1.0, "full-finetune": 1.0}
    got, out = _run(monkeypatch, scores, tie=tie, losses={"lp-ft": 0.5, "full-finetune": 0.2})
    assert got == ran
    assert out.chosen["strategy"] == ("lp-ft" if tie == "order" else "full-finetune")


def test_an_unknown_tie_is_refused(monkeypatch):
    with pytest.raises(ConfigError, match="tie must be 'loss' or 'order'"):
        _run(monkeypatch, dict(TRAINED), tie="coin")
