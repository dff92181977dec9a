"""auto does not train a candidate that its rule could not keep: once the kept candidate scores
1.0 on validation, a later, more complex one could only tie, and a tie keeps the simpler."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from smart_transfer.strategies import auto
from smart_transfer.strategies.base import Outcome


def _run(monkeypatch, scores, rule="one-se", prefer="advice"):
    ran = []

    def strategy(name):
        def run(ctx, **options):
            ran.append(name)
            return Outcome(model=nn.Linear(1, 1), val_accuracy=scores[name])

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
    out = auto.run_auto(ctx, candidates=list(scores), rule=rule, prefer=prefer, cv=0)
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
