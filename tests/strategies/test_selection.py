"""strategies/selection.py: the one "keep the best on validation" rule, against a sort."""

from __future__ import annotations

import math

import numpy as np
import pytest

import smart_transfer as st
from smart_transfer.errors import ConfigError
from smart_transfer.strategies.selection import KeepBest


def _scores(seed: int, n: int = 40) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    acc = (rng.integers(0, 5, n) / 4).tolist()  # few distinct accuracies: many ties
    loss = rng.choice([0.3, 0.5, 0.7, math.nan], n).tolist()
    return acc, loss


@pytest.mark.parametrize("seed", range(5))
def test_accuracy_rule_matches_a_lexicographic_sort(seed):
    acc, loss = _scores(seed)
    loss = [0.9 if math.isnan(v) else v for v in loss]
    keep: KeepBest[int] = KeepBest("accuracy")
    for i, (a, lo) in enumerate(zip(acc, loss)):
        keep.offer(i, a, lo)
    expected = int(np.lexsort((np.arange(len(acc)), np.array(loss), -np.array(acc)))[0])
    assert keep.item == expected and keep.index == expected and keep.accuracy == max(acc)


def test_a_nan_loss_never_wins_a_tie_of_accuracy():
    keep: KeepBest[str] = KeepBest("accuracy")
    keep.offer("a", 0.5, 0.4)
    assert not keep.offer("b", 0.5, math.nan) and keep.item == "a"
    assert keep.offer("c", 0.75, math.nan) and not keep.offer("d", 0.75, 0.1)  # NaN: no tie-break
    assert keep.item == "c"


@pytest.mark.parametrize("seed", range(5))
def test_loss_rule_matches_a_lexicographic_sort(seed):
    acc, loss = _scores(seed)
    keep: KeepBest[int] = KeepBest("loss")
    for i, (a, lo) in enumerate(zip(acc, loss)):
        keep.offer(i, a, lo)
    inf_loss = [math.inf if math.isnan(v) else v for v in loss]
    expected = int(np.lexsort((np.arange(len(acc)), -np.array(acc), np.array(inf_loss)))[0])
    assert keep.item == expected


def test_without_losses_ties_go_to_the_earlier_candidate():
    keep: KeepBest[str] = KeepBest()
    assert keep.offer("a", 0.5) and not keep.offer("b", 0.5) and keep.offer("c", 0.75)
    assert not keep.offer("d", 0.75) and keep.item == "c" and keep.index == 2


def test_an_empty_grid_and_an_unknown_rule_are_config_errors():
    with pytest.raises(ConfigError, match="no quantiles to choose from"):
        _ = KeepBest(what="quantiles").item
    with pytest.raises(ConfigError, match="rule must be one of accuracy, loss"):
        KeepBest("median")


def _scored(monkeypatch, module, scores):
    """Make ``module.train_model`` return candidates with preset validation scores, in order."""
    from smart_transfer.strategies.base import Outcome
    from smart_transfer.training.loop import FitResult

    it = iter(scores)

    def fake(ctx, model, tag, **kw):
        acc, loss = next(it)
        fit = FitResult(best_epoch=1, best_val_accuracy=acc, best_val_loss=loss)
        return Outcome(model=model, val_accuracy=acc, fit=fit, plan=kw.get("plan"))

    monkeypatch.setattr(module, "train_model", fake)


# accuracy would keep the second candidate, the loss keeps the third
_DISAGREE = [(0.80, 0.70), (0.90, 0.65), (0.85, 0.40)]


def test_first_k_frozen_keeps_the_lowest_validation_loss(monkeypatch, tiny_net, tiny_data):
    from smart_transfer.strategies import finetune

    _scored(monkeypatch, finetune, _DISAGREE)
    r = st.train(tiny_net, tiny_data, strategy="first-k-frozen", progress=False)
    assert [t["val_loss"] for t in r.tried] == [0.70, 0.65, 0.40]
    assert r.chosen["k"] == r.tried[2]["k"] and r.val_accuracy == 0.85


def test_smart_select_val_keeps_the_lowest_validation_loss(monkeypatch, tiny_net, tiny_data):
    from smart_transfer.strategies import smart

    _scored(monkeypatch, smart, _DISAGREE)
    r = st.train(
        tiny_net,
        tiny_data,
        strategy="smart-kernel",
        select="val",
        quantiles=[0.25, 0.5, 0.75],
        progress=False,
    )
    assert r.chosen["quantile"] == 0.75 and r.val_accuracy == 0.85
