"""strategies/selection.py: the one "keep the best on validation" rule, against a sort."""

from __future__ import annotations

import math

import numpy as np
import pytest

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
