"""Keep the best candidate on validation: one rule for every strategy that tries several.

A strategy that trains or fits one candidate per value of a grid (quantiles, ``k``, ``C``,
learning rates, fractions) offers them to a :class:`KeepBest` one at a time, in the grid's
order. Only the best so far is held, so a losing candidate's model can be freed at once.

Two rules:

* ``"accuracy"``: the highest validation accuracy; at equal accuracy the lower validation loss
  when both are known, else the earlier candidate (the rule of
  :func:`smart_transfer.training.fit` for its validation rounds).
* ``"loss"``: the lowest validation loss (NaN counts as +inf); equal losses go to the higher
  accuracy, then to the earlier candidate. Learning-rate grids use it: on a few dozen
  validation images two rates often tie on accuracy while the loss still ranks them.
"""

from __future__ import annotations

import math
from typing import Generic, TypeVar

from ..errors import ConfigError
from ..training.state import better_on_validation

T = TypeVar("T")
RULES = ("accuracy", "loss")


def _loss_key(accuracy: float, loss: float) -> tuple[float, float]:
    return (math.inf if math.isnan(loss) else float(loss), -float(accuracy))


class KeepBest(Generic[T]):
    """The best of the candidates offered so far, by ``rule`` (``"accuracy"`` or ``"loss"``)."""

    def __init__(self, rule: str = "accuracy", what: str = "candidates") -> None:
        # what: the grid's name for the error when it is empty (e.g. "quantiles")
        if rule not in RULES:
            raise ConfigError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
        self.rule, self.what = rule, what
        self.index = -1  # position of the kept candidate among those offered (-1: none yet)
        self.accuracy = math.nan
        self.loss = math.nan
        self._item: T | None = None
        self._offered = 0

    def _beats(self, accuracy: float, loss: float) -> bool:
        if self.index < 0:
            return True
        if self.rule == "loss":
            return _loss_key(accuracy, loss) < _loss_key(self.accuracy, self.loss)
        return better_on_validation(accuracy, loss, self.accuracy, self.loss)

    def offer(self, item: T, accuracy: float, loss: float = math.nan) -> bool:
        """Consider ``item`` scored ``accuracy`` (and ``loss``) on validation; True: it is
        now the kept one."""
        kept = self._beats(float(accuracy), float(loss))
        if kept:
            self._item, self.index = item, self._offered
            self.accuracy, self.loss = float(accuracy), float(loss)
        self._offered += 1
        return kept

    @property
    def item(self) -> T:
        """The kept candidate (an error before any was offered: a grid must not be empty)."""
        if self.index < 0:
            raise ConfigError(f"no {self.what} to choose from: give at least one value")
        return self._item  # type: ignore[return-value]
