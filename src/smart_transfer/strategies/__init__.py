"""Transfer strategies under one entry point: :func:`smart_transfer.train`.

Each strategy is a small function ``run(ctx, **options) -> Outcome`` (see :mod:`.base`) in its
own module, listed in one registry (:func:`list_strategies`).
"""

from .base import Context, Outcome, Recipe
from .registry import StrategyInfo, get_strategy, list_strategies

__all__ = ["Context", "Outcome", "Recipe", "StrategyInfo", "get_strategy", "list_strategies"]
